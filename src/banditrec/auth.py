"""API keys with roles: who may rank, reward, read and administer.

Roles are cumulative, ``reader ⊂ writer ⊂ admin``: a ``writer`` may rank and report rewards
and also call the read-only routes; an ``admin`` may do everything. A route asks for the
least role it needs with ``Depends(require(Role.writer))`` (or the `Reader`, `Writer`,
`Admin` aliases); routes without such a dependency, like ``/health`` and ``/metrics``, are
public.

The key table (key ─► role) is read from ``request.app.state.api_keys`` on every request.
An empty table means development mode: every route is open, and `log_auth_mode` says so at
start-up. A client sends its key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

Examples
--------
>>> Role.reader < Role.writer < Role.admin
True
>>> Role.admin.includes(Role.writer), Role.reader.includes(Role.writer)
(True, False)
"""

# No `from __future__ import annotations`: FastAPI reads the dependency's signature at runtime.

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.responses import JSONResponse
from fastapi.security.base import SecurityBase
from pydantic import BeforeValidator

__all__ = [
    "SECURITY_REQUIREMENT",
    "SECURITY_SCHEMES",
    "Admin",
    "ApiKeys",
    "AuthError",
    "Reader",
    "Role",
    "Writer",
    "auth_error_handler",
    "authorize",
    "key_table",
    "log_auth_mode",
    "require",
]


class Role(StrEnum):
    """What an API key may do; ordered ``reader < writer < admin``, each including those before.

    The values are the strings used in settings (``{"<key>": "writer"}``).
    """

    reader = "reader"
    writer = "writer"
    admin = "admin"

    @property
    def rank(self) -> int:
        """0 for ``reader``, 1 for ``writer``, 2 for ``admin``."""
        return _RANK[self]

    def includes(self, other: "Role") -> bool:
        """Whether a key with this role may call a route that needs `other`."""
        return _RANK[self] >= _RANK[other]

    # A str enum would compare alphabetically ("admin" < "reader"); compare by rank instead,
    # and only with other roles, so a role is never silently compared as a plain string.
    def __lt__(self, other: object) -> bool:
        return _RANK[self] < _RANK[other] if isinstance(other, Role) else NotImplemented

    def __le__(self, other: object) -> bool:
        return _RANK[self] <= _RANK[other] if isinstance(other, Role) else NotImplemented

    def __gt__(self, other: object) -> bool:
        return _RANK[self] > _RANK[other] if isinstance(other, Role) else NotImplemented

    def __ge__(self, other: object) -> bool:
        return _RANK[self] >= _RANK[other] if isinstance(other, Role) else NotImplemented


_RANK: dict[Role, int] = {role: rank for rank, role in enumerate(Role)}
_ROLE_NAMES = frozenset(role.value for role in Role)


def _check_key_table(value: object) -> object:
    # Runs before pydantic's own checks, whose errors would name the offending dict entry,
    # that is the secret key itself; these messages never show a key.
    if not isinstance(value, Mapping):
        return value  # pydantic reports the wrong type
    bad_roles = sorted(
        {repr(r) for r in value.values() if not isinstance(r, str) or r not in _ROLE_NAMES}
    )
    if bad_roles:
        raise ValueError(
            f"Unknown API key role(s) {', '.join(bad_roles)}; "
            "the roles are 'reader', 'writer' and 'admin'."
        )
    if any(not isinstance(key, str) or not key or key != key.strip() for key in value):
        raise ValueError("API keys must be non-empty strings without surrounding whitespace.")
    if not all(_sendable(key) for key in value):
        raise ValueError(
            "API keys must be printable ASCII text: HTTP headers carry Latin-1 bytes at most, "
            "and clients send other characters differently (or not at all), so such a key "
            "might never authenticate; use random keys, e.g. secrets.token_urlsafe(32)."
        )
    return value


def _sendable(key: str) -> bool:
    # Every client sends printable ASCII in a header alike. Beyond Latin-1 a key cannot be
    # sent at all; between the two, curl and browsers send UTF-8 bytes, which the server
    # reads as Latin-1: the key would match only for some clients.
    return key.isascii() and key.isprintable()


ApiKeys = Annotated[dict[str, Role], BeforeValidator(_check_key_table)]
"""The settings type of the key table, key ─► role; its errors never show a key."""


class AuthError(Exception):
    """A request without a valid key, or with a key whose role is too low.

    Parameters
    ----------
    status
        401 (no key, or a key that is not configured) or 403 (a known key, too low a role).
    code
        The ``error`` field of the response body, in snake case.
    message
        The ``message`` field: one sentence that tells the client what to do.
    headers
        Extra response headers (``WWW-Authenticate`` on 401).
    """

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def auth_error_handler(_: Request, exc: Exception) -> JSONResponse:
    """Render an `AuthError` in the app's error format (``error``, ``message``, ``detail``)."""
    assert isinstance(exc, AuthError)
    body = {"error": exc.code, "message": exc.message, "detail": []}
    return JSONResponse(body, exc.status, headers=exc.headers)


_MISSING = (
    "This route needs an API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."
)

#: The OpenAPI security schemes of a key table: either header carries a key.
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "BearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key, as `Authorization: Bearer <key>`.",
    },
    "ApiKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key, as `X-API-Key: <key>`.",
    },
}
#: An OpenAPI operation's ``security``: a key in either header.
SECURITY_REQUIREMENT: list[dict[str, list[str]]] = [{name: []} for name in SECURITY_SCHEMES]


