"""Apprentice mode: serve the app's own rule, learn from its rewards, take over when it is proven.

The app keeps its rule: a `FixedRule` configured in banditrec, or the action the app would
have taken, sent with each rank request (``baseline_action``). In apprentice mode the engine
serves the mixture

    π_serve = (1 − ε) · onehot(baseline) + ε · π_own

where π_own is banditrec's own distribution (its exploration floor included) and ε the
configured exploration share. The logged probability is π_serve of the served action, so it
is honest, and the importance weight of the own policy, π_own(a) / π_serve(a), is at most
1 / ε whatever the number of actions: the log stays evaluable for banditrec's own choices.

A decision served so is marked in its ``model_version`` (``…+apprentice(ε)``). Its logged
distribution then tells both policies apart: the baseline is the action with more than half
of the mass (so ε < 0.5), and π_own = (π_serve − (1 − ε) · onehot(baseline)) / ε.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from banditrec.actions import UnknownActionError
from banditrec.policies import Policy

__all__ = [
    "MAX_EXPLORE_SHARE",
    "ApprenticeError",
    "ApprenticeRound",
    "ServingMode",
    "apprentice_round",
]

#: The largest exploration share: above it the baseline no longer has most of the mass.
MAX_EXPLORE_SHARE = 0.4

_MARK = re.compile(r"\+apprentice\(([0-9.eE+-]+)\)$")


class ApprenticeError(ValueError):
    """A decision in apprentice mode that cannot be served as asked (no or bad baseline)."""


@dataclass(frozen=True)
class ServingMode:
    """How decisions are served while banditrec is an apprentice.

    Parameters
    ----------
    explore
        The share ε of decisions drawn from banditrec's own distribution (0 ≤ ε ≤ 0.4). With
        ε = 0 nothing but the baseline is served: nothing can be estimated about the own
        policy, and only an admin can switch.
    rule
        The configured baseline (a reset `FixedRule`), or None when every request sends
        its ``baseline_action``.

    Examples
    --------
    >>> mode = ServingMode(explore=0.1)
    >>> served = mode.serve(np.array([0.7, 0.1, 0.1, 0.1]), np.ones(4, bool), "b",
    ...                     np.zeros(3), ("a", "b", "c", "d"))
    >>> [round(p, 3) for p in served.tolist()]
    [0.07, 0.91, 0.01, 0.01]
    >>> mode.mark("base@3")
    'base@3+apprentice(0.1)'
    """

    explore: float = 0.1
    rule: Policy | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.explore <= MAX_EXPLORE_SHARE:
            raise ValueError(
                f"The apprentice exploration share must lie in [0, {MAX_EXPLORE_SHARE}]; "
                f"got {self.explore}."
            )

    def baseline_index(
        self,
        baseline: str | None,
        eligible: NDArray[np.bool_],
        x: NDArray[np.float64],
        actions: Sequence[str],
    ) -> int:
        """The index of the baseline action for this decision.

        Raises
        ------
        UnknownActionError
            For a ``baseline_action`` no action has as its name.
        ApprenticeError
            Without a baseline (none sent, none configured), or for one not eligible.
        """
        if baseline is not None:
            if baseline not in actions:
                raise UnknownActionError(
                    f"Unknown baseline_action {baseline!r}; known actions: {list(actions)}."
                )
            index = actions.index(baseline)
            if not eligible[index]:
                raise ApprenticeError(
                    f"The baseline_action {baseline!r} is excluded or disabled for this "
                    "decision; send an eligible one."
                )
            return index
        if self.rule is None:
            raise ApprenticeError(
                "banditrec serves in apprentice mode and no fixed rule is configured: send "
                "the action your app would take as baseline_action."
            )
        # Actions added at run time after the rule was built have no score: never chosen.
        ruled = self.rule.score(x).score
        scores = np.full(len(eligible), -np.inf)
        scores[: len(ruled)] = ruled[: len(eligible)]
        if not eligible[: len(ruled)].any():
            raise ApprenticeError("The fixed rule's actions are all excluded for this decision.")
        return int(np.argmax(np.where(eligible, scores, -np.inf)))

    def serve(
        self,
        own: NDArray[np.float64],
        eligible: NDArray[np.bool_],
        baseline: str | None,
        x: NDArray[np.float64],
        actions: Sequence[str],
    ) -> NDArray[np.float64]:
        """π_serve: the baseline with 1 − ε of the mass, banditrec's distribution `own`
        with ε."""
        index = self.baseline_index(baseline, eligible, x, actions)
        served: NDArray[np.float64] = self.explore * own
        served[index] += 1.0 - self.explore
        return served

    def mark(self, version: str) -> str:
        """The ``model_version`` logged with a decision served in this mode."""
        return f"{version}+apprentice({self.explore:g})"


class ApprenticeRound(NamedTuple):
    """One logged apprentice decision, as the estimates need it."""

    propensity: float  # π_serve(a)
    own: float  # π_own(a)
    baseline: float  # 1 if the served action is the baseline, else 0


def apprentice_round(
    model_version: str, probabilities: NDArray[np.float64], action_index: int
) -> ApprenticeRound | None:
    """The apprentice view of a logged decision, or None if it was not served in that mode.

    Examples
    --------
    >>> apprentice_round("m@1+apprentice(0.1)", np.array([0.07, 0.91, 0.01, 0.01]), 0)
    ApprenticeRound(propensity=0.07, own=0.7000000000000001, baseline=0.0)
    >>> apprentice_round("m@1", np.array([0.5, 0.5]), 0) is None
    True
    """
    found = _MARK.search(model_version)
    if found is None:
        return None
    explore = float(found.group(1))
    base = int(np.argmax(probabilities))
    p = float(probabilities[action_index])
    if explore <= 0.0:
        return ApprenticeRound(p, 0.0, float(action_index == base))
    mass = p - (1.0 - explore) if action_index == base else p
    return ApprenticeRound(p, min(max(mass / explore, 0.0), 1.0), float(action_index == base))
