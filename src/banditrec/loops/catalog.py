"""The loop catalog: the named loops' definitions, kept in the default loop's event store.

Every worker and every replica reads the same catalog, so a loop created through one of them
is served by all (`banditrec.loops.registry` opens what it finds there). SQLite: a table of
the default log's file, written through a connection of its own (as the lifecycle records
are). Redis: one hash under the default log's key prefix. `catalog_for` picks the kind.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson

from banditrec.errors import LoopExistsError
from banditrec.loops.definition import LoopRecord
from banditrec.store import EventStore, StoreError

__all__ = ["LoopCatalog", "RedisCatalog", "SQLiteCatalog", "catalog_for"]

#: What `LoopCatalog.put` did.
PutOutcome = Literal["created", "unchanged", "replaced"]


class LoopCatalog(Protocol):
    """Where the loop definitions are kept."""

    def get(self, name: str) -> LoopRecord | None:
        """The loop `name`'s record, if there is one."""

    def records(self) -> list[LoopRecord]:
        """Every loop's record, by name."""

    def put(self, record: LoopRecord, *, replace: bool = False) -> PutOutcome:
        """Keep `record`, replacing the definition of a loop of that name with the same
        schema; one with another schema is kept (`LoopExistsError`) unless `replace`. The
        same definition again is ``unchanged``."""

    def delete(self, name: str) -> bool:
        """Forget the loop `name`'s definition; whether there was one."""

    def close(self) -> None: ...


def _decide(old: LoopRecord | None, new: LoopRecord, replace: bool) -> PutOutcome | None:
    """What `put` does: None writes nothing."""
    if old is None:
        return "created"
    if old.same_definition(new):
        return None
    if not replace and old.schema != new.schema:  # its log is written under its schema
        raise LoopExistsError(new.name)
    return "replaced"


class SQLiteCatalog:
    """The catalog in a ``loops`` table of the SQLite event log's file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS loops (name TEXT PRIMARY KEY, definition TEXT NOT NULL)"
            )
        except sqlite3.Error as exc:
            raise StoreError(f"Cannot keep the loop catalog in {self.path}: {exc}.") from None

    def get(self, name: str) -> LoopRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT definition FROM loops WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else LoopRecord.from_dict(name, orjson.loads(row[0]))

    def records(self) -> list[LoopRecord]:
        with self._lock:
            rows = self._db.execute("SELECT name, definition FROM loops ORDER BY name").fetchall()
        return [LoopRecord.from_dict(name, orjson.loads(data)) for name, data in rows]

    def put(self, record: LoopRecord, *, replace: bool = False) -> PutOutcome:
        data = orjson.dumps(record.to_dict()).decode()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")  # read and write as one: two workers, one winner
            try:
                row = db.execute(
                    "SELECT definition FROM loops WHERE name = ?", (record.name,)
                ).fetchone()
                old = (
                    None if row is None else LoopRecord.from_dict(record.name, orjson.loads(row[0]))
                )
                outcome = _decide(old, record, replace)
                if outcome is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO loops (name, definition) VALUES (?, ?)",
                        (record.name, data),
                    )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return outcome or "unchanged"

    def delete(self, name: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM loops WHERE name = ?", (name,))
        return cursor.rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisCatalog:
    """The catalog in one hash, ``<prefix>loops``, on the Redis log's server."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._redis = client
        self._key = prefix + "loops"

    def get(self, name: str) -> LoopRecord | None:
        data = self._redis.hget(self._key, name)
        return None if data is None else LoopRecord.from_dict(name, orjson.loads(data))

    def records(self) -> list[LoopRecord]:
        raw = self._redis.hgetall(self._key)
        records = [LoopRecord.from_dict(bytes(k).decode(), orjson.loads(v)) for k, v in raw.items()]
        return sorted(records, key=lambda r: r.name)

    def put(self, record: LoopRecord, *, replace: bool = False) -> PutOutcome:
        data = orjson.dumps(record.to_dict())
        if self._redis.hsetnx(self._key, record.name, data):  # atomic: one creator wins
            return "created"
        old = self.get(record.name)
        outcome = _decide(old, record, replace)
        if outcome is not None:
            self._redis.hset(self._key, record.name, data)
        return outcome or "unchanged"

    def delete(self, name: str) -> bool:
        return bool(self._redis.hdel(self._key, name))

    def close(self) -> None:
        return None


def catalog_for(store: EventStore) -> LoopCatalog:
    """The catalog kept beside the default loop's `store`: its SQLite file, or its Redis keys."""
    client = getattr(store, "_redis", None)
    if client is not None:
        return RedisCatalog(client, str(getattr(store, "_prefix", "banditrec:")))
    path = getattr(store, "path", None)
    if isinstance(path, Path):
        return SQLiteCatalog(path)
    raise StoreError(f"The event store {type(store).__name__} cannot keep the loop catalog.")
