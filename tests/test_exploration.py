"""ε-greedy probabilities and sampling: honest, normalised, masked, tie-aware."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from banditrec.exploration import EpsilonGreedy, NoEligibleActionError, sample_action


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
