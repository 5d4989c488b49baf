"""Context-free baselines: uniform random and most-popular (smoothed).

A team compares a learned policy against these (and against its own rule, `FixedRule`) on
the same logs, so they follow the full contract: honest distributions, input checks, state
in model files. They ignore the context when deciding, but still validate it when learning
(DESIGN principle 6: a bad vector is rejected the same way for every policy).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from banditrec.exploration import EpsilonGreedy, Exploration
from banditrec.policies.base import (
    Array,
    Batch,
    CountingPolicy,
    Scores,
    check_gamma,
    check_positive,
)

__all__ = ["MostPopular", "UniformRandom"]


class UniformRandom(CountingPolicy):
    """Every eligible action with the same probability; learns nothing but counts.

    Its exploration rule is always ε-greedy with ε = 1 (which is uniform), so a model file
    says exactly what was served.

    Examples
    --------
    >>> import numpy as np
    >>> policy = UniformRandom().reset(n_actions=4, n_features=2)
    >>> policy.distribution(np.zeros(2), np.array([True, True, False, True]))[1].tolist()
    [0.3333333333333333, 0.3333333333333333, 0.0, 0.3333333333333333]
    """

    name: ClassVar[str] = "uniform"
    state_arrays = ()
    #: Whether configuration may choose the exploration rule (see `build_policy`).
    configurable_exploration: ClassVar[bool] = False

    def __init__(self, exploration: Exploration | None = None) -> None:
        if exploration is not None and exploration != self.default_exploration():
            raise ValueError("The uniform policy takes no exploration rule: it is uniform.")
        super().__init__(exploration)

    @classmethod
    def default_exploration(cls) -> Exploration:
        return EpsilonGreedy(epsilon=1.0)

    def get_params(self) -> dict[str, Any]:
        return {}

    def _init_state(self) -> None:
        pass

    def score(self, x: Array) -> Scores:
        zeros = np.zeros(self.n_actions_)
        return Scores(zeros, zeros, zeros)


class MostPopular(CountingPolicy):
    """The action with the best smoothed mean reward, whatever the context.

    ``score_k = (Σ w·r + a) / (Σ w + a + b)``: the posterior mean of a Beta(a, b) prior for
    rewards in [0, 1] (for other ranges, a prior mean ``a / (a + b)`` worth ``a + b``
    observations). The smoothing keeps an action seen once with reward 1 from beating one
    seen a thousand times with mean 0.9.

    Parameters
    ----------
    a, b
        Prior pseudo-counts > 0 (default 1, 1: Laplace smoothing).
    gamma
        Forgetting factor in (0, 1]: every learn event decays all actions' sums by γ (the
        prior is not decayed).
    exploration
        The rule from scores to serving probabilities (default ε-greedy, ε = 0.05).

    Examples
    --------
    >>> import numpy as np
    >>> policy = MostPopular().reset(n_actions=2, n_features=1)
    >>> policy.update_batch(np.ones((4, 1)), np.array([0, 0, 0, 1]),
    ...                     np.array([1.0, 1.0, 0.0, 1.0]))
    >>> policy.score(np.ones(1)).score.tolist()  # (2 + 1) / (3 + 2), (1 + 1) / (1 + 2)
    [0.6, 0.6666666666666666]
    """

    name: ClassVar[str] = "popular"
    state_arrays = ("weight_", "reward_sum_")

    def __init__(
        self,
        a: float = 1.0,
        b: float = 1.0,
        gamma: float = 1.0,
        exploration: Exploration | None = None,
    ) -> None:
        super().__init__(exploration)
        self.a = a
        self.b = b
        self.gamma = gamma
        check_positive("a", a)
        check_positive("b", b)
        check_gamma(gamma)

    def get_params(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "gamma": self.gamma}

    def _init_state(self) -> None:
        self.weight_: Array = np.zeros(self.n_actions_)
        self.reward_sum_: Array = np.zeros(self.n_actions_)

    def score(self, x: Array) -> Scores:
        mean = (self.reward_sum_ + self.a) / (self.weight_ + self.a + self.b)
        return Scores(mean, mean, np.zeros(self.n_actions_))

    def update(self, x: Array, action: int, reward: float, weight: float = 1.0) -> None:
        super().update(x, action, reward, weight)  # checks and counts
        if self.gamma != 1.0:
            self._decay(self.gamma)
        self.weight_[action] += weight
        self.reward_sum_[action] += weight * reward

    def correct(self, x: Array, action: int, reward_delta: float) -> None:
        super().correct(x, action, reward_delta)
        self.reward_sum_[action] += reward_delta

    def _decay(self, factor: float) -> None:
        """The sums decay by `factor`; the prior (a, b) does not."""
        self.weight_ *= factor
        self.reward_sum_ *= factor

    def _learn_batch(self, batch: Batch) -> None:
        a_weights, b_weights = self._batch_weights(batch, self.gamma)
        K = self.n_actions_
        self.weight_ += np.bincount(batch.actions, a_weights, minlength=K)
        self.reward_sum_ += np.bincount(batch.actions, b_weights, minlength=K)
        super()._learn_batch(batch)  # counts
