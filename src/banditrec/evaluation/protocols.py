"""The protocols: the log split in time, every candidate run on the held-out part, progress.

``split`` (default): candidates learn off-policy from the first part of the log, are frozen,
and their serving distributions on the held-out rest are evaluated with the estimators of
`banditrec.ope`. ``replay`` (uniform logs only): candidates keep learning online through the
held-out rounds, and only the rounds where they pick the logged action count. Both compare
each candidate with the logging policy round by round (the lift) and draw a running estimate.
"""

from __future__ import annotations

import math
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from banditrec import ope
from banditrec.evaluation.candidates import Candidate, default_candidates
from banditrec.evaluation.config import (
    MIN_EVALUATION_ROUNDS,
    PROGRESS_EVERY,
    EvaluationConfig,
    EvaluationError,
    FloatArray,
    ProgressCallback,
    no_progress,
)
from banditrec.evaluation.data import LoggedRounds
from banditrec.evaluation.live import (
    LiveModel,
    fidelity,
    find_live_model,
    live_distributions,
    live_policy,
)
from banditrec.evaluation.ranking import CandidateResult, EvaluationResult, mean_estimate, rank
from banditrec.exploration import sample_action
from banditrec.features import FeatureSchema
from banditrec.policies import Policy

__all__ = ["evaluate"]

#: Points drawn on each running-estimate curve.
_CURVE_POINTS = 400


@dataclass(frozen=True)
class _Held:
    """The held-out (evaluation) rounds and what every candidate shares about them."""

    rounds: LoggedRounds
    q: FloatArray | None  # cross-fitted reward model, (n, n_actions); None without DM and DR
    points: NDArray[np.intp]  # the rounds where the running curves are sampled
    #: The logging policy's full distribution (event logs; uniform logs), else None.
    logging_dist: FloatArray | None = None

    def logging_terms(self, ranking: str) -> FloatArray:
        """The logging policy's per-round terms under the ranking estimator: the lift's
        baseline.

        With its full distribution and a reward model, DM, DR and Switch-DR (whose weights
        are all 1 here) evaluate the logging policy itself (DR: ``Σ_a μ(a) q(a) +
        (r − q(a_logged))``), so the candidate's DR terms minus
        these are DR applied to ``π − μ``: the reward model's noise the two share cancels
        round by round (the live policy replayed exactly has a lift of exactly 0). Otherwise
        the logged rewards (IPS, SNIPS and replay of the logging policy itself).
        """
        rounds, mu, q = self.rounds, self.logging_dist, self.q
        if ranking not in ("dm", "dr", "switch-dr") or mu is None or q is None:
            return rounds.reward
        expected: FloatArray = (mu * q).sum(axis=1)
        if ranking == "dm":
            return expected
        logged = np.arange(self.n), rounds.action
        correction: FloatArray = mu[logged] / rounds.propensity * (rounds.reward - q[logged])
        return expected + correction

    @property
    def n(self) -> int:
        return self.rounds.n_rounds

    def masks(self) -> Iterator[NDArray[np.bool_]]:
        """Each round's eligible actions (one shared all-true mask when all are eligible)."""
        eligible = self.rounds.eligible
        everything = np.ones(eligible.shape[1], dtype=np.bool_)
        all_eligible: NDArray[np.bool_] = np.asarray(eligible.all(axis=1))
        for i in range(self.n):
            yield everything if all_eligible[i] else eligible[i]


