"""The logged rounds to evaluate on: read from the event log or a CSV, aligned by action name."""

from __future__ import annotations

import itertools
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from banditrec.evaluation.config import (
    PROGRESS_EVERY,
    EvaluationError,
    FloatArray,
    ProgressCallback,
    no_progress,
)
from banditrec.features import FeatureSchema
from banditrec.logged_data import LoggedDataError, read_logged_csv
from banditrec.store import StoreError
from banditrec.store.sqlite import SQLiteEventStore

__all__ = ["LoggedRounds", "load_csv", "load_event_log"]


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

    def part(self, start: int, stop: int) -> LoggedRounds:
        """Rounds ``start`` to ``stop`` (views); ``source`` and ``counts`` stay the whole log's."""
        rows = slice(start, stop)

        def cut(values: FloatArray | None) -> FloatArray | None:
            return None if values is None else values[rows]

        return replace(
            self,
            X=self.X[rows],
            action=self.action[rows],
            propensity=self.propensity[rows],
            reward=self.reward[rows],
            eligible=self.eligible[rows],
            logged_dist=cut(self.logged_dist),
            expected_rewards=cut(self.expected_rewards),
            created_at=cut(self.created_at),
        )


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
        return _read_store(store, path, schema, progress or no_progress)
    except sqlite3.Error as exc:
        raise EvaluationError(f"Cannot read the event log {path}: {exc}.") from None
    finally:
        store.close()


def _read_store(
    store: SQLiteEventStore, path: Path, schema: FeatureSchema, progress: ProgressCallback
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
    columns: dict[tuple[str, ...], NDArray[np.intp]] = {}

    def columns_of(actions: tuple[str, ...]) -> NDArray[np.intp]:
        """Where each of these actions sits among all actions (few distinct tuples: cached)."""
        found = columns.get(actions)
        if found is None:
            found = columns[actions] = np.array([index[a] for a in actions])
        return found

    counts = {"decisions": 0, "pending": 0, "never_activated": 0}
    n = 0
    for i, (record, total_reward) in enumerate(itertools.islice(store.iter_decisions(), total)):
        counts["decisions"] += 1
        if i % PROGRESS_EVERY == 0:
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
        pos = columns_of(record.actions)
        k = int(pos[record.action_index])
        X[n], action[n], reward[n] = record.x, k, float(total_reward)
        propensity[n], created[n] = record.probability, record.created_at
        eligible[n, columns_of(record.eligible)] = True
        eligible[n, k] = True
        logged[n, pos] = record.probabilities
        n += 1
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
