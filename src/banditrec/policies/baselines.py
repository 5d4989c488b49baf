"""Context-free baselines: uniform random and most-popular (smoothed).

A team compares a learned policy against these (and against its own rule, `FixedRule`) on
the same logs, so they follow the full contract: honest distributions, input checks, state
in model files. They ignore the context when deciding, but still validate it when learning
(DESIGN principle 6: a bad vector is rejected the same way for every policy).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from banditrec.exploration import EpsilonGreedy, Exploration
from banditrec.policies.base import Array, Policy, Scores, check_gamma, decay_weights

__all__ = ["MostPopular", "UniformRandom"]


class UniformRandom(Policy):
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

    def update(self, x: Array, action: int, reward: float, weight: float = 1.0) -> None:
        self._check_one(x, action, reward, weight)
        self._check_x(x)
        self.n_updates_[action] += 1

    def correct(self, x: Array, action: int, reward_delta: float) -> None:
        self._check_one(x, action, reward_delta, 1.0)
        self._check_x(x)

    def update_batch(
        self,
        X: Array,
        actions: NDArray[np.integer[Any]],
        rewards: Array,
        weights: Array | None = None,
        corrections: NDArray[np.bool_] | None = None,
    ) -> None:
        X, actions, rewards, weights = self._check_batch(X, actions, rewards, weights)
        observed = actions if corrections is None else actions[~np.asarray(corrections)]
        self.n_updates_ += np.bincount(observed, minlength=self.n_actions_)


class MostPopular(Policy):
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
        for name, value in (("a", a), ("b", b)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}.")
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
        self._check_one(x, action, reward, weight)
        self._check_x(x)
        if self.gamma != 1.0:
            self.weight_ *= self.gamma
            self.reward_sum_ *= self.gamma
        self.weight_[action] += weight
        self.reward_sum_[action] += weight * reward
        self.n_updates_[action] += 1

    def correct(self, x: Array, action: int, reward_delta: float) -> None:
        self._check_one(x, action, reward_delta, 1.0)
        self._check_x(x)
        self.reward_sum_[action] += reward_delta

    def update_batch(
        self,
        X: Array,
        actions: NDArray[np.integer[Any]],
        rewards: Array,
        weights: Array | None = None,
        corrections: NDArray[np.bool_] | None = None,
    ) -> None:
        X, actions, rewards, weights = self._check_batch(X, actions, rewards, weights)
        n, K = len(actions), self.n_actions_
        decay, prior_decay = decay_weights(self.gamma, corrections, n)
        observed = np.ones(n, dtype=bool) if corrections is None else ~np.asarray(corrections)
        self.weight_ *= prior_decay
        self.reward_sum_ *= prior_decay
        self.weight_ += np.bincount(actions, weights * observed * decay, minlength=K)
        b_weights = np.where(observed, weights, 1.0) * rewards * decay
        self.reward_sum_ += np.bincount(actions, b_weights, minlength=K)
        self.n_updates_ += np.bincount(actions[observed], minlength=K)