def evaluate(
    rounds: LoggedRounds,
    candidates: Sequence[Candidate] | None = None,
    config: EvaluationConfig | None = None,
    progress: ProgressCallback | None = None,
    schema: FeatureSchema | None = None,
    live: LiveModel | None = None,
) -> EvaluationResult:
    """Evaluate and rank `candidates` on `rounds` under `config`'s protocol.

    `candidates` None: `default_candidates`, the live policy's neighbours first when the
    live model is known. `live` is the model that served the log (`find_live_model`; looked
    for beside the log when a live candidate needs it and `schema` is given); live
    candidates are replayed from it (`banditrec.evaluation.live`).

    A candidate that fails (its policy raises) is reported with its error and ranked last;
    every other candidate still runs. The same seed gives the same result, and each
    candidate's randomness depends only on the seed and its label, not on the others.
    `schema` (the one the log was written with) is given to every candidate's policy as
    `serve` and `train` give it (`Candidate.build`): a `fixed_rule` names its features and
    actions through it.
    """
    config = config or EvaluationConfig()
    config.check()
    notify = progress or no_progress
    start = time.perf_counter()
    if (
        live is None
        and schema is not None
        and (candidates is None or any(c.live for c in candidates))
    ):
        live = find_live_model(rounds, schema)
    if candidates is None:
        candidates = default_candidates(live)
    if not candidates:
        raise EvaluationError("No candidate to evaluate.")
    n = rounds.n_rounds
    n_train = math.floor(config.split * n)
    n_eval = n - n_train
    if n_eval < MIN_EVALUATION_ROUNDS:
        raise EvaluationError(
            f"The held-out part has {n_eval} rounds (of {n:,} with a known reward, split "
            f"{config.split:g}); at least {MIN_EVALUATION_ROUNDS} are needed. Use a smaller "
            "--split or a longer log."
        )
    uniform = rounds.is_uniform()
    estimators = config.estimators_for(uniform)
    train, evaluated = rounds.part(0, n_train), rounds.part(n_train, n)
    q = None
    if {"dm", "dr", "switch-dr"} & set(estimators):
        notify("reward model", 0, 1, "cross-fitting")
        q = ope.cross_fit_reward_model(
            evaluated.X, evaluated.action, evaluated.reward, len(rounds.actions),
            n_folds=min(config.reward_model_folds, n_eval),
            rng=np.random.default_rng([config.seed, 1]),
        )  # fmt: skip
        notify("reward model", 1, 1, "cross-fitted")
    points = np.unique(np.linspace(0, n_eval - 1, min(_CURVE_POINTS, n_eval)).astype(np.intp))
    logging_dist = evaluated.logged_dist
    if logging_dist is None and uniform:
        logging_dist = evaluated.eligible / evaluated.eligible.sum(axis=1, keepdims=True)
    held = _Held(evaluated, q, points, logging_dist)
    logging = mean_estimate("on-policy", evaluated.reward, config, [config.seed, 2])
    results = []
    total = 2 * n_eval * len(candidates)
    for i, candidate in enumerate(candidates):
        done = 2 * n_eval * i

        def tick(k: int, label: str = candidate.label, done: int = done) -> None:
            notify("evaluate", done + k, total, label)

        results.append(
            _run_candidate(candidate, config, estimators, train, held, tick, schema, live)
        )
    notify("evaluate", total, total, "done")
    rank(results, config, logging)

    result = EvaluationResult(
        config=config,
        source=rounds.source,
        counts={**rounds.counts, "train": n_train, "evaluation": n_eval},
        actions=rounds.actions,
        estimators=estimators,
        logging_uniform=uniform,
        logging=logging,
        candidates=results,
        logging_curve=_running(evaluated.reward, np.ones(n_eval), points),
        curve_rounds=points + n_train,
        live=None if live is None else live.describe(),
    )
    mu = evaluated.expected_rewards
    if mu is not None:
        result.logging_true_value = float(mu[np.arange(n_eval), evaluated.action].mean())
        best = np.where(evaluated.eligible, mu, -np.inf).max(axis=1)
        result.oracle_true_value = float(best.mean())
    if rounds.created_at is not None and n_train > 0:
        stamp = [_iso(rounds.created_at[i]) for i in (0, n_train - 1, n_train, n - 1)]
        names = ("train_from", "train_to", "eval_from", "eval_to")
        result.time_range = dict(zip(names, stamp, strict=True))
    result.timeline = _timeline(rounds)
    result.warnings = _notes(rounds, config, uniform, estimators)
    result.seconds = time.perf_counter() - start
    return result


