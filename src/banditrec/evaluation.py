"""Offline evaluation: which configuration would have done best on this log, and how sure are we?

`banditrec evaluate` reads a logged history (the event log, or a CSV in the simulation format),
builds candidate policies (a grid of parameters, named candidates, every registered policy),
estimates each candidate's value with the off-policy estimators of `banditrec.ope` (95%
bootstrap intervals, effective sample sizes), compares it with the logging policy and ranks the
candidates. `banditrec.report` turns the result into HTML, PNG and JSON.

The protocol (docs/evaluation.md) is a **time split**: candidates learn, off-policy, from the
first part of the log in log order (`Policy.update_batch` on the logged actions and rewards,
from the prior), are then frozen, and their serving distributions on the later, held-out part
are evaluated with IPS, SNIPS, DM and DR (reward model cross-fitted on the held-out part); on a
uniform-random log the replay estimator is added. The logging policy's value is the mean
reward of the same held-out rounds. The alternative `replay` protocol (uniform logs only) runs
each candidate as an online learner through the held-out rounds (Li et al. 2011).

Nothing here prints or draws: progress goes through a callback, so the CLI owns the screen.
"""

from __future__ import annotations

import inspect
import itertools
import math
import sqlite3
import time
import tomllib
import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from banditrec import ope
from banditrec.exploration import EXPLORATIONS, sample_action
from banditrec.features import FeatureSchema
from banditrec.logged_data import LoggedDataError, read_logged_csv
from banditrec.policies import POLICIES, Policy
from banditrec.store import StoreError
from banditrec.store.sqlite import SQLiteEventStore

__all__ = [
    "ESTIMATORS",
    "PROTOCOLS",
    "Candidate",
    "CandidateError",
    "CandidateResult",
    "EvaluationConfig",
    "EvaluationError",
    "EvaluationResult",
    "LoggedRounds",
    "default_candidates",
    "evaluate",
    "grid_candidates",
    "load_candidates_file",
    "load_csv",
    "load_event_log",
    "make_candidate",
    "parse_candidate",
    "parse_grid",
]

FloatArray = NDArray[np.float64]
#: ``progress(stage, completed, total, detail)``; stages: "read", "reward model", "evaluate".
ProgressCallback = Callable[[str, int, int, str], None]

ESTIMATORS = ("dr", "snips", "ips", "dm", "replay")
PROTOCOLS = ("split", "replay")
#: The held-out part must have at least this many rounds.
MIN_EVALUATION_ROUNDS = 20
_PROGRESS_EVERY = 4096
_CURVE_POINTS = 400
_ESTIMATOR_CLASSES: dict[str, type[Any]] = {
    "ips": ope.IPS,
    "snips": ope.SNIPS,
    "dm": ope.DirectMethod,
    "dr": ope.DoublyRobust,
    "replay": ope.Replay,
}
# Default grid when no candidate is given: the LinUCB knobs that matter most when serving.
_DEFAULT_LINUCB_GRID: dict[str, list[Any]] = {"alpha": [0.1, 0.5, 1.0, 2.0], "epsilon": [0.05, 0.1]}

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
}


class EvaluationError(ValueError):
    """The evaluation cannot run: bad input file, options or data; the message says why."""


class CandidateError(EvaluationError):
    """A candidate specification is malformed or names an unknown policy or parameter."""


# ------------------------------------------------------------------------------- the rounds


@dataclass(frozen=True)
class LoggedRounds:
    """Logged rounds with known rewards, in log order, aligned to the schema's actions.

    ``logged_dist`` is the logging policy's full distribution (event logs only) and
    ``expected_rewards`` the true expected reward of every action (simulated CSVs only).
    """

    actions: tuple[str, ...]
    X: FloatArray
    action: NDArray[np.intp]
    propensity: FloatArray
    reward: FloatArray
    eligible: NDArray[np.bool_]
    source: dict[str, Any]
    counts: dict[str, int]
    logged_dist: FloatArray | None = None
    expected_rewards: FloatArray | None = None
    created_at: FloatArray | None = None

    @property
    def n_rounds(self) -> int:
        return int(self.action.shape[0])

    def is_uniform(self) -> bool:
        """True when every round was logged uniformly at random over its eligible actions."""
        n_eligible = self.eligible.sum(axis=1)
        if self.logged_dist is None:
            return bool(np.all(np.abs(self.propensity * n_eligible - 1.0) < 1e-4))
        uniform = np.where(self.eligible, 1.0 / np.maximum(n_eligible, 1)[:, None], 0.0)
        return bool(np.allclose(self.logged_dist, uniform, rtol=0.0, atol=1e-6))


