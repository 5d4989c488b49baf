"""The event log: decisions, rewards and learn events, behind one interface.

The log is the source of truth (DESIGN principle 2): a model is a snapshot plus the learn
events after the snapshot's log offset. Every backend keeps three things:

- decisions, written before the response is sent, with everything needed to learn from them
  and to evaluate other policies on them later (context, vector, probabilities);
- rewards, every one received, including duplicates, late and unknown ones, with the outcome;
- learn events, a totally ordered stream (``seq``) that every replica applies in order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from banditrec.store.decision_batch import DecisionBatch

__all__ = [
    "DecisionRecord",
    "EventStore",
    "LearnEvent",
    "LearnKind",
    "RetirableDecision",
    "RewardOutcome",
    "RewardResult",
    "RewardRules",
    "StoreError",
    "StoreUnavailableError",
    "StoredReward",
    "UserHistory",
]

#: The states of a decision whose reward window has closed for good, or that was never
#: activated: retention may move it to the archive (see `EventStore.retirable_decisions`).
RETIRABLE_STATES = ("rewarded", "defaulted", "inactive")


class StoreError(RuntimeError):
    """The event log cannot be opened or used."""


class StoreUnavailableError(StoreError):
    """The event log's server cannot be reached now; the call may succeed later (HTTP 503)."""


class RewardOutcome(StrEnum):
    """What happened to a posted reward."""

    learned = "learned"  # first reward of a decision in its window: learned at once
    duplicate = "duplicate"  # another reward under aggregation "earliest": recorded only
    summed = "summed"  # another reward under aggregation "sum": the total was corrected
    late = "late"  # the reward window had closed: recorded, not learned
    unknown = "unknown"  # no such decision: recorded, not learned
    not_activated = "not_activated"  # a deferred decision that was never activated


@dataclass(frozen=True)
class RewardRules:
    """How rewards are joined and learned (from settings)."""

    window_seconds: float = 3600.0
    default_reward: float = 0.0
    aggregation: Literal["earliest", "sum"] = "earliest"
    min_reward: float = 0.0
    max_reward: float = 1.0

    def clip(self, value: float) -> float:
        return min(max(value, self.min_reward), self.max_reward)


@dataclass(frozen=True)
class DecisionRecord:
    """One served decision as logged.

    ``probabilities`` and ``scores`` are aligned with ``actions`` (the schema's actions at the
    time of the decision), so a decision stays evaluable after actions change.
    """

    event_id: str
    created_at: float
    model_version: str
    context: dict[str, Any]
    x: NDArray[np.float64]
    actions: tuple[str, ...]
    eligible: tuple[str, ...]
    action_index: int
    probability: float
    probabilities: NDArray[np.float64]
    scores: NDArray[np.float64]
    deferred: bool = False
    user_id: str | None = None  # whose decision (privacy requests delete by it); optional
    #: The width α the policy decided with (policies that have one; auto's changes with the
    #: learn stream): what ``/recommend_action`` reports. Not logged.
    alpha: float | None = None

    @property
    def action(self) -> str:
        return self.actions[self.action_index]


class LearnKind(StrEnum):
    """The kinds of entries in the learn stream."""

    reward = "reward"  # a reward joined to its decision: A += w·x xᵀ, b += w·r·x
    default = "default"  # the default reward of a decision whose window closed
    correction = "correction"  # a summed reward's change: b += δ·x only
    add_action = "add_action"  # a new action (event_id holds its name), from the prior
    disable_action = "disable_action"  # never served again until enabled (name in event_id)
    enable_action = "enable_action"
    # What is served changes (banditrec.lifecycle); event_id holds the target.
    serve_mode = "serve_mode"  # "own" or "apprentice"
    promote = "promote"  # serve a version (its id) from here on
    rollback = "rollback"  # serve an earlier version (its id) again


