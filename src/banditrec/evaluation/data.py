"""The logged rounds to evaluate on: read from the event log or a CSV, aligned by action name."""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from numpy.typing import NDArray

from banditrec.archive import Archive, ArchiveError
from banditrec.evaluation.config import (
    PROGRESS_EVERY,
    EvaluationError,
    FloatArray,
    ProgressCallback,
    no_progress,
)
from banditrec.features import FeatureSchema
from banditrec.logged_data import LoggedDataError, read_logged_csv
from banditrec.store import DecisionRecord, EventStore, LearnEvent, StoreError
from banditrec.store.sqlite_reader import ReadOnlyEventLog

__all__ = ["LearnStream", "LoggedRounds", "load_csv", "load_event_log"]


@dataclass(frozen=True)
class LearnStream:
    """The log's learn stream in seq order, as arrays (one row per learn event).

    ``kind`` holds `LearnKind` values; ``propensity`` is NaN where none was logged; an action
    change's vector is zeros and ``names`` maps its row to the action's name. Kept compact
    (no object per event): a long log's stream is as large as its decisions.
    """

    seq: NDArray[np.int64]
    kind: NDArray[np.str_]
    action: NDArray[np.intp]
    x: FloatArray
    reward: FloatArray
    weight: FloatArray
    propensity: FloatArray
    names: dict[int, str] = field(default_factory=dict)

    @property
    def n_events(self) -> int:
        return int(self.seq.shape[0])

    @classmethod
    def empty(cls, n_features: int) -> LearnStream:
        none = np.empty(0)
        return cls(
            np.empty(0, np.int64), np.empty(0, "<U16"), np.empty(0, np.intp),
            np.empty((0, n_features)), none, none, none,
        )  # fmt: skip

    @classmethod
    def of(cls, events: list[LearnEvent], n_features: int) -> LearnStream:
        """The arrays of `events` (in seq order)."""
        x = np.zeros((len(events), n_features))
        names: dict[int, str] = {}
        for i, event in enumerate(events):
            if event.x.shape == (n_features,):
                x[i] = event.x
            else:  # an action change: its name in event_id, no vector
                names[i] = event.event_id
        return cls(
            seq=np.array([e.seq for e in events], dtype=np.int64),
            kind=np.array([e.kind.value for e in events], dtype="<U16"),
            action=np.array([e.action_index for e in events], dtype=np.intp),
            x=x,
            reward=np.array([e.reward for e in events], dtype=np.float64),
            weight=np.array([e.weight for e in events], dtype=np.float64),
            propensity=np.array(
                [np.nan if e.propensity is None else e.propensity for e in events],
                dtype=np.float64,
            ),
            names=names,
        )

    @classmethod
    def concat(cls, parts: list[LearnStream], n_features: int) -> LearnStream:
        if not parts:
            return cls.empty(n_features)
        offsets = np.cumsum([0] + [p.n_events for p in parts])
        names = {
            int(start) + i: name
            for part, start in zip(parts, offsets, strict=False)
            for i, name in part.names.items()
        }
        return cls(
            seq=np.concatenate([p.seq for p in parts]),
            kind=np.concatenate([p.kind for p in parts]),
            action=np.concatenate([p.action for p in parts]),
            x=np.concatenate([p.x for p in parts]),
            reward=np.concatenate([p.reward for p in parts]),
            weight=np.concatenate([p.weight for p in parts]),
            propensity=np.concatenate([p.propensity for p in parts]),
            names=names,
        )


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
    #: Switches of what was served (banditrec.lifecycle): seq, kind, target, at, reason.
    switches: tuple[dict[str, Any], ...] = ()
    #: Each round's model version as logged, ``<base version>@<learn events applied>``
    #: (event logs only): with `learn_stream` and `epochs`, the live model can be replayed.
    model_version: NDArray[np.object_] | None = None
    #: The log's learn stream (event logs that keep it), whole in every part.
    learn_stream: LearnStream | None = None
    #: Each base model version that served and the log offset its epoch starts at.
    epochs: dict[str, int] = field(default_factory=dict)

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
            model_version=None if self.model_version is None else self.model_version[rows],
        )


