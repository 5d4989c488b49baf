"""Policies: per-action scores from a feature vector, and learning from (x, action, reward).

The base class does the bookkeeping every policy shares (shapes, input checks, counts, the
serving distribution, state for snapshots); an algorithm is a small subclass. Following
scikit-learn, constructors only store parameters; learned state ends with an underscore and
appears on `reset`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple, Self

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

from banditrec import _kernels
from banditrec.exploration import EpsilonGreedy, Exploration

__all__ = ["POLICIES", "LinUCB", "Policy", "Scores"]

Array = NDArray[np.float64]


class Scores(NamedTuple):
    """Per-action scores of one context: `score` drives exploration, `mean` is the estimate.

    For LinUCB ``score = mean + width`` (the upper confidence bound), with
    ``width = α·√(xᵀA⁻¹x)``.
    """

    score: Array
    mean: Array
    width: Array


class Policy(ABC):
    """Base class: shapes, validation, the serving distribution and the state to snapshot."""

    name: ClassVar[str]
    #: Names of the learned arrays written to and read from a model file.
    state_arrays: ClassVar[tuple[str, ...]]
    #: The state arrays shared by all actions (the others have one row per action).
    shared_arrays: ClassVar[tuple[str, ...]] = ()

    def __init__(self, exploration: Exploration | None = None) -> None:
        self.exploration = exploration if exploration is not None else EpsilonGreedy()

    # -- state -----------------------------------------------------------------------

    def reset(self, n_actions: int, n_features: int) -> Self:
        """Forget everything: the prior for `n_actions` actions over `n_features` features."""
        if n_actions < 1 or n_features < 1:
            raise ValueError("A policy needs at least one action and one feature.")
        self.n_actions_ = n_actions
        self.n_features_ = n_features
        self.n_updates_ = np.zeros(n_actions, dtype=np.int64)
        self._init_state()
        return self

    @abstractmethod
    def _init_state(self) -> None: ...

    @abstractmethod
    def get_params(self) -> dict[str, Any]:
        """The constructor's parameters (without the exploration rule), JSON-ready."""

    def get_state(self) -> dict[str, NDArray[Any]]:
        """Copies of the learned arrays, keyed by name."""
        return {name: getattr(self, name).copy() for name in (*self.state_arrays, "n_updates_")}

    def set_state(self, state: dict[str, NDArray[Any]]) -> Self:
        """Load learned arrays (as given by `get_state`); shapes are checked."""
        n_actions, n_features = state["b_"].shape if "b_" in state else state["theta_"].shape
        self.reset(n_actions, n_features)
        for name in (*self.state_arrays, "n_updates_"):
            current = getattr(self, name)
            value = np.asarray(state[name], dtype=current.dtype)
            if value.shape != current.shape:
                raise ValueError(
                    f"State array {name} has shape {value.shape}, not {current.shape}."
                )
            setattr(self, name, value.copy())
        self._after_load()
        return self

    def add_action(self) -> None:
        """Add one action at the end, from the prior; what was learned is kept.

        Policies with shared state (`shared_arrays`) keep it whole, so the new action starts
        from what is shared instead of from zero.
        """
        state = self.get_state()
        n_actions = self.n_actions_
        self.reset(n_actions + 1, self.n_features_)
        for name, value in state.items():
            if name in self.shared_arrays:
                setattr(self, name, value)
            else:
                getattr(self, name)[:n_actions] = value
        self._after_load()

    def _after_load(self) -> None:  # noqa: B027 - an optional hook, not an abstract method
        """Hook to rebuild derived arrays after `set_state`."""

    # -- deciding ----------------------------------------------------------------------

    @abstractmethod
    def score(self, x: Array) -> Scores:
        """Score every action for the feature vector `x` of shape (n_features,)."""

    def distribution(
        self, x: Array, eligible: NDArray[np.bool_], rng: np.random.Generator | None = None
    ) -> tuple[Scores, Array]:
        """Scores and the serving probabilities over actions (0 where not eligible).

        `rng` is for policies whose distribution is itself random (Thompson sampling's
        Monte Carlo estimate); deterministic rules ignore it.
        """
        scores = self.score(x)
        return scores, self.exploration.probabilities(scores.score, eligible)

    # -- learning ----------------------------------------------------------------------

    @abstractmethod
    def update(self, x: Array, action: int, reward: float, weight: float = 1.0) -> None:
        """Learn one observed reward for `action` in context `x`."""

    @abstractmethod
    def correct(self, x: Array, action: int, reward_delta: float) -> None:
        """Change an already learned reward of (x, action) by `reward_delta`.

        Used when rewards of one event are summed: the context was counted once, only the
        reward moves.
        """

    def update_batch(
        self,
        X: Array,
        actions: NDArray[np.integer[Any]],
        rewards: Array,
        weights: Array | None = None,
        corrections: NDArray[np.bool_] | None = None,
    ) -> None:
        """Learn many rounds at once; equals calling `update` row by row (to rounding).

        Rows flagged in `corrections` are applied with `correct` (`rewards` is the delta).
        """
        X, actions, rewards, weights = self._check_batch(X, actions, rewards, weights)
        for i in range(X.shape[0]):
            if corrections is not None and corrections[i]:
                self.correct(X[i], int(actions[i]), float(rewards[i]))
            else:
                self.update(X[i], int(actions[i]), float(rewards[i]), float(weights[i]))

    def _check_batch(
        self,
        X: Array,
        actions: NDArray[np.integer[Any]],
        rewards: Array,
        weights: Array | None,
    ) -> tuple[Array, NDArray[np.intp], Array, Array]:
        X = np.ascontiguousarray(X, dtype=np.float64)
        actions = np.asarray(actions)
        rewards = np.asarray(rewards, dtype=np.float64)
        n = X.shape[0] if X.ndim == 2 else -1
        weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_:
            raise ValueError(f"X must have shape (n, {self.n_features_}), got {X.shape}.")
        for name, arr in (("actions", actions), ("rewards", rewards), ("weights", weights)):
            if arr.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {arr.shape}.")
        if not np.issubdtype(actions.dtype, np.integer):
            raise ValueError("actions must be integer action indices.")
        if n and (actions.min() < 0 or actions.max() >= self.n_actions_):
            raise ValueError(f"actions must be in [0, {self.n_actions_}).")
        for name, arr in (("X", X), ("rewards", rewards), ("weights", weights)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} contains NaN or infinity; nothing was learned.")
        if np.any(weights < 0):
            raise ValueError("weights must be non-negative.")
        return X, actions.astype(np.intp), rewards, weights

    def _check_one(self, x: Array, action: int, reward: float, weight: float) -> None:
        # Principle 6: NaN/inf never enter a model. Checked before any state is touched;
        # the finiteness of x is left to the subclass, which can check it in its kernel.
        if not 0 <= action < self.n_actions_:
            raise ValueError(f"action must be in [0, {self.n_actions_}), got {action}.")
        if not (math.isfinite(reward) and math.isfinite(weight) and weight >= 0):
            raise ValueError("reward and weight must be finite (and weight non-negative).")
        if x.shape != (self.n_features_,):
            raise ValueError(f"x must be a vector of length {self.n_features_}, not {x.shape}.")


