"""What an evaluation concludes: per-candidate results, paired comparison, ranks and verdicts.

`rank` compares every candidate with the logging policy (the paired interval of the difference,
`mean_estimate` over per-round differences) and with the best, then orders them; the result
objects say it in sentences (`EvaluationResult.summary`) and as JSON (`EvaluationResult.to_dict`).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from banditrec import ope
from banditrec.evaluation.candidates import Candidate
from banditrec.evaluation.config import EvaluationConfig, FloatArray

__all__ = [
    "PROTOCOL_TEXT",
    "RANKING_TEXT",
    "CandidateResult",
    "EvaluationResult",
    "mean_estimate",
    "rank",
]

PROTOCOL_TEXT = {
    "split": (
        "Time split. Candidates learn off-policy from the first {split:.0%} of the log in log "
        "order (update_batch on the logged actions and rewards, starting from the prior), are "
        "frozen, and their serving distributions on the last {held:.0%} (held out, never seen "
        "in training) are evaluated with IPS, SNIPS, DM and DR (reward model: per-action ridge "
        "regression cross-fitted on the held-out rounds){replay}. Each interval is a "
        "{level:.0%} percentile bootstrap over rounds. The logging policy's value is the mean "
        "reward of the same held-out rounds."
    ),
    "replay": (
        "Replay (Li et al. 2011) of each candidate as an online learner. Candidates learn from "
        "the first {split:.0%} of the log, then walk through the last {held:.0%} in order: at "
        "each round the candidate samples an action from its serving distribution; when it "
        "matches the logged action the round counts and the candidate learns its reward, "
        "otherwise the round is skipped. Unbiased only because the log comes from uniform "
        "random logging. Intervals: {level:.0%} percentile bootstrap over rounds."
    ),
}
RANKING_TEXT = {
    "dr": "DR: unbiased with the logged propensities whatever the reward model, and the "
    "cross-fitted model removes most of IPS's variance.",
    "snips": "SNIPS: needs no reward model; self-normalization tames IPS's variance at a small "
    "O(1/n) bias.",
    "ips": "IPS: unbiased, but the most variable of the estimators.",
    "dm": "DM: lowest variance but biased by the reward model's errors; prefer DR.",
    "replay": "replay: unbiased on a uniform-random log; uses only the matching rounds.",
    "switch-dr": "Switch-DR: DR with the rare large weights left to the reward model; bounded "
    "variance, at a bias it reports a bound of.",
}


@dataclass
class CandidateResult:
    """One candidate's estimates and verdict against the logging policy."""

    candidate: Candidate
    estimates: dict[str, ope.PolicyValueEstimate] = field(default_factory=dict)
    policy_params: dict[str, Any] = field(default_factory=dict)
    exploration: dict[str, Any] | None = None
    true_value: float | None = None
    #: The ranking estimate minus the logging policy's value, paired over rounds, with its CI.
    lift: ope.PolicyValueEstimate | None = None
    verdict: str = "failed"
    ci_overlaps_logging: bool | None = None
    effective_sample_size: float | None = None
    low_ess: bool = False
    #: With a low ESS: about how many more decisions, logged as these were, would bring the
    #: ESS to the threshold (None when reliable, or when no amount would: no overlap).
    decisions_needed: int | None = None
    unsupported_mass: float | None = None
    #: The ESS the logging distribution implies (`Σ E[w]`)² / `Σ E[w²]`, counting the large
    #: weights the log did not happen to draw; None when only propensities are logged.
    expected_effective_sample_size: float | None = None
    #: The ESS per round of the later half of the held-out rounds (the growth rate).
    recent_ess_per_round: float | None = None
    #: A live candidate's replay: held-out rounds, how many from the base model, how many
    #: reproduce the logged distribution (the live policy itself: all, when replayed exactly).
    replay: dict[str, int] | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    rank: int | None = None
    tied_with_best: bool = False
    #: This candidate's ranking estimate minus the best's, paired over rounds, with its CI.
    vs_best: ope.PolicyValueEstimate | None = None
    curve: FloatArray | None = None
    #: The ranking estimator's per-round terms (their mean is the estimate): pairs rows.
    terms: FloatArray | None = None

    @property
    def label(self) -> str:
        return self.candidate.label

    def value(self, estimator: str) -> float:
        e = self.estimates.get(estimator)
        return math.nan if e is None else e.value