def load_event_log(
    path: str | Path | EventStore | None,
    schema: FeatureSchema,
    progress: ProgressCallback | None = None,
    *,
    archive: str | Path | None = None,
) -> LoggedRounds:
    """Read the decisions of an event log that have a known reward (rewarded or defaulted).

    The log is the live SQLite file `path`, a Parquet archive directory (`archive`, or `path`
    when it is a directory; see `banditrec.archive`), or both: archived decisions first, then
    the live ones, each event id once, so a log read half archived gives the same rounds as
    read whole. The SQLite file is opened read-only (`ReadOnlyEventLog`): reading never
    writes to it, and a server may go on writing meanwhile. `path` may also be a store
    already open (any `banditrec.store.EventStore`, e.g. a Redis log opened read-only).

    Decisions still pending or never activated (deferred) are skipped and counted. Actions are
    aligned by name: the schema's actions first, then those added at run time, in order of
    first appearance; an action a decision did not offer (not yet added, disabled, excluded by
    the request) is not eligible there. Only the decisions present when reading starts are
    read, so a log that a server keeps writing to gives a consistent snapshot.
    """
    if path is not None and not isinstance(path, str | os.PathLike):
        return _read_store(path, archive, schema, progress or no_progress)
    live = None if path is None else Path(path)
    if live is not None and live.is_dir():
        if archive is not None:
            raise EvaluationError(
                f"{live} is a directory; give the event log file and the archive directory."
            )
        live, archive = None, live
    if live is None and archive is None:
        raise EvaluationError("Give an event log file, an archive directory or both.")
    label = " and ".join(str(p) for p in (archive, live) if p is not None)
    source = _source(live if live is not None else archive, archive, schema)
    progress = progress or no_progress
    try:
        stored = None if archive is None else Archive(archive, schema.encoding_hash)
        if live is None:
            rounds = _read(None, stored, label, schema, progress)
        else:
            rounds = _read_live(live, stored, label, schema, progress)
    except (StoreError, ArchiveError) as exc:
        raise EvaluationError(str(exc)) from None
    except (sqlite3.Error, OSError, pa.ArrowException) as exc:
        raise EvaluationError(f"Cannot read the event log {label}: {exc}.") from None
    return replace(rounds, source=source)


def _read_store(
    store: EventStore,
    archive: str | Path | None,
    schema: FeatureSchema,
    progress: ProgressCallback,
) -> LoggedRounds:
    where = str(getattr(store, "path", type(store).__name__))
    label = " and ".join(str(p) for p in (archive, where) if p is not None)
    source = _source(where, archive, schema)
    try:
        stored = None if archive is None else Archive(archive, schema.encoding_hash)
        rounds = _read(store, stored, label, schema, progress)
    except (StoreError, ArchiveError) as exc:
        raise EvaluationError(str(exc)) from None
    return replace(rounds, source=source)


def _source(where: Any, archive: str | Path | None, schema: FeatureSchema) -> dict[str, Any]:
    source = {"kind": "event_log", "path": str(where), "encoding_hash": schema.encoding_hash}
    if archive is not None:
        source["archive"] = str(archive)
    return source


def _read_live(
    path: Path,
    archive: Archive | None,
    label: str,
    schema: FeatureSchema,
    progress: ProgressCallback,
) -> LoggedRounds:
    # A log that no process had open is read without locks (so without creating the -wal
    # and -shm files); should a writer have opened it meanwhile, it is read again, shared.
    for lock_free in (None, False):
        with ReadOnlyEventLog(path, schema.encoding_hash, lock_free=lock_free) as log:
            try:
                rounds = _read(log, archive, label, schema, progress)
            except (sqlite3.DatabaseError, EvaluationError):
                if not log.changed():
                    raise
                continue  # a page the writer was changing: whatever failed, read again
            if not log.changed():
                return rounds
    raise EvaluationError(f"The event log {path} changed while it was read; try again.")


