"""A banditrec SQLite event log opened read-only, for evaluation and export.

It reads the tables as `banditrec.store.sqlite` writes them, with that module's row
decoding, and never writes, locks or creates anything beside the file.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

from banditrec.archive import ArchivedDecision, ArchivedReward
from banditrec.store import DecisionRecord, LearnEvent, StoreError
from banditrec.store.sqlite import (
    DECISION_COLUMNS,
    LEARN_EVENTS_AFTER,
    decision_from_row,
    learn_event_from_row,
)

__all__ = ["ReadOnlyEventLog"]

#: Where the decision's state is in a row of `DECISION_COLUMNS` preceded by ``seq``.
_STATE = 1 + DECISION_COLUMNS.replace(" ", "").split(",").index("state")


class ReadOnlyEventLog:
    """A banditrec SQLite event log opened read-only: for evaluation and export.

    It never writes to the database, never takes the writers' lock, and reads one snapshot:
    the log as it was when opened (a server may go on writing meanwhile). A log that no
    process has open (no ``-wal`` file beside it) is read lock-free, as an immutable file, so
    that not even the ``-wal`` and ``-shm`` files are created beside it; `changed` then says
    whether a writer opened the log while it was read (read it again: the next opening
    shares that writer's snapshot machinery). The tables are read as the SQLite backend
    writes them.

    Parameters
    ----------
    path
        The database file; it must exist.
    encoding_hash
        When given, a log of another feature encoding is refused.
    lock_free
        None: lock-free when no process has the log open; False: never.
    """

    def __init__(
        self, path: str | Path, encoding_hash: str | None = None, lock_free: bool | None = None
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"The event log {self.path} does not exist.")
        self._wal = self.path.with_name(self.path.name + "-wal")
        journal = self.path.with_name(self.path.name + "-journal")
        if lock_free is None:
            lock_free = not self._wal.exists() and not journal.exists()
        self._stamp = _stamp(self.path) if lock_free else None
        mode = "immutable=1" if lock_free else "mode=ro"
        try:
            self._db = sqlite3.connect(
                f"file:{quote(str(self.path.absolute()))}?{mode}",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=30,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"Cannot open the event log {self.path}: {exc}.") from None
        try:
            self._check(encoding_hash)
        except BaseException:
            self._db.close()
            raise

    def _check(self, encoding_hash: str | None) -> None:
        try:
            self._db.execute("BEGIN")  # one read transaction until closed: one snapshot
            tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a readable SQLite database: {exc}.") from None
        if not {"meta", "decisions", "rewards"} <= tables:
            raise StoreError(f"{self.path} is not a banditrec event log: it has no decisions.")
        row = self._db.execute("SELECT value FROM meta WHERE key = 'encoding_hash'").fetchone()
        stored = "" if row is None else str(row[0])
        if encoding_hash is not None and stored != encoding_hash:
            raise StoreError(
                f"The event log {self.path} belongs to schema {stored[:12]}…, not to the "
                f"configured schema {encoding_hash[:12]}…; read it with the schema it was "
                "written with."
            )
        self.encoding_hash = stored
        self._tables = tables
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(decisions)")}
        # The store's columns; a log written before user ids were logged has none.
        self._columns = (
            DECISION_COLUMNS
            if "user_id" in columns
            else DECISION_COLUMNS.replace("user_id", "NULL AS user_id")
        )

    def __enter__(self) -> ReadOnlyEventLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def changed(self) -> bool:
        """True when the log was read lock-free and a writer has opened it since."""
        if self._stamp is None:
            return False
        return self._wal.exists() or _stamp(self.path) != self._stamp

    def count(self, table: Literal["decisions", "rewards"] = "decisions") -> int:
        """The number of decisions (or rewards)."""
        if table not in ("decisions", "rewards"):
            raise ValueError(f"Cannot count {table!r}: only decisions and rewards.")
        return int(self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def iter_decision_rows(self, batch_size: int = 10_000) -> Iterator[ArchivedDecision]:
        """Every decision in log order with its reward total, state and user id."""
        last = 0
        while True:
            rows = self._db.execute(
                f"SELECT seq, {self._columns}, reward_total FROM decisions "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (last, batch_size),
            ).fetchall()
            if not rows:
                return
            for row in rows:
                record = decision_from_row(row[1:-1])
                yield ArchivedDecision(record, row[-1], row[_STATE], record.user_id)
            last = rows[-1][0]

    def switches(self) -> tuple[dict[str, Any], ...]:
        """The lifecycle's switches (`banditrec.lifecycle.records`), in log order."""
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master")}
        if "lifecycle_switches" not in tables:
            return ()
        rows = self._db.execute(
            "SELECT seq, kind, target, at, reason FROM lifecycle_switches ORDER BY seq"
        ).fetchall()
        names = ("seq", "kind", "target", "at", "reason")
        return tuple(dict(zip(names, row, strict=True)) for row in rows)

    def learn_events_after(self, offset: int, limit: int = 10_000) -> list[LearnEvent]:
        """The learn stream after `offset`, in seq order, as `EventStore.learn_events_after`."""
        if "learn_events" not in self._tables:
            return []
        rows = self._db.execute(LEARN_EVENTS_AFTER, (offset, limit)).fetchall()
        return [learn_event_from_row(row) for row in rows]

    def epochs(self) -> dict[str, int]:
        """Each base model version that served from this log and the offset it started at."""
        if "epochs" not in self._tables:
            return {}
        rows = self._db.execute("SELECT base_version, base_offset FROM epochs").fetchall()
        return {str(version): int(offset) for version, offset in rows}

    def iter_decisions(self, batch_size: int = 10_000) -> Iterator[tuple[DecisionRecord, Any]]:
        """Every decision in log order with its learned reward total (None if none yet)."""
        for row in self.iter_decision_rows(batch_size):
            yield row.record, row.reward_total

    def iter_rewards(self, batch_size: int = 10_000) -> Iterator[ArchivedReward]:
        """Every reward received, in order."""
        last = 0
        while True:
            rows = self._db.execute(
                "SELECT seq, event_id, received_at, value, outcome FROM rewards "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (last, batch_size),
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield ArchivedReward(*row[1:])
            last = rows[-1][0]


def _stamp(path: Path) -> tuple[int, int, int, int]:
    status = os.stat(path)
    return status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns
