"""The gates of the lifecycle: when an estimate is strong enough to switch what is served.

Every gate reads a lift (a policy minus the reference it is compared with, paired over the
same rounds, `banditrec.lifecycle.estimates`) and asks for its lower bound to clear a margin
on enough effective rounds, so that noise alone switches rarely (at most α/2 of the checks
of a policy that is no better, before the repeated looks are counted; the margins and the
apprentice's hold time are what guard against those).

- `Guardrail`: after a switch, the version served before keeps learning in shadow; when it
  is significantly better than the live one (the live value fell below it), roll back.
- `PromotionGate`: a shadow candidate is promoted when its lower bound beats the live
  policy by the margin.
- `Graduation`: the apprentice serves its own choices once the lower bound of its lift over
  the baseline has stayed above zero for the hold time.
"""

from __future__ import annotations

from dataclasses import dataclass

from banditrec.lifecycle.estimates import Estimate

__all__ = ["Graduation", "Guardrail", "PromotionGate", "interval_text"]


def interval_text(estimate: Estimate) -> str:
    """The lift as a sentence fragment: "+0.031 [0.012, 0.050] over 4,000 rounds (ESS 812)"."""
    lift = estimate.lift
    if lift is None:
        return f"no estimate yet ({estimate.n_rounds} rounds)"
    return (
        f"{lift.value:+.4f} [{lift.ci_low:+.4f}, {lift.ci_high:+.4f}] over "
        f"{estimate.n_rounds:,} rounds (ESS {estimate.effective_sample_size:,.0f})"
    )


@dataclass(frozen=True)
class Guardrail:
    """Roll back when the previous version beats the live one by more than `margin`."""

    margin: float = 0.0
    min_effective_sample_size: float = 100.0

    def reason(self, previous: Estimate, version: str) -> str | None:
        """Why to roll back to `version` (None: no reason)."""
        if not previous.lift_above(self.margin, self.min_effective_sample_size):
            return None
        return (
            f"guardrail: the previous version {version} is estimated better than the live "
            f"one by {interval_text(previous)}, above the margin {self.margin:g}"
        )


@dataclass(frozen=True)
class PromotionGate:
    """Promote a candidate whose lower bound beats the live policy by `margin`."""

    margin: float = 0.0
    min_effective_sample_size: float = 100.0

    def passes(self, estimate: Estimate) -> bool:
        return estimate.lift_above(self.margin, self.min_effective_sample_size)

    def refusal(self, name: str, estimate: Estimate) -> str:
        """Why `name` is not promoted, as a full sentence."""
        return (
            f"The candidate {name!r} is not proven better than the live policy: its lift is "
            f"{interval_text(estimate)}, and promotion needs the lower bound above "
            f"{self.margin:g} with an effective sample size of at least "
            f"{self.min_effective_sample_size:g}; wait for more data or promote with force."
        )


@dataclass
class Graduation:
    """Serve the own choices once the lift's lower bound stayed above 0 for `hold_seconds`."""

    hold_seconds: float = 600.0
    min_effective_sample_size: float = 100.0
    above_since: float | None = None

    def check(self, estimate: Estimate, now: float) -> str | None:
        """Record this check; return why to switch now (None: not yet)."""
        if not estimate.lift_above(0.0, self.min_effective_sample_size):
            self.above_since = None
            return None
        if self.above_since is None:
            self.above_since = now
        held = now - self.above_since
        if held < self.hold_seconds:
            return None
        return (
            f"apprentice: banditrec's own choices beat the baseline by "
            f"{interval_text(estimate)}, lower bound above 0 for {held:,.0f} s "
            f"(hold {self.hold_seconds:g} s)"
        )

    def reset(self) -> None:
        self.above_since = None
