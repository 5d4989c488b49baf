"""Per-user frequency caps and cooldowns: what a user was served lately masks what comes next.

Configured with the eligibility rules (`banditrec.constraints`), under the same
``constraints`` setting::

    {"caps": [{"action": "show_bonus_offer", "max": 2, "window_seconds": 86400},
              {"max": 5, "window_seconds": 3600}],
     "cooldowns": [{"action": "invite_friend", "after_serve_seconds": 600,
                    "after_negative_seconds": 86400}],
     "negative_at_most": 0.0}

- a cap allows at most ``max`` serves of an action to one user within the last
  ``window_seconds``; without ``action`` it holds for every action, each counted on its own;
- a cooldown keeps an action from a user for ``after_serve_seconds`` after it was served to
  them, and for ``after_negative_seconds`` after a reward of at most ``negative_at_most``
  (default 0) for it; without ``action`` it holds for every action.

They apply to decisions that name their ``user_id``. The history they read lives in the
event store (`EventStore.user_history`), so they hold across worker processes, replicas and
restarts; a serve is recorded only if the user's record did not change since it was read
(`EventStore.claim_serve`), else the decision is made again from the new history, so
concurrent requests for one user cannot exceed a cap. Capped actions are masked before the
probabilities are computed, like the eligibility rules: the logged probability is the one
the action was served with. This module is pure: the engine does the reading and claiming.

Batches (``POST /v1/rank/batch`` with ``user_ids``) apply them per decision, exactly so: a
user who appears twice in one batch is decided in two rounds (`occurrence_rounds`), the
second masked by what the first served (`with_serves`), and each serve is claimed at the
version it was decided from, so a batch and the requests running beside it, in any worker or
replica, cannot exceed a cap together either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from banditrec.store import UserHistory

__all__ = [
    "Cap",
    "Cooldown",
    "FrequencyRules",
    "Held",
    "frequency_rules_from_config",
    "occurrence_rounds",
    "with_serves",
]


@dataclass(frozen=True)
class Cap:
    """At most `max_serves` serves of `action` (None: of each action) in `window_seconds`."""

    action: str | None
    max_serves: int
    window_seconds: float


@dataclass(frozen=True)
class Cooldown:
    """`action` (None: every action) rests after a serve, and after a negative reward."""

    action: str | None
    after_serve_seconds: float = 0.0
    after_negative_seconds: float = 0.0


@dataclass(frozen=True)
class FrequencyRules:
    """The caps and cooldowns, and what counts as a negative reward."""

    caps: tuple[Cap, ...] = ()
    cooldowns: tuple[Cooldown, ...] = ()
    negative_at_most: float = 0.0

    @property
    def horizon(self) -> float:
        """How far back any rule looks: older history can be forgotten."""
        spans = [c.window_seconds for c in self.caps]
        spans += [max(c.after_serve_seconds, c.after_negative_seconds) for c in self.cooldowns]
        return max(spans, default=0.0)

    @property
    def watches_negatives(self) -> bool:
        return any(c.after_negative_seconds > 0 for c in self.cooldowns)

    def mask(self, history: UserHistory, now: float, actions: Sequence[str]) -> NDArray[np.bool_]:
        """Which `actions` the caps and cooldowns allow for a user with `history` at `now`."""
        allowed = np.ones(len(actions), dtype=bool)
        for k, name in enumerate(actions):
            for cap in self.caps:
                if cap.action in (None, name):
                    recent = sum(
                        1 for a, t in history.serves if a == name and t > now - cap.window_seconds
                    )
                    if recent >= cap.max_serves:
                        allowed[k] = False
            for cooldown in self.cooldowns:
                if cooldown.action in (None, name) and (
                    _within(history.serves, name, now, cooldown.after_serve_seconds)
                    or _within(history.negatives, name, now, cooldown.after_negative_seconds)
                ):
                    allowed[k] = False
        return allowed

    def held(
        self, history: UserHistory, now: float, actions: Sequence[str]
    ) -> dict[int, list[Held]]:
        """Why each action `mask` masks is held back: every cap and cooldown that holds it
        (by index into `actions`; actions that are free are left out). For explanations:
        `mask` is the one on the decision path."""
        out: dict[int, list[Held]] = {}
        for k, name in enumerate(actions):
            found: list[Held] = []
            for i, cap in enumerate(self.caps):
                if cap.action in (None, name):
                    times = sorted(t for a, t in history.serves if a == name)
                    recent = [t for t in times if t > now - cap.window_seconds]
                    if len(recent) >= cap.max_serves:
                        # Free again once all but max - 1 of them have left the window.
                        until = (
                            recent[len(recent) - cap.max_serves] + cap.window_seconds
                            if cap.max_serves > 0
                            else None
                        )
                        found.append(Held(f"constraints.caps[{i}]", "cap", until, len(recent), cap))
            for i, cooldown in enumerate(self.cooldowns):
                if cooldown.action not in (None, name):
                    continue
                for after, events, span in (
                    ("serve", history.serves, cooldown.after_serve_seconds),
                    ("negative", history.negatives, cooldown.after_negative_seconds),
                ):
                    if _within(events, name, now, span):
                        last = max(t for a, t in events if a == name)
                        where = f"constraints.cooldowns[{i}]"
                        found.append(Held(where, "cooldown", last + span, after=after))
            if found:
                out[k] = found
        return out


@dataclass(frozen=True)
class Held:
    """One cap or cooldown holding an action back from a user (`FrequencyRules.held`).

    `rule` names it in the configuration (``constraints.caps[0]``); `until` is when it lets
    the action go again, if nothing else is served (None: never, a cap of 0 serves). A cap
    also says how many `serves` it counted, and its `cap`; a cooldown what it follows
    (`after`: ``serve`` or ``negative``).
    """

    rule: str
    kind: str  # "cap" or "cooldown"
    until: float | None
    serves: int | None = None
    cap: Cap | None = None
    after: str | None = None


def with_serves(history: UserHistory, serves: Sequence[tuple[str, float]]) -> UserHistory:
    """`history` and the `serves` (action, time) made since it was read, not yet claimed:
    what a user's next decision of the same batch is masked by."""
    if not serves:
        return history
    return UserHistory(history.version, (*history.serves, *serves), history.negatives)


