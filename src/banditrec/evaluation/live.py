"""The live policy and its neighbours, replayed along the log: candidates the log can judge.

Why: a candidate that learns from the log's first part and is then frozen (the `split`
protocol) drifts away from a live policy that goes on learning; its choices differ from the
logged ones on a share of the rounds, and with a 1% exploration floor every such round has
an importance weight of 0 or of about ``K / 0.01``. Measured on `make run`'s log (3,000
decisions of LinUCB ε = 0.01, 900 held out), every frozen candidate had an effective sample
size of 7 to 51: no estimate could be trusted. The log can judge what stays close to what it
served, so this module evaluates the **live policy replayed**, and its neighbours, on it.

How: each decision logs its model version ``<base version>@<k>``: the base model (a model
file, which starts an epoch at a log offset) plus the learn events up to seq ``k``. A live
candidate starts from the base model's state with some parameters changed (``alpha``, the
exploration rule's ``epsilon``, ...), applies the same learn events as the server did, and
at each held-out decision gives its distribution from the state the server had then. With
no parameter changed it reproduces the logged distribution (a check, reported as the
replay's fidelity), so its importance weights are 1; a neighbour differs only where the
changed parameter changes the choice.

Why it is unbiased: the candidate's distribution at decision ``t`` depends only on learn
events logged before ``t`` (those the server had applied), so ``E[w_t r_t | past] =
V(π_t)``: IPS, and DR with a cross-fitted reward model, estimate the mean value of the
policies ``π_t`` it would have served, each learned from the logged data up to ``t``.
Learning from the logged choices rather than its own is the one counterfactual it does not
capture (its own choices would have taught it other things); for a neighbour that agrees
with the live policy on most rounds, that difference is small.

The base model is found by version: a model file given (``banditrec evaluate --model``), or
a model file beside the log. Rounds of an epoch whose base model is not found are replayed
from the live policy's prior (still unbiased, no longer the live policy: the fidelity says
how many rounds were reproduced exactly).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from banditrec.actions import ACTION_CHANGES
from banditrec.evaluation.candidates import LIVE, checked_params, split_params
from banditrec.evaluation.config import PROGRESS_EVERY, EvaluationError, FloatArray
from banditrec.evaluation.data import LearnStream, LoggedRounds
from banditrec.exploration import EXPLORATIONS, Exploration
from banditrec.features import FeatureSchema
from banditrec.policies import POLICIES, Policy
from banditrec.snapshot import ModelFileError, load_model, read_metadata
from banditrec.store import LearnKind

__all__ = [
    "LIVE",
    "LiveModel",
    "fidelity",
    "find_live_model",
    "live_distributions",
    "live_policy",
    "neighbour_params",
]

#: A replayed distribution equal to the logged one within this (rounding) counts as exact.
EXACT = 1e-9


@dataclass(frozen=True)
class LiveModel:
    """The base model that served an epoch of the log, and where it was found."""

    policy: Policy
    actions: tuple[str, ...]
    version: str
    path: str

    @property
    def name(self) -> str:
        return self.policy.name

    def describe(self) -> dict[str, Any]:
        """JSON-ready: what served, found where."""
        return {
            "policy": self.policy.name,
            "params": self.policy.get_params(),
            "exploration": {
                "name": self.policy.exploration.name,
                "params": self.policy.exploration.get_params(),
            },
            "version": self.version,
            "model_file": self.path,
        }


def _base_version(model_version: str) -> tuple[str, int] | None:
    base, sep, offset = str(model_version).rpartition("@")
    if not sep or not offset.isdigit():
        return None
    return base, int(offset)


def find_live_model(
    rounds: LoggedRounds, schema: FeatureSchema, model_files: Iterable[str | Path] = ()
) -> LiveModel | None:
    """The base model of the latest epoch served in `rounds`, if a model file holds it.

    `model_files` are tried first, then the ``.npz`` files beside the event log; a file
    counts when its version is that epoch's base version (a file of another version, or
    unreadable, is passed over). None when the log has no learn stream or none matches.
    """
    if rounds.model_version is None or not rounds.epochs:
        return None
    wanted = _served_bases(rounds)
    if not wanted:
        return None
    files = [Path(p) for p in model_files]
    where = rounds.source.get("path")
    if where is not None and Path(where).parent.is_dir():
        files += sorted(Path(where).parent.glob("*.npz"))
    found: dict[str, LiveModel] = {}
    for path in files:
        try:
            version = str(read_metadata(path).get("version"))
            if version not in wanted or version in found:
                continue
            model = load_model(path, schema)
        except (ModelFileError, OSError, ValueError, KeyError):
            continue
        found[version] = LiveModel(model.policy, tuple(model.actions), version, str(path))
    for version in reversed(wanted):  # the latest epoch first
        if version in found:
            return found[version]
    return None


def _served_bases(rounds: LoggedRounds) -> list[str]:
    """The base versions that served, in order of their epochs' first decision."""
    assert rounds.model_version is not None
    seen: dict[str, None] = {}
    for version in rounds.model_version:
        parsed = _base_version(version)
        if parsed is not None and parsed[0] in rounds.epochs:
            seen.setdefault(parsed[0], None)
    return list(seen)


def live_policy(live: LiveModel, params: dict[str, Any]) -> Policy:
    """The live policy with `params` changed (checked), from the base model's state.

    A parameter of the exploration rule changes the live rule's (``epsilon=0`` keeps its
    other parameters); ``exploration=<rule>`` replaces the rule.
    """
    cls = POLICIES[live.name]
    checked = checked_params(live.name, params)
    own, rule_name, rule_params = split_params(live.name, checked)
    kwargs = {**live.policy.get_params(), **own}
    rule: Exploration
    if rule_name is not None:
        rule = EXPLORATIONS[rule_name](**rule_params)
    else:
        rule = dataclasses.replace(live.policy.exploration, **rule_params)  # type: ignore[type-var]
    policy = cls(**kwargs, exploration=rule)
    return policy.set_state(live.policy.get_state())


