"""Off-policy estimates of the lifecycle: a policy against a reference on the same rounds.

A `Track` keeps, for the latest `window` learned rounds, the reward r, the logged propensity
p, and the probability that two policies give the logged action: the evaluated one (q) and
the reference (q_ref: the live policy, whose probability is p itself, or the apprentice's
baseline). Everything else comes from `banditrec.ope`: SNIPS values with their bootstrap
intervals, and the lift, the mean of the paired per-round IPS differences
``(q − q_ref) / p · r``, with the same bootstrap (`ope.DirectMethod` over one pseudo-action
whose reward model is the differences is exactly their mean; this is how `evaluate` pairs
its comparisons too).

A round enters with the evaluated policy's probability *before* it learns that round
(progressive validation), so every term is an honest out-of-sample score.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from banditrec import ope

__all__ = ["Estimate", "Track"]


@dataclass(frozen=True)
class Estimate:
    """A policy's value and its lift over the reference, with intervals and the ESS."""

    n_rounds: int
    value: ope.PolicyValueEstimate | None
    reference: ope.PolicyValueEstimate | None
    lift: ope.PolicyValueEstimate | None

    @property
    def effective_sample_size(self) -> float:
        return 0.0 if self.value is None else self.value.effective_sample_size

    def lift_above(self, margin: float, min_ess: float) -> bool:
        """Whether the lift's lower bound is above `margin` on enough effective rounds."""
        lift = self.lift
        return (
            lift is not None
            and math.isfinite(lift.ci_low)
            and lift.ci_low > margin
            and self.effective_sample_size >= min_ess
        )

    def to_dict(self) -> dict[str, Any]:
        def one(e: ope.PolicyValueEstimate | None) -> dict[str, Any] | None:
            if e is None:
                return None
            return {
                "estimator": e.estimator,
                "value": _finite(e.value),
                "ci_low": _finite(e.ci_low),
                "ci_high": _finite(e.ci_high),
            }

        return {
            "n_rounds": self.n_rounds,
            "effective_sample_size": self.effective_sample_size,
            "value": one(self.value),
            "reference": one(self.reference),
            "lift": one(self.lift),
        }


class Track:
    """The latest `window` rounds of one policy against a reference.

    Examples
    --------
    >>> track = Track(window=100)
    >>> for i in range(40):
    ...     track.add(reward=float(i % 2), propensity=0.5, q=float(i % 2), q_ref=0.5)
    >>> e = track.estimate(n_bootstrap=200, alpha=0.05, seed=0)
    >>> round(e.value.value, 3), round(e.reference.value, 3), e.lift.ci_low > 0
    (1.0, 0.5, True)
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._rows: deque[tuple[float, float, float, float]] = deque(maxlen=window)
        self.n_total = 0
        # Rounds are added by the lifecycle's background step and read by the API's.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, reward: float, propensity: float, q: float, q_ref: float) -> None:
        """One learned round: its reward and logged propensity, and each policy's
        probability of the logged action."""
        if not propensity > 0.0:
            return  # nothing served with probability 0 can be weighed (a broken log)
        with self._lock:
            self._rows.append((reward, propensity, q, q_ref))
            self.n_total += 1

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()

    def estimate(self, n_bootstrap: int, alpha: float, seed: int) -> Estimate:
        """Values and lift over the rounds in the window (None parts: too few rounds)."""
        with self._lock:
            rows = list(self._rows)
        n = len(rows)
        if n < 2:
            return Estimate(n, None, None, None)
        r, p, q, q_ref = np.array(rows).T
        rng = np.random.default_rng([seed, n])
        hyper = (n_bootstrap, alpha, 0.0)  # the ESS is judged by the caller
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ope.LowEffectiveSampleSizeWarning)
            value = _snips(q, r, p, hyper, rng)
            reference = _snips(q_ref, r, p, hyper, rng)
            ips = ope.IPS(*hyper)
            diff = ips.round_rewards(
                reward=r, action=np.zeros(n), propensity=p, action_dist=_two(q)
            ) - ips.round_rewards(
                reward=r, action=np.zeros(n), propensity=p, action_dist=_two(q_ref)
            )
            lift = _mean("lift", diff, hyper, rng)
        return Estimate(n, value, reference, lift)


def _two(q: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    # A two-column distribution whose first action is the logged one: the estimators need
    # only the probability of the logged action, and this keeps a round to four numbers.
    q = np.clip(q, 0.0, 1.0)
    return np.stack([q, 1.0 - q], axis=1)


def _snips(
    q: np.ndarray[Any, Any],
    r: np.ndarray[Any, Any],
    p: np.ndarray[Any, Any],
    hyper: tuple[int, float, float],
    rng: np.random.Generator,
) -> ope.PolicyValueEstimate | None:
    if not (q > 0).any():
        return None  # the policy never gives the logged actions any mass: no estimate
    return ope.SNIPS(*hyper).estimate(
        reward=r, action=np.zeros(len(r)), propensity=p, action_dist=_two(q), rng=rng
    )


def _mean(
    name: str,
    terms: np.ndarray[Any, Any],
    hyper: tuple[int, float, float],
    rng: np.random.Generator,
) -> ope.PolicyValueEstimate:
    e = ope.DirectMethod(*hyper).estimate(
        action_dist=np.ones((terms.shape[0], 1)), estimated_rewards=terms[:, None], rng=rng
    )
    return ope.PolicyValueEstimate(
        name, e.value, e.ci_low, e.ci_high, e.n_rounds, e.effective_sample_size
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