def occurrence_rounds(user_ids: Sequence[str | None], rows: Sequence[int]) -> list[list[int]]:
    """`rows` (indexes into `user_ids`) in rounds: round ``r`` holds each user's ``r``-th row,
    in order; rows without a user go in the first round.

    A batch decides one round at a time, so that a user's second decision is masked by
    what the first one served, as two requests one after the other would be.

    >>> occurrence_rounds(["a", None, "a", "b", "a"], [0, 1, 2, 3, 4])
    [[0, 1, 3], [2], [4]]
    """
    seen: dict[str, int] = {}
    rounds: list[list[int]] = []
    for i in rows:
        user = user_ids[i]
        r = 0 if user is None else seen.get(user, 0)
        if user is not None:
            seen[user] = r + 1
        if r == len(rounds):
            rounds.append([])
        rounds[r].append(i)
    return rounds


def _within(events: Sequence[tuple[str, float]], name: str, now: float, span: float) -> bool:
    return span > 0 and any(a == name and t > now - span for a, t in events)


def _number(where: str, value: Any, *, integer: bool = False) -> float:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite {'integer' if integer else 'number'}.")
    if value < 0:
        raise ValueError(f"{where} must be ≥ 0, got {value}.")
    return float(value)


def frequency_rules_from_config(
    config: Mapping[str, Any], actions: Sequence[str]
) -> FrequencyRules | None:
    """The ``caps``, ``cooldowns`` and ``negative_at_most`` keys of a constraints
    configuration; None if there are no caps nor cooldowns.

    Raises
    ------
    ValueError
        For an unknown action or key, or a value out of range, naming where it is.
    """

    def action_of(where: str, entry: Mapping[str, Any]) -> str | None:
        action = entry.get("action")
        if action is not None and action not in actions:
            raise ValueError(f"{where}.action {action!r} is unknown; known: {list(actions)}.")
        return None if action is None else str(action)

    def entries(key: str, allowed: set[str]) -> list[tuple[str, Mapping[str, Any]]]:
        value = config.get(key) or []
        if not isinstance(value, list):
            raise ValueError(f"constraints.{key} must be a list of objects.")
        out = []
        for i, entry in enumerate(value):
            where = f"constraints.{key}[{i}]"
            if not isinstance(entry, Mapping) or set(entry) - allowed:
                raise ValueError(f"{where} must be an object with keys among {sorted(allowed)}.")
            out.append((where, entry))
        return out

    caps = []
    for where, entry in entries("caps", {"action", "max", "window_seconds"}):
        if "max" not in entry or "window_seconds" not in entry:
            raise ValueError(f"{where} needs max and window_seconds.")
        caps.append(
            Cap(
                action_of(where, entry),
                int(_number(f"{where}.max", entry["max"], integer=True)),
                _number(f"{where}.window_seconds", entry["window_seconds"]),
            )
        )
    cooldowns = []
    keys = {"action", "after_serve_seconds", "after_negative_seconds"}
    for where, entry in entries("cooldowns", keys):
        cooldowns.append(
            Cooldown(
                action_of(where, entry),
                _number(f"{where}.after_serve_seconds", entry.get("after_serve_seconds", 0)),
                _number(f"{where}.after_negative_seconds", entry.get("after_negative_seconds", 0)),
            )
        )
    negative = config.get("negative_at_most", 0.0)
    if isinstance(negative, bool) or not isinstance(negative, int | float):
        raise ValueError("constraints.negative_at_most must be a number.")
    if not caps and not cooldowns:
        return None
    return FrequencyRules(tuple(caps), tuple(cooldowns), float(negative))