def load_event_log(
    path: str | Path, schema: FeatureSchema, progress: ProgressCallback | None = None
) -> LoggedRounds:
    """Read the decisions of an event log that have a known reward (rewarded or defaulted).

    Decisions still pending or never activated (deferred) are skipped and counted. Actions are
    aligned by name: the schema's actions first, then those added at run time, in order of
    first appearance; an action a decision did not offer (not yet added, disabled, excluded by
    the request) is not eligible there. Only the decisions present when reading starts are
    read, so a log that a server keeps writing to gives a consistent snapshot.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"The event log {path} does not exist.")
    try:
        store = SQLiteEventStore(path, schema.encoding_hash)
    except (StoreError, sqlite3.Error) as exc:
        raise EvaluationError(f"Cannot read the event log {path}: {exc}") from None
    try:
        return _read_store(store, path, schema, progress)
    except sqlite3.Error as exc:
        raise EvaluationError(f"Cannot read the event log {path}: {exc}.") from None
    finally:
        store.close()


def _read_store(
    store: SQLiteEventStore, path: Path, schema: FeatureSchema, progress: ProgressCallback | None
) -> LoggedRounds:
    total = store.count("decisions")
    if total == 0:
        raise EvaluationError(f"The event log {path} has no decisions; nothing to evaluate.")
    d = schema.n_features
    names = list(schema.actions)
    index = {name: k for k, name in enumerate(names)}
    X = np.empty((total, d))
    action = np.empty(total, dtype=np.intp)
    propensity, reward, created = np.empty(total), np.empty(total), np.empty(total)
    eligible = np.zeros((total, len(names)), dtype=np.bool_)
    logged = np.zeros((total, len(names)))
    positions: dict[tuple[str, ...], NDArray[np.intp]] = {}
    masks: dict[tuple[str, ...], NDArray[np.intp]] = {}
    counts = {"decisions": 0, "pending": 0, "never_activated": 0}
    n = 0
    for i, (record, total_reward) in enumerate(itertools.islice(store.iter_decisions(), total)):
        counts["decisions"] += 1
        if progress is not None and i % _PROGRESS_EVERY == 0:
            progress("read", i, total, path.name)
        if total_reward is None:
            counts["never_activated" if record.deferred else "pending"] += 1
            continue
        if record.x.shape != (d,):
            raise EvaluationError(
                f"Decision {record.event_id} in {path} has {record.x.shape[0]} features but the "
                f"schema has {d}; evaluate with the schema the log was written with."
            )
        for name in (*record.actions, *record.eligible):
            if name not in index:  # added at run time: one more column, 0 for earlier rounds
                index[name] = len(names)
                names.append(name)
                eligible = np.hstack([eligible, np.zeros((total, 1), dtype=np.bool_)])
                logged = np.hstack([logged, np.zeros((total, 1))])
        pos = positions.get(record.actions)
        if pos is None:  # where each logged action sits among all actions
            pos = positions[record.actions] = np.array([index[a] for a in record.actions])
        mask = masks.get(record.eligible)
        if mask is None:
            mask = masks[record.eligible] = np.array([index[a] for a in record.eligible])
        k = int(pos[record.action_index])
        X[n], action[n], reward[n] = record.x, k, float(total_reward)
        propensity[n], created[n] = record.probability, record.created_at
        eligible[n, mask] = True
        eligible[n, k] = True
        logged[n, pos] = record.probabilities
        n += 1
    if progress is not None:
        progress("read", total, total, path.name)
    counts["used"] = n
    if n == 0:
        raise EvaluationError(
            f"The event log {path} has {counts['decisions']:,} decisions but none with a known "
            f"reward ({counts['pending']:,} pending, {counts['never_activated']:,} never "
            "activated); nothing to evaluate yet."
        )
    if np.any((propensity[:n] <= 0) | (propensity[:n] > 1)):
        raise EvaluationError(f"The event log {path} holds a logged probability outside (0, 1].")
    return LoggedRounds(
        actions=tuple(names),
        X=X[:n],
        action=action[:n],
        propensity=propensity[:n],
        reward=reward[:n],
        eligible=eligible[:n],
        source={"kind": "event_log", "path": str(path), "encoding_hash": schema.encoding_hash},
        counts=counts,
        logged_dist=logged[:n],
        created_at=created[:n],
    )


def load_csv(path: str | Path, schema: FeatureSchema) -> LoggedRounds:
    """Read a logged-data CSV (the simulation format); every action counts as eligible.

    When the file has a column ``expected_reward_<action>`` for every action (simulated data),
    the true expected rewards are kept so that true values can be reported beside estimates.
    """
    path = Path(path)
    try:
        data = read_logged_csv(path, schema)
    except LoggedDataError as exc:
        raise EvaluationError(str(exc)) from None
    with open(path, encoding="utf-8") as f:
        header = f.readline().strip().split(",")
    truth_columns = [f"expected_reward_{a}" for a in schema.actions]
    expected = None
    if all(c in header for c in truth_columns):
        frame = pd.read_csv(path, usecols=truth_columns, engine="pyarrow")
        expected = frame[truth_columns].to_numpy(np.float64)
        if not np.all(np.isfinite(expected)):
            raise EvaluationError(f"{path}: an expected_reward_* column holds a non-number.")
    n = data.n_rounds
    return LoggedRounds(
        actions=schema.actions,
        X=data.X,
        action=data.action,
        propensity=data.propensity,
        reward=data.reward,
        eligible=np.ones((n, schema.n_actions), dtype=np.bool_),
        source={"kind": "csv", "path": str(path), "schema_hash": schema.hash},
        counts=dict(decisions=n, pending=0, never_activated=0, used=n),
        expected_rewards=expected,
    )


# ------------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class Candidate:
    """A policy name and the parameters given for it (validated, coerced); the rest default.

    Parameters are the policy constructor's (``alpha``, ``ridge``, ...) and its exploration
    rule's (``epsilon``, ``temperature``, ...); ``exploration=<rule>`` picks another rule and
    ``exploration.<name>`` names a rule parameter that a policy parameter shadows.
    """

    policy: str
    params: tuple[tuple[str, Any], ...] = ()
    label: str = ""

    def build(self) -> Policy:
        """A fresh, unfitted policy with these parameters."""
        return _build(self.policy, dict(self.params))


def _signature(cls: type[Any]) -> dict[str, inspect.Parameter]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        name: p
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind in kinds and name != "exploration"
    }


def _policy_class(name: str) -> type[Policy]:
    try:
        return POLICIES[name]
    except KeyError:
        raise CandidateError(
            f"Unknown policy {name!r}; registered policies: {', '.join(sorted(POLICIES))}."
        ) from None


def _exploration_class(policy_cls: type[Policy], params: Mapping[str, Any]) -> type[Any] | None:
    """The exploration rule the parameters configure; None if the policy takes no rule."""
    if "exploration" not in inspect.signature(policy_cls).parameters:
        return None
    if "exploration" in params:
        name = params["exploration"]
        if name not in EXPLORATIONS:
            raise CandidateError(
                f"Unknown exploration rule {name!r}; known rules: "
                f"{', '.join(sorted(EXPLORATIONS))}."
            )
        return EXPLORATIONS[name]
    try:
        return type(policy_cls().exploration)
    except (TypeError, ValueError, AttributeError):
        return None


def _split_params(policy: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check every parameter name and give each value its parameter's type (by key)."""
    cls = _policy_class(policy)
    own = _signature(cls)
    rule = _exploration_class(cls, params)
    rule_params = _signature(rule) if rule is not None else {}
    coerced: dict[str, Any] = {}
    for key, value in params.items():
        name = key.removeprefix("exploration.")
        if key == "exploration" and rule is not None:
            coerced[key] = value
        elif key == name and name in own:
            coerced[key] = _coerce(policy, name, value, own[name].default)
        elif name in rule_params:
            coerced[key] = _coerce(policy, name, value, rule_params[name].default)
        else:
            known = sorted(own) + sorted(rule_params) + (["exploration"] if rule else [])
            raise CandidateError(
                f"Unknown parameter {key!r} for policy {policy!r}; its parameters are: "
                f"{', '.join(known)}."
            )
    return coerced


