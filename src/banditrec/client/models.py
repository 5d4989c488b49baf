"""The client's typed results: one frozen dataclass per answer of the API.

Each has a ``from_json`` that reads the server's body and checks the fields the client
relies on (a missing or mistyped one raises `InvalidResponse`, naming it); fields that an
older server does not send take their documented defaults.

Examples
--------
>>> d = Decision.from_json({
...     "event_id": "e1", "action_id": "b", "probability": 0.9,
...     "ranking": [{"action_id": "b", "probability": 0.9, "score": 0.4},
...                 {"action_id": "a", "probability": 0.1, "score": 0.2}],
...     "model_version": "v@3",
... })
>>> d.action_id, d.probability, d.probabilities
('b', 0.9, {'b': 0.9, 'a': 0.1})
>>> d.replayed, d.attempts
(False, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from banditrec.client.errors import InvalidResponse

__all__ = [
    "ActionInfo",
    "Activation",
    "Decision",
    "Forgotten",
    "Health",
    "ModelInfo",
    "RankedAction",
    "Recommendation",
    "RewardReceipt",
    "SlotDecision",
    "SnapshotInfo",
]

T = TypeVar("T")
_MISSING = object()


def _get(
    body: Mapping[str, Any], name: str, kind: Callable[[Any], T], default: Any = _MISSING
) -> T:
    value = body.get(name, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise InvalidResponse(
                f"The server's answer has no {name!r} field; is this a banditrec server?",
                code="invalid_response",
            )
        return default  # type: ignore[no-any-return]
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise InvalidResponse(
            f"The server's answer has an invalid {name!r} field: {value!r}.",
            code="invalid_response",
        ) from None


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(value)
    return float(value)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(value)
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(value)
    return value


def _optional(kind: Callable[[Any], T]) -> Callable[[Any], T | None]:
    """`kind`, letting JSON null through as None."""
    return lambda value: None if value is None else kind(value)


def _object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidResponse(
            f"The server answered {type(body).__name__}, not a JSON object.",
            code="invalid_response",
        )
    return body


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(value)
    return value


def _number_map(value: Any) -> dict[str, float]:
    return {str(k): _number(v) for k, v in dict(value).items()}


@dataclass(frozen=True)
class RankedAction:
    """One action of a ranking: its serving probability and its score.

    With ``rank(..., explain=True)`` also: `mean` (the estimated mean reward), `width` (its
    uncertainty), `contributions` (feature name -> its part of the mean; they add up to
    the mean for the linear policies, empty for the others) and `reason` (why it got its
    probability: ``best``, ``explored``, ``capped``, ``excluded``, ``disabled``,
    ``baseline``). None without ``explain``.
    """

    action_id: str
    probability: float
    score: float
    mean: float | None = None
    width: float | None = None
    contributions: dict[str, float] | None = None
    reason: str | None = None

    @classmethod
    def from_json(cls, body: Any) -> RankedAction:
        body = _object(body)
        return cls(
            _get(body, "action_id", _string),
            _get(body, "probability", _number),
            _get(body, "score", _number),
            mean=_get(body, "mean", _optional(_number), None),
            width=_get(body, "width", _optional(_number), None),
            contributions=_get(body, "contributions", _optional(_number_map), None),
            reason=_get(body, "reason", _optional(_string), None),
        )


@dataclass(frozen=True)
class SlotDecision:
    """One slot of a slate (``rank(..., slots=k)``): its own logged decision.

    Attributes
    ----------
    slot
        Its position, from 0 (the top; slot 0 is the decision's `action_id`).
    action_id
        The action shown in it.
    probability
        The probability it was chosen with, given the slots above it (its logged
        propensity).
    event_id
        The slot's own decision: the decision's event id for slot 0,
        ``<event_id>:<slot>`` below it. Reward it with ``reward(event_id, value,
        slot=slot)`` or with this id.
    """

    slot: int
    action_id: str
    probability: float
    event_id: str

    @classmethod
    def from_json(cls, body: Any) -> SlotDecision:
        body = _object(body)
        return cls(
            _get(body, "slot", _integer),
            _get(body, "action_id", _string),
            _get(body, "probability", _number),
            _get(body, "event_id", _string),
        )


@dataclass(frozen=True)
class Decision:
    """The answer of ``POST /v1/rank``: the action to show and how it was chosen.

    Attributes
    ----------
    event_id
        The decision's id; report its reward with it. The client makes one (a UUID) when
        the caller gives none, before the first try, so a retry can never log a second
        decision.
    action_id, probability
        The action to show, sampled from the ranking, and its probability.
    ranking
        Every action, most probable first (excluded ones with probability 0).
    model_version
        The model that decided.
    deferred
        Logged with ``defer_activation``: learned from only after `Client.activate`.
    replayed
        The server had logged this event id before and returned that first decision (nothing
        new was logged). After a retry (``attempts > 1``) this is the expected sign that the
        first try was logged and its reply lost.
    context_mismatch
        A replayed decision was made for another context: an event id was reused by mistake.
    slots
        With ``slots=k``: the k distinct actions of the slate, top first (empty
        otherwise).
    explanation_version
        With ``explain``: the model state the explanations were computed from (the
        decision's `model_version` unless a learn event was applied in between).
    attempts
        How many times the request was sent.
    """

    event_id: str
    action_id: str
    probability: float
    ranking: tuple[RankedAction, ...] = ()
    model_version: str = ""
    deferred: bool = False
    replayed: bool = False
    context_mismatch: bool = False
    explanation_version: str | None = None
    attempts: int = 1
    slots: tuple[SlotDecision, ...] = ()

    @property
    def probabilities(self) -> dict[str, float]:
        """The serving distribution, action -> probability."""
        return {a.action_id: a.probability for a in self.ranking}

    @classmethod
    def from_json(cls, body: Any, attempts: int = 1) -> Decision:
        body = _object(body)
        ranking = _get(body, "ranking", list, [])
        slots = _get(body, "slots", _optional(list), None) or []
        return cls(
            event_id=_get(body, "event_id", _string),
            action_id=_get(body, "action_id", _string),
            probability=_get(body, "probability", _number),
            ranking=tuple(RankedAction.from_json(r) for r in ranking),
            model_version=_get(body, "model_version", _string, ""),
            deferred=_get(body, "deferred", _flag, False),
            replayed=_get(body, "replayed", _flag, False),
            context_mismatch=_get(body, "context_mismatch", _flag, False),
            explanation_version=_get(body, "explanation_version", _optional(_string), None),
            attempts=attempts,
            slots=tuple(SlotDecision.from_json(entry) for entry in slots),
        )

    @staticmethod
    def list_from_json(body: Any, attempts: int = 1) -> list[Decision]:
        """The decisions of ``POST /v1/rank/batch`` (``{"decisions": [...]}``), in order."""
        decisions = _get(_object(body), "decisions", _list)
        return [Decision.from_json(item, attempts) for item in decisions]


@dataclass(frozen=True)
class Recommendation:
    """The answer of the seed's ``POST /recommend_action`` (the server's field names)."""

    user_id: str
    recommended_action: str
    ucb_score: float
    scores: dict[str, float]
    alpha: float
    event_id: str
    probability: float
    probabilities: dict[str, float]
    model_version: str
    attempts: int = 1

    @classmethod
    def from_json(cls, body: Any, attempts: int = 1) -> Recommendation:
        body = _object(body)
        return cls(
            user_id=_get(body, "user_id", _string),
            recommended_action=_get(body, "recommended_action", _string),
            ucb_score=_get(body, "ucb_score", _number),
            scores=_get(body, "scores", _number_map),
            alpha=_get(body, "alpha", _number),
            event_id=_get(body, "event_id", _string),
            probability=_get(body, "probability", _number),
            probabilities=_get(body, "probabilities", _number_map),
            model_version=_get(body, "model_version", _string),
            attempts=attempts,
        )


@dataclass(frozen=True)
class RewardReceipt:
    """What became of a reward (``POST /v1/events/{event_id}/reward``).

    Attributes
    ----------
    status
        ``"learned"`` (this reward changed the model), ``"duplicate"`` (another reward of
        the event was learned first; under aggregation ``earliest`` this one was only
        recorded) or ``"summed"`` (aggregation ``sum``: the total was corrected).
    learned, duplicate
        ``status == "learned"`` (or ``"summed"``), ``status == "duplicate"``.
    value
        The reward sent.
    total
        The reward now learned for the event.
    attempts
        How many times the request was sent.
    recovered
        True when a try failed without a reply (the connection broke, a timeout, a 502,
        503 or 504) and a retry was answered ``duplicate`` with ``total == value``: the
        lost try was learned, so the receipt reports it as learned once (``status
        "learned"``, ``learned True``, ``duplicate False``). The reward was learned exactly
        once. (Should another caller have reported the same value for the same event first,
        the model is the same either way.) A retry answered ``duplicate`` with another
        total stays a duplicate: another reward won.
    """

    event_id: str
    status: Literal["learned", "duplicate", "summed"]
    learned: bool
    duplicate: bool
    value: float
    total: float | None
    attempts: int = 1
    recovered: bool = False

    @classmethod
    def from_json(cls, body: Any, attempts: int = 1, lost_reply: bool = False) -> RewardReceipt:
        """The receipt; `lost_reply`: an earlier try may have reached the server."""
        body = _object(body)
        status = _get(body, "status", _string)
        if status not in ("learned", "duplicate", "summed"):
            raise InvalidResponse(
                f"The server answered an unknown reward status {status!r}.",
                code="invalid_response",
            )
        receipt = cls(
            event_id=_get(body, "event_id", _string),
            status=status,  # type: ignore[arg-type]  # checked above
            learned=_get(body, "learned", _flag),
            duplicate=_get(body, "duplicate", _flag),
            value=_get(body, "value", _number),
            total=_get(body, "total", _optional(_number), None),
            attempts=attempts,
        )
        if lost_reply and receipt.duplicate and receipt.total == receipt.value:
            return cls(
                receipt.event_id, "learned", True, False, receipt.value, receipt.total,
                attempts, recovered=True,
            )  # fmt: skip
        return receipt


@dataclass(frozen=True)
class Activation:
    """The answer of ``POST /v1/events/{event_id}/activate``."""

    event_id: str
    activated: bool  # False when the event was active already

    @classmethod
    def from_json(cls, body: Any) -> Activation:
        body = _object(body)
        return cls(_get(body, "event_id", _string), _get(body, "activated", _flag))


@dataclass(frozen=True)
class Health:
    """The answer of ``GET /health``; see docs/operations.md for what to do about each."""

    status: Literal["ok", "degraded"]
    faults: tuple[str, ...]
    model_loaded: bool
    n_actions: int
    alpha: float
    model_version: str
    schema_hash: str

    @property
    def ok(self) -> bool:
        """No fault: decisions are served and learning and snapshots work."""
        return self.status == "ok"

    @classmethod
    def from_json(cls, body: Any) -> Health:
        body = _object(body)
        status = _get(body, "status", _string)
        if status not in ("ok", "degraded"):
            raise InvalidResponse(
                f"The server answered an unknown health status {status!r}.",
                code="invalid_response",
            )
        return cls(
            status=status,  # type: ignore[arg-type]  # checked above
            faults=tuple(_get(body, "faults", lambda v: [_string(f) for f in v], [])),
            model_loaded=_get(body, "model_loaded", _flag),
            n_actions=_get(body, "n_actions", _integer),
            alpha=_get(body, "alpha", _number),
            model_version=_get(body, "model_version", _string),
            schema_hash=_get(body, "schema_hash", _string),
        )


@dataclass(frozen=True)
class ModelInfo:
    """The answer of ``GET /v1/model``: the model the answering worker serves."""

    pid: int
    version: str
    n_updates: int
    n_updates_by_action: dict[str, int]
    log_offset: int
    applied_at: float
    schema_hash: str
    policy: str
    #: JSON values: numbers for most policies, lists for auto's widths, rules for fixed_rule.
    policy_params: dict[str, Any]
    exploration: str
    exploration_params: dict[str, float]

    @classmethod
    def from_json(cls, body: Any) -> ModelInfo:
        body = _object(body)
        return cls(
            pid=_get(body, "pid", _integer),
            version=_get(body, "version", _string),
            n_updates=_get(body, "n_updates", _integer),
            n_updates_by_action=_get(
                body, "n_updates_by_action", lambda v: {str(a): _integer(n) for a, n in v.items()}
            ),
            log_offset=_get(body, "log_offset", _integer),
            applied_at=_get(body, "applied_at", _number),
            schema_hash=_get(body, "schema_hash", _string),
            policy=_get(body, "policy", _string),
            policy_params=_get(body, "policy_params", lambda v: dict(_object(v)), {}),
            exploration=_get(body, "exploration", _string, ""),
            exploration_params=_get(body, "exploration_params", _number_map, {}),
        )


@dataclass(frozen=True)
class ActionInfo:
    """One action of ``GET /v1/actions``: whether it is served, what it learned."""

    action_id: str
    enabled: bool
    n_updates: int

    @classmethod
    def from_json(cls, body: Any) -> ActionInfo:
        body = _object(body)
        return cls(
            _get(body, "action_id", _string),
            _get(body, "enabled", _flag),
            _get(body, "n_updates", _integer),
        )

    @staticmethod
    def list_from_json(body: Any) -> list[ActionInfo]:
        if not isinstance(body, list):
            raise InvalidResponse(
                "The server's list of actions is not a JSON list.", code="invalid_response"
            )
        return [ActionInfo.from_json(item) for item in body]


@dataclass(frozen=True)
class SnapshotInfo:
    """The answer of ``POST /v1/admin/snapshot``: the file written and its log offset."""

    path: str
    log_offset: int

    @classmethod
    def from_json(cls, body: Any) -> SnapshotInfo:
        body = _object(body)
        return cls(_get(body, "path", _string), _get(body, "log_offset", _integer))


@dataclass(frozen=True)
class Forgotten:
    """The answer of ``DELETE /v1/admin/users/{user_id}``: decisions deleted, by place.

    `repeated` is True when an earlier try's reply was lost: that try may have deleted
    decisions this answer does not count (a repeat finds nothing more to delete).
    """

    user_id: str
    live: int
    archive: int
    repeated: bool = False

    @classmethod
    def from_json(cls, body: Any, repeated: bool = False) -> Forgotten:
        body = _object(body)
        return cls(
            _get(body, "user_id", _string),
            _get(body, "live", _integer),
            _get(body, "archive", _integer),
            repeated,
        )
