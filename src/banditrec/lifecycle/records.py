"""What the lifecycle keeps beside the event log: versions, candidates and the switch timeline.

A version is a model file (bytes) and the log offset its state includes; a candidate is a
policy configuration or a model file run in shadow; a switch record is one learn-stream entry
that changed what is served, with its reason. They live in the event store itself, so every
replica sees them: in the SQLite file (three tables of their own, written through a
connection of their own) or under the Redis log's key prefix. `records_for` picks the kind.

The switches themselves are learn-stream entries (`banditrec.lifecycle.switching`): the
records only describe them (the timeline `evaluate` and the report draw), and a replica
never needs a record to serve correctly, except the model bytes of a version it activates.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from banditrec.store import EventStore, StoreError

__all__ = [
    "CandidateSpec",
    "LifecycleRecords",
    "RedisRecords",
    "SQLiteRecords",
    "SwitchRecord",
    "VersionInfo",
    "records_for",
]


@dataclass(frozen=True)
class VersionInfo:
    """One model version: promoted, uploaded, the model served before the first switch
    (``base``), or a rollback target's state when the rollback was decided."""

    id: str
    created_at: float
    kind: str  # base | promotion | upload | rollback
    label: str
    log_offset: int
    policy: str
    parent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CandidateSpec:
    """A shadow candidate: a registered policy with parameters, or a model file."""

    name: str
    created_at: float
    policy: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    exploration: str | None = None
    exploration_params: dict[str, float] = field(default_factory=dict)
    model: bytes | None = None  # a trained model file instead of a configuration

    def describe(self) -> dict[str, Any]:
        """The spec as JSON (the model file by its size only)."""
        out = asdict(self)
        out["model"] = None if self.model is None else f"{len(self.model)} bytes"
        return out


@dataclass(frozen=True)
class SwitchRecord:
    """A switch on the timeline: the learn-stream entry ``seq`` of ``kind`` to ``target``."""

    seq: int
    kind: str
    target: str
    at: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LifecycleRecords(Protocol):
    """Versions, candidates and switch records, shared by every replica of one log."""

    def add_version(
        self, kind: str, label: str, log_offset: int, policy: str, model: bytes,
        parent: str | None = None,
    ) -> VersionInfo:  # fmt: skip
        """Keep a new version (ids ``v1``, ``v2``, ... in order of arrival)."""
        ...

    def versions(self) -> list[VersionInfo]:
        """Every version, oldest first."""
        ...

    def version_model(self, version_id: str) -> bytes | None:
        """The model file of a version (None if there is no such version)."""
        ...

    def put_candidate(self, spec: CandidateSpec) -> bool:
        """Register a candidate; False if one of that name exists."""
        ...

    def remove_candidate(self, name: str) -> bool:
        """Forget a candidate; False if there was none of that name."""
        ...

    def candidates(self) -> list[CandidateSpec]:
        """Every registered candidate, oldest first."""
        ...

    def candidate_names(self) -> set[str]:
        """The names of the registered candidates (cheap: no model files are read)."""
        ...

    def record_switch(self, record: SwitchRecord) -> None:
        """Describe the switch at ``record.seq`` (replacing an earlier description)."""
        ...

    def switches(self) -> list[SwitchRecord]:
        """Every switch described, in log order."""
        ...

    def close(self) -> None:
        """Release what the records hold open (SQLite: their connection)."""
        ...


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS lifecycle_versions (n INTEGER PRIMARY KEY AUTOINCREMENT, "
    "created_at REAL NOT NULL, kind TEXT NOT NULL, label TEXT NOT NULL, "
    "log_offset INTEGER NOT NULL, policy TEXT NOT NULL, parent TEXT, model BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS lifecycle_candidates (name TEXT PRIMARY KEY, "
    "created_at REAL NOT NULL, spec TEXT NOT NULL, model BLOB)",
    "CREATE TABLE IF NOT EXISTS lifecycle_switches (seq INTEGER PRIMARY KEY, "
    "kind TEXT NOT NULL, target TEXT NOT NULL, at REAL NOT NULL, reason TEXT NOT NULL)",
)