def _build(policy: str, params: Mapping[str, Any]) -> Policy:
    cls = _policy_class(policy)
    own = _signature(cls)
    kwargs = {k: v for k, v in params.items() if k in own}
    rule_kwargs = {
        k.removeprefix("exploration."): v
        for k, v in params.items()
        if k not in own and k != "exploration"
    }
    if "exploration" in params or rule_kwargs:
        rule = _exploration_class(cls, params)
        if rule is None:
            raise CandidateError(f"Policy {policy!r} takes no exploration rule.")
        kwargs["exploration"] = rule(**rule_kwargs)
    return cls(**kwargs)


def _coerce(policy: str, name: str, value: Any, default: Any) -> Any:
    """Give `value` the type of the parameter's default (1 → 1.0 for a float parameter)."""
    where = f"{policy}: parameter {name}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise CandidateError(f"{where} must be true or false, got {value!r}.")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CandidateError(f"{where} must be a number, got {value!r}.")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise CandidateError(f"{where} must be an integer, got {value!r}.")
    return value


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def make_candidate(policy: str, params: Mapping[str, Any], label: str | None = None) -> Candidate:
    """Validate a candidate: known policy and parameters, values the constructor accepts.

    Examples
    --------
    >>> make_candidate("linucb", {"alpha": 1, "epsilon": 0.1}).label
    'linucb(alpha=1, epsilon=0.1)'
    >>> make_candidate("linucb", {"alpha": -1})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    banditrec.evaluation.CandidateError: linucb(alpha=-1): alpha must be a finite number ≥ 0...
    """
    coerced = _split_params(policy, params)
    ordered = tuple(coerced.items())
    if label is None:
        inner = ", ".join(f"{k}={_format(v)}" for k, v in ordered)
        label = f"{policy}({inner})" if inner else policy
    try:
        _build(policy, dict(ordered))
    except (TypeError, ValueError) as exc:
        raise CandidateError(f"{label}: {exc}") from None
    return Candidate(policy, ordered, label)


