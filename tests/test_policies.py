"""Policies: LinUCB's incremental algebra against numpy, the contract every registered
policy keeps, and learning on the simulator. (The other policies' own math is checked in
`test_policy_models.py`.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from banditrec import _kernels
from banditrec.exploration import (
    EpsilonGreedy,
    InverseGapWeighting,
    NoEligibleActionError,
    Softmax,
    sample_action,
)
from banditrec.features import load_default_schema
from banditrec.policies import (
    POLICIES,
    AutoLinUCB,
    FixedRule,
    HybridLinUCB,
    LinearThompsonSampling,
    LinUCB,
    MostPopular,
    Policy,
    RidgeEpsilonGreedy,
    RidgeSoftmax,
    SquareCB,
    UniformRandom,
    build_policy,
)
from banditrec.sim import AppSimulator
from banditrec.snapshot import Model, load_model, save_model

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
        # γ < 1: every event decays every action towards the prior λI, then adds its row.
        A = gamma * A + (1 - gamma) * ridge * np.eye(n_features)
        b = gamma * b
        A[action] += np.outer(x, x)
        b[action] += reward * x
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


K, D = 3, 4
#: A fixed rule over the suite's unnamed features x0..x3 and action indices.
RULES = [
    {"if": {"x0": {"gt": 0.0}, "x1": {"gt": 0.0}}, "then": 2},
    {"if": {"x2": {"lt": -0.5}}, "then": 1},
    {"else": 0},
]
#: Every registered policy (defaults), plus forgetting factors and other exploration rules.
CASES: dict[str, Callable[[], Policy]] = {
    "linucb": LinUCB,
    "linucb-gamma": lambda: LinUCB(gamma=0.9),
    "linucb-softmax": lambda: LinUCB(exploration=Softmax(temperature=0.5, epsilon=0.1)),
    "auto": AutoLinUCB,
    "auto-gamma": lambda: AutoLinUCB(gamma=0.9),
    "hybrid_linucb": HybridLinUCB,
    "hybrid_linucb-gamma": lambda: HybridLinUCB(gamma=0.9),
    "thompson": LinearThompsonSampling,
    "thompson-gamma": lambda: LinearThompsonSampling(gamma=0.9),
    "thompson-igw": lambda: LinearThompsonSampling(
        n_draws=20, exploration=InverseGapWeighting(gamma=10.0)
    ),
    "epsilon_greedy": RidgeEpsilonGreedy,
    "softmax": RidgeSoftmax,
    "squarecb": SquareCB,
    "squarecb-gamma": lambda: SquareCB(gamma=0.95),
    "uniform": UniformRandom,
    "popular": MostPopular,
    "popular-gamma": lambda: MostPopular(gamma=0.9),
    "fixed_rule": lambda: FixedRule(RULES),
}


def order_independent(policy: Policy) -> bool:
    """Whether updates commute: every policy except under a forgetting factor γ < 1, and
    those that say they depend on the order (`auto`: its member choice)."""
    return getattr(policy, "gamma", 1.0) == 1.0 and getattr(policy, "order_independent", True)


def events(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Learn events (X, actions, rewards, weights) of the suite's shape."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, D)), rng.integers(0, K, n), rng.random(n), rng.random(n) * 2


def assert_same_state(a: Policy, b: Policy, rtol: float = 1e-9, atol: float = 1e-9) -> None:
    state_a, state_b = a.get_state(), b.get_state()
    assert state_a.keys() == state_b.keys()
    for name, value in state_a.items():
        np.testing.assert_allclose(state_b[name], value, rtol=rtol, atol=atol, err_msg=name)


def test_the_contract_suite_covers_every_registered_policy() -> None:
    assert {factory().name for factory in CASES.values()} == set(POLICIES)


@pytest.mark.parametrize("factory", list(CASES.values()), ids=list(CASES))
class TestPolicyContract:
    """Checks every registered policy must pass."""

    def make(self, factory: Callable[[], Policy]) -> Policy:
        return factory().reset(n_actions=K, n_features=D)

    def trained(self, factory: Callable[[], Policy], seed: int = 1) -> Policy:
        policy = self.make(factory)
        X, actions, rewards, _ = events(seed)
        policy.update_batch(X, actions, rewards)
        return policy

    def test_bad_updates_are_rejected_and_learn_nothing(
        self, factory: Callable[[], Policy]
    ) -> None:
        policy = self.trained(factory)
        before = policy.get_state()
        x = np.ones(D)
        bad_calls = [
            (np.array([1.0, np.nan, 0.0, 0.0]), 0, 1.0),
            (np.array([1.0, np.inf, 0.0, 0.0]), 0, 1.0),
            (x, 0, float("nan")),
            (x, 0, float("inf")),
            (x, K, 1.0),
            (x, -1, 1.0),
            (np.ones(D + 1), 0, 1.0),
        ]
        for bad_x, action, reward in bad_calls:
            with pytest.raises(ValueError, match=r"x|action|reward"):
                policy.update(bad_x, action, reward)
            with pytest.raises(ValueError, match=r"x|action|reward"):
                policy.correct(bad_x, action, reward)
        with pytest.raises(ValueError, match="weight"):
            policy.update(x, 0, 1.0, weight=-1.0)
        bad_batches = [
            (np.array([[1.0, 2.0, np.nan, 0.0]]), np.array([0]), np.ones(1), None, "NaN"),
            (np.ones((2, D)), np.array([0, 1]), np.array([1.0, np.inf]), None, "NaN"),
            (np.ones((2, D)), np.array([0, K]), np.ones(2), None, "actions"),
            (np.ones((2, D)), np.array([0.0, 1.0]), np.ones(2), None, "integer"),
            (np.ones((2, D + 1)), np.array([0, 1]), np.ones(2), None, "shape"),
            (np.ones((2, D)), np.array([0, 1]), np.ones(2), np.array([1.0, -1.0]), "weights"),
        ]
        for X, actions, rewards, weights, message in bad_batches:
            with pytest.raises(ValueError, match=message):
                policy.update_batch(X, actions, rewards, weights)
        after = policy.get_state()
        for name, value in before.items():
            np.testing.assert_array_equal(after[name], value, err_msg=name)

    def test_probabilities_are_a_distribution_over_eligible_actions(
        self, factory: Callable[[], Policy]
    ) -> None:
        policy = self.trained(factory)
        rng = np.random.default_rng(0)
        masks = [np.ones(K, dtype=bool), np.array([True, False, True]), np.eye(K, dtype=bool)[1]]
        for _ in range(20):
            x = rng.normal(size=D)
            for eligible in masks:
                _, p = policy.distribution(x, eligible, rng)
                assert p.shape == (K,)
                assert p.sum() == pytest.approx(1.0, abs=1e-12)
                assert (p[~eligible] == 0).all() and (p[eligible] > 0).all()
        with pytest.raises(NoEligibleActionError):
            policy.distribution(np.ones(D), np.zeros(K, dtype=bool), rng)

    def test_deciding_learns_nothing(self, factory: Callable[[], Policy]) -> None:
        policy = self.trained(factory)
        before = policy.get_state()
        rng = np.random.default_rng(2)
        for _ in range(10):
            policy.distribution(rng.normal(size=D), np.ones(K, dtype=bool), rng)
        for name, value in before.items():
            np.testing.assert_array_equal(policy.get_state()[name], value, err_msg=name)

    def test_inputs_are_not_mutated(self, factory: Callable[[], Policy]) -> None:
        policy = self.make(factory)
        X = np.arange(12, dtype=float).reshape(3, 4) / 10
        actions, rewards = np.array([0, 1, 2]), np.array([1.0, 0.0, 0.5])
        weights, corrections = np.array([1.0, 2.0, 0.5]), np.array([False, False, True])
        eligible = np.array([True, False, True])
        inputs = (X, actions, rewards, weights, corrections, eligible)
        copies = tuple(a.copy() for a in inputs)
        policy.update_batch(X, actions, rewards, weights, corrections)
        policy.update(X[0], 0, 1.0, 2.0)
        policy.correct(X[1], 1, 0.5)
        policy.score(X[1])
        policy.distribution(X[2], eligible, np.random.default_rng(0))
        for original, copy in zip(inputs, copies, strict=True):
            np.testing.assert_array_equal(original, copy)

    def test_state_round_trip_gives_identical_probabilities(
        self, factory: Callable[[], Policy]
    ) -> None:
        policy = self.trained(factory)
        clone = policy.clone()
        assert clone is not policy and clone.get_params() == policy.get_params()
        x, eligible = np.random.default_rng(1).normal(size=D), np.ones(K, dtype=bool)
        s1, p1 = policy.distribution(x, eligible, np.random.default_rng(5))
        s2, p2 = clone.distribution(x, eligible, np.random.default_rng(5))
        np.testing.assert_array_equal(s2.score, s1.score)
        np.testing.assert_array_equal(p2, p1)
        clone.update(x, 0, 1.0)  # independent copies
        assert policy.n_updates_[0] == clone.n_updates_[0] - 1

    def test_model_file_round_trip_gives_identical_probabilities(
        self, factory: Callable[[], Policy], tmp_path: Path
    ) -> None:
        schema = load_default_schema()
        policy = factory().reset(schema.n_actions, schema.n_features)
        rng = np.random.default_rng(3)
        X = schema.vectorize_many(AppSimulator().sample_contexts(200, rng))
        policy.update_batch(X, rng.integers(0, schema.n_actions, 200), rng.random(200))
        model = Model(policy, schema, created_at="2026-01-01T00:00:00+00:00", version="v1")
        save_model(model, tmp_path / "model.npz")
        loaded = load_model(tmp_path / "model.npz", schema).policy
        assert type(loaded) is type(policy)
        assert loaded.get_params() == policy.get_params()
        assert loaded.exploration == policy.exploration
        eligible = np.ones(schema.n_actions, dtype=bool)
        for x in X[:20]:
            s1, p1 = policy.distribution(x, eligible, np.random.default_rng(9))
            s2, p2 = loaded.distribution(x, eligible, np.random.default_rng(9))
            np.testing.assert_array_equal(s2.score, s1.score)
            np.testing.assert_array_equal(p2, p1)

    def test_seeded_decisions_are_reproducible(self, factory: Callable[[], Policy]) -> None:
        def run(seed: int) -> list[int]:
            policy, rng = self.make(factory), np.random.default_rng(seed)
            chosen = []
            for _ in range(200):
                x = rng.normal(size=D)
                _, p = policy.distribution(x, np.ones(K, dtype=bool), rng)
                a = sample_action(p, rng)
                policy.update(x, a, float(x[a % D] > 0))
                chosen.append(a)
            return chosen

        assert run(7) == run(7)
        assert run(7) != run(8)

    def test_batch_update_equals_online_updates(self, factory: Callable[[], Policy]) -> None:
        # Rows in order, with weights and some b-only corrections, as the engine applies them.
        X, actions, rewards, weights = events(11, n=80)
        corrections = np.zeros(80, dtype=bool)
        corrections[5::7] = True
        online, batch = self.trained(factory, seed=4), self.trained(factory, seed=4)
        for i in range(80):
            if corrections[i]:
                online.correct(X[i], int(actions[i]), float(rewards[i]))
            else:
                online.update(X[i], int(actions[i]), float(rewards[i]), float(weights[i]))
        batch.update_batch(X, actions, rewards, weights, corrections)
        assert_same_state(batch, online)
        np.testing.assert_array_equal(batch.n_updates_, online.n_updates_)
        x = np.ones(D)
        np.testing.assert_allclose(batch.score(x).score, online.score(x).score, atol=1e-9)

    def test_updates_commute_so_replicas_agree(self, factory: Callable[[], Policy]) -> None:
        # DESIGN principle 3; a forgetting factor γ < 1 is the documented exception.
        first, second = self.make(factory), self.make(factory)
        if not order_independent(first):
            pytest.skip("γ < 1: discounting depends on the order of events")
        X, actions, rewards, weights = events(12, n=100)
        for i in range(100):
            first.update(X[i], int(actions[i]), float(rewards[i]), float(weights[i]))
        for i in np.random.default_rng(0).permutation(100):
            second.update(X[i], int(actions[i]), float(rewards[i]), float(weights[i]))
        assert_same_state(first, second, rtol=1e-12, atol=1e-12)
        x = np.ones(D)
        np.testing.assert_allclose(first.score(x).score, second.score(x).score, atol=1e-10)

    def test_a_summed_reward_equals_its_total(self, factory: Callable[[], Policy]) -> None:
        """Learning (x, 0.2) then correcting by +0.5 equals learning (x, 0.7)."""
        summed, direct = self.trained(factory), self.trained(factory)
        X, actions, _, _ = events(13, n=30)
        for x, a in zip(X, actions, strict=True):
            summed.update(x, int(a), 0.2)
            summed.correct(x, int(a), 0.5)
            direct.update(x, int(a), 0.7)
        # The member choice of `auto` scores an event on its first reward (documented);
        # its model must still equal the total.
        for name in getattr(summed, "selection_arrays", ()):
            setattr(summed, name, getattr(direct, name))
        assert_same_state(summed, direct)
        np.testing.assert_array_equal(summed.n_updates_, direct.n_updates_)

    def test_parameters_are_json_and_rebuild_the_policy(
        self, factory: Callable[[], Policy]
    ) -> None:
        policy = factory()
        params = json.loads(json.dumps(policy.get_params()))
        assert type(policy)(**params, exploration=policy.exploration).get_params() == params
        rebuilt = build_policy(
            policy.name,
            params,
            exploration=policy.exploration.name,
            exploration_params=policy.exploration.get_params(),
        )
        assert rebuilt.get_params() == params and rebuilt.exploration == policy.exploration


@pytest.mark.parametrize(
    ("policy_cls", "kwargs", "field"),
    [
        (LinUCB, {"alpha": -1}, "alpha"),
        (LinUCB, {"ridge": 0}, "ridge"),
        (LinUCB, {"gamma": 0}, "gamma"),
        (LinUCB, {"gamma": 1.5}, "gamma"),
        (LinUCB, {"gamma": float("nan")}, "gamma"),
        (LinUCB, {"refresh_every": 0}, "refresh_every"),
        (HybridLinUCB, {"alpha": float("inf")}, "alpha"),
        (HybridLinUCB, {"ridge": -1}, "ridge"),
        (HybridLinUCB, {"gamma": 0}, "gamma"),
        (LinearThompsonSampling, {"v": 0}, "v"),
        (LinearThompsonSampling, {"n_draws": 0}, "n_draws"),
        (LinearThompsonSampling, {"gamma": 2}, "gamma"),
        (SquareCB, {"ridge": 0}, "ridge"),
        (MostPopular, {"a": 0}, "a"),
        (MostPopular, {"b": float("nan")}, "b"),
        (MostPopular, {"gamma": -0.5}, "gamma"),
        (FixedRule, {"rules": []}, "rules"),
        (UniformRandom, {"exploration": EpsilonGreedy(0.1)}, "exploration"),
    ],
)
def test_invalid_parameters_are_rejected(
    policy_cls: type[Policy], kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        policy_cls(**kwargs)


@pytest.mark.parametrize(
    ("name", "exploration_params", "share_of_oracle"),
    [
        ("linucb", {}, 0.90),
        ("hybrid_linucb", {}, 0.90),
        ("thompson", {}, 0.90),
        ("epsilon_greedy", {}, 0.90),
        ("softmax", {"temperature": 0.05}, 0.90),
        ("squarecb", {}, 0.88),
    ],
)
def test_learning_policies_learn_the_simulated_app(
    name: str, exploration_params: dict[str, float], share_of_oracle: float
) -> None:
    """20,000 online rounds: the last 5,000 earn ≥ 90% of the oracle, far above uniform.

    Fixed seed; measured (of the oracle; uniform random earns 0.60): LinUCB 0.97, hybrid
    0.97, Thompson 0.95, ε-greedy 0.96, softmax (τ = 0.05) 0.97, SquareCB 0.945, so the
    margins are wide: this cannot flake.
    """
    schema, sim = load_default_schema(), AppSimulator()
    rng = np.random.default_rng(2026)
    n = 20_000
    contexts = sim.sample_contexts(n, rng)
    mu = sim.expected_rewards(contexts)
    X = schema.vectorize_many(contexts)
    policy = build_policy(name, exploration_params=exploration_params)
    policy.reset(4, schema.n_features)
    eligible = np.ones(4, dtype=bool)
    earned = np.empty(n)
    for i in range(n):
        _, p = policy.distribution(X[i], eligible, rng)
        a = sample_action(p, rng)
        policy.update(X[i], a, float(rng.random() < mu[i, a]))
        earned[i] = mu[i, a]
    last = slice(n - 5_000, n)
    oracle, uniform = mu[last].max(axis=1).mean(), mu[last].mean()
    assert earned[last].mean() >= share_of_oracle * oracle
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
        if name not in (*policy.shared_arrays, "shape_"):
            np.testing.assert_array_equal(policy.get_state()[name][:3], value)
    np.testing.assert_array_equal(policy.get_state()["shape_"], [4, 4])
    _, p = policy.distribution(x, np.ones(4, dtype=bool), rng)
    assert p.shape == (4,) and p.sum() == pytest.approx(1.0)


# -- the hot path: fused kernels and fast-math -------------------------------------------
# `LinUCB.distribution` (and the ridge-mean policies') under ε-greedy is one compiled call,
# and so is an update with its counters; the linear kernels are compiled with
# fastmath={"reassoc", "contract"}. These tests pin that nothing but speed changed.
#
# What is compared bit for bit and what within a tolerance: a strict kernel (no fast-math:
# the exploration rules, `spd_inverse`) computes one IEEE 754 result, whatever the CPU and
# whatever the function it is inlined into, so it is compared exactly. A fast-math kernel
# inlined into a fused one is the same source but another LLVM compilation: reassociation
# and FMA contraction may be scheduled differently there (by the instruction set, by the
# LLVM version), so the fused and the split results are compared within a few ulps (1e-13
# relative), not bitwise. Replicas run one code path: they are compared exactly.


class _ArgmaxOnly(EpsilonGreedy):
    """A subclass with its own rule: it must not be served by the fused ε-greedy kernel."""

    def probabilities(self, scores: np.ndarray, eligible: np.ndarray) -> np.ndarray:
        p = np.zeros(len(scores))
        p[int(np.flatnonzero(eligible)[np.argmax(scores[eligible])])] = 1.0
        return p


FUSED_CASES: dict[str, Callable[[], Policy]] = {
    "linucb": LinUCB,
    "linucb-alpha0.3-eps0.2": lambda: LinUCB(alpha=0.3, exploration=EpsilonGreedy(0.2)),
    "linucb-eps0": lambda: LinUCB(exploration=EpsilonGreedy(0.0)),
    "linucb-gamma": lambda: LinUCB(gamma=0.9),
    "epsilon_greedy": RidgeEpsilonGreedy,
    "epsilon_greedy-tolerant": lambda: RidgeEpsilonGreedy(
        exploration=EpsilonGreedy(0.1, tie_tolerance=0.01)
    ),
}


@pytest.mark.parametrize("factory", list(FUSED_CASES.values()), ids=list(FUSED_CASES))
def test_the_fused_epsilon_greedy_distribution_is_the_two_step_one(
    factory: Callable[[], Policy],
) -> None:
    rng = np.random.default_rng(21)
    masks = [np.ones(K, dtype=bool), np.array([True, False, True]), np.eye(K, dtype=bool)[2]]
    policy = factory().reset(K, D)
    for step in range(3):  # the prior (every action tied), then after learning
        for _ in range(5):
            x = rng.normal(size=D)
            for eligible in masks:
                scores, p = policy.distribution(x, eligible, rng)
                expected = policy.score(x)
                # Fast-math scores, fused and split: equal to rounding (see above).
                for got, want in zip(scores, expected, strict=True):
                    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
                # The strict ε-greedy rule on the served scores: one IEEE result, exactly.
                np.testing.assert_array_equal(
                    p, policy.exploration.probabilities(scores.score, eligible)
                )
                # No action changed sides of a tie for a rounding of its score.
                np.testing.assert_allclose(
                    p, policy.exploration.probabilities(expected.score, eligible), rtol=1e-15
                )
        with pytest.raises(NoEligibleActionError, match="No eligible action"):
            policy.distribution(np.ones(D), np.zeros(K, dtype=bool), rng)
        X, actions, rewards, _ = events(step, n=40)
        for i in range(len(X)):
            policy.update(X[i], int(actions[i]), float(rewards[i]))


def test_an_epsilon_greedy_subclass_keeps_its_own_probabilities() -> None:
    for policy in (
        LinUCB(alpha=0.0, exploration=_ArgmaxOnly()),
        RidgeEpsilonGreedy(exploration=_ArgmaxOnly()),
    ):
        policy.reset(K, D)
        policy.update(np.ones(D), 1, 1.0)
        _, p = policy.distribution(np.ones(D), np.ones(K, dtype=bool))
        assert p.tolist() == [0.0, 1.0, 0.0]


def test_the_fused_update_kernel_is_rank_one_update_then_the_counters() -> None:
    rng = np.random.default_rng(22)
    n_actions, d = 3, 20  # d ≥ 16: the vectorised loop bodies run, not only their tails
    split, fused = LinUCB().reset(n_actions, d), LinUCB().reset(n_actions, d)
    fused._since_refresh[:] = [0, 3, 1]
    for _ in range(30):
        x, a, r, w = rng.normal(size=d), int(rng.integers(n_actions)), rng.random(), rng.random()
        assert _kernels.rank_one_update(
            split.A_, split.A_inv_, split.b_, split.theta_, x, a, w, w * r
        )
        since = fused._since_refresh[a] + 1
        n_updates = fused.n_updates_.copy()
        status = _kernels.ridge_update(
            fused.A_,
            fused.A_inv_,
            fused.b_,
            fused.theta_,
            x,
            a,
            w,
            w * r,
            fused.n_updates_,
            fused._since_refresh,
        )
        assert status == since == fused._since_refresh[a]
        n_updates[a] += 1
        np.testing.assert_array_equal(fused.n_updates_, n_updates)
        for name in ("A_", "A_inv_", "b_", "theta_"):
            # The fast-math update, fused or called alone: equal to rounding (see above);
            # 30 updates can compound it a little, hence 1e-12 of the array's scale.
            want = getattr(split, name)
            np.testing.assert_allclose(
                getattr(fused, name), want, rtol=0, atol=1e-12 * max(1.0, np.abs(want).max())
            )
    names = ("A_", "A_inv_", "b_", "theta_", "n_updates_", "_since_refresh")
    before = {name: getattr(fused, name).copy() for name in names}
    for bad in (np.nan, np.inf, -np.inf):
        for position in (0, 9, d - 1):
            x = rng.normal(size=d)
            x[position] = bad
            status = _kernels.ridge_update(
                fused.A_,
                fused.A_inv_,
                fused.b_,
                fused.theta_,
                x,
                0,
                1.0,
                1.0,
                fused.n_updates_,
                fused._since_refresh,
            )
            assert status == -1
            assert not _kernels.rank_one_update(
                fused.A_, fused.A_inv_, fused.b_, fused.theta_, x, 0, 1.0, 1.0
            )
    for name, value in before.items():
        np.testing.assert_array_equal(getattr(fused, name), value, err_msg=name)


def test_an_action_is_refreshed_exactly_after_refresh_every_of_its_updates() -> None:
    rng = np.random.default_rng(23)
    policy = LinUCB(refresh_every=5).reset(2, 6)
    for i in range(9):
        a = i % 2  # action 0 learns 5 times, action 1 four times
        policy.update(rng.normal(size=6), a, rng.random())
    np.testing.assert_array_equal(policy.n_updates_, [5, 4])
    np.testing.assert_array_equal(policy._since_refresh, [0, 4])
    exact = np.empty((6, 6))
    assert _kernels.spd_inverse(policy.A_[0], exact)
    # Just refreshed: the Cholesky inverse, bit for bit (`spd_inverse` is strict IEEE code).
    np.testing.assert_array_equal(policy.A_inv_[0], exact)
    np.testing.assert_allclose(policy.theta_[0], exact @ policy.b_[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("refresh_every", [10**20, float("inf"), 2.5])
def test_a_huge_or_fractional_refresh_every_still_works(refresh_every: float) -> None:
    # It is compared in Python, not handed to numba (which would refuse ints ≥ 2**63).
    policy = LinUCB(refresh_every=refresh_every).reset(2, 3)
    for _ in range(3):
        policy.update(np.ones(3), 0, 1.0)
    np.testing.assert_array_equal(policy._since_refresh, [0 if refresh_every == 2.5 else 3, 0])


@pytest.mark.parametrize("d", [1, 3, 4, 7, 15, 16, 17, 31, 33, 50, 67])
def test_fast_math_kernels_match_numpy_at_every_vector_width(d: int) -> None:
    # The property tests above use d ≤ 6, i.e. only the loops' scalar tails; these sizes run
    # the reassociated SIMD bodies with every remainder.
    rng = np.random.default_rng(d)
    n_actions, alpha = 3, 0.7
    policy = LinUCB(alpha=alpha).reset(n_actions, d)
    for i in range(3 * d + 10):
        policy.update(rng.normal(size=d), i % n_actions, rng.random(), weight=rng.random() + 0.5)
    x = rng.normal(size=d)
    s = policy.score(x)
    for a in range(n_actions):
        A_inv = np.linalg.inv(policy.A_[a])
        np.testing.assert_allclose(policy.A_inv_[a], A_inv, rtol=0, atol=1e-12)
        np.testing.assert_allclose(policy.theta_[a], A_inv @ policy.b_[a], rtol=0, atol=1e-12)
        assert s.mean[a] == pytest.approx(policy.theta_[a] @ x, rel=1e-13, abs=1e-13)
        assert s.width[a] == pytest.approx(alpha * np.sqrt(x @ policy.A_inv_[a] @ x), rel=1e-13)
    # score = mean + width, up to the FMA the "contract" licence allows (mean + α·√q in one
    # rounding instead of two): within a few ulps of the larger term.
    scale = np.maximum(np.abs(s.mean), np.abs(s.width))
    assert (np.abs(s.score - (s.mean + s.width)) <= 4 * np.finfo(float).eps * scale).all()


def test_fast_math_keeps_nan_and_infinity_visible() -> None:
    # Only reassociation and contraction are allowed: with nnan/ninf the compiler could
    # assume the finiteness guards away.
    assert set(_kernels.LINEAR_FASTMATH) == {"reassoc", "contract"}
    for kernel in (_kernels.linear_scores, _kernels.rank_one_update):
        assert kernel.targetoptions["fastmath"] == _kernels.LINEAR_FASTMATH
    policy = LinUCB().reset(2, 20)
    x = np.ones(20)
    x[17] = np.nan
    s = policy.score(x)
    assert np.isnan(s.mean).all() and np.isnan(s.score).all()
    x[17] = np.inf
    assert np.isnan(policy.score(x).mean).all()  # θ = 0 at the prior: 0·∞ is NaN, not 0


@pytest.mark.parametrize(
    "factory",
    [
        lambda: LinUCB(refresh_every=100),
        lambda: LinUCB(gamma=0.9),
        lambda: RidgeEpsilonGreedy(refresh_every=100),
        lambda: LinearThompsonSampling(refresh_every=100),
    ],
    ids=["linucb", "linucb-gamma", "epsilon_greedy", "thompson"],
)
def test_replicas_applying_the_same_events_in_order_agree_bit_for_bit(
    factory: Callable[[], Policy],
) -> None:
    # Bitwise on purpose: two replicas run one code path on one machine (across instruction
    # sets fast-math may round differently: see `banditrec._kernels`).
    rng = np.random.default_rng(24)
    n_actions, d = 5, 20
    first, second = factory().reset(n_actions, d), factory().reset(n_actions, d)
    for i in range(1500):  # ~260 updates per action: incremental updates and refreshes
        x, a, r = rng.normal(size=d), int(rng.integers(n_actions)), float(rng.random())
        for replica in (first, second):
            if i % 7 == 3:
                replica.correct(x, a, r)
            else:
                replica.update(x, a, r)
    x = rng.normal(size=d)
    for name in ("A_", "b_", "A_inv_", "theta_", "n_updates_", "_since_refresh"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name), err_msg=name)
    s1, p1 = first.distribution(x, np.ones(n_actions, dtype=bool), np.random.default_rng(0))
    s2, p2 = second.distribution(x, np.ones(n_actions, dtype=bool), np.random.default_rng(0))
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(s1.score, s2.score)
