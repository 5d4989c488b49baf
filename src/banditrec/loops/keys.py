"""API keys of named loops: a loop's own keys are valid on that loop only.

The server's keys (``BANDITREC_API_KEYS``) are valid on every loop, the default one
included; a loop's keys (its definition's ``api_keys``, kept as SHA-256 digests) on that
loop alone. A loop's key presented anywhere else gets 403 ``loop_not_allowed`` naming the
loop it belongs to, never 401, so its holder knows the key is right and the loop wrong.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from typing import Any

from starlette.types import Scope

from banditrec.auth import AuthError, Role, authorize

__all__ = ["authorize_loop", "other_loop_key"]

# A key table that matches no presented key (a presented key is stripped, so it is never
# "\n"): `authorize` then answers a missing key (401) or an unknown one (401) with its own
# messages when the server has no keys of its own.
_NO_KEYS: Mapping[str, Role] = {"\n": Role.reader}


def authorize_loop(
    server_keys: Mapping[str, Role],
    loop_keys: Mapping[bytes, Role],
    scoped: Callable[[bytes], list[str]],
    authorization: str,
    x_api_key: str,
    needed: Role,
    loop: str,
) -> Role:
    """The role of the presented key on the loop `loop`, if it includes `needed`.

    Parameters
    ----------
    server_keys
        The server's key table, valid on every loop.
    loop_keys
        The loop's own keys, SHA-256 digest -> role.
    scoped
        The loops whose own keys include a digest (`LoopRegistry.scoped_loops`).
    authorization, x_api_key
        The header values ("" when absent).
    needed
        The least role the route needs.
    loop
        The loop called, for the messages.

    Raises
    ------
    AuthError
        401 for a missing or unknown key; 403 for too low a role, or a key of another loop.
    """
    if not server_keys and not loop_keys:
        return Role.admin  # nothing configured: open, as the default loop is
    try:
        return authorize(server_keys or _NO_KEYS, authorization, x_api_key, needed)
    except AuthError as exc:
        if exc.code != "invalid_api_key":
            raise
        digest = _presented_digest(authorization, x_api_key)
        granted = _lookup(digest, loop_keys)
        if granted is None:
            raise _scope_error(exc, scoped(digest), loop) from None
    if not granted.includes(needed):
        raise AuthError(
            403,
            "insufficient_role",
            f"This route needs the '{needed}' role; the API key has the '{granted}' role.",
        )
    return granted


def other_loop_key(app: Any, scope: Scope, exc: AuthError, loop: str) -> AuthError:
    """The error for `exc` on a route of `loop`: 403 if the key is another loop's."""
    loops = getattr(app.state, "loops", None)
    if exc.code != "invalid_api_key" or loops is None:
        return exc
    digest = _presented_digest(_header(scope, b"authorization"), _header(scope, b"x-api-key"))
    return _scope_error(exc, loops.scoped_loops(digest), loop)


def _scope_error(exc: AuthError, owners: list[str], loop: str) -> AuthError:
    if not owners:
        return exc
    owner = owners[0]
    return AuthError(
        403,
        "loop_not_allowed",
        f"This API key belongs to the loop {owner!r}; it can call only that loop's routes "
        f"(/v1/loops/{owner}/...), not this one of the loop {loop!r}.",
    )


def _presented_digest(authorization: str, x_api_key: str) -> bytes:
    # As `banditrec.auth` reads a key: `Authorization: Bearer <key>` first, else X-API-Key.
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        key = credentials.strip()
    else:
        key = x_api_key.strip()
    return hashlib.sha256(key.encode()).digest()


def _lookup(digest: bytes, keys: Mapping[bytes, Role]) -> Role | None:
    # Every digest compared, no early exit (as `banditrec.auth` does).
    granted: Role | None = None
    for known, role in keys.items():
        if hmac.compare_digest(digest, known):
            granted = role
    return granted


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""