def _timeline(rounds: LoggedRounds) -> list[dict[str, Any]]:
    """The switches of what was served, each with the first round logged at or after it (its
    place on the running curves; None without times, or after the last round)."""
    timeline = []
    for switch in rounds.switches:
        place = None
        if rounds.created_at is not None:
            i = int(np.searchsorted(rounds.created_at, float(switch["at"]), side="left"))
            place = i if i < rounds.n_rounds else None
        timeline.append({**switch, "time": _iso(float(switch["at"])), "round": place})
    return timeline


def _iso(t: float) -> str:
    return datetime.fromtimestamp(float(t), UTC).isoformat(timespec="seconds")


def _run_candidate(
    candidate: Candidate,
    config: EvaluationConfig,
    estimators: tuple[str, ...],
    train: LoggedRounds,
    held: _Held,
    tick: Callable[[int], None],
    schema: FeatureSchema | None,
    live: LiveModel | None,
) -> CandidateResult:
    result = CandidateResult(candidate)  # verdict "failed" until ranked
    start = time.perf_counter()
    # Seeded by the label alone: adding or removing other candidates changes nothing here.
    rng = np.random.default_rng([config.seed, 3, zlib.crc32(candidate.label.encode())])
    try:
        if candidate.live:
            _live(candidate, live, config, estimators, held, rng, tick, result)
            tick(2 * held.n)
            result.seconds = time.perf_counter() - start
            return result
        policy = candidate.build(schema).reset(len(held.rounds.actions), held.rounds.X.shape[1])
        result.policy_params = policy.get_params()
        result.exploration = {
            "name": policy.exploration.name,
            "params": policy.exploration.get_params(),
        }
        if train.n_rounds > 0:
            policy.update_batch(train.X, train.action, train.reward)
        if config.protocol == "replay":
            _replay(policy, config, held, rng, tick, result)
        else:
            _split(policy, config, estimators, held, rng, tick, result)
    except Exception as exc:  # one failing policy must not sink the whole run
        result.error = f"{type(exc).__name__}: {exc}"
        result.estimates = {}
    tick(2 * held.n)
    result.seconds = time.perf_counter() - start
    return result


def _serving_distributions(
    policy: Policy, held: _Held, rng: np.random.Generator, tick: Callable[[int], None]
) -> FloatArray:
    dist = np.empty((held.n, held.rounds.eligible.shape[1]))
    for i, mask in enumerate(held.masks()):
        dist[i] = policy.distribution(held.rounds.X[i], mask, rng)[1]
        if i % PROGRESS_EVERY == 0:
            tick(i)
    tick(held.n)
    return dist


def _effective_sizes(
    dist: FloatArray, weight: FloatArray, held: _Held, result: CandidateResult
) -> None:
    """The expected ESS, and the ESS per round of the later half of the held-out rounds.

    The realized ESS ``(Σw)²/Σw²`` sees only the weights of the actions the log happened to
    serve: where a candidate differs from a logger that explores 1% of the time, the large
    weights are rarely drawn, and a log without them looks well covered (measured: realized
    837, expected 32 for a LinUCB α/2 beside the live α on `make run`'s log). With the
    logging distribution known, the expected one counts them exactly: per round
    ``E[w] = Σ_a π(a)`` and ``E[w²] = Σ_a π(a)²/μ(a)`` over the actions the logger could
    serve, so ``ESS = (Σ_i E[w_i])² / Σ_i E[w_i²]``. The later half's per-round value is how
    fast more decisions logged alike would add to it (a live policy that keeps learning
    changes it).
    """
    half = held.n // 2
    if held.logging_dist is None:  # the logged action's propensity alone: realized only
        recent = weight[half:]
        square = float(np.square(recent).sum())
        rate = float(recent.sum()) ** 2 / square if square > 0.0 else 0.0
    else:
        mu = held.logging_dist
        result.expected_effective_sample_size = ope.expected_effective_sample_size(dist, mu)
        rate = ope.expected_effective_sample_size(dist[half:], mu[half:])
    result.recent_ess_per_round = rate / max(held.n - half, 1)


