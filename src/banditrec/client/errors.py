"""The client's exceptions: one class per kind of failure, built from the error body.

Every error the server answers has the body ``{"error": <code>, "message": <sentence>,
"detail": [{"field", "message"}]}`` (see ``banditrec.errors``). `error_from_response` turns
such an answer into the exception of its status, keeping the code, the message and the
detail, so an app can branch on the class (``except WindowClosed``) or on ``exc.code``. An
answer that is not banditrec's (a load balancer's HTML error page) gets a code made from its
status, ``http_<status>``, and a message that quotes its start.

Examples
--------
>>> import httpx
>>> answer = httpx.Response(
...     410, json={"error": "reward_window_closed", "message": "Too late.", "detail": []}
... )
>>> exc = error_from_response(answer)
>>> type(exc).__name__, exc.status, exc.code, str(exc)
('WindowClosed', 410, 'reward_window_closed', 'Too late.')
>>> isinstance(exc, BanditrecError)
True
"""

# The classes are named after what happened (NotFound, WindowClosed), as the statuses are,
# not with an Error suffix: `except banditrec.client.NotFound` reads as the answer it catches.
# ruff: noqa: N818

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

__all__ = [
    "ActionExists",
    "BadRequest",
    "BanditrecError",
    "Conflict",
    "ConnectionFailed",
    "EventNotActivated",
    "FieldError",
    "Forbidden",
    "InvalidResponse",
    "NotFound",
    "PayloadTooLarge",
    "RequestTimeout",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "WindowClosed",
    "error_from_response",
]


@dataclass(frozen=True)
class FieldError:
    """One field that failed validation: its dotted path and what is wrong with it."""

    field: str
    message: str


class BanditrecError(Exception):
    """Base class of every error the client raises.

    Attributes
    ----------
    status
        The HTTP status of the answer; None when no answer came (`ConnectionFailed`).
    code
        The server's snake_case error code (``event_not_found``), or ``http_<status>`` for
        an answer that is not banditrec's, or the client's own code (``connection_failed``,
        ``timeout``, ``invalid_response``).
    message
        One sentence saying what is wrong (the server's own when it sent one).
    detail
        Every field that failed validation (422 ``validation_error`` only; else empty).
    attempts
        How many times the request was sent, retries included.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        detail: tuple[FieldError, ...] = (),
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.detail = detail
        self.attempts = attempts

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, {self.message!r})"


class ConnectionFailed(BanditrecError):
    """No answer: the connection could not be made, or broke before the reply came.

    When it broke after the request was sent, the server may have acted on it; `rank` and
    `reward` retries are safe against that, `recommend` and `add_action` are not retried.
    """


class RequestTimeout(ConnectionFailed):
    """No answer within the client's timeout (the server may still have acted on it)."""


class InvalidResponse(BanditrecError):
    """A successful status whose body is not what the route answers (not banditrec?)."""


class BadRequest(BanditrecError):
    """400: the body is not JSON (``invalid_json``); a client bug."""


class Unauthorized(BanditrecError):
    """401: no API key, or a key the server does not know (``missing_api_key``,
    ``invalid_api_key``)."""


class Forbidden(BanditrecError):
    """403: the key's role is too low for this route (``insufficient_role``), or the key
    belongs to another loop (``loop_not_allowed``)."""


class NotFound(BanditrecError):
    """404: no such event (``event_not_found``), action (``action_not_found``) or route."""


class Conflict(BanditrecError):
    """409: the request conflicts with the current state (see the subclasses)."""


class ActionExists(Conflict):
    """409 ``action_exists``: the action to add exists already."""


class EventNotActivated(Conflict):
    """409 ``event_not_activated``: a reward for a deferred decision that was never
    activated; it was recorded, not learned. Activate the event first."""


class WindowClosed(BanditrecError):
    """410 ``reward_window_closed``: the reward came after its window; recorded, not
    learned. Retrying does not help."""


class PayloadTooLarge(BanditrecError):
    """413: the body is larger than the server's ``max_body_bytes``."""


class ValidationFailed(BanditrecError):
    """422: a field failed validation (``validation_error``, each field in `detail`), or
    the request cannot be served as asked (``invalid_context``, ``unknown_action``,
    ``no_eligible_action``)."""


class ServerError(BanditrecError):
    """500 (``internal_error``, a server bug: its log has the traceback) or another 5xx."""


class Unavailable(ServerError):
    """502, 503 or 504 after the retries: the event log (``store_unavailable``) or every
    replica behind the load balancer cannot be reached now. Retry later."""


_BY_STATUS: dict[int, type[BanditrecError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: WindowClosed,
    413: PayloadTooLarge,
    422: ValidationFailed,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}
_BY_CODE: dict[str, type[BanditrecError]] = {
    "action_exists": ActionExists,
    "event_not_activated": EventNotActivated,
}


def error_from_response(response: httpx.Response, attempts: int = 1) -> BanditrecError:
    """The exception for an error answer (status 400 or more), built from its body."""
    status = response.status_code
    code, message, detail = _parse_body(response)
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else BanditrecError
    return cls(message, status=status, code=code, detail=detail, attempts=attempts)


def _parse_body(response: httpx.Response) -> tuple[str, str, tuple[FieldError, ...]]:
    status = response.status_code
    fallback = f"http_{status}"
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body.get("message")
        if not isinstance(message, str) or not message:
            message = f"The server answered {status} {response.reason_phrase} ({body['error']})."
        raw_detail = body.get("detail")
        detail = tuple(
            FieldError(str(d.get("field", "")), str(d.get("message", "")))
            for d in (raw_detail if isinstance(raw_detail, list) else [])
            if isinstance(d, dict)
        )
        return body["error"], message, detail
    # Not banditrec's answer: a proxy's or load balancer's page. Quote its start.
    text = " ".join(response.text.split())[:200]
    quoted = f": {text!r}" if text else ""
    return fallback, f"The server answered {status} {response.reason_phrase}{quoted}.", ()