class SQLiteRecords:
    """The records in tables of the SQLite event log's file.

    A connection of its own, so the event store's module needs no lifecycle code: writes
    are rare (a switch, an upload), short, and wait for the store's writers through
    SQLite's busy timeout.
    """

    def __init__(self, path: str | Path, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            self._db.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
            with self._transaction() as db:
                for statement in _SCHEMA:
                    db.execute(statement)
        except sqlite3.Error as exc:
            raise StoreError(f"Cannot keep lifecycle records in {self.path}: {exc}.") from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def add_version(
        self, kind: str, label: str, log_offset: int, policy: str, model: bytes,
        parent: str | None = None,
    ) -> VersionInfo:  # fmt: skip
        now = time.time()
        with self._lock, self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO lifecycle_versions (created_at, kind, label, log_offset, policy, "
                "parent, model) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (now, kind, label, log_offset, policy, parent, model),
            )
        return VersionInfo(f"v{cursor.lastrowid}", now, kind, label, log_offset, policy, parent)

    def versions(self) -> list[VersionInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT n, created_at, kind, label, log_offset, policy, parent "
                "FROM lifecycle_versions ORDER BY n"
            ).fetchall()
        return [VersionInfo(f"v{n}", *rest) for n, *rest in rows]

    def version_model(self, version_id: str) -> bytes | None:
        number = _version_number(version_id)
        if number is None:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT model FROM lifecycle_versions WHERE n = ?", (number,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def put_candidate(self, spec: CandidateSpec) -> bool:
        data = orjson.dumps({**asdict(spec), "model": None}).decode()
        with self._lock, self._transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO lifecycle_candidates VALUES (?, ?, ?, ?)",
                (spec.name, spec.created_at, data, spec.model),
            )
        return cursor.rowcount == 1

    def remove_candidate(self, name: str) -> bool:
        with self._lock, self._transaction() as db:
            cursor = db.execute("DELETE FROM lifecycle_candidates WHERE name = ?", (name,))
        return cursor.rowcount == 1

    def candidates(self) -> list[CandidateSpec]:
        with self._lock:
            rows = self._db.execute(
                "SELECT spec, model FROM lifecycle_candidates ORDER BY created_at, name"
            ).fetchall()
        return [_candidate(orjson.loads(spec), model) for spec, model in rows]

    def candidate_names(self) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT name FROM lifecycle_candidates").fetchall()
        return {row[0] for row in rows}

    def record_switch(self, record: SwitchRecord) -> None:
        with self._lock, self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO lifecycle_switches VALUES (?, ?, ?, ?, ?)",
                (record.seq, record.kind, record.target, record.at, record.reason),
            )

    def switches(self) -> list[SwitchRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, target, at, reason FROM lifecycle_switches ORDER BY seq"
            ).fetchall()
        return [SwitchRecord(*row) for row in rows]

    def close(self) -> None:
        with self._lock:  # not under a call still running on another thread (see the store)
            self._db.close()


class RedisRecords:
    """The records under the Redis log's key prefix (hashes and one counter).

    Each write is one command or one ``MULTI`` block, so a crash leaves nothing half done.
    """

    def __init__(self, client: Any, prefix: str) -> None:
        self._redis = client
        self._p = prefix

    def add_version(
        self, kind: str, label: str, log_offset: int, policy: str, model: bytes,
        parent: str | None = None,
    ) -> VersionInfo:  # fmt: skip
        number = int(self._redis.incr(self._p + "lc:vseq"))
        info = VersionInfo(f"v{number}", time.time(), kind, label, log_offset, policy, parent)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._p + "lc:vmodels", info.id, model)
        pipe.hset(self._p + "lc:versions", info.id, orjson.dumps(info.to_dict()))
        pipe.execute()
        return info

    def versions(self) -> list[VersionInfo]:
        raw = self._redis.hgetall(self._p + "lc:versions")
        infos = [VersionInfo(**orjson.loads(v)) for v in raw.values()]
        return sorted(infos, key=lambda v: _version_number(v.id) or 0)

    def version_model(self, version_id: str) -> bytes | None:
        data = self._redis.hget(self._p + "lc:vmodels", version_id)
        return None if data is None else bytes(data)

    def put_candidate(self, spec: CandidateSpec) -> bool:
        data = orjson.dumps({**asdict(spec), "model": None})
        if not self._redis.hsetnx(self._p + "lc:candidates", spec.name, data):
            return False
        if spec.model is not None:
            self._redis.hset(self._p + "lc:cmodels", spec.name, spec.model)
        return True

    def remove_candidate(self, name: str) -> bool:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(self._p + "lc:candidates", name)
        pipe.hdel(self._p + "lc:cmodels", name)
        removed, _ = pipe.execute()
        return bool(removed)

    def candidates(self) -> list[CandidateSpec]:
        raw = self._redis.hgetall(self._p + "lc:candidates")
        models = self._redis.hgetall(self._p + "lc:cmodels")
        specs = [_candidate(orjson.loads(data), models.get(name)) for name, data in raw.items()]
        return sorted(specs, key=lambda s: (s.created_at, s.name))

    def candidate_names(self) -> set[str]:
        return {bytes(name).decode() for name in self._redis.hkeys(self._p + "lc:candidates")}

    def record_switch(self, record: SwitchRecord) -> None:
        self._redis.hset(self._p + "lc:switches", str(record.seq), orjson.dumps(record.to_dict()))

    def switches(self) -> list[SwitchRecord]:
        raw = self._redis.hgetall(self._p + "lc:switches")
        return sorted((SwitchRecord(**orjson.loads(v)) for v in raw.values()), key=lambda s: s.seq)

    def close(self) -> None:
        return None


def records_for(store: EventStore) -> LifecycleRecords:
    """The records kept beside `store`'s log: its SQLite file, or its Redis keys."""
    client = getattr(store, "_redis", None)
    if client is not None:  # the Redis store: the same server and key prefix
        return RedisRecords(client, str(getattr(store, "_prefix", "banditrec:")))
    path = getattr(store, "path", None)
    if isinstance(path, Path):
        return SQLiteRecords(path)
    raise StoreError(f"The event store {type(store).__name__} cannot keep lifecycle records.")


def _version_number(version_id: str) -> int | None:
    digits = version_id[1:] if version_id.startswith("v") else ""
    return int(digits) if digits.isdigit() else None


def _candidate(spec: dict[str, Any], model: bytes | None) -> CandidateSpec:
    spec["model"] = None if model is None else bytes(model)
    return CandidateSpec(**spec)
