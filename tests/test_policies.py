"""LinUCB: the incremental algebra against numpy, the contract, and learning on the simulator."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from banditrec.exploration import EpsilonGreedy, sample_action
from banditrec.features import load_default_schema
from banditrec.policies import POLICIES, LinUCB, Policy
from banditrec.sim import AppSimulator

finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)


@st.composite
def update_sequences(draw: st.DrawFn) -> tuple[int, int, list[tuple[np.ndarray, int, float]]]:
    n_actions = draw(st.integers(1, 4))
    n_features = draw(st.integers(1, 6))
    n_updates = draw(st.integers(0, 40))
    steps = [
        (
            draw(arrays(np.float64, n_features, elements=finite)),
            draw(st.integers(0, n_actions - 1)),
            draw(finite),
        )
        for _ in range(n_updates)
    ]
    return n_actions, n_features, steps


@settings(max_examples=200, deadline=None)
@given(
    update_sequences(),
    st.floats(0.1, 10),
    st.sampled_from([1.0, 0.9]),
    st.sampled_from([1, 7, 1000]),
)
def test_sherman_morrison_matches_numpy_inverse(
    case: tuple[int, int, list[tuple[np.ndarray, int, float]]],
    ridge: float,
    gamma: float,
    refresh_every: int,
) -> None:
    n_actions, n_features, steps = case
    policy = LinUCB(ridge=ridge, gamma=gamma, refresh_every=refresh_every)
    policy.reset(n_actions, n_features)
    A = np.stack([ridge * np.eye(n_features)] * n_actions)
    b = np.zeros((n_actions, n_features))
    for x, action, reward in steps:
        A[action] = gamma * A[action] + np.outer(x, x)
        b[action] = gamma * b[action] + reward * x
        policy.update(x, action, reward)
    for a in range(n_actions):
        expected_inv = np.linalg.inv(A[a])
        scale = max(1.0, np.abs(expected_inv).max())
        np.testing.assert_allclose(policy.A_[a], A[a], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(policy.A_inv_[a], expected_inv, rtol=0, atol=1e-7 * scale)
        np.testing.assert_allclose(
            policy.theta_[a], expected_inv @ b[a], rtol=0, atol=1e-6 * max(1.0, np.abs(b).max())
        )


@settings(max_examples=100, deadline=None)
@given(update_sequences(), st.floats(0, 5))
def test_scores_match_the_formula(
    case: tuple[int, int, list[tuple[np.ndarray, int, float]]], alpha: float
) -> None:
    n_actions, n_features, steps = case
    policy = LinUCB(alpha=alpha).reset(n_actions, n_features)
    for x, action, reward in steps:
        policy.update(x, action, reward)
    x = np.linspace(-1, 1, n_features)
    s = policy.score(x)
    for a in range(n_actions):
        A_inv = np.linalg.inv(policy.A_[a])
        mean = A_inv @ policy.b_[a] @ x
        width = alpha * np.sqrt(x @ A_inv @ x)
        assert s.mean[a] == pytest.approx(mean, abs=1e-6)
        assert s.width[a] == pytest.approx(width, abs=1e-6)
        assert s.score[a] == pytest.approx(mean + width, abs=1e-6)


def test_batch_update_equals_online_updates() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 5))
    actions = rng.integers(0, 3, size=500)
    rewards = rng.random(500)
    online = LinUCB().reset(3, 5)
    for i in range(500):
        online.update(X[i], int(actions[i]), float(rewards[i]))
    batch = LinUCB().reset(3, 5)
    batch.update_batch(X, actions, rewards)
    for name in ("A_", "b_", "A_inv_", "theta_"):
        np.testing.assert_allclose(getattr(batch, name), getattr(online, name), atol=1e-9)
    np.testing.assert_array_equal(batch.n_updates_, np.bincount(actions, minlength=3))


def test_updates_commute_so_replicas_agree() -> None:
    # DESIGN principle 3: the same learn events in any order give the same model.
    rng = np.random.default_rng(4)
    events = [
        (rng.normal(size=4), int(rng.integers(0, 2)), float(rng.random())) for _ in range(300)
    ]
    first, second = LinUCB().reset(2, 4), LinUCB().reset(2, 4)
    for x, a, r in events:
        first.update(x, a, r)
    for i in rng.permutation(len(events)):
        x, a, r = events[i]
        second.update(x, a, r)
    first.refresh()
    second.refresh()
    for name in ("A_", "b_", "theta_"):
        np.testing.assert_allclose(getattr(first, name), getattr(second, name), rtol=1e-12)


@pytest.mark.parametrize("policy_cls", list(POLICIES.values()))
class TestPolicyContract:
    """Checks every registered policy must pass."""

    def make(self, policy_cls: type[Policy]) -> Policy:
        return policy_cls().reset(n_actions=3, n_features=4)

    def test_bad_updates_are_rejected_and_learn_nothing(self, policy_cls: type[Policy]) -> None:
        policy = self.make(policy_cls)
        before = policy.get_state()
        x = np.ones(4)
        bad_calls = [
            (np.array([1.0, np.nan, 0.0, 0.0]), 0, 1.0),
            (np.array([1.0, np.inf, 0.0, 0.0]), 0, 1.0),
            (x, 0, float("nan")),
            (x, 0, float("inf")),
            (x, 3, 1.0),
            (x, -1, 1.0),
            (np.ones(5), 0, 1.0),
        ]
        for bad_x, action, reward in bad_calls:
            with pytest.raises(ValueError, match=r"x|action|reward"):
                policy.update(bad_x, action, reward)
        with pytest.raises(ValueError, match="NaN"):
            policy.update_batch(np.array([[1.0, 2.0, np.nan, 0.0]]), np.array([0]), np.ones(1))
        after = policy.get_state()
        for name, value in before.items():
            np.testing.assert_array_equal(after[name], value, err_msg=name)

    def test_probabilities_are_a_distribution_over_eligible_actions(
        self, policy_cls: type[Policy]
    ) -> None:
        policy = self.make(policy_cls)
        rng = np.random.default_rng(0)
        for _ in range(50):
            policy.update(rng.normal(size=4), int(rng.integers(0, 3)), float(rng.random()))
        eligible = np.array([True, False, True])
        _, p = policy.distribution(rng.normal(size=4), eligible)
        assert p.sum() == pytest.approx(1.0)
        assert p[1] == 0.0 and (p[eligible] > 0).all()

    def test_inputs_are_not_mutated(self, policy_cls: type[Policy]) -> None:
        policy = self.make(policy_cls)
        X = np.arange(12, dtype=float).reshape(3, 4) / 10
        actions, rewards = np.array([0, 1, 2]), np.array([1.0, 0.0, 0.5])
        copies = (X.copy(), actions.copy(), rewards.copy())
        policy.update_batch(X, actions, rewards)
        policy.update(X[0], 0, 1.0)
        policy.score(X[1])
        for original, copy in zip((X, actions, rewards), copies, strict=True):
            np.testing.assert_array_equal(original, copy)

    def test_state_round_trip_gives_identical_scores(self, policy_cls: type[Policy]) -> None:
        policy = self.make(policy_cls)
        rng = np.random.default_rng(1)
        policy.update_batch(rng.normal(size=(40, 4)), rng.integers(0, 3, 40), rng.random(40))
        clone = policy_cls(**policy.get_params()).set_state(policy.get_state())
        x = rng.normal(size=4)
        np.testing.assert_array_equal(clone.score(x).score, policy.score(x).score)

    def test_seeded_decisions_are_reproducible(self, policy_cls: type[Policy]) -> None:
        def run(seed: int) -> list[int]:
            policy, rng = self.make(policy_cls), np.random.default_rng(seed)
            chosen = []
            for _ in range(200):
                x = rng.normal(size=4)
                _, p = policy.distribution(x, np.ones(3, dtype=bool))
                a = sample_action(p, rng)
                policy.update(x, a, float(x[a % 4] > 0))
                chosen.append(a)
            return chosen

        assert run(7) == run(7)
        assert run(7) != run(8)


def test_invalid_parameters_are_rejected() -> None:
    for kwargs, field in [
        ({"alpha": -1}, "alpha"),
        ({"ridge": 0}, "ridge"),
        ({"gamma": 0}, "gamma"),
        ({"gamma": 1.5}, "gamma"),
        ({"refresh_every": 0}, "refresh_every"),
    ]:
        with pytest.raises(ValueError, match=field):
            LinUCB(**kwargs)  # type: ignore[arg-type]


def test_linucb_learns_the_simulated_app() -> None:
    """20,000 online rounds: the last 5,000 earn ≥ 90% of the oracle, far above uniform.

    Fixed seed; measured 0.97 of the oracle (uniform random earns 0.60), so the margins are
    wide: this cannot flake.
    """
    schema, sim = load_default_schema(), AppSimulator()
    rng = np.random.default_rng(2026)
    n = 20_000
    contexts = sim.sample_contexts(n, rng)
    mu = sim.expected_rewards(contexts)
    X = schema.vectorize_many(contexts)
    policy = LinUCB(alpha=1.0, exploration=EpsilonGreedy(0.05)).reset(4, schema.n_features)
    eligible = np.ones(4, dtype=bool)
    earned = np.empty(n)
    for i in range(n):
        _, p = policy.distribution(X[i], eligible)
        a = sample_action(p, rng)
        policy.update(X[i], a, float(rng.random() < mu[i, a]))
        earned[i] = mu[i, a]
    last = slice(n - 5_000, n)
    oracle, uniform = mu[last].max(axis=1).mean(), mu[last].mean()
    assert earned[last].mean() >= 0.90 * oracle
    assert earned[last].mean() >= uniform + 0.5 * (oracle - uniform)


def test_corrections_move_b_only_and_batch_agrees() -> None:
    """A summed reward: learning (x, 0.2) then correcting by +0.5 equals learning (x, 0.7)."""
    rng = np.random.default_rng(9)
    X = rng.normal(size=(60, 4))
    actions = rng.integers(0, 2, size=60)
    summed, direct = LinUCB().reset(2, 4), LinUCB().reset(2, 4)
    for i in range(60):
        summed.update(X[i], int(actions[i]), 0.2)
        summed.correct(X[i], int(actions[i]), 0.5)
        direct.update(X[i], int(actions[i]), 0.7)
    for name in ("A_", "b_", "A_inv_", "theta_"):
        np.testing.assert_allclose(getattr(summed, name), getattr(direct, name), atol=1e-10)
    np.testing.assert_array_equal(summed.n_updates_, direct.n_updates_)

    batch = LinUCB().reset(2, 4)
    batch.update_batch(
        np.repeat(X, 2, axis=0),
        np.repeat(actions, 2),
        np.tile([0.2, 0.5], 60),
        corrections=np.tile([False, True], 60),
    )
    for name in ("A_", "b_", "theta_"):
        np.testing.assert_allclose(getattr(batch, name), getattr(direct, name), atol=1e-10)
    np.testing.assert_array_equal(batch.n_updates_, direct.n_updates_)


@pytest.mark.parametrize("policy_cls", list(POLICIES.values()))
def test_an_added_action_starts_from_the_prior_and_the_others_keep_their_state(
    policy_cls: type[Policy],
) -> None:
    rng = np.random.default_rng(12)
    policy = policy_cls().reset(3, 4)
    policy.update_batch(rng.normal(size=(50, 4)), rng.integers(0, 3, 50), rng.random(50))
    before = policy.get_state()
    x = rng.normal(size=4)
    scores_before = policy.score(x)
    policy.add_action()
    assert policy.n_actions_ == 4
    scores_after = policy.score(x)
    np.testing.assert_allclose(scores_after.score[:3], scores_before.score, rtol=1e-12)
    fresh = policy_cls().reset(4, 4)
    if not policy.shared_arrays:
        assert scores_after.score[3] == pytest.approx(fresh.score(x).score[3])
    for name, value in before.items():
        if name not in policy.shared_arrays:
            np.testing.assert_array_equal(policy.get_state()[name][:3], value)
    _, p = policy.distribution(x, np.ones(4, dtype=bool), rng)
    assert p.shape == (4,) and p.sum() == pytest.approx(1.0)
