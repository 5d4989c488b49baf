"""What an evaluation run may be asked to do, and the error every refusal raises."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from banditrec import ope

__all__ = [
    "ESTIMATORS",
    "MIN_EVALUATION_ROUNDS",
    "PROGRESS_EVERY",
    "PROTOCOLS",
    "EvaluationConfig",
    "EvaluationError",
    "FloatArray",
    "ProgressCallback",
    "no_progress",
]

FloatArray = NDArray[np.float64]
#: ``progress(stage, completed, total, detail)``; stages: "read", "reward model", "evaluate".
ProgressCallback = Callable[[str, int, int, str], None]

ESTIMATORS = ("dr", "snips", "ips", "dm", "switch-dr", "replay")
PROTOCOLS = ("split", "replay")
#: The held-out part must have at least this many rounds.
MIN_EVALUATION_ROUNDS = 20
#: Rounds between two progress reports in the long loops.
PROGRESS_EVERY = 4096
_ESTIMATOR_CLASSES: dict[str, type[Any]] = {
    "ips": ope.IPS,
    "snips": ope.SNIPS,
    "dm": ope.DirectMethod,
    "dr": ope.DoublyRobust,
    "replay": ope.Replay,
    "switch-dr": ope.SwitchDoublyRobust,
}


def no_progress(stage: str, completed: int, total: int, detail: str) -> None:
    """The progress callback when nobody watches."""


class EvaluationError(ValueError):
    """The evaluation cannot run: bad input file, options or data; the message says why."""


@dataclass(frozen=True)
class EvaluationConfig:
    """How to evaluate; see docs/evaluation.md."""

    protocol: str = "split"
    split: float = 0.7
    ranking_estimator: str = "dr"
    estimators: tuple[str, ...] | None = None  # None: every estimator that applies
    n_bootstrap: int = 1000
    alpha: float = 0.05
    min_effective_sample_size: float = 100.0
    seed: int = 0
    reward_model_folds: int = 5

    def check(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise EvaluationError(
                f"Unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}."
            )
        if not 0.0 <= self.split < 1.0:
            raise EvaluationError(
                f"--split must be in [0, 1): the fraction of the log candidates learn from "
                f"before the held-out rest; got {self.split}."
            )
        for name in (self.ranking_estimator, *(self.estimators or ())):
            if name not in ESTIMATORS:
                raise EvaluationError(
                    f"Unknown estimator {name!r}; choose from {', '.join(ESTIMATORS)}."
                )
        if self.n_bootstrap < 1:
            raise EvaluationError(f"--n-bootstrap must be at least 1; got {self.n_bootstrap}.")
        if not 0.0 < self.alpha < 1.0:
            raise EvaluationError(f"alpha must be in (0, 1); got {self.alpha}.")
        if not self.min_effective_sample_size >= 0.0:
            raise EvaluationError("--min-ess must be >= 0.")

    def estimator(self, name: str) -> Any:
        """The `banditrec.ope` estimator `name` with this run's bootstrap and ESS settings."""
        return _ESTIMATOR_CLASSES[name](
            self.n_bootstrap, self.alpha, self.min_effective_sample_size
        )

    def estimators_for(self, uniform: bool) -> tuple[str, ...]:
        """The estimators to compute, the ranking one included, on a log (uniform or not)."""
        if self.protocol == "replay":
            if not uniform:
                raise EvaluationError(
                    "The replay protocol needs a log from a uniform random logging policy (every "
                    "eligible action equally likely), and this log is not; use --protocol split."
                )
            available: tuple[str, ...] = ("replay",)
        else:
            available = ("dr", "snips", "ips", "dm", "switch-dr") + (("replay",) if uniform else ())
        chosen = self.estimators or available
        for name in (*chosen, self.ranking_estimator):
            if name not in available:
                why = (
                    "the replay protocol has only the replay estimator"
                    if self.protocol == "replay"
                    else "replay is unbiased only on a uniform random log, and this log is not"
                )
                raise EvaluationError(
                    f"Estimator {name!r} is not available here ({why}); available: "
                    f"{', '.join(available)}."
                )
        if self.ranking_estimator not in chosen:
            chosen = (*chosen, self.ranking_estimator)
        return tuple(chosen)
