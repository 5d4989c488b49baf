"""The `Policy` base class: shapes, input checks, counts, the serving distribution, state.

An algorithm is a small subclass. Following scikit-learn, constructors only store (and
check) parameters; learned state ends with an underscore and appears on `reset`. The
contract every policy keeps, checked for all of them by one test suite:

- `distribution` returns the full distribution over actions after masking ineligible ones
  (DESIGN principle 4); the engine samples the served action from it with its generator;
- `update` / `correct` / `update_batch` learn, reject bad input before touching any state,
  and never modify their arguments; where the math allows, updates commute (DESIGN
  principle 3) and a batch equals the same rows learned one by one, to rounding;
- `get_params` + `get_state` rebuild an identical policy (that is what a model file holds).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple, Self

import numpy as np
from numpy.typing import NDArray

from banditrec.exploration import EpsilonGreedy, Exploration

__all__ = [
    "Array",
    "Batch",
    "CountingPolicy",
    "Explanation",
    "Policy",
    "Scores",
    "check_gamma",
    "check_positive",
    "decay_to_prior",
    "decay_weights",
]

Array = NDArray[np.float64]


class Scores(NamedTuple):
    """Per-action scores of one context: `score` drives exploration, `mean` is the estimate.

    For LinUCB ``score = mean + width`` (the upper confidence bound), with
    ``width = α·√(xᵀA⁻¹x)``; policies without a notion of width report 0.
    """

    score: Array
    mean: Array
    width: Array


class Explanation(NamedTuple):
    """Why each action has the estimate it has, for one context (`Policy.explain`).

    ``contributions[k, j]`` is feature j's part of action k's estimated mean: for the
    linear policies ``θ_k[j]·x[j]`` (hybrid LinUCB: ``(β[j] + θ_k[j])·x[j]``), which add up
    to `mean` (to rounding). None when the policy's mean is not a sum over features.
    ``width`` is the uncertainty the policy attaches to the mean (LinUCB: ``α·√(xᵀA⁻¹x)``,
    its exploration bonus; Thompson sampling: the sampled scores' deviation; the
    ridge-mean policies: ``√(xᵀA⁻¹x)``, the width at α = 1, which their score ignores).
    """

    mean: Array
    width: Array
    contributions: Array | None


class Batch(NamedTuple):
    """A checked batch of `Policy.update_batch`; `observed` is False on correction rows."""

    X: Array
    actions: NDArray[np.intp]
    rewards: Array
    weights: Array
    observed: NDArray[np.bool_]


class Policy(ABC):
    """Base class: shapes, validation, the serving distribution and the state to snapshot.

    Subclasses set `name` (the key in `POLICIES` and in model files) and `state_arrays`
    (the learned arrays a model file holds), implement `_init_state`, `get_params`,
    `score`, `update` and `correct`, and may override `_learn_batch` with a faster,
    equivalent version (`update_batch` checks the batch, then hands it over).
    """

    name: ClassVar[str]
    #: Names of the learned arrays written to and read from a model file.
    state_arrays: ClassVar[tuple[str, ...]]
    #: Those of `state_arrays` that are shared by all actions (no leading action axis).
    shared_arrays: ClassVar[tuple[str, ...]] = ()

    def __init__(self, exploration: Exploration | None = None) -> None:
        self.exploration = exploration if exploration is not None else self.default_exploration()

    @classmethod
    def default_exploration(cls) -> Exploration:
        """The rule used when none is given: ε-greedy with ε = 0.05."""
        return EpsilonGreedy()

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
        """Copies of the learned arrays, keyed by name, plus ``shape_ = [K, d]``."""
        state = {name: getattr(self, name).copy() for name in (*self.state_arrays, "n_updates_")}
        state["shape_"] = np.array([self.n_actions_, self.n_features_], dtype=np.int64)
        return state

    def set_state(self, state: dict[str, NDArray[Any]]) -> Self:
        """Load learned arrays (as given by `get_state`); shapes are checked."""
        if "shape_" in state:
            n_actions, n_features = (int(n) for n in state["shape_"])
        else:  # model files written before `shape_` existed hold LinUCB's b_ (K, d)
            n_actions, n_features = state["b_"].shape
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

    def _after_load(self) -> None:  # noqa: B027 - an optional hook, not an abstract method
        """Hook to rebuild derived arrays after `set_state`."""

    def clone(self) -> Self:
        """An independent copy: same parameters, exploration rule and learned state."""
        return type(self)(**self.get_params(), exploration=self.exploration).set_state(
            self.get_state()
        )

    def add_action(self) -> Self:
        """Add one action at the end, from the prior; what was learned is kept.

        Per-action arrays gain a row from a fresh prior; shared arrays (`shared_arrays`) are
        kept whole, so with shared state (hybrid LinUCB) the new action starts from what is
        shared instead of from zero.
        """
        old, n_old = self.get_state(), self.n_actions_
        state = self.reset(n_old + 1, self.n_features_).get_state()
        for name in (*self.state_arrays, "n_updates_"):
            if name in self.shared_arrays:
                state[name] = old[name]
            else:
                state[name][:n_old] = old[name]
        return self.set_state(state)

    # -- deciding ----------------------------------------------------------------------

    @abstractmethod
    def score(self, x: Array) -> Scores:
        """Score every action for the feature vector `x` of shape (n_features,)."""

    def explain(self, x: Array) -> Explanation:
        """Each action's estimated mean for `x`, its uncertainty, and each feature's part.

        The fallback of policies whose mean is not linear in the features (the context-free
        baselines, fixed rules): `score`'s mean and width, and ``contributions=None``, since
        no split of such a mean over the features would be exact. The linear policies
        override it with the exact split.
        """
        scores = self.score(x)
        return Explanation(scores.mean, scores.width, None)

    def distribution(
        self, x: Array, eligible: NDArray[np.bool_], rng: np.random.Generator | None = None
    ) -> tuple[Scores, Array]:
        """Scores and the serving probabilities over actions (0 where not eligible).

        `rng` is for policies whose distribution is itself random (Thompson sampling's
        Monte Carlo estimate); deterministic rules ignore it.
        """
        scores = self.score(x)
        return scores, self.exploration.probabilities(scores.score, eligible)

    def distribution_batch(
        self, X: Array, eligible: NDArray[np.bool_], rng: np.random.Generator | None = None
    ) -> tuple[Scores, Array]:
        """`distribution` of every row of `X` (n, d) under its mask ``eligible[i]`` (n, K).

        Returns Scores of (n, K) matrices and the probabilities (n, K). This fallback calls
        `distribution` row by row, in order (a policy that draws from `rng` draws what the
        same rows decided one by one would, minus the sampling draws in between); the
        linear policies override it with one compiled call.

        Raises
        ------
        NoEligibleActionError
            If some row has no eligible action (nothing of the batch is then usable).
        """
        n, K = X.shape[0], self.n_actions_
        out = np.empty((4, n, K))
        for i in range(n):
            scores, probabilities = self.distribution(X[i], eligible[i], rng)
            out[0, i], out[1, i], out[2, i], out[3, i] = (*scores, probabilities)
        return Scores(out[0], out[1], out[2]), out[3]

    def _batch_input(self, X: Array, eligible: NDArray[np.bool_]) -> Array:
        """`X` as a C-contiguous float64 (n, d), checked with `eligible` (n, K): what a
        compiled `distribution_batch` kernel takes."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        n_actions, n_features = self.n_actions_, self.n_features_
        if X.ndim != 2 or X.shape[1] != n_features:
            raise ValueError(f"X must have shape (n, {n_features}), got {X.shape}.")
        if eligible.shape != (X.shape[0], n_actions):
            raise ValueError(
                f"eligible must have shape ({X.shape[0]}, {n_actions}), got {eligible.shape}."
            )
        return X

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
        The whole batch is checked before anything is learned.
        """
        X, actions, rewards, weights = self._check_batch(X, actions, rewards, weights)
        n = len(actions)
        observed = np.ones(n, dtype=bool) if corrections is None else ~np.asarray(corrections)
        self._learn_batch(Batch(X, actions, rewards, weights, observed))

    def _learn_batch(self, batch: Batch) -> None:
        """Learn a checked batch; by default row by row with `update` and `correct`."""
        for i in range(len(batch.actions)):
            x, action, reward = batch.X[i], int(batch.actions[i]), float(batch.rewards[i])
            if batch.observed[i]:
                self.update(x, action, reward, float(batch.weights[i]))
            else:
                self.correct(x, action, reward)

    def _batch_weights(self, batch: Batch, gamma: float) -> tuple[Array, Array]:
        """Per-row weights of a batch learned at once under forgetting factor γ.

        Returns the weights of each row in the context sums (``w``; 0 for a correction,
        whose context was already counted) and in the reward sums (``w·r``, or the delta
        of a correction), each with the discount the row would have by the end of the
        batch, online (`decay_weights`). The statistics held before the batch are decayed
        here, by `_decay`, only once the weights are known.
        """
        observed = batch.observed
        decay, prior_decay = decay_weights(gamma, ~observed, len(observed))
        a_weights = batch.weights * observed * decay
        b_weights = np.where(observed, batch.weights, 1.0) * batch.rewards * decay
        if prior_decay != 1.0:
            self._decay(prior_decay)
        return a_weights, b_weights

    def _count_observed(self, batch: Batch) -> None:
        """`n_updates_` grows by the observed (not correction) rows of each action."""
        self.n_updates_ += np.bincount(batch.actions[batch.observed], minlength=self.n_actions_)

    def _decay(self, factor: float) -> None:
        """Decay the learned statistics by `factor` (policies with a forgetting factor)."""
        raise NotImplementedError(f"{type(self).__name__} has no forgetting factor.")

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
        # the finiteness of x is left to the subclass, which can check it in its kernel
        # (or call `_check_x`).
        if not 0 <= action < self.n_actions_:
            raise ValueError(f"action must be in [0, {self.n_actions_}), got {action}.")
        if not (math.isfinite(reward) and math.isfinite(weight) and weight >= 0):
            raise ValueError("reward and weight must be finite (and weight non-negative).")
        if x.shape != (self.n_features_,):
            raise ValueError(f"x must be a vector of length {self.n_features_}, not {x.shape}.")

    def _check_x(self, x: Array) -> None:
        if not np.all(np.isfinite(x)):
            raise ValueError("x contains NaN or infinity; nothing was learned.")


class CountingPolicy(Policy):
    """A policy that learns nothing from rewards but counts them (per action).

    It still checks what it is given, as every policy does (DESIGN principle 6: a bad
    vector is rejected the same way whatever the policy); subclasses may learn more on top.
    """

    def update(self, x: Array, action: int, reward: float, weight: float = 1.0) -> None:
        self._check_one(x, action, reward, weight)
        self._check_x(x)
        self.n_updates_[action] += 1

    def correct(self, x: Array, action: int, reward_delta: float) -> None:
        self._check_one(x, action, reward_delta, 1.0)
        self._check_x(x)

    def _learn_batch(self, batch: Batch) -> None:
        self._count_observed(batch)


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Reject a parameter that is not a finite number > 0 (≥ 0 with `allow_zero`)."""
    if not (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        bound = "≥" if allow_zero else ">"
        raise ValueError(f"{name} must be a finite number {bound} 0, got {value}.")


def check_gamma(gamma: float) -> None:
    """Reject a forgetting factor outside (0, 1]."""
    if not 0 < gamma <= 1:  # also False for NaN
        raise ValueError(f"gamma must be in (0, 1], got {gamma}.")


def decay_weights(
    gamma: float, corrections: NDArray[np.bool_] | None, n: int
) -> tuple[Array, float]:
    """Discount factors of a batch learned in row order under forgetting factor γ.

    Online, every observed row first discounts all statistics by γ, then adds itself;
    corrections do not advance the clock. After the batch, row i's contribution has been
    discounted ``T − t_i`` times (t_i: observed rows up to and including row i, T: all
    observed rows), and the statistics held before the batch ``T`` times. Returns the
    per-row factors ``γ^(T − t_i)`` and ``γ^T`` (both 1 when γ = 1).
    """
    observed = np.ones(n, dtype=bool) if corrections is None else ~np.asarray(corrections)
    ticks = np.cumsum(observed)
    total = int(ticks[-1]) if n else 0
    if gamma == 1.0:
        return np.ones(n), 1.0
    # exp of a sum, not a product of n factors: no rounding build-up; underflow to 0 is the
    # intended limit (evidence that old is forgotten).
    return np.exp((total - ticks) * math.log(gamma)), math.exp(total * math.log(gamma))


def decay_to_prior(A: Array, factor: float, ridge: float) -> None:
    """A ← f·A + (1 − f)·λI in place, for one matrix or a stack of them (leading axes)."""
    A *= factor
    diagonal = np.einsum("...ii->...i", A)  # a writable view of every diagonal
    diagonal += (1.0 - factor) * ridge
