"""The simulated app: seeded, context-dependent best action, a known truth."""

from __future__ import annotations

import numpy as np

from banditrec.features import load_default_schema
from banditrec.sim import ACTIONS, CONTEXT_FIELDS, AppSimulator


def test_same_seed_same_data_other_seed_other_data() -> None:
    sim = AppSimulator()
    a = sim.simulate_logged(1000, np.random.default_rng(5))
    b = sim.simulate_logged(1000, np.random.default_rng(5))
    c = sim.simulate_logged(1000, np.random.default_rng(6))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["reward"], c["reward"])


def test_logged_layout_and_uniform_logging() -> None:
    logged = AppSimulator().simulate_logged(20_000, np.random.default_rng(0))
    assert list(logged)[:11] == [*CONTEXT_FIELDS, "action", "propensity", "reward"]
    assert set(logged["action"]) == set(ACTIONS)
    assert (logged["propensity"] == 0.25).all()
    shares = np.unique(logged["action"], return_counts=True)[1] / 20_000
    np.testing.assert_allclose(shares, 0.25, atol=0.02)
    assert set(np.unique(logged["reward"])) == {0.0, 1.0}


def test_rewards_follow_the_expected_values() -> None:
    sim, rng = AppSimulator(), np.random.default_rng(1)
    mu = np.full((200_000, 1), 0.3)
    # Standard deviation of the mean ≈ 0.001; 0.006 is 6 sigma.
    assert abs(sim.sample_rewards(mu, rng).mean() - 0.3) < 0.006


def test_no_single_action_is_best_for_everyone() -> None:
    sim = AppSimulator()
    mu = sim.expected_rewards(sim.sample_contexts(50_000, np.random.default_rng(2)))
    best_share = np.bincount(mu.argmax(axis=1), minlength=4) / len(mu)
    assert (best_share > 0.08).all()
    # The oracle beats every fixed action by a clear margin: the context matters.
    assert mu.max(axis=1).mean() > 1.2 * mu.mean(axis=0).max()


def test_contexts_fit_the_default_schema_and_include_unknown_values() -> None:
    schema = load_default_schema()
    contexts = AppSimulator().sample_contexts(20_000, np.random.default_rng(3))
    X = schema.vectorize_many(contexts)  # raises if any value is out of range
    names = schema.feature_names()
    assert X[:, names.index("country=__other__")].sum() > 0
    assert X[:, names.index("device=__other__")].sum() > 0
