"""The one error contract: every error the service answers, its status, code and body.

Every error answer has the body `banditrec.schemas.ErrorResponse`,
``{"error": <snake_case code>, "message": <one sentence>, "detail": [{"field", "message"}]}``
(``detail`` is empty unless a request failed validation). `error_answer` is the only
function that turns an exception into an answer: the FastAPI exception handlers
(`handle_error`) and the hot path both call it, so the two cannot answer differently.

The statuses and codes, as documented in ``docs/design.md``:

====  ==========================  =========================================================
400   ``invalid_json``            the body is not JSON (syntax, or not UTF-8)
401   ``missing_api_key``,        no key, or a key that is not configured
      ``invalid_api_key``
403   ``insufficient_role``,      a known key whose role is too low; a key of another loop
      ``loop_not_allowed``        (banditrec.loops)
404   ``event_not_found``,        an unknown event or action; ``not_found``: no such route
      ``action_not_found``,       ``loop_not_found``: no loop of that name
      ``not_found``
405   ``method_not_allowed``      the route exists, not with this method
409   ``action_exists``,          adding an action that exists; a reward for a deferred
      ``event_not_activated``,    event not activated yet (recorded, not learned); a
      ``candidate_exists``,       candidate name taken; a promotion the interval does not
      ``not_proven``,             support (banditrec.lifecycle); a loop of that name with
      ``loop_exists``             another definition (banditrec.loops)
410   ``reward_window_closed``    the reward came after its window (recorded, not learned)
413   ``payload_too_large``       the body is larger than ``max_body_bytes``
415   ``unsupported_media_type``  a non-empty body whose Content-Type is not JSON
422   ``validation_error``,       a field failed validation (each one named in ``detail``);
      ``invalid_context``,        a context the schema refuses; an unknown action name;
      ``unknown_action``,         every action excluded
      ``no_eligible_action``,     apprentice mode without a baseline (``no_baseline``); a
      ``no_baseline``,            model file that does not load (``invalid_model_file``)
      ``invalid_model_file``,     a loop definition that cannot serve (``invalid_loop``)
      ``invalid_loop``
500   ``internal_error``          a bug: the traceback is logged, never sent
503   ``store_unavailable``       the event log cannot be reached now; retry later
====  ==========================  =========================================================
"""

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from banditrec.actions import ActionExistsError, UnknownActionError
from banditrec.auth import AuthError
from banditrec.exploration import NoEligibleActionError
from banditrec.features import SchemaError
from banditrec.lifecycle.apprentice import ApprenticeError
from banditrec.lifecycle.errors import (
    CandidateExistsError,
    InvalidCandidateError,
    LifecycleNotFoundError,
    NotProvenError,
)
from banditrec.responses import FastJSONResponse, error_body
from banditrec.snapshot import ModelFileError
from banditrec.store import StoreUnavailableError

__all__ = [
    "ANSWERED_ERRORS",
    "DOMAIN_ERRORS",
    "ActionNotFoundError",
    "EventNotActivatedError",
    "EventNotFoundError",
    "InvalidJSONError",
    "LoopError",
    "LoopExistsError",
    "LoopNotFoundError",
    "RequestValidationError",
    "RewardRejectedError",
    "RewardWindowClosedError",
    "error_answer",
    "handle_error",
    "handle_server_error",
]


class EventNotFoundError(LookupError):
    """No decision has this event id."""

    def __init__(self, event_id: str) -> None:
        super().__init__(f"No decision has the event id {event_id!r}.")


class ActionNotFoundError(LookupError):
    """No action has this name."""


class RewardRejectedError(Exception):
    """A reward that is recorded but not learned: late, or for a deferred event.

    The client branches on its code: retrying later does not help a late reward;
    activating first does.
    """

    code: ClassVar[str]


class RewardWindowClosedError(RewardRejectedError):
    """The reward came after its decision's reward window closed."""

    def __init__(self, event_id: str, window_seconds: float) -> None:
        super().__init__(
            f"The reward window of event {event_id!r} has closed ({window_seconds:g} s); "
            "the reward was recorded, not learned."
        )


class EventNotActivatedError(RewardRejectedError):
    """The reward is for a deferred decision that was never activated."""

    def __init__(self, event_id: str) -> None:
        super().__init__(
            f"Event {event_id!r} was deferred and has not been activated; activate it first. "
            "The reward was recorded, not learned."
        )


class LoopError(ValueError):
    """A loop definition that cannot serve (bad schema, setting, policy or key): 422
    ``invalid_loop``; at start-up, a loops file that cannot be used."""


class LoopNotFoundError(LookupError):
    """No loop has this name: 404 ``loop_not_found``."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"No loop is named {name!r}; GET /v1/loops lists the loops, and an admin creates "
            f"one with PUT /v1/loops/{name}."
        )


class LoopExistsError(Exception):
    """A loop of this name exists with another schema: 409 ``loop_exists``."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"The loop {name!r} exists with another schema; a loop's schema cannot change "
            "(its log is written under it): choose another name, or delete the loop and "
            "remove its files first."
        )


