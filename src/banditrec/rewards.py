"""The reward rules, pure: what a posted reward, an activation or a closed window does.

Every backend keeps, per decision, a state (``inactive``, ``pending``, ``rewarded`` or
``defaulted``), the end of its reward window (``deadline``, None while inactive) and the
reward learned so far (``total``, None until something is learned). These functions say what
an event does to that triple and which learn event (if any) it appends; a backend only reads
the triple, calls one of them and writes the result back in one atomic step. Nothing here
does I/O or reads a clock: the caller passes ``now``.

The rules (DESIGN "Rewards"):

- a decision is ``pending`` from the moment it is served, or ``inactive`` if it was deferred
  until `activate` starts its window;
- the first reward within the window is learned, clipped to the reward range;
- under aggregation ``earliest`` later rewards are recorded only (``duplicate``); under
  ``sum`` the clipped total is corrected and the change is learned as a ``correction``;
- a reward after the window (``now > deadline``) or after the default reward is ``late``;
- a pending decision whose window closed (``deadline < now``) learns the default reward.

Examples
--------
>>> from banditrec.store import RewardRules
>>> rules = RewardRules(window_seconds=60.0, aggregation="sum")
>>> state, deadline = initial_state(deferred=False, created_at=100.0, rules=rules)
>>> first = join_reward(state, deadline, None, 0.75, now=110.0, rules=rules)
>>> first.outcome.value, first.state, first.total, first.learn
('learned', 'rewarded', 0.75, LearnStep(kind=<LearnKind.reward: 'reward'>, reward=0.75))
>>> second = join_reward(first.state, deadline, first.total, 0.5, now=120.0, rules=rules)
>>> second.outcome.value, second.total, second.learn.reward
('summed', 1.0, 0.25)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from banditrec.store import LearnKind, RewardOutcome, RewardRules

__all__ = [
    "Activation",
    "DecisionState",
    "Join",
    "LearnStep",
    "activate",
    "default_reward",
    "initial_state",
    "join_reward",
]

DecisionState = Literal["inactive", "pending", "rewarded", "defaulted"]


@dataclass(frozen=True)
class LearnStep:
    """The learn event to append: its kind and reward (its vector is the decision's)."""

    kind: LearnKind
    reward: float


@dataclass(frozen=True)
class Join:
    """What a posted reward does to a decision.

    ``state`` and ``total`` are the decision's values afterwards (unchanged when nothing is
    learned); ``total`` is also the total reported to the client. ``state`` is None only for
    an unknown decision.
    """

    outcome: RewardOutcome
    state: DecisionState | None
    total: float | None
    learn: LearnStep | None = None

    @property
    def changed(self) -> bool:
        """Whether the decision's state or total must be written back."""
        return self.learn is not None


@dataclass(frozen=True)
class Activation:
    """What activating a deferred decision does.

    ``activated`` is True if the window starts now, False if the decision was active already
    and None if it is unknown; ``deadline`` is the new end of the window when activated.
    """

    activated: bool | None
    state: DecisionState | None
    deadline: float | None


def initial_state(
    deferred: bool, created_at: float, rules: RewardRules
) -> tuple[DecisionState, float | None]:
    """The state and deadline a decision is logged with."""
    if deferred:
        return "inactive", None
    return "pending", created_at + rules.window_seconds


def join_reward(
    state: DecisionState | None,
    deadline: float | None,
    total: float | None,
    value: float,
    now: float,
    rules: RewardRules,
) -> Join:
    """Join a reward of `value` posted at `now` to a decision (``state`` None: unknown).

    Examples
    --------
    >>> from banditrec.store import RewardRules
    >>> join_reward(None, None, None, 1.0, now=0.0, rules=RewardRules()).outcome.value
    'unknown'
    >>> join_reward("pending", 10.0, None, 1.0, now=11.0, rules=RewardRules()).outcome.value
    'late'
    """
    if state is None:
        return Join(RewardOutcome.unknown, None, None)
    if state == "inactive":
        return Join(RewardOutcome.not_activated, state, None)
    assert deadline is not None, "an active decision has a deadline"
    if state == "defaulted" or now > deadline:
        return Join(RewardOutcome.late, state, total)
    if state == "pending":
        learned = rules.clip(value)
        return Join(
            RewardOutcome.learned, "rewarded", learned, LearnStep(LearnKind.reward, learned)
        )
    assert total is not None, "a rewarded decision has a total"
    if rules.aggregation == "earliest":
        return Join(RewardOutcome.duplicate, state, total)
    new_total = rules.clip(total + value)
    if new_total == total:  # clipped away: nothing to learn
        return Join(RewardOutcome.summed, state, total)
    # The correction moves b only (see LinUCB.correct): learn the change of the total.
    return Join(
        RewardOutcome.summed,
        state,
        new_total,
        LearnStep(LearnKind.correction, new_total - total),
    )


def activate(state: DecisionState | None, now: float, rules: RewardRules) -> Activation:
    """Activate a deferred decision: its reward window starts at `now`."""
    if state is None:
        return Activation(None, None, None)
    if state != "inactive":
        return Activation(False, state, None)
    return Activation(True, "pending", now + rules.window_seconds)


def default_reward(
    state: DecisionState | None, deadline: float | None, now: float, rules: RewardRules
) -> Join | None:
    """The default reward of a decision whose window closed before `now`, else None.

    The outcome of the returned `Join` is ``learned`` (the default reward is learned); its
    state is ``defaulted`` and its total the default reward.
    """
    if state != "pending" or deadline is None or not deadline < now:
        return None
    value = rules.default_reward
    return Join(RewardOutcome.learned, "defaulted", value, LearnStep(LearnKind.default, value))
