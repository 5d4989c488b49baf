"""Scores ─► an explicit probability distribution ─► the served action and its propensity.

DESIGN principle 4: the logging policy must never be a bare argmax, or the logs cannot be
used to evaluate any other policy. Every rule here returns the full distribution over actions
(after masking the ineligible ones), and the served action is *sampled* from it, so the
probability that is logged is exactly the probability with which the action was chosen.

Three rules, each a small frozen dataclass with its parameters (recorded in model files):

- `EpsilonGreedy`: 1 − ε on the best score (ties split), ε spread over the eligible actions;
- `Softmax`: p ∝ exp(score / τ), closed form;
- `InverseGapWeighting`: SquareCB's p(a) = 1 / (n + γ·gap(a)) (Foster & Rakhlin 2020),
  closed form.

Softmax and inverse-gap weighting also take an ε floor (default 0), mixed in last, so every
rule can guarantee each eligible action at least ε / n_eligible and bound the importance
weights of off-policy evaluation by n_eligible / ε.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
from numpy.typing import NDArray

from banditrec import _kernels

__all__ = [
    "EXPLORATIONS",
    "EpsilonGreedy",
    "Exploration",
    "InverseGapWeighting",
    "NoEligibleActionError",
    "Softmax",
    "exploration_from_params",
    "sample_action",
    "sample_actions",
]


class NoEligibleActionError(ValueError):
    """Every action was masked out, so there is nothing to serve."""


class Exploration(Protocol):
    """A rule turning per-action scores into serving probabilities."""

    name: ClassVar[str]

    def probabilities(
        self, scores: NDArray[np.float64], eligible: NDArray[np.bool_]
    ) -> NDArray[np.float64]: ...

    def get_params(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class EpsilonGreedy:
    """Serve the best-scoring action with probability 1-ε, any eligible action with ε.

    Actions whose scores tie with the best (within a relative `tie_tolerance`) share the 1-ε
    mass equally, so a tie is broken at random *and* the logged probability says so.

    Parameters
    ----------
    epsilon
        Exploration floor in [0, 1]. Each eligible action is served with probability at
        least ε / n_eligible, which bounds the importance weights of off-policy evaluation
        by n_eligible / ε. ε = 0 is allowed for scoring but makes the logs unusable for
        off-policy evaluation of other policies.
    tie_tolerance
        Relative tolerance under which two scores count as tied.

    Examples
    --------
    >>> import numpy as np
    >>> rule = EpsilonGreedy(epsilon=0.2)
    >>> rule.probabilities(np.array([1.0, 3.0, 3.0, 2.0]), np.ones(4, dtype=bool)).tolist()
    [0.05, 0.45, 0.45, 0.05]
    >>> rule.probabilities(np.array([1.0, 3.0, 3.0, 2.0]),
    ...                    np.array([True, False, True, True])).round(4).tolist()
    [0.0667, 0.0, 0.8667, 0.0667]
    """

    epsilon: float = 0.05
    tie_tolerance: float = 1e-12
    name: ClassVar[str] = "epsilon_greedy"

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}.")
        if not 0.0 <= self.tie_tolerance < 1.0:
            raise ValueError(f"tie_tolerance must be in [0, 1), got {self.tie_tolerance}.")

    def probabilities(
        self, scores: NDArray[np.float64], eligible: NDArray[np.bool_]
    ) -> NDArray[np.float64]:
        out = np.empty(scores.shape[0], dtype=np.float64)
        n_eligible = _kernels.epsilon_greedy_probabilities(
            scores, eligible, self.epsilon, self.tie_tolerance, out
        )
        if n_eligible == 0:
            raise NoEligibleActionError("No eligible action is left to serve.")
        return out

    def get_params(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "tie_tolerance": self.tie_tolerance}


def _check_epsilon(epsilon: float) -> None:
    if not 0.0 <= epsilon <= 1.0:  # also False for NaN
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}.")


@dataclass(frozen=True)
class Softmax:
    """Boltzmann exploration: p(a) ∝ exp(score_a / τ) over the eligible actions.

    The probabilities are in closed form, so the logged propensity is exact. As τ → 0 the
    rule tends to the argmax (ties split equally), as τ → ∞ to the uniform distribution.
    Scores are compared in their own units: with rewards in [0, 1], τ = 0.1 makes a gap of
    0.1 worth a factor e.

    Parameters
    ----------
    temperature
        τ > 0.
    epsilon
        Floor in [0, 1] mixed in last: p ← (1 − ε)·p + ε / n_eligible.

    Examples
    --------
    >>> import numpy as np
    >>> rule = Softmax(temperature=1.0)
    >>> p = rule.probabilities(np.array([0.0, np.log(3.0), 5.0]),
    ...                        np.array([True, True, False]))
    >>> p.round(6).tolist()
    [0.25, 0.75, 0.0]
    """

    temperature: float = 0.1
    epsilon: float = 0.0
    name: ClassVar[str] = "softmax"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature}.")
        _check_epsilon(self.epsilon)

    def probabilities(
        self, scores: NDArray[np.float64], eligible: NDArray[np.bool_]
    ) -> NDArray[np.float64]:
        out = np.empty(scores.shape[0], dtype=np.float64)
        if _kernels.softmax_probabilities(scores, eligible, self.temperature, self.epsilon, out):
            return out
        raise NoEligibleActionError("No eligible action is left to serve.")

    def get_params(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "epsilon": self.epsilon}


@dataclass(frozen=True)
class InverseGapWeighting:
    """SquareCB's inverse-gap weighting (Foster & Rakhlin 2020), in closed form.

    Over the n eligible actions, with ŷ* the best score: every action that is not tied with
    the best gets ``p(a) = 1 / (n + γ·(ŷ* − ŷ_a))``; the rest of the mass goes to the best
    (split equally among tied best actions, each keeping at least 1/n). The scores should
    be reward estimates (ridge means), not optimistic bounds.

    Parameters
    ----------
    gamma
        γ ≥ 0, the learning rate of the paper: 0 is uniform, large γ is nearly greedy. For
        rewards in [0, 1] and gaps around 0.1, the default 100 gives a non-best action
        about 1 / (n + 10).
    epsilon
        Floor in [0, 1] mixed in last: p ← (1 − ε)·p + ε / n_eligible.
    tie_tolerance
        Relative tolerance under which two scores count as tied.

    Examples
    --------
    >>> import numpy as np
    >>> rule = InverseGapWeighting(gamma=10.0)
    >>> rule.probabilities(np.array([0.5, 0.4, 0.0]), np.ones(3, dtype=bool)).tolist()
    [0.625, 0.25, 0.125]

    Gaps 0.1 and 0.5 give 1 / (3 + 1) and 1 / (3 + 5); the best action takes the rest.
    """

    gamma: float = 100.0
    epsilon: float = 0.0
    tie_tolerance: float = 1e-12
    name: ClassVar[str] = "igw"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise ValueError(f"gamma must be a finite number ≥ 0, got {self.gamma}.")
        _check_epsilon(self.epsilon)
        if not 0.0 <= self.tie_tolerance < 1.0:
            raise ValueError(f"tie_tolerance must be in [0, 1), got {self.tie_tolerance}.")

    def probabilities(
        self, scores: NDArray[np.float64], eligible: NDArray[np.bool_]
    ) -> NDArray[np.float64]:
        out = np.empty(scores.shape[0], dtype=np.float64)
        if _kernels.igw_probabilities(
            scores, eligible, self.gamma, self.epsilon, self.tie_tolerance, out
        ):
            return out
        raise NoEligibleActionError("No eligible action is left to serve.")

    def get_params(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "epsilon": self.epsilon, "tie_tolerance": self.tie_tolerance}


def sample_action(probabilities: NDArray[np.float64], rng: np.random.Generator) -> int:
    """Draw an action index from `probabilities` with the caller's seeded generator.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> sample_action(np.array([0.0, 1.0, 0.0]), rng)
    1
    """
    return int(_kernels.sample_index(probabilities, rng.random()))


def sample_actions(
    probabilities: NDArray[np.float64], rng: np.random.Generator
) -> NDArray[np.intp]:
    """Draw one action index per row of `probabilities` (n, K), in row order.

    The uniforms are ``rng.random(n)``, the same numbers as n calls of `sample_action`
    would draw one by one, so a batch serves what n single decisions would have served
    (for policies whose distribution draws nothing from `rng`).

    Examples
    --------
    >>> import numpy as np
    >>> sample_actions(np.array([[0.0, 1.0], [1.0, 0.0]]), np.random.default_rng(0)).tolist()
    [1, 0]
    """
    out = np.empty(probabilities.shape[0], dtype=np.intp)
    _kernels.sample_indices(probabilities, rng.random(probabilities.shape[0]), out)
    return out


ExplorationRule = EpsilonGreedy | Softmax | InverseGapWeighting

#: Every rule by the name recorded in model files and accepted in configuration.
EXPLORATIONS: dict[str, type[ExplorationRule]] = {
    rule.name: rule for rule in (EpsilonGreedy, Softmax, InverseGapWeighting)
}


def exploration_from_params(name: str, params: dict[str, Any]) -> Exploration:
    """Build an exploration rule from its name and parameters (configuration, model files).

    Examples
    --------
    >>> exploration_from_params("softmax", {"temperature": 0.5})
    Softmax(temperature=0.5, epsilon=0.0)
    """
    try:
        cls = EXPLORATIONS[name]
    except KeyError:
        known = ", ".join(sorted(EXPLORATIONS))
        raise ValueError(f"Unknown exploration rule {name!r}; known: {known}.") from None
    try:
        return cls(**params)
    except TypeError as exc:  # an unknown parameter name: say which rule refused it
        raise ValueError(f"Exploration rule {name!r}: {exc}.") from None