class _Guard(SecurityBase):
    """The dependency `require` returns: one async callable per role.

    A `SecurityBase` so OpenAPI documents the bearer scheme (and /docs gets its "Authorize"
    button), but a single dependency that reads the headers itself: FastAPI's `Security`
    sub-dependencies would cost tens of microseconds per request on the decision route.
    """

    def __init__(self, needed: Role) -> None:
        self.needed = needed
        self.model = HTTPBearerModel(
            description="An API key, as `Authorization: Bearer <key>` or `X-API-Key: <key>`."
        )
        self.scheme_name = "APIKey"

    def __repr__(self) -> str:
        return f"require(Role.{self.needed})"

    async def __call__(self, request: Request) -> Role:
        # Async on purpose: a sync dependency would cost a thread-pool hop on every request.
        keys = _key_table(request)
        if not keys:
            return Role.admin
        headers = request.headers
        return authorize(
            keys, headers.get("authorization", ""), headers.get("x-api-key", ""), self.needed
        )


def require(role: Role) -> Callable[[Request], Awaitable[Role]]:
    """A FastAPI dependency that lets a request through only with a key of `role` or above.

    Parameters
    ----------
    role
        The least role the route needs.

    Returns
    -------
    Callable
        An async dependency returning the caller's role (``Role.admin`` when no key is
        configured, since every route is then open). It raises `AuthError`: 401 for a
        missing or unknown key, 403 for a known key with too low a role. The same callable
        is returned for the same role, so ``app.dependency_overrides`` can target it.

    Examples
    --------
    >>> require(Role.writer) is require(Role.writer)
    True
    """
    return _GUARDS[role]


_GUARDS: dict[Role, _Guard] = {role: _Guard(role) for role in Role}

Reader = Annotated[Role, Depends(require(Role.reader))]
"""A route parameter of this type needs at least the ``reader`` role; its value is the role."""
Writer = Annotated[Role, Depends(require(Role.writer))]
"""A route parameter of this type needs at least the ``writer`` role; its value is the role."""
Admin = Annotated[Role, Depends(require(Role.admin))]
"""A route parameter of this type needs the ``admin`` role; its value is the role."""


def authorize(keys: Mapping[str, Role], authorization: str, x_api_key: str, needed: Role) -> Role:
    """The role of the key presented in these header values, if it includes `needed`.

    Parameters
    ----------
    keys
        The configured key table; empty means every route is open (``Role.admin``).
    authorization, x_api_key
        The values of the ``Authorization`` and ``X-API-Key`` headers ("" when absent).
    needed
        The least role the route needs.

    Raises
    ------
    AuthError
        401 for a missing or unknown key, 403 for a known key with too low a role.
    """
    if not keys:
        return Role.admin
    presented = _presented_key(authorization, x_api_key)
    if not presented:
        raise AuthError(401, "missing_api_key", _MISSING, {"WWW-Authenticate": "Bearer"})
    granted = _lookup(presented, keys)
    if granted is None:
        raise AuthError(
            401,
            "invalid_api_key",
            "The API key is not valid.",
            {"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    if not granted.includes(needed):
        raise AuthError(
            403,
            "insufficient_role",
            f"This route needs the '{needed}' role; the API key has the '{granted}' role.",
        )
    return granted


def key_table(app: object) -> Mapping[str, Role]:
    """The key table of `app` (``app.state.api_keys``); unset is an error, never "open"."""
    try:
        keys: Mapping[str, Role] = app.state.api_keys  # type: ignore[attr-defined]
    except AttributeError:
        # Failing closed: a forgotten assignment must not silently open every route.
        raise RuntimeError(
            "app.state.api_keys is not set; set it to the configured key table "
            "(an empty mapping serves every route openly)."
        ) from None
    return keys


def _key_table(request: Request) -> Mapping[str, Role]:
    return key_table(request.app)


def _presented_key(authorization: str, x_api_key: str) -> str:
    # `Authorization: Bearer <key>` (scheme case-insensitive, RFC 7235) first; an
    # Authorization header of another scheme is not ours and is ignored.
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return x_api_key.strip()


def _lookup(presented: str, keys: Mapping[str, Role]) -> Role | None:
    # Compare SHA-256 digests, not the keys: equal lengths, so `compare_digest` leaks neither
    # a key's content nor its length. Every configured key is compared (no early exit), so
    # the time taken does not tell which key, if any, matched.
    digest = _sha256(presented)
    granted: Role | None = None
    for key, role in keys.items():
        if hmac.compare_digest(digest, _sha256(key)):
            granted = role
    return granted


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


#: Keys shorter than this are easy to guess; `log_auth_mode` warns about them.
MIN_KEY_LENGTH = 16


def log_auth_mode(api_keys: Mapping[str, Role], logger: logging.Logger) -> None:
    """Log, once at start-up, whether routes are open and how many keys each role has.

    Never logs a key. Logs a WARNING when no key is configured (development mode: every
    route is open) or when a key is shorter than `MIN_KEY_LENGTH`, else an INFO line.

    Parameters
    ----------
    api_keys
        The configured key table, key ─► role.
    logger
        Where to log, usually the server's logger.
    """
    if not api_keys:
        logger.warning("No API keys are configured: every route is open (development mode).")
        return
    counts = {role: 0 for role in Role}
    for role in api_keys.values():
        counts[Role(role)] += 1
    summary = ", ".join(f"{counts[role]} {role}" for role in reversed(Role))
    logger.info("API keys are required on protected routes (%s keys configured).", summary)
    short = sum(len(key) < MIN_KEY_LENGTH for key in api_keys)
    if short:
        logger.warning(
            "%d API key(s) are shorter than %d characters and easy to guess; use random keys "
            "such as the output of `python -c 'import secrets; print(secrets.token_urlsafe(32))'`.",
            short,
            MIN_KEY_LENGTH,
        )
