"""The self-tuning LinUCB (`auto`): honest probabilities, its α, the member choice, the floor.

The contract every policy keeps (distributions, batch = online, model files, bad input) is
checked for `auto` by `test_policies.py`; here is what is its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

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


# -- the compiled path -----------------------------------------------------------------------


def python_twin(**kwargs: object) -> AutoLinUCB:
    """An `AutoLinUCB` that learns through the Python reference (`_credit`, `_choose`)."""
    policy = AutoLinUCB(**kwargs)  # type: ignore[arg-type]
    policy._compiled = lambda: False  # type: ignore[method-assign]
    return policy


def logistic_stream(seed: int, n: int, d: int, k: int) -> list[tuple[np.ndarray, int, float]]:
    """(x, served action, reward) of a Bernoulli-logistic problem served by an `auto` policy."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(k, d))
    policy, events = AutoLinUCB().reset(k, d), []
    for _ in range(n):
        x = np.append(rng.normal(size=d - 1), 1.0)
        _, p = policy.distribution(x, np.ones(k, dtype=bool))
        a = sample_action(p, rng)
        r = float(rng.random() < 1 / (1 + np.exp(-x @ weights[a])))
        policy.update(x, a, r)
        events.append((x, a, r))
    return events


def test_the_compiled_kernel_learns_what_the_python_reference_learns() -> None:
    """One code path each, so a tolerance: the kernel sums xᵀx and the estimates in its own
    order (~1e-16 relative per step). 2,000 events at K = 4, d = 22 stay within 1e-9."""
    events = logistic_stream(11, 2000, 22, 4)
    fast, slow = AutoLinUCB(refresh_every=300).reset(4, 22), python_twin(refresh_every=300)
    slow.reset(4, 22)
    assert fast._compiled() and not slow._compiled()
    for x, a, r in events:
        fast.update(x, a, r)
        slow.update(x, a, r)
    for name in ("value_", "value_sq_", "evaluated_", "context_sq_", "A_", "b_", "theta_"):
        np.testing.assert_allclose(
            getattr(fast, name), getattr(slow, name), rtol=1e-9, atol=1e-9, err_msg=name
        )
    np.testing.assert_array_equal(fast.served_, slow.served_)
    np.testing.assert_array_equal(fast.n_updates_, slow.n_updates_)


@given(
    seed=st.integers(0, 2**32 - 1),
    n_actions=st.integers(1, 6),
    n_features=st.integers(1, 8),
    alphas=st.lists(
        st.sampled_from([0.0, 0.1, 0.3, 1.0, 2.5]), min_size=1, max_size=4, unique=True
    ),
    propensity=st.one_of(st.none(), st.floats(0.05, 1.0)),
)
def test_the_kernel_scores_every_member_as_the_formula_says(
    seed: int,
    n_actions: int,
    n_features: int,
    alphas: list[float],
    propensity: float | None,
) -> None:
    """Any shape, any members, any learned state: the compiled credit and choice equal the
    Python reference's to rounding, and the served member is the same."""
    rng = np.random.default_rng(seed)
    fast = AutoLinUCB(alphas=alphas, switch_margin=0.5).reset(n_actions, n_features)
    slow = python_twin(alphas=alphas, switch_margin=0.5).reset(n_actions, n_features)
    for _ in range(int(rng.integers(1, 30))):
        x = rng.normal(size=n_features) * rng.choice([0.0, 1.0, 10.0])  # zero vectors too
        a, r, w = int(rng.integers(n_actions)), float(rng.random()), float(rng.uniform(0, 2))
        fast.update_logged(x, a, r, w, propensity)
        slow.update_logged(x, a, r, w, propensity)
        np.testing.assert_array_equal(fast.served_, slow.served_)
    for name in ("value_", "value_sq_", "evaluated_", "context_sq_"):
        np.testing.assert_allclose(
            getattr(fast, name), getattr(slow, name), rtol=1e-9, atol=1e-9, err_msg=name
        )


def test_a_batch_learns_what_the_same_events_learn_one_by_one() -> None:
    """Row by row in one kernel call, corrections included. Two compiled entry points (the
    row kernel inlines the event kernel, and LLVM may order a fast-math sum differently in
    each), and the batch ends with an exact refresh of A⁻¹ and θ as every ridge policy's: so
    the sums agree to rounding (1e-9 relative after 1,500 events), the choice exactly."""
    events = logistic_stream(12, 1500, 10, 3)
    X = np.array([x for x, _, _ in events])
    actions = np.array([a for _, a, _ in events])
    rewards = np.array([r for _, _, r in events])
    corrections = np.zeros(len(events), dtype=bool)
    corrections[::50] = True  # every 50th row changes an earlier reward by its value
    online = AutoLinUCB(refresh_every=200).reset(3, 10)
    for x, a, r, fix in zip(X, actions, rewards, corrections, strict=True):
        (online.correct if fix else online.update)(x, int(a), float(r))
    batch = AutoLinUCB(refresh_every=200).reset(3, 10)
    batch.update_batch(X, actions, rewards, corrections=corrections)
    for name in ("value_", "value_sq_", "evaluated_", "context_sq_", "A_", "b_", "theta_"):
        np.testing.assert_allclose(
            getattr(batch, name), getattr(online, name), rtol=1e-9, atol=1e-12, err_msg=name
        )
    np.testing.assert_array_equal(batch.served_, online.served_)
    np.testing.assert_array_equal(batch.n_updates_, online.n_updates_)


