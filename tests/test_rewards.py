"""The reward rules as properties: windows, aggregation, clipping and default rewards."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from banditrec.rewards import (
    DecisionState,
    LearnStep,
    activate,
    default_reward,
    initial_state,
    join_reward,
)
from banditrec.store import LearnKind, RewardOutcome, RewardRules

WINDOW = 100.0

values = st.floats(-3.0, 3.0, allow_nan=False)
times = st.floats(0.0, 2 * WINDOW, allow_nan=False)
# A decision's life: rewards and default sweeps at increasing times after it was served.
events = st.lists(
    st.tuples(st.sampled_from(["reward", "sweep"]), times, values), min_size=1, max_size=12
)


@st.composite
def reward_rules(draw: st.DrawFn, aggregation: str | None = None) -> RewardRules:
    low = draw(st.floats(-1.0, 0.5, allow_nan=False))
    high = draw(st.floats(low, 2.0, allow_nan=False))
    return RewardRules(
        window_seconds=WINDOW,
        default_reward=draw(st.sampled_from([0.0, -0.5, 0.25])),
        aggregation=aggregation or draw(st.sampled_from(["earliest", "sum"])),  # type: ignore[arg-type]
        min_reward=low,
        max_reward=high,
    )


@dataclass
class Decision:
    """One decision driven through the rules, as a backend would store it."""

    state: DecisionState | None
    deadline: float | None
    total: float | None = None
    learned: list[LearnStep] = field(default_factory=list)
    outcomes: list[RewardOutcome] = field(default_factory=list)

    def post(self, value: float, now: float, rules: RewardRules) -> None:
        join = join_reward(self.state, self.deadline, self.total, value, now, rules)
        self.outcomes.append(join.outcome)
        if join.changed:
            assert join.learn is not None
            self.state, self.total = join.state, join.total
            self.learned.append(join.learn)
        else:  # nothing learned: nothing about the decision changes
            assert (join.state, join.total) == (self.state, self.total)

    def sweep(self, now: float, rules: RewardRules) -> None:
        join = default_reward(self.state, self.deadline, now, rules)
        if join is not None:
            assert join.learn is not None
            self.state, self.total = join.state, join.total
            self.learned.append(join.learn)

    def run(self, life: list[tuple[str, float, float]], rules: RewardRules) -> list[float]:
        """Apply `life` in time order; return the values posted within the window."""
        in_window = []
        for kind, now, value in sorted(life, key=lambda e: e[1]):
            if kind == "sweep":
                self.sweep(now, rules)
                continue
            before = self.state
            self.post(value, now, rules)
            if before in ("pending", "rewarded") and self.outcomes[-1] is not RewardOutcome.late:
                in_window.append(value)
        return in_window


def served(rules: RewardRules, created_at: float = 0.0) -> Decision:
    return Decision(*initial_state(False, created_at, rules))


@given(reward_rules("earliest"), events)
def test_earliest_learns_at_most_once_and_keeps_the_first_reward(
    rules: RewardRules, life: list[tuple[str, float, float]]
) -> None:
    d = served(rules)
    in_window = d.run(life, rules)
    assert len(d.learned) <= 1
    if in_window:
        assert d.learned == [LearnStep(LearnKind.reward, rules.clip(in_window[0]))]
        assert d.total == rules.clip(in_window[0])
        assert d.outcomes.count(RewardOutcome.learned) == 1
    elif d.learned:
        assert d.learned == [LearnStep(LearnKind.default, rules.default_reward)]
        assert d.state == "defaulted"


@given(reward_rules("sum"), events)
def test_sum_learns_the_clipped_running_total(
    rules: RewardRules, life: list[tuple[str, float, float]]
) -> None:
    d = served(rules)
    in_window = d.run(life, rules)
    if not in_window:
        assert d.total in (None, rules.default_reward)
        return
    expected = rules.clip(in_window[0])
    for value in in_window[1:]:
        expected = rules.clip(expected + value)
    assert d.total == expected  # bitwise: the same sums in the same order
    assert d.learned[0].kind is LearnKind.reward
    assert all(step.kind is LearnKind.correction for step in d.learned[1:])
    # What the model learned adds up to the total (up to rounding of the differences).
    assert math.isclose(sum(s.reward for s in d.learned), expected, abs_tol=1e-9)
    assert rules.min_reward <= d.total <= rules.max_reward


@given(reward_rules("sum"), st.lists(st.floats(0.0, 3.0), min_size=1, max_size=10))
def test_sum_of_nonnegative_rewards_equals_the_clipped_sum(
    rules: RewardRules, posted: list[float]
) -> None:
    rules = RewardRules(WINDOW, aggregation="sum", min_reward=min(rules.min_reward, 0.0),
                        max_reward=rules.max_reward)  # fmt: skip
    d = served(rules)
    d.run([("reward", 1.0 + i, v) for i, v in enumerate(posted)], rules)
    assert d.total == rules.clip(sum(posted))


@given(reward_rules(), events)
def test_a_decision_learns_either_rewards_or_the_default_never_both(
    rules: RewardRules, life: list[tuple[str, float, float]]
) -> None:
    d = served(rules)
    d.run(life, rules)
    kinds = [step.kind for step in d.learned]
    if LearnKind.default in kinds:
        assert kinds == [LearnKind.default] and d.total == rules.default_reward
    assert kinds.count(LearnKind.reward) <= 1


@given(reward_rules(), values, times)
def test_rewards_after_the_window_are_late_and_never_learned(
    rules: RewardRules, value: float, delay: float
) -> None:
    d = served(rules, created_at=10.0)
    assert d.deadline == 10.0 + WINDOW
    join = join_reward(d.state, d.deadline, None, value, 10.0 + WINDOW + 1.0 + delay, rules)
    assert (join.outcome, join.learn, join.total) == (RewardOutcome.late, None, None)
    # A reward exactly at the deadline is still in the window; the default waits past it.
    assert join_reward("pending", 5.0, None, value, 5.0, rules).outcome is RewardOutcome.learned
    assert default_reward("pending", 5.0, 5.0, rules) is None
    late = join_reward("defaulted", 5.0, rules.default_reward, value, 1.0, rules)
    assert (late.outcome, late.total, late.learn) == (
        RewardOutcome.late,
        rules.default_reward,
        None,
    )


@given(reward_rules(), events, times)
def test_deferred_decisions_learn_only_after_activation(
    rules: RewardRules, life: list[tuple[str, float, float]], start: float
) -> None:
    d = Decision(*initial_state(True, 0.0, rules))
    assert (d.state, d.deadline) == ("inactive", None)
    d.run(life, rules)
    assert d.learned == [] and d.state == "inactive"
    assert set(d.outcomes) <= {RewardOutcome.not_activated}
    first = activate(d.state, start, rules)
    assert (first.activated, first.state, first.deadline) == (True, "pending", start + WINDOW)
    assert activate(first.state, start + 1.0, rules).activated is False
    assert activate(None, start, rules).activated is None


@given(reward_rules(), values, times)
def test_unknown_decisions_learn_nothing(rules: RewardRules, value: float, now: float) -> None:
    join = join_reward(None, None, None, value, now, rules)
    assert (join.outcome, join.state, join.total, join.learn) == (
        RewardOutcome.unknown,
        None,
        None,
        None,
    )
    assert default_reward(None, None, now, rules) is None