def parse_value(text: str) -> Any:
    """A command-line value: true/false, an int, a float, or else the string itself."""
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if isinstance(value, float) and math.isnan(value):
            raise CandidateError(f"{text!r} is not a usable number.")
        return value
    return text


def parse_grid(options: Iterable[str]) -> dict[str, list[Any]]:
    """Parse ``--grid NAME=V1,V2,...`` options into name -> values.

    Examples
    --------
    >>> parse_grid(["alpha=0.1,1", "ridge=10"])
    {'alpha': [0.1, 1], 'ridge': [10]}
    """
    grid: dict[str, list[Any]] = {}
    for option in options:
        key, sep, values = option.partition("=")
        key = key.strip()
        items = [v.strip() for v in values.split(",")]
        if not sep or not key or not all(items):
            raise CandidateError(
                f"--grid {option!r} is not NAME=V1,V2,... (for example alpha=0.1,0.5,1)."
            )
        if key in grid:
            raise CandidateError(f"--grid {key} is given twice; list all its values in one option.")
        grid[key] = [parse_value(v) for v in items]
    return grid


def grid_candidates(policy: str, grid: Mapping[str, Sequence[Any]]) -> list[Candidate]:
    """Every combination of the grid's values (cartesian product), validated."""
    names = list(grid)
    return [
        make_candidate(policy, dict(zip(names, values, strict=True)))
        for values in itertools.product(*(grid[n] for n in names))
    ]


def parse_candidate(text: str) -> Candidate:
    """Parse ``POLICY`` or ``POLICY:NAME=V,NAME=V`` (one ``--candidate`` option).

    Examples
    --------
    >>> parse_candidate("linucb:alpha=0.5,ridge=10").params
    (('alpha', 0.5), ('ridge', 10.0))
    """
    policy, sep, rest = text.partition(":")
    policy = policy.strip()
    usage = "expected POLICY or POLICY:NAME=VALUE,NAME=VALUE (for example linucb:alpha=0.5)"
    if not policy or (sep and not rest.strip()):
        raise CandidateError(f"--candidate {text!r}: {usage}.")
    params: dict[str, Any] = {}
    for piece in rest.split(",") if sep else ():
        key, eq, value = piece.partition("=")
        key = key.strip()
        if not eq or not key or not value.strip():
            raise CandidateError(
                f"--candidate {text!r}: {piece.strip()!r} is not NAME=VALUE; {usage}."
            )
        if key in params:
            raise CandidateError(f"--candidate {text!r}: {key} is given twice.")
        params[key] = parse_value(value)
    return make_candidate(policy, params)


