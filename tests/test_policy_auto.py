"""The self-tuning LinUCB (`auto`): honest probabilities, its α, the member choice, the floor.

The contract every policy keeps (distributions, batch = online, model files, bad input) is
checked for `auto` by `test_policies.py`; here is what is its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from banditrec.exploration import EpsilonGreedy, Softmax, sample_action
from banditrec.features import load_default_schema
from banditrec.policies import AutoLinUCB, LinUCB, build_policy
from banditrec.snapshot import Model, load_model, save_model


def classification_stream(seed: int, n: int, d: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Linearly separable classes (one prototype each) plus a bias: the reward is 1 for the
    label. A problem where exploring with α = 1 in d = 40 is wasteful."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(k, d))
    labels = rng.integers(0, k, n)
    X = prototypes[labels] + 0.5 * rng.normal(size=(n, d))
    return np.hstack([X, np.ones((n, 1))]), labels


def run(policy: AutoLinUCB, X: np.ndarray, labels: np.ndarray, seed: int) -> list[float]:
    """One online pass; returns the α reported at every decision."""
    rng = np.random.default_rng(seed)
    eligible = np.ones(policy.n_actions_, dtype=bool)
    reported = []
    for x, label in zip(X, labels, strict=True):
        _, p = policy.distribution(x, eligible, rng)
        reported.append(policy.alpha)
        a = sample_action(p, rng)
        policy.update(x, a, float(a == label))
    return reported


def test_the_served_probabilities_are_the_served_members_own() -> None:
    """Selection is deterministic given the past: p is LinUCB's with the served α and floor."""
    X, labels = classification_stream(1, 300, 6, 3)
    policy = AutoLinUCB().reset(3, 7)
    run(policy, X, labels, seed=2)
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = np.append(rng.normal(size=6), 1.0)
        eligible = rng.random(3) < 0.8
        eligible[rng.integers(3)] = True
        scores, p = policy.distribution(x, eligible)
        twin = LinUCB(alpha=policy.alpha, ridge=policy.ridge).reset(3, 7)
        twin.A_inv_, twin.theta_ = policy.A_inv_, policy.theta_  # the same derived arrays
        np.testing.assert_array_equal(scores.score, twin.score(x).score)  # bit for bit
        floor = policy._floor(x, policy._scores(x)[1], eligible)
        expected = EpsilonGreedy(floor).probabilities(scores.score, eligible)
        np.testing.assert_allclose(p, expected, rtol=1e-12, atol=1e-15)


def test_the_evidence_narrows_its_width_where_narrow_earns_more_and_it_reports_it() -> None:
    X, labels = classification_stream(4, 3000, 40, 8)
    # A huge prior width keeps the prior rule on α = 1: only the evidence can narrow it.
    auto = AutoLinUCB(prior_width=100.0).reset(8, 41)
    reported = run(auto, X, labels, seed=5)
    assert reported[:10] == [1.0] * 10
    assert auto.alpha == 0.3 and auto.served_[1] == 1  # chosen by the evidence
    assert reported.index(0.3) < 1000
    # And so it earns more than the width it started with, held fixed.
    fixed = LinUCB(alpha=1.0).reset(8, 41)
    rng, earned = np.random.default_rng(5), 0.0
    for x, label in zip(X, labels, strict=True):
        _, p = fixed.distribution(x, np.ones(8, dtype=bool), rng)
        a = sample_action(p, rng)
        fixed.update(x, a, float(a == label))
        earned += a == label
    rng, total = np.random.default_rng(5), 0.0
    again = AutoLinUCB(prior_width=100.0).reset(8, 41)
    for x, label in zip(X, labels, strict=True):
        _, p = again.distribution(x, np.ones(8, dtype=bool), rng)
        a = sample_action(p, rng)
        again.update(x, a, float(a == label))
        total += a == label
    assert total > earned


def test_replicas_applying_the_same_learn_events_serve_the_same_member() -> None:
    """The choice is a function of the learn stream: decisions elsewhere do not move it."""
    X, labels = classification_stream(6, 2000, 40, 8)
    leader = AutoLinUCB().reset(8, 41)
    rng = np.random.default_rng(7)
    events = []
    for x, label in zip(X, labels, strict=True):
        _, p = leader.distribution(x, np.ones(8, dtype=bool), rng)
        a = sample_action(p, rng)
        events.append((x, a, float(a == label)))
        leader.update(x, a, float(a == label))
    follower = AutoLinUCB().reset(8, 41)
    other_rng = np.random.default_rng(99)
    for i, (x, a, r) in enumerate(events):
        if i % 3 == 0:  # decisions served by the follower itself learn nothing
            follower.distribution(other_rng.normal(size=41), np.ones(8, dtype=bool), other_rng)
        follower.update(x, a, r)
    for name, value in leader.get_state().items():
        np.testing.assert_array_equal(follower.get_state()[name], value, err_msg=name)
    assert follower.alpha == leader.alpha


def test_until_the_evidence_decides_the_width_fits_the_contexts_size() -> None:
    """α·√(mean xᵀx / λ) ≤ prior_width: α = 1 on small contexts, 0.3 on large ones."""
    small, large = AutoLinUCB().reset(2, 5), AutoLinUCB().reset(2, 50)
    assert small.alpha == large.alpha == 1.0  # nothing learned: every action ties anyway
    small.update(np.ones(5), 0, 1.0)  # √(5 / 10) = 0.71: α = 1 fits
    large.update(np.ones(50), 0, 1.0)  # √(50 / 10) = 2.2: only α = 0.3 fits (0.67)
    assert (small.alpha, large.alpha) == (1.0, 0.3)
    assert small.served_[1] == large.served_[1] == 0  # the prior rule, not yet the evidence
    tiny = AutoLinUCB(alphas=[0.5, 1.0]).reset(2, 500)
    tiny.update(np.ones(500), 0, 1.0)  # nothing fits: the narrowest
    assert tiny.alpha == 0.5


