"""Disjoint linear policies: LinUCB, and ε-greedy, softmax and SquareCB over ridge means.

All four keep the same per-action ridge statistics (`RidgePolicy`); they differ in the score
they hand to the exploration rule (the upper confidence bound, or the mean) and in their
default rule. Any rule can be configured on any of them; the defaults are the textbook ones.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from banditrec import _kernels
from banditrec.exploration import (
    EpsilonGreedy,
    Exploration,
    InverseGapWeighting,
    NoEligibleActionError,
    Softmax,
)
from banditrec.policies.base import Array, Explanation, Scores, check_positive
from banditrec.policies.ridge import RidgePolicy

__all__ = ["LinUCB", "RidgeEpsilonGreedy", "RidgeSoftmax", "SquareCB"]


class LinUCB(RidgePolicy):
    """Disjoint LinUCB (Li et al. 2010, Algorithm 1): one ridge regression per action.

    ``score_k = θ_kᵀx + α·√(xᵀA_k⁻¹x)`` with ``A_k = λI + Σ w·x xᵀ`` and ``b_k = Σ w·r·x``.
    `A⁻¹` and `θ` are kept by Sherman–Morrison rank-one updates in O(d²) per round and
    re-derived exactly (Cholesky) after every `refresh_every` updates of an action, which
    bounds the rounding drift of the incremental updates.

    Parameters
    ----------
    alpha
        Width of the confidence bound (exploration bonus), ≥ 0.
    ridge
        Ridge λ > 0: the prior precision, ``A = λI`` before any data.
    gamma
        Forgetting factor in (0, 1] for drifting preferences (see `banditrec.policies.ridge`):
        every learn event decays all actions' statistics towards the prior by γ. 1 keeps
        everything.
    refresh_every
        Number of updates of an action after which its `A⁻¹` and `θ` are recomputed exactly.
    exploration
        The rule from scores to serving probabilities (default ε-greedy, ε = 0.01).

    Examples
    --------
    >>> import numpy as np
    >>> policy = LinUCB(alpha=1.0).reset(n_actions=2, n_features=3)
    >>> x = np.array([1.0, 0.0, 1.0])
    >>> for _ in range(20):
    ...     policy.update(x, action=1, reward=1.0)
    >>> s = policy.score(x)
    >>> bool(s.mean[1] > s.mean[0]), bool(s.width[1] < s.width[0])
    (True, True)
    """

    name: ClassVar[str] = "linucb"

    @classmethod
    def default_exploration(cls) -> Exploration:
        # ε = 0.01 and λ = 10: chosen on the learning-quality benchmark; on its reporting
        # seeds they beat VW everywhere and MABWiser on 3 of 4 data sets, tie MABWiser on iris
        # and trail its floor-free argmax on the simulator (docs/benchmarks.md). The floor
        # keeps every importance weight of off-policy evaluation below K/ε (400 at K = 4).
        return EpsilonGreedy(epsilon=0.01)

    def __init__(
        self,
        alpha: float = 1.0,
        ridge: float = 10.0,
        gamma: float = 1.0,
        refresh_every: int = 1000,
        exploration: Exploration | None = None,
    ) -> None:
        super().__init__(ridge, gamma, refresh_every, exploration)
        self.alpha = alpha
        check_positive("alpha", alpha, allow_zero=True)

    def get_params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, **self._ridge_params()}

    def score(self, x: Array) -> Scores:
        return Scores(*self._linear_scores(x, self.alpha))

    def explain(self, x: Array, width_scale: float | None = None) -> Explanation:
        """As `RidgePolicy.explain`, with the width of the score: ``α·√(xᵀA⁻¹x)``."""
        return super().explain(x, self.alpha if width_scale is None else width_scale)

    def distribution(
        self, x: Array, eligible: NDArray[np.bool_], rng: np.random.Generator | None = None
    ) -> tuple[Scores, Array]:
        rule = self.exploration
        if type(rule) is EpsilonGreedy:  # the serving hot path, in one compiled call
            return self._epsilon_greedy_distribution(x, eligible, self.alpha, rule)
        return super().distribution(x, eligible, rng)

    def distribution_batch(
        self, X: Array, eligible: NDArray[np.bool_], rng: np.random.Generator | None = None
    ) -> tuple[Scores, Array]:
        rule = self.exploration
        if type(rule) is EpsilonGreedy:  # a batch of decisions in one compiled call
            return _epsilon_greedy_batch(self, X, eligible, self.alpha, rule)
        return super().distribution_batch(X, eligible, rng)


class _RidgeMeans(RidgePolicy):
    """Score = the ridge mean θᵀx; the exploration rule does all the exploring."""

    def get_params(self) -> dict[str, Any]:
        return self._ridge_params()

    def score(self, x: Array) -> Scores:
        return Scores(*self._linear_scores(x, 0.0))  # α = 0: score = mean, width = 0

    def distribution(
        self, x: Array, eligible: NDArray[np.bool_], rng: np.random.Generator | None = None
    ) -> tuple[Scores, Array]:
        rule = self.exploration
        if type(rule) is EpsilonGreedy:  # as `score` then the rule, in one compiled call
            return self._epsilon_greedy_distribution(x, eligible, 0.0, rule)
        return super().distribution(x, eligible, rng)

    def distribution_batch(
        self, X: Array, eligible: NDArray[np.bool_], rng: np.random.Generator | None = None
    ) -> tuple[Scores, Array]:
        rule = self.exploration
        if type(rule) is EpsilonGreedy:
            return _epsilon_greedy_batch(self, X, eligible, 0.0, rule)
        return super().distribution_batch(X, eligible, rng)


class RidgeEpsilonGreedy(_RidgeMeans):
    """ε-greedy over per-action ridge means: the best mean with 1 − ε, uniform with ε.

    Parameters are those of `RidgePolicy` (``ridge``, ``gamma``, ``refresh_every``); ε is
    the exploration rule's (default `EpsilonGreedy` with ε = 0.1).

    Examples
    --------
    >>> import numpy as np
    >>> policy = RidgeEpsilonGreedy().reset(n_actions=3, n_features=2)
    >>> policy.update(np.array([1.0, 0.0]), action=2, reward=1.0)
    >>> _, p = policy.distribution(np.array([1.0, 0.0]), np.ones(3, dtype=bool))
    >>> p.round(4).tolist()
    [0.0333, 0.0333, 0.9333]
    """

    name: ClassVar[str] = "epsilon_greedy"

    @classmethod
    def default_exploration(cls) -> Exploration:
        return EpsilonGreedy(epsilon=0.1)


class RidgeSoftmax(_RidgeMeans):
    """Softmax (Boltzmann) over per-action ridge means: p ∝ exp(θᵀx / τ), closed form.

    Parameters are those of `RidgePolicy`; the temperature τ is the exploration rule's
    (default `Softmax` with τ = 0.1).

    Examples
    --------
    >>> import numpy as np
    >>> policy = RidgeSoftmax().reset(n_actions=2, n_features=1)
    >>> _, p = policy.distribution(np.ones(1), np.ones(2, dtype=bool))
    >>> p.tolist()  # nothing learned yet: equal means, equal probabilities
    [0.5, 0.5]
    """

    name: ClassVar[str] = "softmax"

    @classmethod
    def default_exploration(cls) -> Exploration:
        return Softmax(temperature=0.1)


class SquareCB(_RidgeMeans):
    """SquareCB (Foster & Rakhlin 2020): inverse-gap weighting over ridge means.

    The regression oracle is the per-action ridge regression; the probabilities are the
    closed-form ``1 / (n + γ·(ŷ* − ŷ_a))`` of `InverseGapWeighting` (default γ = 100; the
    rule's γ, not the forgetting factor ``gamma`` of this class).

    Examples
    --------
    >>> import numpy as np
    >>> policy = SquareCB().reset(n_actions=2, n_features=1)
    >>> for _ in range(50):
    ...     policy.update(np.ones(1), action=0, reward=0.1)
    >>> _, p = policy.distribution(np.ones(1), np.ones(2, dtype=bool))
    >>> p.round(3).tolist()  # gap ≈ 0.098: action 1 gets 1 / (2 + 100 · 0.098)
    [0.915, 0.085]
    """

    name: ClassVar[str] = "squarecb"

    @classmethod
    def default_exploration(cls) -> Exploration:
        return InverseGapWeighting()


def _epsilon_greedy_batch(
    policy: RidgePolicy, X: Array, eligible: NDArray[np.bool_], alpha: float, rule: EpsilonGreedy
) -> tuple[Scores, Array]:
    """`RidgePolicy._epsilon_greedy_distribution` of every row of X (n, d), in one compiled
    call (`_kernels.linear_epsilon_greedy_batch`)."""
    X = policy._batch_input(X, eligible)
    out = np.empty((4, X.shape[0], policy.n_actions_))
    row = _kernels.linear_epsilon_greedy_batch(
        policy.A_inv_, policy.theta_, X, alpha, eligible, rule.epsilon, rule.tie_tolerance, out
    )
    if row >= 0:
        raise NoEligibleActionError(f"No eligible action is left to serve (row {row}).")
    return Scores(out[0], out[1], out[2]), out[3]