class InvalidJSONError(ValueError):
    """The request body is not JSON: 400 ``invalid_json``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"The request body is not valid JSON: {reason}.")


class RequestValidationError(ValueError):
    """Path parameters or the body failed validation: 422, every field named in ``detail``.

    Parameters
    ----------
    errors
        Pydantic's errors (``ValidationError.errors()``).
    prefix
        Prepended to each error's location: the name of a path parameter, or nothing for
        the body (whose fields are named as they are in it, ``context.n_sessions``).
    """

    def __init__(self, errors: Iterable[Mapping[str, Any]], prefix: str = "") -> None:
        self.detail = [_field_error(error, prefix) for error in errors]
        super().__init__("; ".join(d["message"] for d in self.detail))

    @classmethod
    def from_pydantic(cls, exc: ValidationError, prefix: str = "") -> "RequestValidationError":
        return cls(exc.errors(include_url=False, include_input=False), prefix)


def _field_error(error: Mapping[str, Any], prefix: str) -> dict[str, str]:
    loc = [prefix] if prefix else []
    loc += [str(part) for part in error["loc"]]
    field = ".".join(loc) or "body"
    message = str(error["msg"]).rstrip(".")
    return {"field": field, "message": f"{field}: {message}."}


#: Domain errors: status and code; the message is the error's own sentence.
_DOMAIN: dict[type[Exception], tuple[int, str]] = {
    SchemaError: (422, "invalid_context"),
    UnknownActionError: (422, "unknown_action"),
    NoEligibleActionError: (422, "no_eligible_action"),
    EventNotFoundError: (404, "event_not_found"),
    ActionNotFoundError: (404, "action_not_found"),
    ActionExistsError: (409, "action_exists"),
    EventNotActivatedError: (409, "event_not_activated"),
    RewardWindowClosedError: (410, "reward_window_closed"),
    StoreUnavailableError: (503, "store_unavailable"),
    ApprenticeError: (422, "no_baseline"),
    ModelFileError: (422, "invalid_model_file"),
    LifecycleNotFoundError: (404, "not_found"),
    CandidateExistsError: (409, "candidate_exists"),
    InvalidCandidateError: (422, "invalid_candidate"),
    NotProvenError: (409, "not_proven"),
    LoopError: (422, "invalid_loop"),
    LoopNotFoundError: (404, "loop_not_found"),
    LoopExistsError: (409, "loop_exists"),
}
DOMAIN_ERRORS: tuple[type[Exception], ...] = tuple(_DOMAIN)

#: Every exception `error_answer` renders; anything else is a bug (500).
ANSWERED_ERRORS: tuple[type[Exception], ...] = (
    AuthError,
    InvalidJSONError,
    RequestValidationError,
    HTTPException,
    *DOMAIN_ERRORS,
)

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_answer(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The status, body and extra headers answering `exc` (one of `ANSWERED_ERRORS`)."""
    if isinstance(exc, AuthError):
        return exc.status, error_body(exc.code, exc.message), exc.headers
    if isinstance(exc, InvalidJSONError):
        return 400, error_body("invalid_json", str(exc)), {}
    if isinstance(exc, RequestValidationError):
        return 422, error_body("validation_error", str(exc), exc.detail), {}
    if isinstance(exc, HTTPException):
        return _http_answer(exc)
    # The most specific class mapped, as Starlette picks exception handlers.
    status, code = next(_DOMAIN[cls] for cls in type(exc).__mro__ if cls in _DOMAIN)
    return status, error_body(code, str(exc)), {}


def _http_answer(exc: HTTPException) -> tuple[int, dict[str, Any], dict[str, str]]:
    # Starlette raises these for requests that match no route (404) or not its method (405).
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        message = "No route matches this path; the routes are listed at /docs."
    elif exc.status_code == 405:
        allowed = headers.get("allow", headers.get("Allow", ""))
        message = f"This route does not accept this method; it accepts {allowed}."
    else:
        message = str(exc.detail).rstrip(".") + "."
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return exc.status_code, error_body(code, message), headers


def handle_error(_: Request, exc: Exception) -> FastJSONResponse:
    """The app's exception handler for every class in `ANSWERED_ERRORS`."""
    status, content, headers = error_answer(exc)
    return FastJSONResponse(content, status, headers=headers or None)


def handle_server_error(_: Request, exc: Exception) -> FastJSONResponse:
    """500 in the error body; the traceback goes to the log, never to the client.

    Starlette re-raises `exc` after this answer, and the server (uvicorn) logs it with its
    traceback: logging it here too would print every bug twice.
    """
    body = error_body(
        "internal_error", "The server failed to answer this request; the error is logged."
    )
    return FastJSONResponse(body, 500)