def _live(
    candidate: Candidate,
    live: LiveModel | None,
    config: EvaluationConfig,
    estimators: tuple[str, ...],
    held: _Held,
    rng: np.random.Generator,
    tick: Callable[[int], None],
    result: CandidateResult,
) -> None:
    """A live candidate: the live model replayed along the log with its parameters changed."""
    if held.rounds.learn_stream is None or not held.rounds.epochs:
        raise EvaluationError(
            "Live candidates replay the log's learn stream from the model that served it; "
            "this log does not give the stream and its epochs (a SQLite event log does)."
        )
    if live is None:
        raise EvaluationError(
            "The model file that served this log was not found (its version is the part "
            "before '@' of the logged model versions): give it with --model."
        )
    if config.protocol != "split":
        raise EvaluationError("Live candidates are evaluated with the split protocol.")
    params = dict(candidate.params)
    policy = live_policy(live, params)
    result.policy_params = policy.get_params()
    result.exploration = {
        "name": policy.exploration.name,
        "params": policy.exploration.get_params(),
    }
    dist, from_base = live_distributions(params, live, held.rounds, rng, tick)
    exact = fidelity(dist, held.rounds)
    result.replay = {"rounds": held.n, "from_base_model": from_base, "reproduced": exact}
    if not params and exact < held.n:
        result.warnings.append(
            f"The live policy was replayed exactly on {exact:,} of {held.n:,} held-out rounds "
            f"({from_base:,} from the model file {live.path}); on the others the replay is "
            "another policy than the one served (unbiased still, no longer the live one)."
        )
    _estimate_dist(dist, config, estimators, held, rng, tick, result)


def _split(
    policy: Policy,
    config: EvaluationConfig,
    estimators: tuple[str, ...],
    held: _Held,
    rng: np.random.Generator,
    tick: Callable[[int], None],
    result: CandidateResult,
) -> None:
    dist = _serving_distributions(policy, held, rng, tick)
    _estimate_dist(dist, config, estimators, held, rng, tick, result)