@dataclass(frozen=True)
class LearnEvent:
    """One entry of the learn stream, applied by every replica in ``seq`` order.

    For action changes, ``event_id`` holds the action's name and the vector is empty.
    """

    seq: int
    event_id: str
    action_index: int
    x: NDArray[np.float64]
    reward: float
    weight: float
    kind: LearnKind = LearnKind.reward
    #: The logged probability of the decision's action (None: a log written before it was
    #: kept, or an entry that is not a reward). Not part of the fingerprint.
    propensity: float | None = None

    @property
    def correction(self) -> bool:
        return self.kind is LearnKind.correction

    @property
    def fingerprint(self) -> str:
        """A digest of everything the event holds, its seq included.

        A snapshot records the fingerprint of the last event it applied: a log restored
        from an older copy, which then grew again, reuses the same seqs for other events,
        and only their content tells the two histories apart.
        """
        digest = hashlib.blake2b(digest_size=16)
        head = f"{int(self.seq)}|{self.event_id}|{self.kind.value}|{int(self.action_index)}|"
        digest.update(f"{head}{float(self.reward)!r}|{float(self.weight)!r}|".encode())
        digest.update(np.ascontiguousarray(self.x, dtype=np.float64).tobytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class RewardResult:
    """The outcome of posting a reward; `total` is the reward now learned for the event.

    `seq` is the learn event the reward appended, if it appended one and the backend says
    (Redis does, so that a replica whose follower is pushed the stream waits for that event
    instead of reading it again; SQLite leaves it None). It takes no part in comparisons.
    """

    event_id: str
    outcome: RewardOutcome
    value: float
    total: float | None = None
    action: str | None = None
    seq: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class UserHistory:
    """What was served to a user and which serves got a negative reward, since some time
    (`EventStore.user_history`), read at one `version` of the user's record: frequency caps
    and cooldowns (`banditrec.caps`) are decided from it, and `EventStore.claim_serve`
    records a serve only if the version has not moved since."""

    version: int
    serves: tuple[tuple[str, float], ...] = ()  # (action, time), oldest first
    negatives: tuple[tuple[str, float], ...] = ()


class RetirableDecision(NamedTuple):
    """A decision retention may archive and remove: its record, reward total and state."""

    record: DecisionRecord
    reward_total: float | None
    state: str


class StoredReward(NamedTuple):
    """A received reward as the live log holds it; `key` is its place in the backend's
    reward log (SQLite: a row number; Redis: a stream entry id), for `delete_rewards`."""

    key: Any
    event_id: str
    received_at: float
    value: float
    outcome: str


class EventStore(Protocol):
    """What the engine needs from a log backend; every backend passes the same contract."""

    def log_decisions(
        self, records: Sequence[DecisionRecord], rules: RewardRules
    ) -> list[DecisionRecord]:
        """Durably log decisions; for an event id already logged, return the logged one."""
        ...

    def log_decision_batch(self, batch: DecisionBatch, rules: RewardRules) -> None:
        """Durably log the decisions of one batch in one transaction; their event ids are
        new (a repeated one fails the whole batch: nothing of it is logged)."""
        ...

    def record_reward(
        self, event_id: str, value: float, now: float, rules: RewardRules
    ) -> RewardResult:
        """Join a reward to its decision, and append a learn event when it is learned."""
        ...

    def record_rewards(
        self, rewards: Sequence[tuple[str, float, float]], rules: RewardRules
    ) -> list[RewardResult]:
        """`record_reward` for each (event id, value, time), in order, committed together."""
        ...

    def activate(self, event_id: str, now: float, rules: RewardRules) -> bool | None:
        """Activate a deferred decision: True if activated now, False if already, None if
        unknown."""
        ...

    def apply_default_rewards(
        self, now: float, rules: RewardRules, limit: int = 1000
    ) -> dict[str, int]:
        """Learn the default reward for at most `limit` pending decisions whose window closed
        (those that closed first).

        Returns the number of decisions defaulted, by action.
        """
        ...

    def pending_backlog(self, now: float) -> int:
        """How many decisions' windows closed before `now` unrewarded and still wait for
        their default reward."""
        ...

    def iter_decisions(self, batch_size: int = 10_000) -> Iterator[tuple[DecisionRecord, Any]]:
        """Every decision in log order with its learned reward total (None if none yet)."""
        ...

    def epoch_offset(self, base_version: str) -> int:
        """The log offset a base model starts from, registered on first sight."""
        ...

    def acquire_lease(self, name: str, owner: str, now: float, ttl_seconds: float) -> bool:
        """Hold the lease `name` for `ttl_seconds` if it is free, expired or already ours."""
        ...

    def release_lease(self, name: str, owner: str) -> None:
        """Give up the lease `name` if `owner` holds it (otherwise do nothing)."""
        ...

    def log_id(self) -> str:
        """The log's identity: a random id made when the log was created, never changed.

        Snapshots record it, so a snapshot of another log (a log reset or replaced) is
        recognised at start-up instead of silently skipping the new log's events.
        """
        ...

    def append_action_change(self, kind: LearnKind, action: str, now: float) -> int:
        """Append an action change to the learn stream; return its seq."""
        ...

    def learn_events_after(self, offset: int, limit: int = 10_000) -> list[LearnEvent]:
        """Learn events with ``seq > offset``, in order."""
        ...

    def last_offset(self) -> int:
        """The highest learn event seq (0 for an empty stream)."""
        ...

    def get_decision(self, event_id: str) -> DecisionRecord | None: ...

    def count(self, table: Literal["decisions", "rewards", "learn_events"]) -> int:
        """How many decisions, rewards received, or learn events the live log holds."""
        ...

    # -- retention and privacy (banditrec.retention) -----------------------------------

    def retirable_decisions(
        self, before: float, now: float, limit: int = 1000
    ) -> list[RetirableDecision]:
        """At most `limit` decisions made before `before` that retention may remove, oldest
        first: rewarded ones whose window closed before `now`, defaulted ones, and deferred
        ones never activated. Never a pending decision (its default reward is still due).
        """
        ...

    def delete_decisions(self, decisions: Sequence[tuple[str, str]]) -> int:
        """Remove each (event id, state) decision if it is still in that state; return how
        many were removed. A decision that changed since it was read (a deferred one
        activated meanwhile) stays."""
        ...

    def retirable_rewards(self, before: float, limit: int = 1000) -> list[StoredReward]:
        """At most `limit` of the oldest rewards received, those received before `before`."""
        ...

    def delete_rewards(self, keys: Sequence[Any]) -> int:
        """Remove the rewards of these `StoredReward.key`s; return how many were removed."""
        ...

    def trim_learn_events(self, up_to_offset: int, before: float, limit: int = 10_000) -> int:
        """Remove at most `limit` of the oldest learn events with ``seq <= up_to_offset``
        appended before `before`; return how many. Offsets are never reused, and
        `last_offset` stays what it was."""
        ...

    def forget_user(self, user_id: str) -> list[str]:
        """Remove every decision of `user_id` (any state) and the rewards received for them;
        return the event ids of the decisions removed."""
        ...

    def user_history(self, user_id: str, since: float) -> UserHistory:
        """The serves and negative rewards of `user_id` at or after `since`, read together
        with the version of the user's record (0 for a user never served)."""
        ...

    def claim_serve(
        self, user_id: str, action: str, at: float, version: int, keep_after: float
    ) -> bool:
        """Record that `action` was served to `user_id` at `at`, atomically, and only if the
        user's record is still at `version` (nothing was recorded for the user since it was
        read, in any process or replica); the version then moves on. Entries older than
        `keep_after` are dropped on the way. Returns whether it was recorded."""
        ...

    def record_negative(self, user_id: str, action: str, at: float, keep_after: float) -> None:
        """Record a negative reward of `action` for `user_id` at `at` (the version moves on)."""
        ...

    def start(self) -> None:
        """Start the backend's background upkeep, if it has any (SQLite: WAL checkpoints
        off the commit path); the server calls it once it is up. `close` stops it."""
        ...

    def close(self) -> None: ...
