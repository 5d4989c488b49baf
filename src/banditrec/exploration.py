"""Scores ─► an explicit probability distribution ─► the served action and its propensity.

DESIGN principle 4: the logging policy must never be a bare argmax, or the logs cannot be
used to evaluate any other policy. Every rule here returns the full distribution over actions
(after masking the ineligible ones), and the served action is *sampled* from it, so the
probability that is logged is exactly the probability with which the action was chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
from numpy.typing import NDArray

from banditrec import _kernels

__all__ = ["EpsilonGreedy", "Exploration", "NoEligibleActionError", "sample_action"]


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


EXPLORATIONS: dict[str, type[EpsilonGreedy]] = {EpsilonGreedy.name: EpsilonGreedy}


def exploration_from_params(name: str, params: dict[str, Any]) -> EpsilonGreedy:
    """Rebuild an exploration rule from the name and parameters stored in a model file."""
    try:
        cls = EXPLORATIONS[name]
    except KeyError:
        raise ValueError(f"Unknown exploration rule {name!r}.") from None
    return cls(**params)