def _estimate_dist(
    dist: FloatArray,
    config: EvaluationConfig,
    estimators: tuple[str, ...],
    held: _Held,
    rng: np.random.Generator,
    tick: Callable[[int], None],
    result: CandidateResult,
) -> None:
    """Every estimator on the candidate's held-out distributions `dist`, the lift, the curve."""
    rounds = held.rounds
    logged = {"reward": rounds.reward, "action": rounds.action}
    weighted = {**logged, "propensity": rounds.propensity, "action_dist": dist}
    inputs: dict[str, dict[str, Any]] = {
        "ips": weighted,
        "snips": weighted,
        "dr": {**weighted, "estimated_rewards": held.q},
        "dm": {"action_dist": dist, "estimated_rewards": held.q},
        "switch-dr": {**weighted, "estimated_rewards": held.q},
        "replay": {**logged, "action_dist": dist},
    }
    # Switch-DR's estimate also bounds its bias with the logging distribution, when known.
    extra = {"switch-dr": {"logging_dist": held.logging_dist}}
    with warnings.catch_warnings():  # recorded in each estimate's warnings instead
        warnings.simplefilter("ignore", ope.LowEffectiveSampleSizeWarning)
        for j, name in enumerate(estimators, start=1):
            kwargs = {**inputs[name], **extra.get(name, {})}
            result.estimates[name] = config.estimator(name).estimate(**kwargs, rng=rng)
            tick(held.n + held.n * j // (len(estimators) + 1))  # the bootstraps take a while
        ranking = config.ranking_estimator
        terms = config.estimator(ranking).round_rewards(**inputs[ranking])
    baseline = held.logging_terms(ranking)
    result.lift = mean_estimate("lift", terms - baseline, config, rng)
    result.terms = terms
    match = dist[np.arange(held.n), rounds.action]
    _effective_sizes(dist, match / rounds.propensity, held, result)
    num, den = {
        "snips": (match / rounds.propensity * rounds.reward, match / rounds.propensity),
        "replay": (match * rounds.reward, match),
    }.get(ranking, (terms, np.ones(held.n)))
    result.curve = _running(num, den, held.points)
    if rounds.expected_rewards is not None:
        result.true_value = float((dist * rounds.expected_rewards).sum(axis=1).mean())
    if rounds.logged_dist is not None:
        result.unsupported_mass = float((dist * (rounds.logged_dist <= 0.0)).sum(axis=1).mean())
        if result.unsupported_mass > 1e-3:
            result.warnings.append(
                f"{result.unsupported_mass:.1%} of its probability goes to actions the logging "
                "policy never served in that context: IPS and SNIPS cannot see those choices "
                "(biased), DR and DM rely on the reward model for them."
            )


def _replay(
    policy: Policy,
    config: EvaluationConfig,
    held: _Held,
    rng: np.random.Generator,
    tick: Callable[[int], None],
    result: CandidateResult,
) -> None:
    rounds = held.rounds
    chosen = np.empty(held.n, dtype=np.intp)
    expected = np.zeros(held.n)
    for i, mask in enumerate(held.masks()):
        x = rounds.X[i]
        p = policy.distribution(x, mask, rng)[1]
        chosen[i] = sample_action(p, rng)
        if rounds.expected_rewards is not None:
            expected[i] = float(p @ rounds.expected_rewards[i])
        if chosen[i] == rounds.action[i]:  # the learner sees only what it would have seen
            policy.update(x, int(chosen[i]), float(rounds.reward[i]))
        if i % PROGRESS_EVERY == 0:
            tick(2 * i)
    replay = config.estimator("replay")
    kwargs = {"reward": rounds.reward, "action": rounds.action, "evaluation_action": chosen}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ope.LowEffectiveSampleSizeWarning)
        result.estimates["replay"] = replay.estimate(**kwargs, rng=rng)
        terms = replay.round_rewards(**kwargs)
    result.lift = mean_estimate("lift", terms - rounds.reward, config, rng)
    result.terms = terms
    match = (chosen == rounds.action).astype(np.float64)
    result.curve = _running(match * rounds.reward, match, held.points)
    if rounds.expected_rewards is not None and match.any():
        result.true_value = float(expected[match > 0].mean())


def _running(num: FloatArray, den: FloatArray, points: NDArray[np.intp]) -> FloatArray:
    """The running ratio estimate ``sum(num[:i+1]) / sum(den[:i+1])`` at `points`."""
    total = np.cumsum(den)[points]
    with np.errstate(invalid="ignore", divide="ignore"):
        out: FloatArray = np.where(total > 0, np.cumsum(num)[points] / total, np.nan)
    return out


def _notes(
    rounds: LoggedRounds, config: EvaluationConfig, uniform: bool, estimators: tuple[str, ...]
) -> list[str]:
    c, notes = rounds.counts, []
    skipped = c["pending"] + c["never_activated"]
    if skipped:
        notes.append(
            f"Skipped {skipped:,} of {c['decisions']:,} decisions without a known reward: "
            f"{c['pending']:,} still pending (reward window open), {c['never_activated']:,} "
            "never activated."
        )
    if config.protocol == "split" and not uniform and "replay" not in estimators:
        notes.append("The logging policy is not uniform random, so replay is not reported.")
    if rounds.logged_dist is None:
        notes.append(
            "The CSV holds only the logged action's propensity: whether a candidate chooses "
            "actions the logging policy never serves cannot be checked."
        )
    if rounds.expected_rewards is not None:
        notes.append(
            "The data holds the true expected rewards (simulation): true values are shown "
            "beside the estimates as a check."
        )
    notes.append(
        "Choosing the best of many candidates on the same log favours lucky ones (winner's "
        "curse): confirm the winner with a fresh log or an A/B test before relying on it."
    )
    return notes