def test_the_floor_shrinks_where_the_model_is_certain_down_to_its_minimum() -> None:
    policy = AutoLinUCB(exploration=EpsilonGreedy(0.05)).reset(2, 3)
    x, eligible = np.array([1.0, 0.5, 1.0]), np.ones(2, dtype=bool)
    _, before = policy.distribution(x, eligible)
    assert before.tolist() == [0.5, 0.5]  # nothing known: a tie
    for _ in range(20):
        for a in (0, 1):
            policy.update(x, a, float(a))
    _, few = policy.distribution(x, eligible)
    assert 0.05 / 2 * 0.1 < few[0] < 0.05 / 2  # shrunk, not yet to its minimum
    for _ in range(5000):
        for a in (0, 1):
            policy.update(x, a, float(a))
    _, many = policy.distribution(x, eligible)
    assert many[0] == pytest.approx(0.05 * 0.1 / 2, rel=1e-12)  # min_epsilon_share · ε / K
    # Elsewhere (a direction never seen) the floor is still the full ε.
    unseen = np.array([0.0, -3.0, 0.1])
    assert policy._floor(unseen, policy._scores(unseen)[1], eligible) > 0.9 * 0.05


def test_the_member_choice_survives_a_model_file(tmp_path: Path) -> None:
    schema = load_default_schema()
    rng = np.random.default_rng(8)
    policy = AutoLinUCB().reset(schema.n_actions, schema.n_features)
    policy.served_[:] = (0, 1)  # as if the data had chosen the narrow member
    policy.value_[:] = [3.0, 1.0]
    save_model(Model(policy, schema, "2026-01-01T00:00:00+00:00", "v1"), tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz", schema).policy
    assert isinstance(loaded, AutoLinUCB)
    assert loaded.alpha == 0.3
    np.testing.assert_array_equal(loaded.value_, [3.0, 1.0])
    x = rng.normal(size=schema.n_features)
    np.testing.assert_array_equal(
        loaded.distribution(x, np.ones(schema.n_actions, dtype=bool))[1],
        policy.distribution(x, np.ones(schema.n_actions, dtype=bool))[1],
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alphas": []}, "at least one width"),
        ({"alphas": [0.3, -1.0]}, "alphas must be a finite number ≥ 0"),
        ({"alphas": [1.0, 1.0]}, "alphas must be distinct"),
        ({"prior_width": 0.0}, "prior_width must be a finite number > 0"),
        ({"switch_margin": float("nan")}, "switch_margin"),
        ({"min_epsilon_share": 0.0}, "min_epsilon_share must be in"),
    ],
)
def test_bad_parameters_are_refused_with_a_sentence(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        AutoLinUCB(**kwargs)  # type: ignore[arg-type]


def test_configuration_reaches_it_by_name() -> None:
    policy = build_policy("auto", {"alphas": [0.1, 1.0]}, exploration_params={"epsilon": 0.02})
    assert isinstance(policy, AutoLinUCB)
    assert policy.get_params()["alphas"] == [0.1, 1.0]
    assert policy.exploration == EpsilonGreedy(0.02)
    # Another rule keeps its shape; its floor shrinks as ε-greedy's does.
    soft = build_policy("auto", exploration="softmax", exploration_params={"epsilon": 0.1})
    assert soft.exploration == Softmax(epsilon=0.1)
    soft.reset(2, 3)
    x, eligible = np.array([1.0, 0.5, 1.0]), np.ones(2, dtype=bool)
    for _ in range(2000):
        for a in (0, 1):
            soft.update(x, a, float(a))
    _, p = soft.distribution(x, eligible)
    scores = soft.score(x).score
    expected = Softmax(epsilon=0.01).probabilities(scores, eligible)  # shrunk to ε/10
    np.testing.assert_allclose(p, expected, rtol=1e-12)


def test_recommend_action_reports_the_width_it_served_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed's contract: `alpha` is the α of the decision, here the evidence's 0.3."""
    from fastapi.testclient import TestClient

    from banditrec.api import create_app
    from banditrec.config import Settings
    from conftest import SEED_REQUEST

    monkeypatch.chdir(tmp_path)
    schema = load_default_schema()
    rng = np.random.default_rng(10)
    policy = AutoLinUCB().reset(schema.n_actions, schema.n_features)
    X = rng.normal(size=(300, schema.n_features))
    policy.update_batch(X, rng.integers(0, schema.n_actions, 300), rng.random(300))
    policy.served_[:] = (0, 1)  # the evidence chose α = 0.3
    save_model(Model(policy, schema, "2026-01-01T00:00:00+00:00", "v1"), tmp_path / "m.npz")
    app = create_app(Settings(model_path=tmp_path / "m.npz", seed=0))
    with TestClient(app) as client:
        body = client.post("/recommend_action", json=SEED_REQUEST).json()
    assert body["alpha"] == 0.3
    x = schema.vectorize({k: v for k, v in SEED_REQUEST.items() if k != "user_id"})
    _, p = policy.distribution(x, np.ones(schema.n_actions, dtype=bool))
    served = [body["probabilities"][a] for a in schema.actions]
    np.testing.assert_array_equal(served, p)  # the served member's own distribution
