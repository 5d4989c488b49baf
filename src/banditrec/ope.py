"""Off-policy evaluation: how would a new policy have done on the logged decisions?

Five estimators in the style of Open Bandit Pipeline (``obp.ope``). Each is a small frozen
dataclass whose fields are its hyperparameters, with ``round_rewards`` (per-round terms, shape
``(n,)``, whose mean is the estimate) and ``estimate`` (a :class:`PolicyValueEstimate` with a
percentile-bootstrap confidence interval over rounds).

- :class:`Replay`: mean reward over the rounds where the evaluated policy agrees with the log
  (Li et al., 2011). Unbiased only for logs from *uniform* random logging.
- :class:`IPS`: inverse propensity scoring, mean of ``w_i r_i`` with ``w_i = pi(a_i|x_i) / p_i``.
- :class:`SNIPS`: self-normalized IPS, ``sum(w r) / sum(w)``.
- :class:`DirectMethod`: mean of ``sum_a pi(a|x_i) q(x_i, a)`` under a reward model ``q``.
- :class:`DoublyRobust`: the direct method plus the weighted residual ``w_i (r_i - q(x_i, a_i))``.

Inputs, one entry per logged round: ``reward (n,)`` float; ``action (n,)`` int in
``[0, n_actions)``; ``propensity (n,)`` the logging policy's probability of the logged action,
in ``(0, 1]``; ``action_dist (n, n_actions)`` the evaluated policy's action probabilities (rows
sum to 1); ``estimated_rewards (n, n_actions)`` reward-model predictions, best made out of fold
by :func:`cross_fit_reward_model`. Invalid inputs raise ``ValueError`` naming the argument.
Randomness (bootstrap resampling, folds) comes only from the ``rng`` argument: a
``numpy.random.Generator`` or an int seed (``None`` draws fresh OS entropy, not reproducible).

Every result reports the effective sample size ``ESS = (sum w)^2 / sum w^2`` of its weights:
importance weights for IPS, SNIPS and DR; match weights for replay (so, the number of matched
rounds); all ones for DM (so, ``n``). Below ``min_effective_sample_size`` (default 100) a
:class:`LowEffectiveSampleSizeWarning` is emitted and recorded in the result's ``warnings``: with
fewer than about 100 effective rounds neither the estimate nor the bootstrap interval is reliable.
That ESS is *realized*: it sees only the weights of the actions the log happened to serve. With
the logging policy's full distribution, :func:`expected_effective_sample_size` counts the large
weights the log did not draw as well (docs/evaluation.md).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "IPS",
    "SNIPS",
    "DirectMethod",
    "DoublyRobust",
    "LowEffectiveSampleSizeWarning",
    "PolicyValueEstimate",
    "Replay",
    "SwitchDoublyRobust",
    "cross_fit_reward_model",
    "estimate_all",
    "expected_effective_sample_size",
]

FloatArray = NDArray[np.float64]
Seed = np.random.Generator | int | None

#: Absolute tolerance on ``action_dist`` row sums.
ROW_SUM_TOLERANCE = 1e-6
# Bootstrap resamples are drawn in blocks of about this many indices, to bound memory.
_BOOTSTRAP_BLOCK = 1 << 20


class LowEffectiveSampleSizeWarning(UserWarning):
    """The weights leave too few effective rounds for a reliable estimate."""


@dataclass(frozen=True)
class PolicyValueEstimate:
    """The estimated value of an evaluation policy and its uncertainty.

    ``[ci_low, ci_high]`` is a ``1 - alpha`` percentile-bootstrap interval; ``warnings`` repeats
    every warning emitted while estimating.
    """

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    n_rounds: int
    effective_sample_size: float
    warnings: tuple[str, ...] = ()
    #: A bound on the estimate's bias, for an estimator that trades some (Switch-DR);
    #: None for the unbiased ones, or when it cannot be bounded.
    bias_bound: float | None = None


# ---------------------------------------------------------------------------------- validation


def _array(
    name: str, value: ArrayLike, ndim: int, n: int | None, ref: str = "reward"
) -> FloatArray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array; got shape {arr.shape}.")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} must contain at least one round; got n == 0.")
    if n is not None and arr.shape[0] != n:
        raise ValueError(
            f"{name} has {arr.shape[0]} rounds but {ref} has {n}; every input needs one "
            "entry per round."
        )
    finite = np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1)
    if not finite.all():
        raise ValueError(f"{name} contains NaN or inf (first at round {np.argmin(finite)}).")
    return arr


def _action(name: str, value: ArrayLike, n: int, n_actions: int | None) -> NDArray[np.intp]:
    raw = np.asarray(value)
    if raw.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold integer action indices; got dtype {raw.dtype}.")
    arr = _array(name, raw, 1, n)
    if not np.array_equal(arr, np.round(arr)):
        raise ValueError(f"{name} must hold integer action indices; got fractional values.")
    high = np.inf if n_actions is None else n_actions
    bad = (arr < 0) | (arr >= high)
    if bad.any():
        i = int(np.argmax(bad))
        allowed = "at least 0" if n_actions is None else f"in [0, n_actions) = [0, {n_actions})"
        raise ValueError(
            f"{name} is out of range: round {i} has action {arr[i]:g}, but action indices "
            f"must be {allowed}."
        )
    return arr.astype(np.intp)


def _propensity(value: ArrayLike, n: int) -> FloatArray:
    p = _array("propensity", value, 1, n)
    bad = (p <= 0.0) | (p > 1.0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"propensity must be in (0, 1]; round {i} has {p[i]:g}. It is the probability "
            "with which the logging policy chose the logged action."
        )
    return p


def _action_dist(value: ArrayLike, n: int | None) -> FloatArray:
    dist = _array("action_dist", value, 2, n)
    if (dist < 0.0).any():
        raise ValueError("action_dist must be non-negative; its rows are probabilities.")
    off = np.abs(dist.sum(axis=1) - 1.0) > ROW_SUM_TOLERANCE
    if off.any():
        i = int(np.argmax(off))
        raise ValueError(
            f"action_dist rows must sum to 1 (tolerance {ROW_SUM_TOLERANCE:g}); row {i} sums "
            f"to {dist[i].sum():.6g}."
        )
    return dist


def _estimated_rewards(value: ArrayLike, dist: FloatArray) -> FloatArray:
    q = _array("estimated_rewards", value, 2, dist.shape[0], "action_dist")
    if q.shape != dist.shape:
        raise ValueError(
            f"estimated_rewards has shape {q.shape} but action_dist has shape {dist.shape}; "
            "both need one column per action."
        )
    return q


def _logged(
    reward: ArrayLike, action: ArrayLike, propensity: ArrayLike, action_dist: ArrayLike
) -> tuple[FloatArray, NDArray[np.intp], FloatArray, FloatArray]:
    """Validated ``(reward, action, action_dist, importance weight)``."""
    r = _array("reward", reward, 1, None)
    dist = _action_dist(action_dist, r.shape[0])
    a = _action("action", action, r.shape[0], dist.shape[1])
    p = _propensity(propensity, r.shape[0])
    return r, a, dist, dist[np.arange(r.shape[0]), a] / p


def _generator(rng: Seed) -> np.random.Generator:
    # An int seeds a fresh generator and None draws OS entropy: never numpy's global state.
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


# -------------------------------------------------------------------------------- estimators
# Every estimate is a ratio sum(num) / sum(den) over rounds: den is all ones for IPS, DM and DR,
# the weights for SNIPS and replay. Bootstrapping that ratio (not the mean of fixed per-round
# terms) re-normalizes every resample, which is what SNIPS and replay need to be honest.


def _total(den: FloatArray, estimator: str) -> float:
    total = float(den.sum())
    if total <= 0.0:
        raise ValueError(
            f"{estimator} is undefined: the evaluation policy gives zero weight to every logged "
            "round, so the log says nothing about it."
        )
    return total


def _bootstrap_ratio(
    num: FloatArray, den: FloatArray, n_bootstrap: int, alpha: float, rng: Seed
) -> tuple[float, float]:
    gen, n = _generator(rng), num.shape[0]
    stats = np.empty(n_bootstrap)
    block = max(1, _BOOTSTRAP_BLOCK // n)
    for start in range(0, n_bootstrap, block):
        idx = gen.integers(0, n, size=(min(block, n_bootstrap - start), n))
        d = den[idx].sum(axis=1)
        # A resample with no weight at all has no ratio; it is dropped, not counted as 0.
        stats[start : start + idx.shape[0]] = np.where(
            d > 0.0, num[idx].sum(axis=1) / np.where(d > 0.0, d, 1.0), np.nan
        )
    kept = stats[np.isfinite(stats)]
    if kept.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(kept, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


@dataclass(frozen=True)
class _Estimator:
    """Hyperparameters shared by every estimator (see the subclasses)."""

    n_bootstrap: int = 1000
    alpha: float = 0.05
    min_effective_sample_size: float = 100.0
    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if isinstance(self.n_bootstrap, bool) or not isinstance(self.n_bootstrap, int):
            raise ValueError(f"n_bootstrap must be an int; got {self.n_bootstrap!r}.")
        if self.n_bootstrap < 1:
            raise ValueError(f"n_bootstrap must be at least 1; got {self.n_bootstrap}.")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1); got {self.alpha}.")
        if not self.min_effective_sample_size >= 0.0:
            raise ValueError(
                f"min_effective_sample_size must be >= 0; got {self.min_effective_sample_size}."
            )

    def _terms(self, num: FloatArray, den: FloatArray) -> FloatArray:
        terms: FloatArray = num * (den.shape[0] / _total(den, self.name))
        return terms

    def _summarize(
        self, num: FloatArray, den: FloatArray, weight: FloatArray, rng: Seed
    ) -> PolicyValueEstimate:
        value = float(num.sum()) / _total(den, self.name)
        square = float(np.square(weight).sum())
        ess = float(weight.sum()) ** 2 / square if square > 0.0 else 0.0
        low, high = _bootstrap_ratio(num, den, self.n_bootstrap, self.alpha, rng)
        messages: list[str] = []
        if ess < self.min_effective_sample_size:
            messages.append(
                f"{self.name}: the effective sample size {ess:.1f} is below "
                f"{self.min_effective_sample_size:g}, so the estimate and its interval are "
                "unreliable (the two policies overlap too little, or the log is too short)."
            )
            # stacklevel 3 points at the caller of estimate(), where the problem is visible.
            warnings.warn(messages[-1], LowEffectiveSampleSizeWarning, stacklevel=3)
        return PolicyValueEstimate(self.name, value, low, high, num.shape[0], ess, tuple(messages))


@dataclass(frozen=True)
class Replay(_Estimator):
    """Replay method (Li et al., 2011): mean reward over the rounds where the policies match.

    Pass either ``evaluation_action (n,)``, a deterministic policy's choices, or ``action_dist
    (n, n_actions)``. With ``action_dist`` round ``i`` counts with weight ``action_dist[i,
    a_i]``: the 0/1 match of Li et al. for a deterministic (one-hot) policy, and the expected
    match for a stochastic one (no extra randomness drawn). Replay ignores propensities and is
    unbiased only when the log comes from uniform random logging; otherwise use IPS, SNIPS or
    DR. The ESS is the number of matched rounds.

    Examples
    --------
    >>> Replay(min_effective_sample_size=0).estimate(
    ...     reward=[1.0, 0.0, 0.5], action=[0, 1, 1], evaluation_action=[0, 0, 1], rng=0
    ... ).value
    0.75
    """

    name: ClassVar[str] = "replay"

    def _parts(
        self,
        reward: ArrayLike,
        action: ArrayLike,
        action_dist: ArrayLike | None,
        evaluation_action: ArrayLike | None,
    ) -> tuple[FloatArray, FloatArray]:
        r = _array("reward", reward, 1, None)
        n = r.shape[0]
        if action_dist is not None and evaluation_action is None:
            dist = _action_dist(action_dist, n)
            match = dist[np.arange(n), _action("action", action, n, dist.shape[1])]
        elif evaluation_action is not None and action_dist is None:
            chosen = _action("evaluation_action", evaluation_action, n, None)
            match = (_action("action", action, n, None) == chosen).astype(np.float64)
        else:
            raise ValueError("replay needs exactly one of action_dist or evaluation_action.")
        return match * r, match

    def round_rewards(
        self,
        *,
        reward: ArrayLike,
        action: ArrayLike,
        action_dist: ArrayLike | None = None,
        evaluation_action: ArrayLike | None = None,
    ) -> FloatArray:
        """Per-round terms ``m_i r_i / mean(m)`` with ``m`` the match weights, shape ``(n,)``."""
        return self._terms(*self._parts(reward, action, action_dist, evaluation_action))

    def estimate(
        self,
        *,
        reward: ArrayLike,
        action: ArrayLike,
        action_dist: ArrayLike | None = None,
        evaluation_action: ArrayLike | None = None,
        rng: Seed = None,
    ) -> PolicyValueEstimate:
        """Estimate the policy value; ``rng`` (a Generator or an int seed) drives the bootstrap."""
        num, match = self._parts(reward, action, action_dist, evaluation_action)
        return self._summarize(num, match, match, rng)


@dataclass(frozen=True)
class _ImportanceWeighted(_Estimator):
    self_normalized: ClassVar[bool] = False

    def round_rewards(
        self, *, reward: ArrayLike, action: ArrayLike, propensity: ArrayLike, action_dist: ArrayLike
    ) -> FloatArray:
        """Per-round terms, shape ``(n,)``: ``w_i r_i``, divided by ``mean(w)`` for SNIPS."""
        r, _, _, w = _logged(reward, action, propensity, action_dist)
        return self._terms(w * r, w if self.self_normalized else np.ones_like(w))

    def estimate(
        self,
        *,
        reward: ArrayLike,
        action: ArrayLike,
        propensity: ArrayLike,
        action_dist: ArrayLike,
        rng: Seed = None,
    ) -> PolicyValueEstimate:
        """Estimate the policy value; ``rng`` (a Generator or an int seed) drives the bootstrap."""
        r, _, _, w = _logged(reward, action, propensity, action_dist)
        return self._summarize(w * r, w if self.self_normalized else np.ones_like(w), w, rng)


@dataclass(frozen=True)
class IPS(_ImportanceWeighted):
    """Inverse propensity scoring: the mean of ``w_i r_i``, ``w_i = pi(a_i|x_i) / p_i``.

    Unbiased whenever the logging policy gives a positive probability to every action the
    evaluated policy may take; its variance grows with the weights.

    Examples
    --------
    >>> IPS().round_rewards(
    ...     reward=[1.0, 0.0], action=[0, 1], propensity=[0.5, 0.5],
    ...     action_dist=[[1.0, 0.0], [0.5, 0.5]],
    ... ).tolist()
    [2.0, 0.0]
    """

    name: ClassVar[str] = "ips"


@dataclass(frozen=True)
class SNIPS(_ImportanceWeighted):
    """Self-normalized IPS: ``sum(w r) / sum(w)``.

    Biased by O(1/n) but usually much less variable than IPS, and invariant to a common
    rescaling of the propensities.

    Examples
    --------
    >>> SNIPS(min_effective_sample_size=0).estimate(
    ...     reward=[1.0, 0.0], action=[0, 1], propensity=[0.5, 0.5],
    ...     action_dist=[[1.0, 0.0], [0.5, 0.5]], rng=0,
    ... ).value  # (2 * 1 + 1 * 0) / (2 + 1)
    0.6666666666666666
    """

    name: ClassVar[str] = "snips"
    self_normalized: ClassVar[bool] = True


@dataclass(frozen=True)
class DirectMethod(_Estimator):
    """Direct method: the mean of ``sum_a pi(a|x_i) q(x_i, a)`` under a reward model ``q``.

    Low variance, but biased by the reward model's errors. Its ESS is ``n``.

    Examples
    --------
    >>> DirectMethod().round_rewards(
    ...     action_dist=[[0.5, 0.5]], estimated_rewards=[[0.2, 0.6]]
    ... ).tolist()
    [0.4]
    """

    name: ClassVar[str] = "dm"

    def round_rewards(self, *, action_dist: ArrayLike, estimated_rewards: ArrayLike) -> FloatArray:
        """Per-round terms ``sum_a pi(a|x_i) q(x_i, a)``, shape ``(n,)``."""
        dist = _action_dist(action_dist, None)
        terms: FloatArray = (dist * _estimated_rewards(estimated_rewards, dist)).sum(axis=1)
        return terms

    def estimate(
        self, *, action_dist: ArrayLike, estimated_rewards: ArrayLike, rng: Seed = None
    ) -> PolicyValueEstimate:
        """Estimate the policy value; ``rng`` (a Generator or an int seed) drives the bootstrap."""
        terms = self.round_rewards(action_dist=action_dist, estimated_rewards=estimated_rewards)
        ones = np.ones_like(terms)
        return self._summarize(terms, ones, ones, rng)


@dataclass(frozen=True)
class DoublyRobust(_Estimator):
    """Doubly robust: the direct method plus ``w_i (r_i - q(x_i, a_i))``.

    Unbiased when the propensities are right, whatever the reward model; low-variance when the
    reward model is good. Give it out-of-fold predictions (:func:`cross_fit_reward_model`).

    Examples
    --------
    >>> DoublyRobust().round_rewards(
    ...     reward=[1.0], action=[0], propensity=[0.5],
    ...     action_dist=[[1.0, 0.0]], estimated_rewards=[[0.5, 0.0]],
    ... ).tolist()  # 0.5 + (1 / 0.5) * (1.0 - 0.5)
    [1.5]
    """

    name: ClassVar[str] = "dr"

    def round_rewards(
        self,
        *,
        reward: ArrayLike,
        action: ArrayLike,
        propensity: ArrayLike,
        action_dist: ArrayLike,
        estimated_rewards: ArrayLike,
    ) -> FloatArray:
        """Per-round terms ``DM_i + w_i (r_i - q(x_i, a_i))``, shape ``(n,)``."""
        r, a, dist, w = _logged(reward, action, propensity, action_dist)
        q = _estimated_rewards(estimated_rewards, dist)
        terms: FloatArray = (dist * q).sum(axis=1) + w * (r - q[np.arange(r.shape[0]), a])
        return terms

    def estimate(
        self,
        *,
        reward: ArrayLike,
        action: ArrayLike,
        propensity: ArrayLike,
        action_dist: ArrayLike,
        estimated_rewards: ArrayLike,
        rng: Seed = None,
    ) -> PolicyValueEstimate:
        """Estimate the policy value; the ESS is that of the importance weights."""
        terms = self.round_rewards(
            reward=reward,
            action=action,
            propensity=propensity,
            action_dist=action_dist,
            estimated_rewards=estimated_rewards,
        )
        w = _logged(reward, action, propensity, action_dist)[3]
        return self._summarize(terms, np.ones_like(terms), w, rng)


@dataclass(frozen=True)
class SwitchDoublyRobust(_Estimator):
    """Switch doubly robust (Wang, Agarwal & Dudík 2017; OBP's ``SwitchDoublyRobust``): DR
    where the importance weight is at most `max_weight`, the reward model alone where larger.

    Per round ``Σ_a π(a|x) q(x, a) + w (r − q(x, a_i)) · 1{w ≤ max_weight}``: the rare rounds
    whose weight would dominate IPS and DR lose their correction, so the variance is bounded
    (every kept weight is at most `max_weight`), at the price of a bias: the reward model's
    error on the switched choices. With the logging policy's full distribution (`logging_dist`)
    that bias is bounded, and reported as ``bias_bound``: ``span · mean_i Σ_a π(a|x_i)
    1{π(a|x_i) / μ(a|x_i) > max_weight}`` (mass where μ is 0 counts as switched), where `span`
    is the logged rewards' range (the reward model is clipped to it, so its error is at most
    that). The ESS is that of the kept weights.

    Examples
    --------
    >>> SwitchDoublyRobust(max_weight=10).round_rewards(
    ...     reward=[1.0, 1.0], action=[0, 1], propensity=[0.5, 0.05],
    ...     action_dist=[[1.0, 0.0], [0.0, 1.0]], estimated_rewards=[[0.5, 0.2], [0.5, 0.2]],
    ... ).tolist()  # round 2's weight 20 > 10: the model alone (0.2)
    [1.5, 0.2]
    """

    max_weight: float = 20.0
    name: ClassVar[str] = "switch-dr"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.max_weight > 0.0:  # also refuses NaN
            raise ValueError(f"max_weight must be positive; got {self.max_weight}.")

    def _parts(
        self,
        reward: ArrayLike,
        action: ArrayLike,
        propensity: ArrayLike,
        action_dist: ArrayLike,
        estimated_rewards: ArrayLike,
    ) -> tuple[FloatArray, FloatArray]:
        """Per-round terms and kept weights."""
        r, a, dist, w = _logged(reward, action, propensity, action_dist)
        q = _estimated_rewards(estimated_rewards, dist)
        kept = np.where(w <= self.max_weight, w, 0.0)
        terms: FloatArray = (dist * q).sum(axis=1) + kept * (r - q[np.arange(r.shape[0]), a])
        return terms, kept

    def round_rewards(
        self,
        *,
        reward: ArrayLike,
        action: ArrayLike,
        propensity: ArrayLike,
        action_dist: ArrayLike,
        estimated_rewards: ArrayLike,
    ) -> FloatArray:
        """Per-round terms (their mean is the estimate), shape ``(n,)``."""
        return self._parts(reward, action, propensity, action_dist, estimated_rewards)[0]

    def switched_mass(self, action_dist: ArrayLike, logging_dist: ArrayLike) -> float:
        """The mean probability the evaluated policy puts where the weight exceeds the cap
        (or where the logger puts none): what the reward model alone evaluates."""
        pi = _action_dist(action_dist, None)
        mu = _action_dist(logging_dist, pi.shape[0])
        if mu.shape != pi.shape:
            raise ValueError(
                f"logging_dist has shape {mu.shape} but action_dist has shape {pi.shape}; "
                "both need one column per action."
            )
        switched = pi > self.max_weight * mu
        return float(np.where(switched, pi, 0.0).sum(axis=1).mean())

    def estimate(
        self,
        *,
        reward: ArrayLike,
        action: ArrayLike,
        propensity: ArrayLike,
        action_dist: ArrayLike,
        estimated_rewards: ArrayLike,
        logging_dist: ArrayLike | None = None,
        rng: Seed = None,
    ) -> PolicyValueEstimate:
        """Estimate the policy value; with `logging_dist`, bound its bias."""
        terms, kept = self._parts(reward, action, propensity, action_dist, estimated_rewards)
        result = self._summarize(terms, np.ones_like(terms), kept, rng)
        if logging_dist is None:
            return result
        r = np.asarray(reward, dtype=np.float64)
        span = float(r.max() - r.min())
        bound = span * self.switched_mass(action_dist, logging_dist)
        return dataclasses.replace(result, bias_bound=bound)


# ------------------------------------------------------------------------------ overlap


def expected_effective_sample_size(action_dist: ArrayLike, logging_dist: ArrayLike) -> float:
    """The ESS the two distributions imply, over every action the logger could serve.

    Per round, over the actions with ``logging_dist > 0``, the importance weight of the
    action the logger draws has ``E[w] = Σ_a π(a)`` and ``E[w²] = Σ_a π(a)² / μ(a)``; the
    expected ESS is ``(Σ_i E[w_i])² / Σ_i E[w_i²]``: the realized ``(Σw)²/Σw²`` of a long log
    drawn alike. Unlike the realized one, it counts the large weights of the actions a
    logger rarely serves, whether or not the log happened to draw them. Mass the evaluated
    policy puts where the logger puts none counts for nothing (IPS cannot see it). It is at
    most ``n``, and ``n`` exactly when the two distributions are equal.

    Parameters
    ----------
    action_dist, logging_dist : array_like, shape (n, n_actions)
        The evaluated and the logging policy's probabilities; rows sum to 1.

    Examples
    --------
    >>> mu = [[0.25, 0.25, 0.25, 0.25]] * 8  # uniform logging over 4 actions
    >>> expected_effective_sample_size([[1.0, 0.0, 0.0, 0.0]] * 8, mu)  # greedy: 1/4 match
    2.0
    >>> expected_effective_sample_size(mu, mu)
    8.0
    """
    pi = _action_dist(action_dist, None)
    mu = _action_dist(logging_dist, pi.shape[0])
    if mu.shape != pi.shape:
        raise ValueError(
            f"logging_dist has shape {mu.shape} but action_dist has shape {pi.shape}; both "
            "need one column per action."
        )
    supported = mu > 0.0
    first = float(np.where(supported, pi, 0.0).sum())
    second = float(np.where(supported, np.square(pi) / np.where(supported, mu, 1.0), 0.0).sum())
    return first * first / second if second > 0.0 else 0.0


# ------------------------------------------------------------------------ reward model, all


def cross_fit_reward_model(
    x: ArrayLike,
    action: ArrayLike,
    reward: ArrayLike,
    n_actions: int,
    *,
    n_folds: int = 5,
    ridge: float = 1.0,
    rng: Seed = None,
) -> FloatArray:
    """Out-of-fold reward predictions from one ridge regression per action.

    Rounds are split at random into ``n_folds`` folds, and each fold is predicted by models
    fitted on the other folds only, so that DR's correction is not fooled by a model that has
    memorized the very round it corrects. Each action's model is a ridge regression with an
    unpenalized intercept (closed form on centred data); an action never taken in the training
    folds is predicted by their mean reward. Predictions are clipped to the observed reward range.

    Parameters
    ----------
    x : array_like, shape (n, d)
        Context features of each round.
    action : array_like, shape (n,)
        Logged action of each round, in ``[0, n_actions)``.
    reward : array_like, shape (n,)
        Logged reward of each round.
    n_actions : int
        Number of actions.
    n_folds : int, default 5
        Number of folds, between 2 and ``n``.
    ridge : float, default 1.0
        L2 penalty on the slopes; must be positive so every fit is well posed.
    rng : numpy.random.Generator or int, optional
        Randomness for the fold assignment.

    Returns
    -------
    numpy.ndarray, shape (n, n_actions)
        Predicted reward of every action in every round.

    Examples
    --------
    >>> x = np.arange(8.0).reshape(8, 1)
    >>> q = cross_fit_reward_model(x, [0, 1] * 4, [0.0, 1.0] * 4, n_actions=2, n_folds=2, rng=0)
    >>> q[:2].tolist()
    [[0.0, 1.0], [0.0, 1.0]]
    """
    r = _array("reward", reward, 1, None)
    n = r.shape[0]
    features = _array("x", x, 2, n)
    if isinstance(n_actions, bool) or not isinstance(n_actions, int) or n_actions < 1:
        raise ValueError(f"n_actions must be a positive int; got {n_actions!r}.")
    a = _action("action", action, n, n_actions)
    if not 2 <= n_folds <= n:
        raise ValueError(f"n_folds must be between 2 and n = {n}; got {n_folds}.")
    if not ridge > 0.0:
        raise ValueError(f"ridge must be positive; got {ridge}.")
    penalty = ridge * np.eye(features.shape[1])
    out = np.empty((n, n_actions))
    for test in np.array_split(_generator(rng).permutation(n), n_folds):
        train = np.ones(n, dtype=bool)
        train[test] = False
        for k in range(n_actions):
            rows = train & (a == k)
            if not rows.any():
                out[test, k] = r[train].mean()
                continue
            x_mean, y_mean = features[rows].mean(axis=0), r[rows].mean()
            centred = features[rows] - x_mean
            slope = np.linalg.solve(centred.T @ centred + penalty, centred.T @ (r[rows] - y_mean))
            out[test, k] = y_mean + (features[test] - x_mean) @ slope
    return np.clip(out, r.min(), r.max())


def estimate_all(
    *,
    reward: ArrayLike,
    action: ArrayLike,
    propensity: ArrayLike,
    action_dist: ArrayLike,
    estimated_rewards: ArrayLike | None = None,
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    min_effective_sample_size: float = 100.0,
    rng: Seed = None,
) -> dict[str, PolicyValueEstimate]:
    """Run every estimator on the same log; results are keyed by estimator name.

    Replay uses ``action_dist`` (see :class:`Replay`: biased unless logging was uniform).
    ``"dm"`` and ``"dr"`` are included only when ``estimated_rewards`` is given. One generator,
    built from ``rng``, feeds every bootstrap in turn, so a seed reproduces the whole dict.

    Examples
    --------
    >>> out = estimate_all(
    ...     reward=[1.0, 0.0], action=[0, 1], propensity=[0.5, 0.5],
    ...     action_dist=[[0.5, 0.5], [0.5, 0.5]], min_effective_sample_size=0, rng=0,
    ... )
    >>> {name: result.value for name, result in out.items()}
    {'replay': 0.5, 'ips': 0.5, 'snips': 0.5}
    """
    gen = _generator(rng)
    hyper = (n_bootstrap, alpha, min_effective_sample_size)
    results = {
        "replay": Replay(*hyper).estimate(
            reward=reward, action=action, action_dist=action_dist, rng=gen
        )
    }
    for estimator in (IPS(*hyper), SNIPS(*hyper)):
        results[estimator.name] = estimator.estimate(
            reward=reward, action=action, propensity=propensity, action_dist=action_dist, rng=gen
        )
    if estimated_rewards is not None:
        results["dm"] = DirectMethod(*hyper).estimate(
            action_dist=action_dist, estimated_rewards=estimated_rewards, rng=gen
        )
        results["dr"] = DoublyRobust(*hyper).estimate(
            reward=reward,
            action=action,
            propensity=propensity,
            action_dist=action_dist,
            estimated_rewards=estimated_rewards,
            rng=gen,
        )
    return results