class LinUCB(Policy):
    """Disjoint LinUCB (Li et al. 2010, Algorithm 1): one ridge regression per action.

    ``score_k = θ_kᵀx + α·√(xᵀA_k⁻¹x)`` with ``A_k = λI + Σ w·x xᵀ`` and ``b_k = Σ w·r·x``.
    `A⁻¹` and `θ` are kept by Sherman–Morrison rank-one updates in O(d²) per round and
    re-derived exactly (Cholesky solve) after every `refresh_every` updates of an action,
    which bounds the rounding drift of the incremental updates.

    Parameters
    ----------
    alpha
        Width of the confidence bound (exploration bonus), ≥ 0.
    ridge
        Ridge λ > 0: the prior precision, ``A = λI`` before any data.
    gamma
        Forgetting factor in (0, 1]; γ < 1 discounts an action's past data each time it
        learns, for drifting preferences. 1 keeps everything.
    refresh_every
        Number of updates of an action after which its `A⁻¹` and `θ` are recomputed exactly.
    exploration
        The rule from scores to serving probabilities (default ε-greedy, ε = 0.05).

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
    state_arrays: ClassVar[tuple[str, ...]] = ("A_", "b_")

    def __init__(
        self,
        alpha: float = 1.0,
        ridge: float = 1.0,
        gamma: float = 1.0,
        refresh_every: int = 1000,
        exploration: Exploration | None = None,
    ) -> None:
        super().__init__(exploration)
        self.alpha = alpha
        self.ridge = ridge
        self.gamma = gamma
        self.refresh_every = refresh_every
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite number ≥ 0, got {alpha}.")
        if not (math.isfinite(ridge) and ridge > 0):
            raise ValueError(f"ridge must be a finite number > 0, got {ridge}.")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}.")
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be ≥ 1, got {refresh_every}.")

    def get_params(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "ridge": self.ridge,
            "gamma": self.gamma,
            "refresh_every": self.refresh_every,
        }

    def _init_state(self) -> None:
        K, d = self.n_actions_, self.n_features_
        eye = np.broadcast_to(np.eye(d), (K, d, d))
        self.A_: Array = eye * self.ridge
        self.A_inv_: Array = eye / self.ridge
        self.b_: Array = np.zeros((K, d))
        self.theta_: Array = np.zeros((K, d))
        self._since_refresh = np.zeros(K, dtype=np.int64)

    def _after_load(self) -> None:
        self.refresh()

    def refresh(self, actions: range | list[int] | None = None) -> None:
        """Recompute `A⁻¹` and `θ = A⁻¹b` exactly from `A` and `b` (Cholesky solve)."""
        eye = np.eye(self.n_features_)
        for a in range(self.n_actions_) if actions is None else actions:
            factor = scipy.linalg.cho_factor(self.A_[a], lower=True, check_finite=False)
            A_inv = scipy.linalg.cho_solve(factor, eye, check_finite=False)
            self.A_inv_[a] = (A_inv + A_inv.T) / 2  # exactly symmetric, as A is
            self.theta_[a] = self.A_inv_[a] @ self.b_[a]
            self._since_refresh[a] = 0

    def score(self, x: Array) -> Scores:
        score, mean, width = np.empty((3, self.n_actions_))
        _kernels.linear_scores(self.A_inv_, self.theta_, x, self.alpha, score, mean, width)
        return Scores(score, mean, width)

    def update(self, x: Array, action: int, reward: float, weight: float = 1.0) -> None:
        self._check_one(x, action, reward, weight)
        self._rank_one(x, action, weight, weight * reward, self.gamma)
        self.n_updates_[action] += 1
        self._since_refresh[action] += 1
        if self._since_refresh[action] >= self.refresh_every:
            self.refresh([action])

    def correct(self, x: Array, action: int, reward_delta: float) -> None:
        self._check_one(x, action, reward_delta, 1.0)
        self._rank_one(x, action, 0.0, reward_delta, 1.0)

    def _rank_one(
        self, x: Array, action: int, weight: float, weighted_reward: float, gamma: float
    ) -> None:
        if not _kernels.rank_one_update(
            self.A_, self.A_inv_, self.b_, self.theta_, x, action, weight, weighted_reward, gamma
        ):
            raise ValueError("x contains NaN or infinity; nothing was learned.")

    def update_batch(
        self,
        X: Array,
        actions: NDArray[np.integer[Any]],
        rewards: Array,
        weights: Array | None = None,
        corrections: NDArray[np.bool_] | None = None,
    ) -> None:
        if self.gamma != 1.0:  # discounting depends on the order: replay it round by round
            super().update_batch(X, actions, rewards, weights, corrections)
            return
        X, actions, rewards, weights = self._check_batch(X, actions, rewards, weights)
        # Sufficient statistics add up (DESIGN principle 3): one matrix product per action.
        # A correction moves b only: its context was already counted in A.
        observed = np.ones(len(actions), dtype=bool) if corrections is None else ~corrections
        b_weights = np.where(observed, weights, 1.0)
        for a in range(self.n_actions_):
            rows = actions == a
            Xa, wa = X[rows], weights[rows] * observed[rows]
            self.A_[a] += (Xa * wa[:, None]).T @ Xa
            self.b_[a] += (b_weights[rows] * rewards[rows]) @ Xa
            self.n_updates_[a] += int(observed[rows].sum())
        self.refresh()


POLICIES: dict[str, type[Policy]] = {LinUCB.name: LinUCB}