def live_distributions(
    params: dict[str, Any],
    live: LiveModel,
    held: LoggedRounds,
    rng: np.random.Generator,
    tick: Callable[[int], None],
) -> tuple[FloatArray, int]:
    """The live candidate's distribution on every held-out round, and how many rounds were
    replayed from a base model (the others, of an epoch whose model was not found, start
    from the live policy's prior).
    """
    if held.model_version is None:
        raise EvaluationError("Live candidates need an event log (model versions per decision).")
    n, n_columns = held.n_rounds, held.eligible.shape[1]
    column = {name: k for k, name in enumerate(held.actions)}
    parsed = [_base_version(v) for v in held.model_version]
    if any(p is None or p[0] not in held.epochs for p in parsed):
        raise EvaluationError(
            "Some held-out decisions have a model version that names no epoch of this log; "
            "the live policy cannot be replayed on them."
        )
    stream = held.learn_stream
    if stream is None:
        raise EvaluationError("Live candidates need the log's learn stream (a SQLite event log).")
    seqs = stream.seq
    dist = np.zeros((n, n_columns))
    from_base = 0
    by_epoch: dict[str, list[int]] = {}
    for i, p in enumerate(parsed):
        assert p is not None
        by_epoch.setdefault(p[0], []).append(i)
    done = 0
    for version, rows in by_epoch.items():
        policy = live_policy(live, params)
        actions = list(live.actions)
        if version != live.version:  # its base model is gone: from the prior
            policy.reset(len(actions), held.X.shape[1])
        else:
            from_base += len(rows)
        offsets = [parsed[i][1] for i in rows]  # type: ignore[index]
        order = sorted(range(len(rows)), key=offsets.__getitem__)
        cursor = int(np.searchsorted(seqs, held.epochs[version], side="right"))
        for j in order:
            i = rows[j]
            while cursor < len(seqs) and seqs[cursor] <= offsets[j]:
                _apply(policy, actions, stream, cursor)
                cursor += 1
            dist[i] = _distribution(policy, actions, column, held, i, rng)
            done += 1
            if done % PROGRESS_EVERY == 0:
                tick(done)
    tick(n)
    return dist, from_base


def _apply(policy: Policy, actions: list[str], stream: LearnStream, i: int) -> None:
    """Apply learn event `i` of the stream as the engine does (`Engine.apply`)."""
    kind = LearnKind(str(stream.kind[i]))
    x, action, reward = stream.x[i], int(stream.action[i]), float(stream.reward[i])
    if kind in ACTION_CHANGES:
        name = stream.names.get(i)
        if kind is LearnKind.add_action and name is not None and name not in actions:
            policy.add_action()
            actions.append(name)
    elif kind is LearnKind.correction:
        policy.correct(x, action, reward)
    elif kind in (LearnKind.reward, LearnKind.default):
        weight, propensity = float(stream.weight[i]), float(stream.propensity[i])
        logged = getattr(policy, "update_logged", None)
        if not np.isnan(propensity) and logged is not None:
            # auto scores its members with the probability the action was served with
            logged(x, action, reward, weight, propensity)
        else:
            policy.update(x, action, reward, weight)
    # Switches (promotion, rollback, apprentice mode) change what is served, not this model.


def _distribution(
    policy: Policy,
    actions: Sequence[str],
    column: dict[str, int],
    held: LoggedRounds,
    i: int,
    rng: np.random.Generator,
) -> FloatArray:
    """The policy's distribution at round i, in the rounds' action columns."""
    where = np.array([column.get(a, -1) for a in actions])
    known = where >= 0
    eligible = np.zeros(len(actions), dtype=np.bool_)
    eligible[known] = held.eligible[i, where[known]]
    out = np.zeros(held.eligible.shape[1])
    if not eligible.any():
        return out
    p = policy.distribution(held.X[i], eligible, rng)[1]
    out[where[known]] = p[known]
    return out


def fidelity(dist: FloatArray, held: LoggedRounds) -> int:
    """How many rounds the replayed distribution reproduces the logged one (within EXACT)."""
    if held.logged_dist is None:
        return 0
    return int((np.abs(dist - held.logged_dist).max(axis=1) <= EXACT).sum())


def neighbour_params(live: LiveModel) -> list[dict[str, Any]]:
    """The live policy's neighbours worth evaluating by default: its width α halved and
    doubled (LinUCB-like policies), its exploration floor ε at 0 (greedy), 0.05 and 0.1, a
    softmax temperature or an inverse-gap γ halved and doubled."""
    out: list[dict[str, Any]] = []
    alpha = live.policy.get_params().get("alpha")
    if isinstance(alpha, float) and math.isfinite(alpha):
        out += [{"alpha": alpha / 2}, {"alpha": alpha * 2}] if alpha > 0 else [{"alpha": 0.5}]
    rule = live.policy.exploration.get_params()
    epsilon = rule.get("epsilon")
    if isinstance(epsilon, float):
        out += [{"epsilon": e} for e in (0.0, 0.05, 0.1) if not math.isclose(e, epsilon)]
    for name in ("temperature", "gamma"):
        value = rule.get(name)
        if isinstance(value, float) and value > 0:
            # `exploration.gamma` reaches the rule's γ past LinUCB's own (forgetting) γ.
            key = f"exploration.{name}" if name in live.policy.get_params() else name
            out += [{key: value / 2}, {key: value * 2}]
    return out