def one_event_policy(compiled: bool) -> AutoLinUCB:
    policy = AutoLinUCB() if compiled else python_twin()
    policy.reset(3, 4)
    policy.update(np.array([1.0, 0.5, -0.5, 1.0]), 1, 1.0)  # something learned: π ≠ uniform
    return policy


@pytest.mark.parametrize("compiled", [True, False])
def test_a_logged_propensity_weighs_the_members_estimates(compiled: bool) -> None:
    """DR: Σ_k π_m(k)·r̂_k + π_m(a)/p·(r − r̂_a) with p the logged probability, not today's."""
    x, action, reward = np.array([0.5, -1.0, 0.2, 1.0]), 2, 1.0
    policy = one_event_policy(compiled)
    pi, mean = policy._member_probabilities(x)
    before = policy.value_.copy()
    policy.update_logged(x, action, reward, 1.0, 0.25)
    expected = pi @ mean + pi[:, action] / 0.25 * (reward - mean[action])
    np.testing.assert_allclose(policy.value_ - before, expected, rtol=1e-12)
    # Without it (a log written before propensities were kept): the served member's own.
    again = one_event_policy(compiled)
    again.update_logged(x, action, reward, 1.0, None)
    served = pi[int(again.served_[0])]
    recomputed = pi @ mean + pi[:, action] / served[action] * (reward - mean[action])
    np.testing.assert_allclose(again.value_ - before, recomputed, rtol=1e-12)


