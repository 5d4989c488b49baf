"""Each policy's own math against a plain reference: hybrid LinUCB, Thompson sampling's
Monte Carlo probabilities, the forgetting factor, most-popular, fixed rules, and building a
policy from configuration."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from banditrec import _kernels
from banditrec.exploration import EpsilonGreedy, InverseGapWeighting, Softmax
from banditrec.features import load_default_schema
from banditrec.policies import (
    FixedRule,
    HybridLinUCB,
    LinearThompsonSampling,
    LinUCB,
    MostPopular,
    RidgeEpsilonGreedy,
    SquareCB,
    UniformRandom,
    build_policy,
)
from conftest import SEED_CONTEXT

SCHEMA = load_default_schema()


# -- hybrid LinUCB --------------------------------------------------------------------


def joint_ridge(
    X: np.ndarray, actions: np.ndarray, rewards: np.ndarray, K: int, ridge: float, gamma: float
) -> tuple[np.ndarray, np.ndarray]:
    """The one ridge regression hybrid LinUCB is: features φ(x, a) = [x, x·1{a = 0}, ...].

    Returns (G, h) with G = λI + Σ φφᵀ and h = Σ rφ, decayed by γ per row (prior kept).
    """
    d = X.shape[1]
    G, h = ridge * np.eye(d * (K + 1)), np.zeros(d * (K + 1))
    for x, a, r in zip(X, actions, rewards, strict=True):
        phi = np.zeros(d * (K + 1))
        phi[:d], phi[d * (a + 1) : d * (a + 2)] = x, x
        G = gamma * G + (1 - gamma) * ridge * np.eye(len(G)) + np.outer(phi, phi)
        h = gamma * h + r * phi
    return G, h


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 5),
    st.integers(0, 40),
    st.floats(0.2, 5),
    st.sampled_from([1.0, 0.9]),
    st.integers(0, 2**32 - 1),
)
def test_hybrid_scores_are_the_joint_ridge_regression(
    K: int, d: int, n: int, ridge: float, gamma: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    X, actions, rewards = rng.normal(size=(n, d)), rng.integers(0, K, n), rng.normal(size=n)
    policy = HybridLinUCB(alpha=1.5, ridge=ridge, gamma=gamma).reset(K, d)
    for x, a, r in zip(X, actions, rewards, strict=True):
        policy.update(x, int(a), float(r))
    G, h = joint_ridge(X, actions, rewards, K, ridge, gamma)
    G_inv = np.linalg.inv(G)
    x = rng.normal(size=d)
    s = policy.score(x)
    for a in range(K):
        phi = np.zeros(d * (K + 1))
        phi[:d], phi[d * (a + 1) : d * (a + 2)] = x, x
        scale = 1 + np.abs(G_inv).max() * (1 + np.abs(h).max())
        assert s.mean[a] == pytest.approx(phi @ G_inv @ h, abs=1e-8 * scale)
        assert s.width[a] == pytest.approx(1.5 * math.sqrt(phi @ G_inv @ phi), abs=1e-8 * scale)


def test_hybrid_follows_algorithm_2_of_the_paper_step_by_step() -> None:
    """Li et al. 2010, Algorithm 2, written literally (z = x): same A₀, b₀, β and scores."""
    rng = np.random.default_rng(5)
    K, d, alpha = 3, 4, 0.7
    A0, b0 = np.eye(d), np.zeros(d)
    A, B, b = (
        [np.eye(d) for _ in range(K)],
        [np.zeros((d, d)) for _ in range(K)],
        [np.zeros(d) for _ in range(K)],
    )
    policy = HybridLinUCB(alpha=alpha).reset(K, d)
    for _ in range(100):
        x = rng.normal(size=d)
        z = x
        beta = np.linalg.solve(A0, b0)
        A0_inv = np.linalg.inv(A0)
        p = np.empty(K)
        for a in range(K):
            A_inv = np.linalg.inv(A[a])
            theta = A_inv @ (b[a] - B[a] @ beta)
            s = (
                z @ A0_inv @ z
                - 2 * z @ A0_inv @ B[a].T @ A_inv @ x
                + x @ A_inv @ x
                + x @ A_inv @ B[a] @ A0_inv @ B[a].T @ A_inv @ x
            )
            p[a] = z @ beta + x @ theta + alpha * math.sqrt(s)
        np.testing.assert_allclose(policy.score(x).score, p, rtol=1e-9, atol=1e-9)
        a, r = int(p.argmax()), float(rng.random())
        A_inv = np.linalg.inv(A[a])
        A0 += B[a].T @ A_inv @ B[a]
        b0 += B[a].T @ A_inv @ b[a]
        A[a] += np.outer(x, x)
        B[a] += np.outer(x, z)
        b[a] += r * x
        A_inv = np.linalg.inv(A[a])
        A0 += np.outer(z, z) - B[a].T @ A_inv @ B[a]
        b0 += r * z - B[a].T @ A_inv @ b[a]
        policy.update(x, a, r)
    np.testing.assert_allclose(policy.A0_, A0, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(policy.b0_, b0, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(policy.beta_, np.linalg.solve(A0, b0), rtol=1e-9, atol=1e-9)


def test_a_new_hybrid_action_starts_from_the_shared_estimate_not_zero() -> None:
    rng = np.random.default_rng(6)
    X = SCHEMA.vectorize_many({k: np.repeat(v, 300) for k, v in SEED_CONTEXT.items()}) + rng.normal(
        scale=0.1, size=(300, SCHEMA.n_features)
    )
    hybrid = HybridLinUCB().reset(3, SCHEMA.n_features)
    disjoint = LinUCB().reset(3, SCHEMA.n_features)
    actions, rewards = rng.integers(0, 3, 300), (rng.random(300) < 0.6).astype(float)
    for policy in (hybrid, disjoint):
        policy.update_batch(X, actions, rewards)
        policy.add_action()
    x = SCHEMA.vectorize(SEED_CONTEXT)
    shared = float(x @ hybrid.beta_)
    assert shared > 0.2  # everyone earned ~0.6: the shared part learned it
    assert hybrid.score(x).mean[3] == pytest.approx(shared, abs=1e-12)
    assert disjoint.score(x).mean[3] == 0.0  # a disjoint model's new action knows nothing
    # Its width is still the largest: it has not been tried, so it gets explored.
    assert hybrid.score(x).width[3] > hybrid.score(x).width[:3].max()


# -- Thompson sampling ----------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.floats(-1, 1), st.floats(-1, 1), st.floats(0.3, 20), st.floats(0.3, 20), st.floats(0.2, 2)
)
def test_thompson_monte_carlo_estimate_is_close_to_the_exact_probability(
    b0: float, b1: float, a0: float, a1: float, v: float
) -> None:
    """Two actions, one feature x = 1: each score ~ N(b/A, v²/A), so P(action 1 wins) is
    Φ((m1 − m0) / √(s0² + s1²)) exactly."""
    M = 20_000
    policy = LinearThompsonSampling(v=v, n_draws=M, exploration=EpsilonGreedy(0.0))
    policy.reset(2, 1).set_state(
        {"A_": np.array([[[a0]], [[a1]]]), "b_": np.array([[b0], [b1]]), "n_updates_": np.ones(2)}
    )
    m0, m1, s0, s1 = b0 / a0, b1 / a1, v / math.sqrt(a0), v / math.sqrt(a1)
    exact = 0.5 * (1 + math.erf((m1 - m0) / math.sqrt(2 * (s0**2 + s1**2))))
    _, p = policy.distribution(np.ones(1), np.ones(2, dtype=bool), np.random.default_rng(0))
    # 5 standard errors of a proportion over M draws.
    assert p[1] == pytest.approx(exact, abs=5 * math.sqrt(exact * (1 - exact) / M) + 1e-9)
    assert p.sum() == pytest.approx(1.0)


def test_thompson_probabilities_are_draw_shares_with_the_floor() -> None:
    """The logged distribution is the M-draw estimate: multiples of (1 − ε)/M plus ε/n."""
    policy = LinearThompsonSampling(n_draws=50, exploration=EpsilonGreedy(0.2)).reset(3, 2)
    policy.update_batch(np.ones((10, 2)), np.arange(10) % 3, np.linspace(0, 1, 10))
    eligible = np.array([True, True, False])
    _, p = policy.distribution(np.ones(2), eligible, np.random.default_rng(1))
    wins = (p[:2] - 0.2 / 2) / (0.8 / 50)
    np.testing.assert_allclose(wins, np.round(wins), atol=1e-9)
    assert p[2] == 0.0 and p[:2].min() >= 0.1 - 1e-12


def test_thompson_needs_a_generator() -> None:
    policy = LinearThompsonSampling().reset(2, 2)
    with pytest.raises(ValueError, match="Generator"):
        policy.distribution(np.ones(2), np.ones(2, dtype=bool))


def test_thompson_with_another_rule_averages_it_over_the_draws() -> None:
    policy = LinearThompsonSampling(n_draws=7, exploration=Softmax(temperature=0.3))
    policy.reset(3, 2).update_batch(np.ones((6, 2)), np.arange(6) % 3, np.arange(6) / 6)
    x, eligible = np.array([1.0, -0.5]), np.ones(3, dtype=bool)
    _, p = policy.distribution(x, eligible, np.random.default_rng(2))
    s = policy.score(x)
    normals = np.random.default_rng(2).standard_normal((7, 3))
    expected = np.mean(
        [Softmax(0.3).probabilities(s.mean + s.width * z, eligible) for z in normals], axis=0
    )
    np.testing.assert_allclose(p, expected, rtol=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 30), st.integers(1, 5)),
        elements=st.sampled_from([-1.0, 0.0, 0.5, 2.0]),
    ),
    st.data(),
    st.floats(0, 1),
)
def test_argmax_frequencies_kernel_matches_numpy(
    normals: np.ndarray, data: st.DataObject, epsilon: float
) -> None:
    M, K = normals.shape
    mean = data.draw(arrays(np.float64, K, elements=st.sampled_from([0.0, 0.5, 1.0])))
    scale = data.draw(arrays(np.float64, K, elements=st.sampled_from([0.0, 0.5, 1.0])))
    eligible = data.draw(arrays(np.bool_, K))
    out = np.empty(K)
    n = _kernels.argmax_frequencies(mean, scale, normals, eligible, epsilon, 1e-12, out)
    assert n == eligible.sum()
    if not n:
        return
    expected = np.zeros(K)
    for row in mean + scale * normals:
        best = row[eligible].max()
        tied = eligible & (row >= best - 1e-12 * max(1.0, abs(best)))
        expected[tied] += (1 - epsilon) / tied.sum() / M
    expected[eligible] += epsilon / n
    np.testing.assert_allclose(out, expected, atol=1e-12)


# -- the forgetting factor ------------------------------------------------------------


def test_forgetting_returns_a_neglected_action_to_its_prior() -> None:
    """γ < 1: an action nobody picks drifts back to the prior (mean 0, full width)."""
    policy = LinUCB(gamma=0.99, ridge=1.0).reset(2, 3)
    x = np.array([1.0, 0.5, -0.5])
    for _ in range(200):
        policy.update(x, 0, 1.0)
    learned = policy.score(x)
    for _ in range(2_000):  # only action 1 learns from now on
        policy.update(x, 1, 0.0)
    forgotten = policy.score(x)
    prior = LinUCB(ridge=1.0).reset(2, 3).score(x)
    assert learned.mean[0] > 0.9 and learned.width[0] < 0.2 * prior.width[0]
    assert forgotten.mean[0] == pytest.approx(0.0, abs=1e-6)
    assert forgotten.width[0] == pytest.approx(prior.width[0], rel=1e-6)


def test_forgetting_keeps_the_prior_so_a_long_run_stays_finite() -> None:
    """20,000 events at γ = 0.9 (γ²⁰⁰⁰⁰ underflows to 0): A stays ≥ λI, nothing is NaN."""
    rng = np.random.default_rng(8)
    policy = LinUCB(gamma=0.9, ridge=2.0).reset(3, 5)
    X = np.zeros((20_000, 5))
    X[:, 0] = rng.normal(size=20_000)  # only one direction is ever seen
    for x in X:
        policy.update(x, int(rng.integers(0, 3)), 1.0)
    assert np.isfinite(policy.A_inv_).all()
    for A in policy.A_:
        assert np.linalg.eigvalsh(A).min() >= 2.0 - 1e-9


@settings(max_examples=100, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 8)), elements=st.floats(-3, 3))
)
def test_spd_inverse_kernel_matches_numpy(M: np.ndarray) -> None:
    A = M @ M.T + 0.5 * np.eye(len(M))
    out = np.empty_like(A)
    assert _kernels.spd_inverse(A, out)
    np.testing.assert_allclose(out, np.linalg.inv(A), atol=1e-9 * max(1.0, np.abs(A).max()))
    np.testing.assert_array_equal(out, out.T)
    assert not _kernels.spd_inverse(-A, out)


# -- baselines and fixed rules --------------------------------------------------------


def test_most_popular_is_the_smoothed_mean_and_forgets_with_gamma() -> None:
    policy = MostPopular(a=2.0, b=3.0, gamma=0.5).reset(2, 1)
    x = np.ones(1)
    policy.update(x, 0, 1.0)
    policy.update(x, 1, 0.0, weight=2.0)
    policy.update(x, 0, 1.0)
    # Every event decays both sums by γ first: the first row is decayed twice, the second once.
    weight = np.array([0.25 + 1.0, 2.0 * 0.5])
    reward = np.array([0.25 + 1.0, 0.0])
    np.testing.assert_allclose(policy.score(x).mean, (reward + 2.0) / (weight + 5.0))


def test_uniform_random_serves_every_eligible_action_alike() -> None:
    policy = UniformRandom().reset(4, 2)
    policy.update_batch(np.ones((10, 2)), np.zeros(10, dtype=int), np.ones(10))
    _, p = policy.distribution(np.ones(2), np.array([True, True, True, False]))
    np.testing.assert_allclose(p, [1 / 3, 1 / 3, 1 / 3, 0])
    assert policy.exploration == EpsilonGreedy(1.0)


RULES = [
    {"if": {"segment": "high", "device": ["ios", "web"]}, "then": "deep_link_to_store"},
    {"if": {"n_sessions": {"gt": 0.0}}, "then": "suggest_new_app"},  # log1p(n) − 2 > 0: n ≥ 7
    {"if": {"country": "__other__"}, "then": "invite_friend"},
    {"else": "show_bonus_offer"},
]


def served(policy: FixedRule, eligible: np.ndarray | None = None, **context: object) -> str:
    """The action with the most probability (1 − ε + ε/n) for the seed context + changes."""
    x = SCHEMA.vectorize({**SEED_CONTEXT, **context})
    mask = np.ones(SCHEMA.n_actions, dtype=bool) if eligible is None else eligible
    _, p = policy.distribution(x, mask)
    assert p.max() == pytest.approx(1 - 0.05 + 0.05 / mask.sum())
    return SCHEMA.actions[int(p.argmax())]


def test_a_fixed_rule_serves_the_first_matching_rule() -> None:
    policy = build_policy("fixed_rule", {"rules": RULES}, schema=SCHEMA)
    assert isinstance(policy, FixedRule)
    policy.reset(SCHEMA.n_actions, SCHEMA.n_features)
    assert served(policy) == "deep_link_to_store"
    assert served(policy, device="android") == "suggest_new_app"  # 10 sessions
    assert served(policy, device="android", n_sessions=0) == "show_bonus_offer"
    assert served(policy, device="android", n_sessions=0, country="XX") == "invite_friend"
    # The rule's action is not eligible: the next matching rule's is served.
    not_store = np.array([True, True, True, False])
    assert served(policy, not_store) == "suggest_new_app"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([{"else": 0}, {"if": {"bias": 1}, "then": 1}], "last"),
        ([{"if": {}, "then": 0}], "non-empty"),
        ([{"when": {"bias": 1}, "then": 0}], "must be"),
        ([{"if": {"bias": 1}, "then": 1.5}], "name or an index"),
        ([{"if": {"colour": "red"}, "then": 0}], "unknown feature 'colour'"),
        ([{"if": {"segment": "platinum"}, "then": 0}], "platinum"),
        ([{"if": {"n_sessions": {"above": 1}}, "then": 0}], "above"),
        ([{"if": {"bias": 1}, "then": "teleport"}], "teleport"),
        ([{"if": {"bias": 1}, "then": 9}], "9"),
        ("else", "list"),
    ],
)
def test_a_bad_rule_is_rejected_with_a_clear_message(rules: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_policy("fixed_rule", {"rules": rules}, schema=SCHEMA).reset(
            SCHEMA.n_actions, SCHEMA.n_features
        )


# -- building from configuration ------------------------------------------------------


def test_build_policy_applies_defaults_then_params() -> None:
    policy = build_policy(
        "linucb",
        {"alpha": 0.3},
        defaults={"alpha": 2.0, "ridge": 4.0, "temperature": 9.0},
        exploration_defaults={"epsilon": 0.2},
    )
    assert policy.get_params() == {"alpha": 0.3, "ridge": 4.0, "gamma": 1.0, "refresh_every": 1000}
    assert policy.exploration == EpsilonGreedy(0.2)


def test_build_policy_keeps_the_policys_own_rule_unless_told() -> None:
    squarecb = build_policy("squarecb", exploration_defaults={"epsilon": 0.01})
    assert isinstance(squarecb, SquareCB)
    assert squarecb.exploration == InverseGapWeighting(gamma=100.0, epsilon=0.01)
    tuned = build_policy("squarecb", exploration_params={"gamma": 30})
    assert tuned.exploration == InverseGapWeighting(gamma=30)
    other = build_policy("epsilon_greedy", exploration="softmax", exploration_params={"epsilon": 0})
    assert isinstance(other, RidgeEpsilonGreedy) and other.exploration == Softmax(0.1, 0.0)
    # Uniform is uniform: server-wide defaults do not reach it, an explicit rule is refused.
    assert build_policy("uniform", exploration_defaults={"epsilon": 0.05}).exploration == (
        EpsilonGreedy(1.0)
    )
    with pytest.raises(ValueError, match="exploration"):
        build_policy("uniform", exploration_params={"epsilon": 0.05})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "linucbb"}, "Unknown policy 'linucbb'; known: linucb, hybrid_linucb"),
        ({"name": "linucb", "params": {"alpah": 1}}, "'linucb'.*alpah"),
        ({"name": "linucb", "params": {"alpha": -1}}, "alpha"),
        ({"name": "linucb", "exploration": "boltzmann"}, "Unknown exploration rule 'boltzmann'"),
        ({"name": "softmax", "exploration_params": {"temp": 1}}, "'softmax'.*temp"),
        ({"name": "linucb", "params": {"exploration": "softmax"}}, "on its own"),
    ],
)
def test_build_policy_names_what_is_wrong(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_policy(**kwargs)  # type: ignore[arg-type]
