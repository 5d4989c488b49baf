"""What each API call sends, how its answer is read, and when it may be sent again.

`Client` and `AsyncClient` differ only in how they wait; both run the same `Call`
descriptions with the same `RetryPolicy`, so their behaviour cannot drift apart.

Which failures are retried (never a 4xx answer, never a 500):

- *unsent*: the connection could not be made (refused, connect timeout, no free pooled
  connection in time). The server never saw the request: every call is retried.
- *lost reply*: the connection broke after the request was sent, the reply did not come in
  time, or a 502, 503 or 504 came back (a load balancer or a replica that could not reach
  the event log; the request may have been acted on). Retried only for calls that are safe
  to repeat (``retry="any"``): reads, `rank` (its event id is fixed before the first try, so
  a repeat returns the logged decision), `reward` under aggregation ``earliest`` (a repeat
  is a duplicate, recognised as such), `activate`, disabling and enabling actions, and
  snapshots. `recommend` (the seed's route has no event id: a repeat would log a second
  decision that no user saw, then learn its default reward), `add_action` and rewards
  under aggregation ``sum`` (a repeat would be added to the total) are retried only when
  unsent (``retry="unsent"``). So are `rank_batch` (the batch route takes no client event
  ids: a repeat would log every decision of the batch twice) and the lifecycle's admin
  writes (each switch, candidate and upload is a new record: a repeat would switch or
  upload twice, or be refused as existing); the lifecycle's reads are retried.

Examples
--------
>>> policy = RetryPolicy(retries=3, backoff=0.1, max_backoff=1.0, seed=0)
>>> [0.05 <= policy.delay(1) <= 0.1, 0.1 <= policy.delay(2) <= 0.2, policy.delay(9) <= 1.0]
[True, True, True]
"""

from __future__ import annotations

import base64
import random
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import httpx

from banditrec.client.errors import (
    ConnectionFailed,
    InvalidResponse,
    RequestTimeout,
    error_from_response,
)
from banditrec.client.models import (
    ActionInfo,
    Activation,
    Decision,
    Forgotten,
    Health,
    ModelInfo,
    Recommendation,
    RewardReceipt,
    SnapshotInfo,
)

__all__ = ["RETRY_STATUSES", "Attempts", "Call", "RetryPolicy", "calls", "loop_path"]

T = TypeVar("T")

#: Answers that mean "not served now, try again": the load balancer found no replica (502,
#: 503, 504) or the replica could not reach the event log (503 store_unavailable).
RETRY_STATUSES = frozenset({502, 503, 504})

#: Transport errors raised before the request was sent: retrying them is always safe.
_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass
class Attempts:
    """How a call went so far: tries made, and whether one may have reached the server."""

    count: int = 0
    lost_reply: bool = False


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API call: the request, how to read a successful answer, what may be retried."""

    method: Literal["GET", "POST", "DELETE"]
    path: str
    parse: Callable[[httpx.Response, Attempts], T]
    body: Any = None
    retry: Literal["any", "unsent"] = "any"

    def request_kwargs(self) -> dict[str, Any]:
        return {} if self.body is None else {"json": self.body}


@dataclass
class RetryPolicy:
    """Exponential back-off with jitter: try `retries` more times after the first.

    The n-th wait is drawn uniformly from [d/2, d] with d = min(`max_backoff`,
    `backoff` · 2ⁿ⁻¹), so clients that failed together do not retry together. A
    ``Retry-After`` header (seconds) lengthens a wait, up to `max_backoff`.
    """

    retries: int = 3
    backoff: float = 0.1
    max_backoff: float = 2.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("retries, backoff and max_backoff must be >= 0.")
        self._rng = random.Random(self.seed)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed try number `attempt` (1 for the first)."""
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        wait = self._rng.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_backoff))
        return wait

    def after_transport_error(
        self, call: Call[Any], exc: httpx.TransportError, attempts: Attempts
    ) -> float:
        """The wait before the next try, or raise `ConnectionFailed` if there is none."""
        unsent = isinstance(exc, _UNSENT)
        if attempts.count <= self.retries and (unsent or call.retry == "any"):
            attempts.lost_reply |= not unsent
            return self.delay(attempts.count)
        cls = RequestTimeout if isinstance(exc, httpx.TimeoutException) else ConnectionFailed
        code = "timeout" if cls is RequestTimeout else "connection_failed"
        sent = "" if unsent else " The request may have reached the server."
        raise cls(
            f"{call.method} {call.path} got no answer after {attempts.count} "
            f"attempt(s): {type(exc).__name__}: {exc or 'no reason given'}.{sent}",
            code=code,
            attempts=attempts.count,
        ) from exc

    def after_response(self, call: Call[T], response: httpx.Response, attempts: Attempts) -> T:
        """The parsed answer; raise the error it maps to, or `_Retry` with the wait."""
        status = response.status_code
        if status in RETRY_STATUSES and call.retry == "any" and attempts.count <= self.retries:
            attempts.lost_reply = True
            raise _Retry(self.delay(attempts.count, _retry_after(response)))
        if status >= 400:
            raise error_from_response(response, attempts.count)
        try:
            return call.parse(response, attempts)
        except InvalidResponse as exc:  # JSON, but not this route's answer
            exc.status, exc.attempts = status, attempts.count
            raise
        except ValueError:  # the body is not JSON
            raise InvalidResponse(
                f"{call.method} {call.path} answered {status} with a body that is not JSON.",
                status=status,
                code="invalid_response",
                attempts=attempts.count,
            ) from None