def load_candidates_file(path: str | Path) -> list[Candidate]:
    """Candidates from a TOML file: ``[[candidate]]`` tables with ``policy`` and parameters.

    A list value makes a grid (every combination); ``label`` names a single candidate::

        [[candidate]]
        policy = "linucb"
        alpha = [0.1, 0.5, 1.0]
        epsilon = 0.05
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CandidateError(f"The candidates file {path} does not exist.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise CandidateError(f"The candidates file {path} is not valid TOML: {exc}.") from None
    tables = data.get("candidate")
    if not isinstance(tables, list) or not tables:
        raise CandidateError(f"The candidates file {path} has no [[candidate]] table.")
    out: list[Candidate] = []
    for i, table in enumerate(tables, start=1):
        where = f"{path}, candidate {i}"
        table = dict(table)
        policy, label = table.pop("policy", None), table.pop("label", None)
        if not isinstance(policy, str):
            raise CandidateError(f'{where}: needs policy = "<name>".')
        if isinstance(table.get("exploration"), dict):  # [candidate.exploration] sub-table
            rule = table.pop("exploration")
            table.update({f"exploration.{k}": v for k, v in rule.items() if k != "name"})
            if "name" in rule:
                table["exploration"] = rule["name"]
        grid = {k: v if isinstance(v, list) else [v] for k, v in table.items()}
        if any(not v for v in grid.values()):
            raise CandidateError(f"{where}: an empty list of values.")
        if any(isinstance(x, dict | list) for v in grid.values() for x in v):
            raise CandidateError(f"{where}: parameter values must be numbers, booleans or text.")
        many = any(len(v) > 1 for v in grid.values())
        if label is not None and many:
            raise CandidateError(f"{where}: label names one candidate; it cannot go with a grid.")
        if label is not None:
            out.append(make_candidate(policy, {k: v[0] for k, v in grid.items()}, str(label)))
        else:
            out.extend(grid_candidates(policy, grid))
    return out


def default_candidates() -> list[Candidate]:
    """A small LinUCB grid (α × ε) and every other registered policy with its defaults."""
    out: list[Candidate] = []
    for name in POLICIES:
        if name == "linucb":
            out.extend(grid_candidates(name, _DEFAULT_LINUCB_GRID))
        else:
            out.append(make_candidate(name, {}))
    return out


def unique(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Candidates without repeats (same policy and parameters), first kept."""
    seen: set[tuple[str, tuple[tuple[str, Any], ...]]] = set()
    out = []
    for c in candidates:
        key = (c.policy, tuple(sorted(c.params, key=lambda kv: kv[0])))
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


# ------------------------------------------------------------------------------ evaluation


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
    unsupported_mass: float | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    rank: int | None = None
    tied_with_best: bool = False
    curve: FloatArray | None = None

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
                f"{len(tied)} other candidate(s) have intervals overlapping the best's, so this "
                f"log cannot tell them apart: {', '.join(tied[:5])}{' …' if len(tied) > 5 else ''}."
            )
        better = sum(c.verdict == "better" for c in self.candidates)
        same = sum(c.verdict == "no significant difference" for c in self.candidates)
        lines.append(
            f"Against the logging policy: {better} candidate(s) significantly better, {same} "
            "not significantly different (paired interval of the difference contains 0)."
        )
        low = [c.label for c in self.candidates if c.low_ess and c.error is None]
        if low:
            lines.append(
                f"{len(low)} candidate(s) have an effective sample size below "
                f"{self.config.min_effective_sample_size:g} and are ranked last: their "
                "estimates are unreliable."
            )
        if best.true_value is not None:
            lines.append(
                f"True value of the best on the evaluation rounds: {best.true_value:.4f} "
                f"(logging {self.logging_true_value:.4f}, oracle {self.oracle_true_value:.4f})."
            )
        return lines

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
                "best": None if self.best is None else self.best.label,
                "summary": self.summary(),
                "candidates": [_candidate_dict(c) for c in self.candidates],
                "warnings": self.warnings,
                "seconds": self.seconds,
            }
        )
        return out