@pytest.mark.parametrize("propensity", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_a_bad_propensity_is_refused_and_nothing_is_learned(propensity: float) -> None:
    policy = one_event_policy(compiled=True)
    state = policy.get_state()
    with pytest.raises(ValueError, match=r"A propensity must be in \(0, 1\], got"):
        policy.update_logged(np.ones(4), 0, 1.0, 1.0, propensity)
    if not np.isnan(propensity):  # in a batch NaN marks a row whose propensity is unknown
        with pytest.raises(ValueError, match=r"A propensity must be in \(0, 1\], got"):
            policy.update_batch(
                np.ones((2, 4)), np.zeros(2, int), np.ones(2), propensities=[0.5, propensity]
            )
    with pytest.raises(ValueError, match="propensities must hold one value per row"):
        policy.update_batch(np.ones((2, 4)), np.zeros(2, int), np.ones(2), propensities=[0.5])
    for name, value in policy.get_state().items():
        np.testing.assert_array_equal(value, state[name], err_msg=name)


def test_a_batch_with_logged_propensities_learns_what_update_logged_learns() -> None:
    events = logistic_stream(13, 400, 6, 3)
    rng = np.random.default_rng(14)
    logged = rng.uniform(0.2, 1.0, len(events))
    logged[::7] = np.nan  # unknown on some rows
    online = AutoLinUCB().reset(3, 6)
    for (x, a, r), p in zip(events, logged, strict=True):
        online.update_logged(x, a, r, 1.0, None if np.isnan(p) else float(p))
    batch = AutoLinUCB().reset(3, 6)
    X, actions, rewards = (np.array(column) for column in zip(*events, strict=True))
    batch.update_batch(X, actions, rewards, propensities=logged)
    # Two compiled entry points: equal to rounding (see the batch test above).
    np.testing.assert_allclose(batch.value_, online.value_, rtol=1e-9)
    np.testing.assert_allclose(batch.value_sq_, online.value_sq_, rtol=1e-9)
    np.testing.assert_array_equal(batch.served_, online.served_)


def test_learn_events_reach_it_with_their_logged_propensity() -> None:
    from banditrec.engine import Engine
    from banditrec.store import LearnEvent

    schema = load_default_schema()
    policy = AutoLinUCB().reset(schema.n_actions, schema.n_features)
    engine = Engine(
        Model(policy, schema, "2026-01-01T00:00:00+00:00", "v1"), np.random.default_rng(0)
    )
    twin = AutoLinUCB().reset(schema.n_actions, schema.n_features)
    rng = np.random.default_rng(15)
    events = []
    for seq in range(1, 60):
        x = rng.normal(size=schema.n_features)
        a, r = int(rng.integers(schema.n_actions)), float(rng.random())
        p = None if seq % 5 == 0 else float(rng.uniform(0.1, 1.0))
        events.append(LearnEvent(seq, f"e{seq}", a, x, r, 1.0, propensity=p))
        twin.update_logged(x, a, r, 1.0, p)
    assert engine.apply(events) == len(events)
    np.testing.assert_array_equal(engine.policy.value_, twin.value_)  # type: ignore[attr-defined]
    assert engine.policy.alpha == twin.alpha  # type: ignore[attr-defined]


# -- the server's alpha setting --------------------------------------------------------------


def test_the_alpha_setting_is_its_widest_width() -> None:
    """``BANDITREC_ALPHA`` / ``train --alpha`` cap the width as they set LinUCB's α."""
    from banditrec.config import Settings

    policy = Settings(policy="auto", alpha=0.5).build_policy(with_schema=False)
    assert isinstance(policy, AutoLinUCB)
    assert policy.get_params()["max_alpha"] == 0.5
    assert policy.member_widths() == [0.15, 0.5]  # the ratio of the default members kept
    policy.reset(2, 3)
    assert policy.alpha == 0.5  # before any data: the widest
    greedy = build_policy("auto", defaults={"alpha": 0.0}).reset(2, 3)
    assert greedy.member_widths() == [0.0] and greedy.alpha == 0.0
    assert build_policy("auto").get_params()["max_alpha"] is None  # unset: the members as given
    with pytest.raises(ValueError, match="max_alpha must be a finite number ≥ 0"):
        AutoLinUCB(max_alpha=-1.0)


def test_training_learns_the_files_propensities(data_file: Path, tmp_path: Path) -> None:
    """``banditrec train --policy auto``: the member scores use the logged propensities."""
    from banditrec.logged_data import read_logged_csv
    from banditrec.training import train_from_file

    schema = load_default_schema()
    model = train_from_file(data_file, tmp_path / "auto.npz", schema, AutoLinUCB())
    data = read_logged_csv(data_file, schema)
    # The fixture was logged uniformly (p = 1/4): far from auto's own served probabilities.
    assert np.all(data.propensity == 0.25)
    logged = AutoLinUCB().reset(schema.n_actions, schema.n_features)
    logged.update_batch(data.X, data.action, data.reward, propensities=data.propensity)
    recomputed = AutoLinUCB().reset(schema.n_actions, schema.n_features)
    recomputed.update_batch(data.X, data.action, data.reward)
    trained = model.policy
    assert isinstance(trained, AutoLinUCB)
    # Batch by batch in the file equals one batch (the same row kernel, row by row).
    np.testing.assert_allclose(trained.value_, logged.value_, rtol=1e-9)
    assert not np.allclose(trained.value_, recomputed.value_, rtol=1e-6)


def test_each_decision_records_the_width_it_was_made_with() -> None:
    """``/recommend_action`` reports the record's α: the width under the engine's lock at the
    decision, not whatever a learn event applied since made it."""
    from banditrec.engine import Engine
    from conftest import SEED_REQUEST

    schema = load_default_schema()
    policy = AutoLinUCB().reset(schema.n_actions, schema.n_features)
    engine = Engine(
        Model(policy, schema, "2026-01-01T00:00:00+00:00", "v1"), np.random.default_rng(0)
    )
    context = {k: v for k, v in SEED_REQUEST.items() if k != "user_id"}
    wide = engine.decide(context)
    policy.served_[:] = (0, 1)  # as a learn event choosing the narrow member would
    narrow = engine.decide(context)
    assert (wide.alpha, narrow.alpha) == (1.0, 0.3)
    x = schema.vectorize(context)
    for record in (wide, narrow):
        twin = LinUCB(alpha=record.alpha, ridge=policy.ridge).reset(
            schema.n_actions, schema.n_features
        )
        twin.A_inv_, twin.theta_ = policy.A_inv_, policy.theta_
        np.testing.assert_array_equal(record.scores, twin.score(x).score)


def test_a_batch_of_decisions_with_a_row_without_eligible_action_is_refused() -> None:
    from banditrec.exploration import NoEligibleActionError

    policy = AutoLinUCB().reset(3, 4)
    eligible = np.ones((3, 3), dtype=bool)
    eligible[1] = False
    with pytest.raises(
        NoEligibleActionError, match=r"No eligible action is left to serve \(row 1\)"
    ):
        policy.distribution_batch(np.ones((3, 4)), eligible)
    with pytest.raises(ValueError, match=r"eligible must have shape \(3, 3\)"):
        policy.distribution_batch(np.ones((3, 4)), np.ones((2, 3), dtype=bool))