class _Retry(Exception):  # noqa: N818  # control flow, not an error
    def __init__(self, delay: float) -> None:
        self.delay = delay


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def loop_path(path: str, loop: str | None) -> str:
    """The path of a default-loop route on the named loop `loop` (None: `path` itself).

    >>> loop_path("/v1/rank", "onboarding"), loop_path("/health", "onboarding")
    ('/v1/loops/onboarding/rank', '/v1/loops/onboarding/health')
    """
    if loop is None:
        return path
    if path == "/health":
        return f"/v1/loops/{_segment(loop)}/health"
    if path.startswith("/v1/"):
        return f"/v1/loops/{_segment(loop)}/{path.removeprefix('/v1/')}"
    raise ValueError(f"{path} is the default loop's only; on the loop {loop!r} use rank() instead.")


def _segment(value: str) -> str:
    # Ids are validated by the server; quoting keeps a bad one a 422 naming it, not a 404.
    return urllib.parse.quote(value, safe="")


def _json(response: httpx.Response) -> Any:
    return response.json()


def _json_object(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    if not isinstance(body, dict):
        raise InvalidResponse(
            f"The server answered {type(body).__name__}, not a JSON object.",
            code="invalid_response",
        )
    return body


def _json_list(response: httpx.Response) -> list[dict[str, Any]]:
    body = response.json()
    if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
        raise InvalidResponse(
            "The server's answer is not a JSON list of objects.", code="invalid_response"
        )
    return body


def new_event_id() -> str:
    """A fresh event id (32 hex digits), made before the first try of `rank`."""
    return uuid.uuid4().hex


class calls:  # noqa: N801  # a namespace of constructors, used as calls.rank(...)
    """The `Call` of every route; `Client` and `AsyncClient` run them."""

    @staticmethod
    def health() -> Call[Health]:
        return Call("GET", "/health", lambda r, _: Health.from_json(_json(r)))

    @staticmethod
    def metrics() -> Call[str]:
        return Call("GET", "/metrics", lambda r, _: r.text)

    @staticmethod
    def rank(
        context: Mapping[str, Any],
        actions: Iterable[str] | None,
        excluded_actions: Iterable[str],
        event_id: str | None,
        defer_activation: bool,
        user_id: str | None = None,
        explain: bool = False,
        baseline_action: str | None = None,
        slots: int | None = None,
    ) -> Call[Decision]:
        body: dict[str, Any] = {
            "context": dict(context),
            "excluded_actions": list(excluded_actions),
            "event_id": event_id if event_id is not None else new_event_id(),
            "defer_activation": defer_activation,
        }
        if actions is not None:
            body["actions"] = list(actions)
        if user_id is not None:
            body["user_id"] = user_id
        if explain:
            body["explain"] = True
        if baseline_action is not None:
            body["baseline_action"] = baseline_action
        if slots is not None:
            body["slots"] = slots
        return Call("POST", "/v1/rank", lambda r, a: Decision.from_json(_json(r), a.count), body)

    @staticmethod
    def rank_batch(
        contexts: Iterable[Mapping[str, Any]],
        user_ids: Iterable[str | None] | None,
        actions: Iterable[str] | None,
        excluded_actions: Iterable[str],
        baseline_actions: Iterable[str | None] | None,
    ) -> Call[list[Decision]]:
        body: dict[str, Any] = {
            "contexts": [dict(context) for context in contexts],
            "excluded_actions": list(excluded_actions),
        }
        if user_ids is not None:
            body["user_ids"] = list(user_ids)
        if actions is not None:
            body["actions"] = list(actions)
        if baseline_actions is not None:
            body["baseline_actions"] = list(baseline_actions)
        return Call(
            "POST",
            "/v1/rank/batch",
            lambda r, a: Decision.list_from_json(_json(r), a.count),
            body,
            retry="unsent",  # no client event ids: a repeat would log the batch twice
        )

    @staticmethod
    def recommend(user_id: str, context: Mapping[str, Any]) -> Call[Recommendation]:
        body = {**context, "user_id": user_id}
        return Call(
            "POST",
            "/recommend_action",
            lambda r, a: Recommendation.from_json(_json(r), a.count),
            body,
            retry="unsent",
        )

    @staticmethod
    def reward(
        event_id: str, value: float, aggregation: str, slot: int | None = None
    ) -> Call[RewardReceipt]:
        body: dict[str, Any] = {"value": value}
        if slot is not None:
            body["slot"] = slot
        return Call(
            "POST",
            f"/v1/events/{_segment(event_id)}/reward",
            lambda r, a: RewardReceipt.from_json(_json(r), a.count, a.lost_reply),
            body,
            retry="any" if aggregation == "earliest" else "unsent",
        )

    @staticmethod
    def activate(event_id: str) -> Call[Activation]:
        path = f"/v1/events/{_segment(event_id)}/activate"
        return Call("POST", path, lambda r, _: Activation.from_json(_json(r)))

    @staticmethod
    def model() -> Call[ModelInfo]:
        return Call("GET", "/v1/model", lambda r, _: ModelInfo.from_json(_json(r)))

    @staticmethod
    def actions() -> Call[list[ActionInfo]]:
        return Call("GET", "/v1/actions", lambda r, _: ActionInfo.list_from_json(_json(r)))

    @staticmethod
    def add_action(action_id: str) -> Call[list[ActionInfo]]:
        return Call(
            "POST",
            "/v1/admin/actions",
            lambda r, _: ActionInfo.list_from_json(_json(r)),
            {"action_id": action_id},
            retry="unsent",
        )

    @staticmethod
    def toggle_action(
        action_id: str, change: Literal["disable", "enable"]
    ) -> Call[list[ActionInfo]]:
        path = f"/v1/admin/actions/{_segment(action_id)}/{change}"
        return Call("POST", path, lambda r, _: ActionInfo.list_from_json(_json(r)))

    @staticmethod
    def snapshot() -> Call[SnapshotInfo]:
        return Call("POST", "/v1/admin/snapshot", lambda r, _: SnapshotInfo.from_json(_json(r)))

    @staticmethod
    def forget_user(user_id: str) -> Call[Forgotten]:
        path = f"/v1/admin/users/{_segment(user_id)}"
        return Call("DELETE", path, lambda r, a: Forgotten.from_json(_json(r), a.lost_reply))

    @staticmethod
    def export_model() -> Call[bytes]:
        return Call("GET", "/v1/admin/model", lambda r, _: r.content)

    # -- the lifecycle (docs/lifecycle.md); the server declares no typed answers for them

    @staticmethod
    def lifecycle_status() -> Call[dict[str, Any]]:
        return Call("GET", "/v1/lifecycle", lambda r, _: _json_object(r))

    @staticmethod
    def serve_mode(mode: str, reason: str) -> Call[dict[str, Any]]:
        body = {"mode": mode, "reason": reason}
        path = "/v1/admin/lifecycle/serve"
        return Call("POST", path, lambda r, _: _json_object(r), body, retry="unsent")

    @staticmethod
    def candidates() -> Call[list[dict[str, Any]]]:
        return Call("GET", "/v1/admin/candidates", lambda r, _: _json_list(r))

    @staticmethod
    def add_candidate(
        name: str,
        policy: str | None,
        params: Mapping[str, Any],
        exploration: str | None,
        exploration_params: Mapping[str, float],
        model: bytes | None,
    ) -> Call[list[dict[str, Any]]]:
        body: dict[str, Any] = {
            "name": name,
            "params": dict(params),
            "exploration_params": dict(exploration_params),
        }
        if policy is not None:
            body["policy"] = policy
        if exploration is not None:
            body["exploration"] = exploration
        if model is not None:
            body["model_base64"] = base64.b64encode(model).decode("ascii")
        path = "/v1/admin/candidates"
        return Call("POST", path, lambda r, _: _json_list(r), body, retry="unsent")

    @staticmethod
    def promote_candidate(name: str, force: bool, reason: str) -> Call[dict[str, Any]]:
        path = f"/v1/admin/candidates/{_segment(name)}/promote"
        body = {"force": force, "reason": reason}
        return Call("POST", path, lambda r, _: _json_object(r), body, retry="unsent")

    @staticmethod
    def remove_candidate(name: str) -> Call[list[dict[str, Any]]]:
        path = f"/v1/admin/candidates/{_segment(name)}/remove"
        return Call("POST", path, lambda r, _: _json_list(r), retry="unsent")

    @staticmethod
    def models() -> Call[list[dict[str, Any]]]:
        return Call("GET", "/v1/admin/models", lambda r, _: _json_list(r))

    @staticmethod
    def upload_model(model: bytes, label: str, activate: bool) -> Call[dict[str, Any]]:
        body = {
            "model_base64": base64.b64encode(model).decode("ascii"),
            "label": label,
            "activate": activate,
        }
        path = "/v1/admin/models"
        return Call("POST", path, lambda r, _: _json_object(r), body, retry="unsent")

    @staticmethod
    def activate_model(version_id: str) -> Call[dict[str, Any]]:
        path = f"/v1/admin/models/{_segment(version_id)}/activate"
        return Call("POST", path, lambda r, _: _json_object(r), retry="unsent")