def _estimate_dict(e: ope.PolicyValueEstimate) -> dict[str, Any]:
    return {
        "value": e.value,
        "ci_low": e.ci_low,
        "ci_high": e.ci_high,
        "effective_sample_size": e.effective_sample_size,
        "n_rounds": e.n_rounds,
        "warnings": list(e.warnings),
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
        "effective_sample_size": c.effective_sample_size,
        "low_ess": c.low_ess,
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


def _mean_estimate(
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


def _running(num: FloatArray, den: FloatArray, points: NDArray[np.intp]) -> FloatArray:
    total = np.cumsum(den)[points]
    with np.errstate(invalid="ignore", divide="ignore"):
        out: FloatArray = np.where(total > 0, np.cumsum(num)[points] / total, np.nan)
    return out


@dataclass(frozen=True)
class _Held:
    """The held-out (evaluation) rounds and what every candidate shares about them."""

    X: FloatArray
    action: NDArray[np.intp]
    propensity: FloatArray
    reward: FloatArray
    eligible: NDArray[np.bool_]
    logged_dist: FloatArray | None
    expected: FloatArray | None
    q: FloatArray | None
    logging: ope.PolicyValueEstimate
    points: NDArray[np.intp]

    @property
    def n(self) -> int:
        return int(self.action.shape[0])


def evaluate(
    rounds: LoggedRounds,
    candidates: Sequence[Candidate],
    config: EvaluationConfig | None = None,
    progress: ProgressCallback | None = None,
) -> EvaluationResult:
    """Evaluate and rank `candidates` on `rounds` under `config`'s protocol.

    A candidate that fails (its policy raises) is reported with its error and ranked last;
    every other candidate still runs. The same seed gives the same result, and each
    candidate's randomness depends only on the seed and its label, not on the others.
    """
    config = config or EvaluationConfig()
    config.check()
    start = time.perf_counter()
    if not candidates:
        raise EvaluationError("No candidate to evaluate.")
    n = rounds.n_rounds
    n_train = math.floor(config.split * n)
    if n - n_train < MIN_EVALUATION_ROUNDS:
        raise EvaluationError(
            f"The held-out part has {n - n_train} rounds (of {n:,} with a known reward, split "
            f"{config.split:g}); at least {MIN_EVALUATION_ROUNDS} are needed. Use a smaller "
            "--split or a longer log."
        )
    uniform = rounds.is_uniform()
    estimators = _estimators(config, uniform)
    K = len(rounds.actions)
    ev = slice(n_train, n)
    held_reward = rounds.reward[ev]
    q = None
    if {"dm", "dr"} & set(estimators):
        if progress is not None:
            progress("reward model", 0, 1, "cross-fitting")
        q = ope.cross_fit_reward_model(
            rounds.X[ev], rounds.action[ev], held_reward, K,
            n_folds=min(config.reward_model_folds, n - n_train),
            rng=np.random.default_rng([config.seed, 1]),
        )  # fmt: skip
        if progress is not None:
            progress("reward model", 1, 1, "cross-fitted")
    n_eval = n - n_train
    points = np.unique(np.linspace(0, n_eval - 1, min(_CURVE_POINTS, n_eval)).astype(np.intp))
    held = _Held(
        X=rounds.X[ev],
        action=rounds.action[ev],
        propensity=rounds.propensity[ev],
        reward=held_reward,
        eligible=rounds.eligible[ev],
        logged_dist=None if rounds.logged_dist is None else rounds.logged_dist[ev],
        expected=None if rounds.expected_rewards is None else rounds.expected_rewards[ev],
        q=q,
        logging=_mean_estimate("on-policy", held_reward, config, [config.seed, 2]),
        points=points,
    )
    train = (rounds.X[:n_train], rounds.action[:n_train], rounds.reward[:n_train])
    results = []
    total = 2 * n_eval * len(candidates)
    for i, candidate in enumerate(candidates):
        done = 2 * n_eval * i

        def tick(k: int, label: str = candidate.label, done: int = done) -> None:
            if progress is not None:
                progress("evaluate", done + k, total, label)

        results.append(_run_candidate(candidate, config, estimators, train, held, K, tick))
    if progress is not None:
        progress("evaluate", total, total, "done")
    _rank(results, config, held.logging)

    result = EvaluationResult(
        config=config,
        source=rounds.source,
        counts={**rounds.counts, "train": n_train, "evaluation": n_eval},
        actions=rounds.actions,
        estimators=estimators,
        logging_uniform=uniform,
        logging=held.logging,
        candidates=results,
        logging_curve=_running(held_reward, np.ones(n_eval), points),
        curve_rounds=points + n_train,
    )
    if held.expected is not None:
        mu = held.expected
        result.logging_true_value = float(mu[np.arange(n_eval), held.action].mean())
        result.oracle_true_value = float(np.where(held.eligible, mu, -np.inf).max(axis=1).mean())
    if rounds.created_at is not None and n_train > 0:
        stamp = [_iso(rounds.created_at[i]) for i in (0, n_train - 1, n_train, n - 1)]
        names = ("train_from", "train_to", "eval_from", "eval_to")
        result.time_range = dict(zip(names, stamp, strict=True))
    result.warnings = _notes(rounds, config, uniform, estimators)
    result.seconds = time.perf_counter() - start
    return result


def _iso(t: float) -> str:
    return datetime.fromtimestamp(float(t), UTC).isoformat(timespec="seconds")


def _estimators(config: EvaluationConfig, uniform: bool) -> tuple[str, ...]:
    if config.protocol == "replay":
        if not uniform:
            raise EvaluationError(
                "The replay protocol needs a log from a uniform random logging policy (every "
                "eligible action equally likely), and this log is not; use --protocol split."
            )
        available: tuple[str, ...] = ("replay",)
    else:
        available = ("dr", "snips", "ips", "dm") + (("replay",) if uniform else ())
    chosen = config.estimators or available
    for name in (*chosen, config.ranking_estimator):
        if name not in available:
            why = (
                "the replay protocol has only the replay estimator"
                if config.protocol == "replay"
                else "replay is unbiased only on a uniform random log, and this log is not"
            )
            raise EvaluationError(
                f"Estimator {name!r} is not available here ({why}); available: "
                f"{', '.join(available)}."
            )
    if config.ranking_estimator not in chosen:
        chosen = (*chosen, config.ranking_estimator)
    return tuple(chosen)


def _run_candidate(
    candidate: Candidate,
    config: EvaluationConfig,
    estimators: tuple[str, ...],
    train: tuple[FloatArray, NDArray[np.intp], FloatArray],
    held: _Held,
    n_actions: int,
    tick: Callable[[int], None],
) -> CandidateResult:
    result = CandidateResult(candidate)
    start = time.perf_counter()
    # Seeded by the label alone: adding or removing other candidates changes nothing here.
    rng = np.random.default_rng([config.seed, 3, zlib.crc32(candidate.label.encode())])
    try:
        policy = candidate.build().reset(n_actions, held.X.shape[1])
        result.policy_params = policy.get_params()
        result.exploration = {
            "name": policy.exploration.name,
            "params": policy.exploration.get_params(),
        }
        if train[0].shape[0] > 0:
            policy.update_batch(*train)
        if config.protocol == "replay":
            _replay(policy, config, held, rng, tick, result)
        else:
            _split(policy, config, estimators, held, rng, tick, result)
    except Exception as exc:  # one failing policy must not sink the whole run
        result.error = f"{type(exc).__name__}: {exc}"
        result.verdict = "failed"
        result.estimates = {}
    tick(2 * held.n)
    result.seconds = time.perf_counter() - start
    return result


def _serving_distributions(
    policy: Policy, held: _Held, rng: np.random.Generator, tick: Callable[[int], None]
) -> FloatArray:
    dist = np.empty((held.n, held.eligible.shape[1]))
    everything = np.ones(held.eligible.shape[1], dtype=np.bool_)
    all_eligible: NDArray[np.bool_] = np.asarray(held.eligible.all(axis=1))
    for i in range(held.n):
        mask = everything if all_eligible[i] else held.eligible[i]
        dist[i] = policy.distribution(held.X[i], mask, rng)[1]
        if i % _PROGRESS_EVERY == 0:
            tick(i)
    tick(held.n)
    return dist


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
    rows = np.arange(held.n)
    logged = {"reward": held.reward, "action": held.action}
    weighted = {**logged, "propensity": held.propensity, "action_dist": dist}
    inputs: dict[str, dict[str, Any]] = {
        "ips": weighted,
        "snips": weighted,
        "dr": {**weighted, "estimated_rewards": held.q},
        "dm": {"action_dist": dist, "estimated_rewards": held.q},
        "replay": {**logged, "action_dist": dist},
    }
    hyper = (config.n_bootstrap, config.alpha, config.min_effective_sample_size)
    with warnings.catch_warnings():  # recorded in each estimate's warnings instead
        warnings.simplefilter("ignore", ope.LowEffectiveSampleSizeWarning)
        for j, name in enumerate(estimators, start=1):
            estimator = _ESTIMATOR_CLASSES[name](*hyper)
            result.estimates[name] = estimator.estimate(**inputs[name], rng=rng)
            tick(held.n + held.n * j // (len(estimators) + 1))  # the bootstraps take a while
        ranking = config.ranking_estimator
        terms = _ESTIMATOR_CLASSES[ranking](*hyper).round_rewards(**inputs[ranking])
    result.lift = _mean_estimate("lift", terms - held.reward, config, rng)
    match = dist[rows, held.action]
    num, den = {
        "snips": (match / held.propensity * held.reward, match / held.propensity),
        "replay": (match * held.reward, match),
    }.get(ranking, (terms, np.ones(held.n)))
    result.curve = _running(num, den, held.points)
    if held.expected is not None:
        result.true_value = float((dist * held.expected).sum(axis=1).mean())
    if held.logged_dist is not None:
        result.unsupported_mass = float((dist * (held.logged_dist <= 0.0)).sum(axis=1).mean())
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
    chosen = np.empty(held.n, dtype=np.intp)
    expected = np.zeros(held.n)
    everything = np.ones(held.eligible.shape[1], dtype=np.bool_)
    all_eligible: NDArray[np.bool_] = np.asarray(held.eligible.all(axis=1))
    for i in range(held.n):
        x = held.X[i]
        mask = everything if all_eligible[i] else held.eligible[i]
        p = policy.distribution(x, mask, rng)[1]
        chosen[i] = sample_action(p, rng)
        if held.expected is not None:
            expected[i] = float(p @ held.expected[i])
        if chosen[i] == held.action[i]:  # the learner sees only what it would have seen
            policy.update(x, int(chosen[i]), float(held.reward[i]))
        if i % _PROGRESS_EVERY == 0:
            tick(2 * i)
    hyper = (config.n_bootstrap, config.alpha, config.min_effective_sample_size)
    kwargs = {"reward": held.reward, "action": held.action, "evaluation_action": chosen}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ope.LowEffectiveSampleSizeWarning)
        result.estimates["replay"] = ope.Replay(*hyper).estimate(**kwargs, rng=rng)
        terms = ope.Replay(*hyper).round_rewards(**kwargs)
    result.lift = _mean_estimate("lift", terms - held.reward, config, rng)
    match = (chosen == held.action).astype(np.float64)
    result.curve = _running(match * held.reward, match, held.points)
    if held.expected is not None and match.any():
        result.true_value = float(expected[match > 0].mean())


def _rank(
    results: list[CandidateResult], config: EvaluationConfig, logging: ope.PolicyValueEstimate
) -> None:
    """Verdicts, flags and ranks; low-ESS candidates go after every reliable one."""
    est = config.ranking_estimator
    for r in results:
        if r.error is not None:
            continue
        e = r.estimates[est]
        weights = next((r.estimates[k] for k in ("dr", "snips", "ips") if k in r.estimates), e)
        r.effective_sample_size = weights.effective_sample_size
        r.low_ess = r.effective_sample_size < config.min_effective_sample_size
        r.ci_overlaps_logging = e.ci_low <= logging.ci_high and logging.ci_low <= e.ci_high
        if r.lift is not None and r.lift.ci_low > 0:
            r.verdict = "better"
        elif r.lift is not None and r.lift.ci_high < 0:
            r.verdict = "worse"
        else:
            r.verdict = "no significant difference"
        for estimate in r.estimates.values():
            r.warnings.extend(estimate.warnings)
        if not math.isfinite(e.value) or not math.isfinite(e.ci_low):
            r.low_ess = True

    def key(r: CandidateResult) -> tuple[bool, bool, float]:
        value = r.value(est) if r.error is None else math.nan
        return (r.error is not None, r.low_ess, -value if math.isfinite(value) else math.inf)

    results.sort(key=key)
    for i, r in enumerate(results, start=1):
        r.rank = i
    if results and results[0].error is None:
        top = results[0].estimates[est]
        for r in results:
            if r.error is None:
                e = r.estimates[est]
                r.tied_with_best = e.ci_low <= top.ci_high and top.ci_low <= e.ci_high


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
