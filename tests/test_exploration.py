"""Exploration rules (ε-greedy, softmax, inverse-gap weighting) and sampling: honest,
normalised, masked, tie-aware, in closed form."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from banditrec import _kernels
from banditrec.exploration import (
    EXPLORATIONS,
    EpsilonGreedy,
    InverseGapWeighting,
    NoEligibleActionError,
    Softmax,
    exploration_from_params,
    sample_action,
)

scores_strategy = arrays(np.float64, st.integers(1, 8), elements=st.floats(-5, 5, allow_nan=False))


def reference_probabilities(scores: np.ndarray, eligible: np.ndarray, epsilon: float) -> np.ndarray:
    """The rule written the slow, obvious way."""
    p = np.zeros(len(scores))
    best = scores[eligible].max()
    tied = eligible & (scores >= best - 1e-12 * max(1.0, abs(best)))
    p[eligible] += epsilon / eligible.sum()
    p[tied] += (1 - epsilon) / tied.sum()
    return p


@settings(max_examples=300, deadline=None)
@given(
    arrays(np.float64, st.integers(1, 8), elements=st.sampled_from([-1.0, 0.0, 0.5, 2.0, 3.0])),
    st.data(),
    st.floats(0, 1),
)
def test_probabilities_match_the_reference(
    scores: np.ndarray, data: st.DataObject, epsilon: float
) -> None:
    eligible = data.draw(arrays(np.bool_, len(scores)))
    rule = EpsilonGreedy(epsilon)
    if not eligible.any():
        with pytest.raises(NoEligibleActionError, match="No eligible action"):
            rule.probabilities(scores, eligible)
        return
    p = rule.probabilities(scores, eligible)
    np.testing.assert_allclose(p, reference_probabilities(scores, eligible, epsilon), atol=1e-12)
    assert p.sum() == pytest.approx(1.0)
    assert (p[~eligible] == 0).all()


@settings(max_examples=300, deadline=None)
@given(
    arrays(np.float64, st.integers(1, 40), elements=st.sampled_from([-1.0, 0.0, 0.5, 2.0, 3.0])),
    st.data(),
    st.floats(0, 1),
    st.sampled_from([0.0, 1e-12, 0.3]),
)
def test_the_fused_linear_kernel_serves_the_same_probabilities(
    scores: np.ndarray, data: st.DataObject, epsilon: float, tie_tolerance: float
) -> None:
    # LinUCB's hot path computes its scores and ε-greedy in one compiled call
    # (`_kernels.linear_epsilon_greedy`). With d = 1, x = [1], θ = scores and A⁻¹ = 0 its
    # scores are the given ones: its probabilities must be the rule's, bit for bit.
    eligible = data.draw(arrays(np.bool_, len(scores)))
    rule = EpsilonGreedy(epsilon, tie_tolerance=tie_tolerance)
    out = np.full((4, len(scores)), np.nan)
    n_eligible = _kernels.linear_epsilon_greedy(
        np.zeros((len(scores), 1, 1)), scores[:, None].copy(), np.ones(1), 1.0, eligible,
        epsilon, tie_tolerance, out,
    )  # fmt: skip
    assert n_eligible == eligible.sum()
    np.testing.assert_array_equal(out[0], scores)
    np.testing.assert_array_equal(out[2], 0.0)
    if not eligible.any():
        with pytest.raises(NoEligibleActionError):
            rule.probabilities(scores, eligible)
        return
    np.testing.assert_array_equal(out[3], rule.probabilities(scores, eligible))
    if tie_tolerance == 1e-12:
        np.testing.assert_allclose(out[3], reference_probabilities(scores, eligible, epsilon))


def test_ties_are_split_at_random_and_the_probability_says_so() -> None:
    rule, rng = EpsilonGreedy(0.1), np.random.default_rng(0)
    p = rule.probabilities(np.array([1.0, 1.0, 0.0]), np.ones(3, dtype=bool))
    assert p.tolist() == pytest.approx([0.1 / 3 + 0.45, 0.1 / 3 + 0.45, 0.1 / 3])
    counts = np.bincount([sample_action(p, rng) for _ in range(30_000)], minlength=3)
    # Binomial standard deviation ≈ 87 draws; 600 is ~7 sigma.
    np.testing.assert_allclose(counts, p * 30_000, atol=600)


def test_sampling_never_serves_a_zero_probability_action() -> None:
    rng = np.random.default_rng(1)
    p = np.array([0.0, 0.3, 0.0, 0.7, 0.0])
    draws = {sample_action(p, rng) for _ in range(5_000)}
    assert draws == {1, 3}


@pytest.mark.parametrize("epsilon", [-0.1, 1.1, float("nan")])
def test_invalid_epsilon_is_rejected(epsilon: float) -> None:
    with pytest.raises(ValueError, match="epsilon"):
        EpsilonGreedy(epsilon)


def softmax_reference(
    scores: np.ndarray, eligible: np.ndarray, temperature: float, epsilon: float
) -> np.ndarray:
    p = np.zeros(len(scores))
    z = np.exp((scores[eligible] - scores[eligible].max()) / temperature)
    p[eligible] = (1 - epsilon) * z / z.sum() + epsilon / eligible.sum()
    return p


def igw_reference(
    scores: np.ndarray, eligible: np.ndarray, gamma: float, epsilon: float
) -> np.ndarray:
    """Foster & Rakhlin (2020): 1 / (n + γ·gap) off the best, the rest to the (tied) best."""
    n, best = eligible.sum(), scores[eligible].max()
    tied = eligible & (scores >= best - 1e-12 * max(1.0, abs(best)))
    p = np.zeros(len(scores))
    others = eligible & ~tied
    p[others] = 1 / (n + gamma * (best - scores[others]))
    p[tied] = (1 - p.sum()) / tied.sum()
    p[eligible] = (1 - epsilon) * p[eligible] + epsilon / n
    return p


@settings(max_examples=300, deadline=None)
@given(scores_strategy, st.data(), st.floats(0.01, 100), st.floats(0, 1))
def test_softmax_is_the_closed_form(
    scores: np.ndarray, data: st.DataObject, temperature: float, epsilon: float
) -> None:
    eligible = data.draw(arrays(np.bool_, len(scores)))
    rule = Softmax(temperature, epsilon)
    if not eligible.any():
        with pytest.raises(NoEligibleActionError):
            rule.probabilities(scores, eligible)
        return
    p = rule.probabilities(scores, eligible)
    np.testing.assert_allclose(p, softmax_reference(scores, eligible, temperature, epsilon))
    assert p.sum() == pytest.approx(1.0) and (p[~eligible] == 0).all()
    assert p[eligible].min() >= epsilon / eligible.sum() - 1e-15
    # A better score never gets less probability.
    order = np.argsort(scores[eligible], kind="stable")
    assert (np.diff(p[eligible][order]) >= -1e-15).all()


@settings(max_examples=100, deadline=None)
@given(arrays(np.float64, st.integers(1, 8), elements=st.sampled_from([-1.0, 0.0, 0.25, 0.5, 3.0])))
def test_softmax_limits_are_argmax_and_uniform(scores: np.ndarray) -> None:
    eligible = np.ones(len(scores), dtype=bool)
    # Gaps of at least 0.25 at τ = 0.001: exp(−250) ≈ 1e-109; ties are split equally.
    cold = Softmax(temperature=1e-3).probabilities(scores, eligible)
    greedy = EpsilonGreedy(0.0).probabilities(scores, eligible)
    np.testing.assert_allclose(cold, greedy, rtol=1e-12, atol=1e-100)
    hot = Softmax(temperature=1e9).probabilities(scores, eligible)
    np.testing.assert_allclose(hot, 1 / len(scores), atol=1e-6)


@settings(max_examples=300, deadline=None)
@given(
    arrays(np.float64, st.integers(1, 8), elements=st.sampled_from([-1.0, 0.0, 0.25, 0.5, 1.0])),
    st.data(),
    st.floats(0, 1000),
    st.floats(0, 1),
)
def test_inverse_gap_weighting_is_the_closed_form_and_favours_the_best(
    scores: np.ndarray, data: st.DataObject, gamma: float, epsilon: float
) -> None:
    eligible = data.draw(arrays(np.bool_, len(scores)))
    rule = InverseGapWeighting(gamma, epsilon)
    if not eligible.any():
        with pytest.raises(NoEligibleActionError):
            rule.probabilities(scores, eligible)
        return
    p = rule.probabilities(scores, eligible)
    np.testing.assert_allclose(p, igw_reference(scores, eligible, gamma, epsilon), atol=1e-12)
    assert p.sum() == pytest.approx(1.0) and (p[~eligible] == 0).all()
    n = eligible.sum()
    best = eligible & (scores == scores[eligible].max())
    # The best action(s) get the most, at least 1/n each; a larger gap never gets more.
    assert p[best].min() >= 1 / n - 1e-12 and p[best].min() >= p[eligible].max() - 1e-12
    order = np.argsort(scores[eligible], kind="stable")
    assert (np.diff(p[eligible][order]) >= -1e-12).all()
    # Bounded away from 0 by the gap (scores span at most 2 here) and by the floor.
    assert p[eligible].min() >= min(1 / (n + 2 * gamma), epsilon / n) - 1e-12


def test_inverse_gap_weighting_at_gamma_zero_is_uniform() -> None:
    p = InverseGapWeighting(gamma=0.0).probabilities(np.array([3.0, 1.0, -2.0]), np.ones(3, bool))
    np.testing.assert_allclose(p, 1 / 3)


@pytest.mark.parametrize("rule", [EpsilonGreedy(0.3), Softmax(0.2, 0.1), InverseGapWeighting(7.0)])
def test_rules_rebuild_from_their_name_and_parameters(
    rule: EpsilonGreedy | Softmax | InverseGapWeighting,
) -> None:
    assert EXPLORATIONS[rule.name] is type(rule)
    assert exploration_from_params(rule.name, rule.get_params()) == rule


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("boltzmann", {}, "Unknown exploration rule 'boltzmann'"),
        ("softmax", {"temperature": 0}, "temperature"),
        ("softmax", {"temperature": float("nan")}, "temperature"),
        ("softmax", {"epsilon": 2}, "epsilon"),
        ("igw", {"gamma": -1}, "gamma"),
        ("igw", {"epsilon": float("nan")}, "epsilon"),
        ("igw", {"gama": 3}, "'igw'.*gama"),
    ],
)
def test_bad_rules_are_rejected(name: str, params: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        exploration_from_params(name, params)