@dataclass
class EvaluationResult:
    """Everything `banditrec.report` writes: configuration, counts, baseline, ranked results."""

    config: EvaluationConfig
    source: dict[str, Any]
    counts: dict[str, int]
    actions: tuple[str, ...]
    estimators: tuple[str, ...]
    logging_uniform: bool
    logging: ope.PolicyValueEstimate
    candidates: list[CandidateResult]
    logging_true_value: float | None = None
    oracle_true_value: float | None = None
    logging_curve: FloatArray | None = None
    curve_rounds: NDArray[np.intp] | None = None
    time_range: dict[str, str] = field(default_factory=dict)
    #: Switches of what was served (promotions, rollbacks, apprentice mode), in log order.
    timeline: list[dict[str, Any]] = field(default_factory=list)
    #: The model that served the log, when found (live candidates are replayed from it).
    live: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def has_truth(self) -> bool:
        return self.oracle_true_value is not None

    @property
    def best(self) -> CandidateResult | None:
        ok = [c for c in self.candidates if c.error is None]
        return ok[0] if ok else None

    def protocol_text(self) -> str:
        n, n_train = self.counts["used"], self.counts["train"]
        split = n_train / n if n else 0.0
        replay = ""
        if self.config.protocol == "split" and "replay" in self.estimators:
            replay = ", and with replay (the log is uniform random)"
        return PROTOCOL_TEXT[self.config.protocol].format(
            split=split, held=1.0 - split, replay=replay, level=1.0 - self.config.alpha
        )

    def summary(self) -> list[str]:
        """The conclusions, in plain sentences (terminal and HTML)."""
        est, lines = self.config.ranking_estimator, []
        log = self.logging
        base = f"the logging policy ({log.value:.4f} [{log.ci_low:.4f}, {log.ci_high:.4f}])"
        best = self.best
        if best is None:
            return ["Every candidate failed; see the errors below."]
        e = best.estimates[est]
        sentence = (
            f"Best: {best.label}, {est.upper()} {e.value:.4f} [{e.ci_low:.4f}, {e.ci_high:.4f}]"
        )
        if best.lift is not None:
            lift = best.lift
            sentence += (
                f", {lift.value:+.4f} [{lift.ci_low:+.4f}, {lift.ci_high:+.4f}] against {base}: "
                + {
                    "better": "significantly better.",
                    "worse": "significantly worse.",
                }.get(best.verdict, "no significant difference.")
            )
        lines.append(sentence)
        if best.low_ess:
            lines.append(
                "Every candidate has a low effective sample size: no estimate here is reliable."
            )
        tied = [c.label for c in self.candidates if c.tied_with_best and c is not best]
        if tied:
            lines.append(
                f"{len(tied)} other candidate(s) are not significantly different from the best "
                "(the paired interval of their difference contains 0), so this log cannot tell "
                f"them apart: {', '.join(tied[:5])}{' …' if len(tied) > 5 else ''}."
            )
        reliable_rows = [c for c in self.candidates if not c.low_ess and c.error is None]
        better = sum(c.verdict == "better" for c in reliable_rows)
        same = sum(c.verdict == "no significant difference" for c in reliable_rows)
        lines.append(
            f"Against the logging policy, of the reliable candidates: {better} significantly "
            f"better, {same} not significantly different (paired interval of the difference "
            "contains 0)."
        )
        low = [c for c in self.candidates if c.low_ess and c.error is None]
        if low:
            reliable = len(self.candidates) - len(low)
            lines.append(
                f"{len(low)} candidate(s) have an effective sample size below "
                f"{self.config.min_effective_sample_size:g} and are ranked last: their "
                f"estimates are unreliable ({reliable} reliable)."
            )
            needs = sorted(
                (c.decisions_needed, c.label) for c in low if c.decisions_needed is not None
            )
            if needs:
                shown = "; ".join(f"{label}: about {n:,} more" for n, label in needs[:5])
                lines.append(
                    "More decisions logged like these would make them reliable (at the ESS "
                    "per decision of the later held-out rounds): "
                    f"{shown}{' …' if len(needs) > 5 else ''}."
                )
            bounded = sorted(
                (c for c in low if "switch-dr" in c.estimates
                 and c.estimates["switch-dr"].bias_bound is not None),
                key=lambda c: c.estimates["switch-dr"].bias_bound or 0.0,
            )  # fmt: skip
            if bounded:
                shown = "; ".join(
                    f"{c.label}: {_switch(c.estimates['switch-dr'])}" for c in bounded[:5]
                )
                lines.append(
                    "Switch-DR leaves their rare large weights to the reward model: variance "
                    f"bounded, bias at most the bound shown: {shown}"
                    f"{' …' if len(bounded) > 5 else ''}."
                )
            hopeless = [c.label for c in low if c.decisions_needed is None]
            if hopeless:
                lines.append(
                    f"{len(hopeless)} candidate(s) put their mass where this log has (almost) "
                    "none, so more of the same log will not help; log with more exploration: "
                    f"{', '.join(hopeless[:5])}{' …' if len(hopeless) > 5 else ''}."
                )
        lines.extend(self._live_summary())
        if best.true_value is not None:
            lines.append(
                f"True value of the best on the evaluation rounds: {best.true_value:.4f} "
                f"(logging {self.logging_true_value:.4f}, oracle {self.oracle_true_value:.4f})."
            )
        if self.timeline:
            lines.append(
                f"What was served changed {len(self.timeline)} time(s) in this log (the "
                "logging policy is their mixture): "
                + "; ".join(f"{s['time']} {s['kind']} {s['target']}" for s in self.timeline)
                + "."
            )
        return lines

    def _live_summary(self) -> list[str]:
        """Which model served the log, and whether the replay reproduced what it served."""
        if self.live is None:
            return []
        rule = self.live["exploration"]
        params = {**self.live["params"], **rule["params"]}
        shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in params.items())  # fmt: skip
        line = (
            f"Live policy: {self.live['policy']}({shown}), {rule['name']}, from "
            f"{self.live['model_file']}"
        )
        replayed = next((c for c in self.candidates if c.label == "live" and c.replay), None)
        if replayed is not None and replayed.replay is not None:
            line += (
                f"; replayed along the log, it reproduces the served distribution on "
                f"{replayed.replay['reproduced']:,} of {replayed.replay['rounds']:,} held-out "
                "decisions"
            )
        return [line + "."]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (NaN becomes null)."""
        out: dict[str, Any] = _clean(
            {
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "source": self.source,
                "counts": self.counts,
                "actions": list(self.actions),
                "protocol": {
                    "name": self.config.protocol,
                    "split": self.config.split,
                    "description": self.protocol_text(),
                    "estimators": list(self.estimators),
                    "ranking_estimator": self.config.ranking_estimator,
                    "ranking_reason": RANKING_TEXT[self.config.ranking_estimator],
                    "confidence_level": 1.0 - self.config.alpha,
                    "n_bootstrap": self.config.n_bootstrap,
                    "min_effective_sample_size": self.config.min_effective_sample_size,
                    "seed": self.config.seed,
                    "logging_uniform": self.logging_uniform,
                    "time_range": self.time_range,
                },
                "logging_policy": {
                    **_estimate_dict(self.logging),
                    "true_value": self.logging_true_value,
                },
                "oracle_true_value": self.oracle_true_value,
                "timeline": self.timeline,
                "live_policy": self.live,
                "best": None if self.best is None else self.best.label,
                "summary": self.summary(),
                "candidates": [_candidate_dict(c) for c in self.candidates],
                "warnings": self.warnings,
                "seconds": self.seconds,
            }
        )
        return out


def _switch(e: ope.PolicyValueEstimate) -> str:
    return f"{e.value:.4f} [{e.ci_low:.4f}, {e.ci_high:.4f}], |bias| ≤ {e.bias_bound:.4f}"


def _estimate_dict(e: ope.PolicyValueEstimate) -> dict[str, Any]:
    return {
        "value": e.value,
        "ci_low": e.ci_low,
        "ci_high": e.ci_high,
        "effective_sample_size": e.effective_sample_size,
        "n_rounds": e.n_rounds,
        "warnings": list(e.warnings),
        "bias_bound": e.bias_bound,
    }


def _candidate_dict(c: CandidateResult) -> dict[str, Any]:
    return {
        "rank": c.rank,
        "label": c.label,
        "policy": c.candidate.policy,
        "params": dict(c.candidate.params),
        "policy_params": c.policy_params,
        "exploration": c.exploration,
        "estimates": {name: _estimate_dict(e) for name, e in c.estimates.items()},
        "true_value": c.true_value,
        "lift_vs_logging": None if c.lift is None else _estimate_dict(c.lift),
        "verdict": c.verdict,
        "ci_overlaps_logging": c.ci_overlaps_logging,
        "tied_with_best": c.tied_with_best,
        "difference_from_best": None if c.vs_best is None else _estimate_dict(c.vs_best),
        "effective_sample_size": c.effective_sample_size,
        "expected_effective_sample_size": c.expected_effective_sample_size,
        "low_ess": c.low_ess,
        "decisions_needed": c.decisions_needed,
        "recent_ess_per_round": c.recent_ess_per_round,
        "replay": c.replay,
        "unsupported_mass": c.unsupported_mass,
        "warnings": c.warnings,
        "error": c.error,
        "seconds": c.seconds,
    }


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def mean_estimate(
    name: str, terms: FloatArray, config: EvaluationConfig, rng: ope.Seed | list[int]
) -> ope.PolicyValueEstimate:
    """Mean of per-round terms with ope's bootstrap interval.

    The direct method on one pseudo-action whose "reward model" is the terms is exactly the
    mean of the terms, so this reuses ope's (memory-bounded) bootstrap; its ESS is n.
    """
    e = ope.DirectMethod(config.n_bootstrap, config.alpha, 0.0).estimate(
        action_dist=np.ones((terms.shape[0], 1)),
        estimated_rewards=terms[:, None],
        rng=rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng),
    )
    return ope.PolicyValueEstimate(
        name, e.value, e.ci_low, e.ci_high, e.n_rounds, e.effective_sample_size
    )


def rank(
    results: list[CandidateResult], config: EvaluationConfig, logging: ope.PolicyValueEstimate
) -> None:
    """Verdicts, flags and ranks; low-ESS candidates go after every reliable one."""
    est = config.ranking_estimator
    ok = [r for r in results if r.error is None]
    for r in ok:
        e = r.estimates[est]
        weights = next((r.estimates[k] for k in ("dr", "snips", "ips") if k in r.estimates), e)
        # The smaller of the realized and the expected ESS: a log that did not happen to
        # draw the large weights must not look well covered, nor a lucky draw hide them.
        r.effective_sample_size = weights.effective_sample_size
        if r.expected_effective_sample_size is not None:
            r.effective_sample_size = min(r.effective_sample_size, r.expected_effective_sample_size)
        # A non-finite estimate or interval is as unreliable as a low ESS.
        r.low_ess = (
            r.effective_sample_size < config.min_effective_sample_size
            or not math.isfinite(e.value)
            or not math.isfinite(e.ci_low)
        )
        r.ci_overlaps_logging = _overlap(e, logging)
        r.verdict = _verdict(r.lift)
        if r.low_ess:
            r.decisions_needed = _decisions_needed(
                r.effective_sample_size, weights.n_rounds, r.recent_ess_per_round, config
            )
        for estimate in r.estimates.values():
            r.warnings.extend(estimate.warnings)

    def key(r: CandidateResult) -> tuple[bool, bool, float]:
        value = r.value(est)  # NaN for a failed candidate: it has no estimates
        return (r.error is not None, r.low_ess, -value if math.isfinite(value) else math.inf)

    results.sort(key=key)
    for i, r in enumerate(results, start=1):
        r.rank = i
    if results and results[0].error is None:
        best = results[0]
        for r in ok:
            if r is not best and r.terms is not None and best.terms is not None:
                seed = [config.seed, 4, zlib.crc32(r.label.encode())]
                r.vs_best = mean_estimate("vs best", r.terms - best.terms, config, seed)
            r.tied_with_best = _tied(r, best, est)


def _tied(r: CandidateResult, best: CandidateResult, est: str) -> bool:
    """Whether this log cannot tell `r` from the best.

    The paired interval of the difference with the best (the same rounds, so the noise they
    share cancels; the marginal intervals' overlap when the per-round terms are not known)
    contains 0, and the verdicts against the logging policy do not contradict it: a
    candidate significantly worse than the logging policy is not tied with a best that is
    not, whatever its interval with the best says, so no row reads both "worse than what runs
    now" and "as good as the best". An unreliable (low-ESS) estimate is tied with nothing:
    its interval says nothing.
    """
    if r is best:
        return True
    if r.low_ess or best.low_ess:
        return False
    if (r.verdict == "worse") != (best.verdict == "worse"):
        return False
    if r.vs_best is not None:
        return r.vs_best.ci_low <= 0.0 <= r.vs_best.ci_high
    return _overlap(r.estimates[est], best.estimates[est])


def _decisions_needed(
    ess: float, n_rounds: int, recent_rate: float | None, config: EvaluationConfig
) -> int | None:
    """More decisions that would bring the ESS of `e` to the threshold, if the log grew alike.

    The ESS of importance weights grows in proportion to the rounds evaluated (n·E[w]²/E[w²]
    for weights drawn alike): each new held-out round adds about the ESS per round observed
    on the later half of the held-out rounds (`recent_rate`: the overlap as it is now, which
    a live policy that keeps learning changes; the whole part's when not known). The
    evaluated rounds are the held-out share of the log, so the log grows by the rounds
    needed over that share. None when the ESS or its growth is 0 or not finite: the
    candidate's mass is where the log has none, and more of the same will not help.
    """
    threshold = config.min_effective_sample_size
    if not (math.isfinite(ess) and ess > 0.0) or n_rounds <= 0:
        return None
    rate = ess / n_rounds if recent_rate is None else recent_rate
    if not (math.isfinite(rate) and rate > 0.0):
        return None
    held_share = 1.0 - config.split
    more_held = max(threshold - ess, 0.0) / rate
    return max(1, math.ceil(more_held / held_share))


def _verdict(lift: ope.PolicyValueEstimate | None) -> str:
    """Against the logging policy, from the paired interval of the difference."""
    if lift is not None and lift.ci_low > 0:
        return "better"
    if lift is not None and lift.ci_high < 0:
        return "worse"
    return "no significant difference"


def _overlap(a: ope.PolicyValueEstimate, b: ope.PolicyValueEstimate) -> bool:
    """Whether the two confidence intervals overlap."""
    return a.ci_low <= b.ci_high and b.ci_low <= a.ci_high
