"""Domain errors and the one mapping from them to HTTP answers.

The engine, the schema and the routes raise plain exceptions that say what went wrong in one
sentence; `ERROR_STATUS` is the only place that turns them into statuses, and
`domain_error_answer` the only function that renders them: the app's exception handler
(`domain_error`) and the hot path both call it. Request validation errors get their own
handler, which names every field that failed and why.
"""

from typing import Any, ClassVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError

from banditrec.engine import ActionExistsError, UnknownActionError
from banditrec.exploration import NoEligibleActionError
from banditrec.features import SchemaError
from banditrec.responses import FastJSONResponse, error_body

__all__ = [
    "DOMAIN_ERRORS",
    "ERROR_STATUS",
    "ActionNotFoundError",
    "EventNotActivatedError",
    "EventNotFoundError",
    "RewardRejectedError",
    "RewardWindowClosedError",
    "domain_error",
    "domain_error_answer",
    "validation_error",
]


class EventNotFoundError(LookupError):
    """No decision has this event id."""

    def __init__(self, event_id: str) -> None:
        super().__init__(f"No decision has the event id {event_id!r}.")


class ActionNotFoundError(LookupError):
    """No action has this name."""


class RewardRejectedError(Exception):
    """A reward that is recorded but not learned: late, or for a deferred event.

    Its ``error`` code is `code`, in snake case, rather than the class name: the client
    branches on it (retrying later does not help a late reward; activating first does).
    """

    code: ClassVar[str]


class RewardWindowClosedError(RewardRejectedError):
    """The reward came after its decision's reward window closed."""

    code = "reward_window_closed"

    def __init__(self, event_id: str, window_seconds: float) -> None:
        super().__init__(
            f"The reward window of event {event_id!r} has closed ({window_seconds:g} s); "
            "the reward was recorded, not learned."
        )


class EventNotActivatedError(RewardRejectedError):
    """The reward is for a deferred decision that was never activated."""

    code = "event_not_activated"

    def __init__(self, event_id: str) -> None:
        super().__init__(
            f"Event {event_id!r} was deferred and has not been activated; activate it first. "
            "The reward was recorded, not learned."
        )


#: Domain errors and the HTTP status each maps to; the message is the error's own sentence.
ERROR_STATUS: dict[type[Exception], int] = {
    SchemaError: 422,
    UnknownActionError: 422,
    NoEligibleActionError: 422,
    EventNotFoundError: 404,
    ActionNotFoundError: 404,
    ActionExistsError: 409,
    EventNotActivatedError: 409,
    RewardWindowClosedError: 410,
}
DOMAIN_ERRORS: tuple[type[Exception], ...] = tuple(ERROR_STATUS)


def domain_error_answer(exc: Exception) -> tuple[int, dict[str, Any]]:
    """The status and body answering domain error `exc` (one of `DOMAIN_ERRORS`)."""
    # The most specific class mapped, as Starlette picks exception handlers.
    status = next(ERROR_STATUS[cls] for cls in type(exc).__mro__ if cls in ERROR_STATUS)
    code = exc.code if isinstance(exc, RewardRejectedError) else type(exc).__name__
    return status, error_body(code, str(exc))


def domain_error(_: Request, exc: Exception) -> FastJSONResponse:
    """The exception handler of every domain error."""
    status, content = domain_error_answer(exc)
    return FastJSONResponse(content, status)


def validation_error(_: Request, exc: Exception) -> FastJSONResponse:
    """422 in the app's error body, naming every field that failed and why."""
    assert isinstance(exc, RequestValidationError)
    detail = []
    for error in exc.errors():
        if error["type"] == "json_invalid":
            detail.append({"field": "body", "message": "The request body is not valid JSON."})
            continue
        loc = [str(part) for part in error["loc"] if part != "body"]
        field = ".".join(loc) or "body"
        detail.append({"field": field, "message": f"{field}: {error['msg']}."})
    message = "; ".join(d["message"] for d in detail)
    return FastJSONResponse(error_body("validation_error", message, detail), 422)
