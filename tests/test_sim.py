"""The simulated app: seeded, context-dependent best action, a known truth."""

from __future__ import annotations

import numpy as np

from banditrec.features import Dictionary, load_default_schema
from banditrec.sim import ACTIONS, CONTEXT_FIELDS, AppSimulator, DriftingAppSimulator, _decoded


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


def test_drawn_columns_decode_to_the_simulated_ones() -> None:
    sim = AppSimulator()
    drawn = sim.draw_logged(2000, np.random.default_rng(9))
    plain = sim.simulate_logged(2000, np.random.default_rng(9))
    assert list(drawn) == list(plain)
    assert isinstance(drawn["country"], Dictionary) and drawn["user_id"].dtype == "S10"
    for name, column in plain.items():
        np.testing.assert_array_equal(_decoded(drawn[name]), column, err_msg=name)
    assert all(len(u) == 10 and u[0] == "u" and u[1:].isdigit() for u in plain["user_id"])
    # Truth computed from codes equals truth computed from the strings.
    np.testing.assert_array_equal(
        sim.expected_rewards(sim.draw_contexts(500, np.random.default_rng(1))),
        sim.expected_rewards(sim.sample_contexts(500, np.random.default_rng(1))),
    )


def test_batches_are_seeded_and_one_batch_is_the_whole_simulation() -> None:
    sim = AppSimulator()
    one = list(sim.logged_batches(3000, np.random.default_rng(4), batch_rows=5000))
    assert len(one) == 1
    whole = sim.simulate_logged(3000, np.random.default_rng(4))
    np.testing.assert_array_equal(_decoded(one[0]["action"]), whole["action"])
    parts = list(sim.logged_batches(3000, np.random.default_rng(4), batch_rows=700))
    again = list(sim.logged_batches(3000, np.random.default_rng(4), batch_rows=700))
    assert [len(p["reward"]) for p in parts] == [700, 700, 700, 700, 200]
    for a, b in zip(parts, again, strict=True):
        np.testing.assert_array_equal(a["reward"], b["reward"])


def test_drifting_batches_drift_at_the_round_of_the_file() -> None:
    # Batches carry their first round: the drift happens at round 1000 of the file, not of
    # each batch.
    sim = DriftingAppSimulator(drift_at=1000)
    batches = list(sim.logged_batches(1500, np.random.default_rng(3), batch_rows=600))
    truth = np.concatenate(
        [np.stack([b[f"expected_reward_{a}"] for a in ACTIONS], axis=1) for b in batches]
    )
    contexts = {k: np.concatenate([_decoded(b[k]) for b in batches]) for k in CONTEXT_FIELDS}
    np.testing.assert_array_equal(truth, sim.expected_rewards_at(contexts, np.arange(1500)))