def _read(
    log: ReadOnlyEventLog | EventStore | None,
    archive: Archive | None,
    label: str,
    schema: FeatureSchema,
    progress: ProgressCallback,
) -> LoggedRounds:
    """The rounds of the archive's decisions, then of the live log's not archived."""
    # The live log's snapshot is taken first (by counting): a decision that retention moves
    # to the archive after it is in both, and read once; none can be in neither.
    live: Iterable[tuple[DecisionRecord, Any]] = ()
    live_total = 0
    if log is not None:
        counter = getattr(log, "count", None)
        if counter is not None:
            live_total = int(counter("decisions"))
            live = itertools.islice(log.iter_decisions(), live_total)
        else:  # a store that cannot count: its decisions now, in memory
            live = list(log.iter_decisions())
            live_total = len(live)
    total = live_total + (0 if archive is None else archive.count_decisions())
    if total == 0:
        raise EvaluationError(f"The event log {label} has no decisions; nothing to evaluate.")

    def decisions() -> Iterator[tuple[DecisionRecord, Any]]:
        archived: set[str] = set()
        if archive is not None:
            for record, reward in archive.iter_decisions():
                if log is not None:
                    archived.add(record.event_id)
                yield record, reward
        for record, reward in live:
            if record.event_id not in archived:
                yield record, reward

    short = Path(str(getattr(log, "path", label))).name
    rounds = _rounds_of(decisions(), total, label, short, schema, progress)
    stream, epochs = _learn_stream_of(log, schema.n_features)
    return replace(rounds, switches=_switches_of(log), learn_stream=stream, epochs=epochs)


def _learn_stream_of(
    log: ReadOnlyEventLog | EventStore | None, n_features: int
) -> tuple[LearnStream | None, dict[str, int]]:
    """The learn stream and the epochs, for replaying the live model (`evaluation.live`).

    Only a log that says where each epoch starts (the SQLite log) is replayable; the stream
    is read in batches, each turned into arrays at once.
    """
    epochs_of = getattr(log, "epochs", None)
    if log is None or epochs_of is None:
        return None, {}
    parts: list[LearnStream] = []
    last = 0
    while batch := log.learn_events_after(last):
        parts.append(LearnStream.of(batch, n_features))
        last = batch[-1].seq
    return LearnStream.concat(parts, n_features), dict(epochs_of())


def _switches_of(log: ReadOnlyEventLog | EventStore | None) -> tuple[dict[str, Any], ...]:
    """The lifecycle's switches recorded beside the log (none for an archive alone)."""
    if isinstance(log, ReadOnlyEventLog):
        return log.switches()
    client = getattr(log, "_redis", None)
    if client is None:
        return ()
    from banditrec.lifecycle.records import RedisRecords  # only reads

    records = RedisRecords(client, str(getattr(log, "_prefix", "banditrec:")))
    return tuple(record.to_dict() for record in records.switches())


def _rounds_of(
    decisions: Iterator[tuple[DecisionRecord, Any]],
    total: int,
    path: str,
    short: str,
    schema: FeatureSchema,
    progress: ProgressCallback,
) -> LoggedRounds:
    """`LoggedRounds` of the decisions (at most `total`) with a known reward."""
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

    versions = np.empty(total, dtype=object)
    counts = {"decisions": 0, "pending": 0, "never_activated": 0}
    n = 0
    for i, (record, total_reward) in enumerate(decisions):
        counts["decisions"] += 1
        if i % PROGRESS_EVERY == 0:
            progress("read", i, total, short)
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
        versions[n] = record.model_version
        eligible[n, columns_of(record.eligible)] = True
        eligible[n, k] = True
        logged[n, pos] = record.probabilities
        n += 1
    progress("read", total, total, short)
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
        source={},
        counts=counts,
        logged_dist=logged[:n],
        created_at=created[:n],
        model_version=versions[:n],
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
