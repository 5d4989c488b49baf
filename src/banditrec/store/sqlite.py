"""The embedded event log: one SQLite file in WAL mode, shared by the workers of one host.

Durability: every write is a committed transaction before the caller returns. With
``journal_mode=WAL`` and ``synchronous=NORMAL`` a commit is in the WAL file (the OS page
cache) when it returns, so it survives a crash of the process (``kill -9``) but not a power
loss or a kernel crash, which can lose the transactions since the last WAL checkpoint (the
database itself stays consistent). ``synchronous="FULL"`` (setting
``BANDITREC_SQLITE_SYNCHRONOUS``) fsyncs every commit and survives power loss too, at the
price of one fsync per group commit.

Concurrency: SQLite allows one writer at a time across processes; each write is a short
``BEGIN IMMEDIATE`` transaction and waits up to `busy_timeout` for the lock. Readers never
block (WAL). Several processes on one host learn together by reading the learn stream
(``learn_events``, ordered by ``seq``).
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import chain, repeat
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
from numpy.typing import NDArray

try:
    import fcntl
except ImportError:  # not on POSIX: SQLite's busy timeout alone
    fcntl = None  # type: ignore[assignment]

from banditrec import rewards
from banditrec.store import (
    RETIRABLE_STATES,
    DecisionRecord,
    LearnEvent,
    LearnKind,
    RetirableDecision,
    RewardOutcome,
    RewardResult,
    RewardRules,
    StoredReward,
    StoreError,
    UserHistory,
)
from banditrec.store.decision_batch import DecisionBatch

__all__ = ["SQLiteEventStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    model_version TEXT NOT NULL,
    context TEXT NOT NULL,            -- JSON object, as received
    x BLOB NOT NULL,                  -- float64 feature vector
    actions TEXT NOT NULL,            -- JSON list: the order of probabilities and scores
    eligible TEXT NOT NULL,           -- JSON list of the actions that could be served
    action_index INTEGER NOT NULL,
    action TEXT NOT NULL,
    probability REAL NOT NULL,
    probabilities BLOB NOT NULL,      -- float64, aligned with actions
    scores BLOB NOT NULL,             -- float64, aligned with actions
    state TEXT NOT NULL,              -- inactive | pending | rewarded | defaulted
    deadline REAL,                    -- end of the reward window (NULL while inactive)
    reward_total REAL,
    user_id TEXT                      -- whose decision (privacy requests), NULL if not given
);
CREATE INDEX IF NOT EXISTS decisions_expiring ON decisions (deadline) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS rewards (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    value REAL NOT NULL,
    outcome TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS learn_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: offsets stay meaningful
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,                     -- see banditrec.store.LearnKind
    action_index INTEGER NOT NULL,
    x BLOB NOT NULL,
    reward REAL NOT NULL,
    weight REAL NOT NULL,
    created_at REAL NOT NULL,
    propensity REAL                         -- the decision's logged probability (NULL: none)
);
CREATE TABLE IF NOT EXISTS epochs (
    base_version TEXT PRIMARY KEY,          -- a base model (trained offline) ...
    base_offset INTEGER NOT NULL            -- ... and the log offset it starts from
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS user_events (  -- serves and negative rewards, for caps (recent only)
    user_id TEXT NOT NULL, kind TEXT NOT NULL, action TEXT NOT NULL, at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS user_events_by_user ON user_events (user_id, at);
CREATE TABLE IF NOT EXISTS user_versions (user_id TEXT PRIMARY KEY, version INTEGER NOT NULL);
"""

DECISION_COLUMNS = (
    "event_id, created_at, model_version, context, x, actions, eligible, action_index, "
    "action, probability, probabilities, scores, state, deadline, user_id"
)
#: The writer's own automatic checkpoint when a checkpointer thread runs (40 MiB of WAL).
_SAFETY_NET_WAL_PAGES = 10_000

#: The last learn event seq, also when retention trimmed every event (AUTOINCREMENT keeps
#: the highest seq ever used in sqlite_sequence).
_LAST_OFFSET = (
    "SELECT max(coalesce((SELECT max(seq) FROM learn_events), 0), "
    "coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'learn_events'), 0))"
)
#: Rows read per scan step while looking for what retention may remove.
_SCAN_ROWS = 2000

_INSERT_DECISION = (
    f"INSERT INTO decisions ({DECISION_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING"
)

#: Rows of a batch inserted by one statement (15 parameters a row; SQLite allows 32,766).
_ROWS_PER_INSERT = 100


@functools.lru_cache(maxsize=128)  # a group holds 1 to _ROWS_PER_INSERT rows
def _insert_rows(n: int) -> str:
    """The INSERT of `n` new decisions (no ON CONFLICT: a repeated id fails it whole)."""
    row = "(" + ", ".join("?" * (DECISION_COLUMNS.count(",") + 1)) + ")"
    return f"INSERT INTO decisions ({DECISION_COLUMNS}) VALUES " + ", ".join([row] * n)


class SQLiteEventStore:
    """The event log in one SQLite file; safe to share between processes and threads.

    Parameters
    ----------
    path
        Database file; created with its tables when missing.
    encoding_hash
        `FeatureSchema.encoding_hash` of the schema. A database belongs to one encoding: its
        vectors have that length and layout, so opening it with another is refused. Actions
        may change (added in the schema file or at run time) without a new database.
    synchronous
        SQLite's ``synchronous`` pragma: "NORMAL" (crash-safe) or "FULL" (power-loss-safe).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> store = SQLiteEventStore(pathlib.Path(tempfile.mkdtemp()) / "events.db", "abc")
    >>> store.last_offset()
    0
    >>> store.close()
    """

    def __init__(
        self,
        path: str | Path,
        encoding_hash: str,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        busy_timeout_ms: int = 10_000,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _check_writable(self.path)
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        # One connection for writes and one for reads, each behind a lock: the API writes
        # from its event loop (`try_write_group`) or its writer thread and reads from the
        # event loop, tests from anywhere.
        self._write = self._connect()
        self._read = self._connect()
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._checkpointer: tuple[threading.Event, threading.Thread] | None = None
        self._turn_fd: int | None = None
        if fcntl is not None:
            turn = self.path.with_name(self.path.name + "-writers.lock")
            self._turn_fd = os.open(turn, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            with self._transaction() as db:
                for statement in _SCHEMA.split(";"):  # not executescript: it would COMMIT
                    if statement.strip():
                        db.execute(statement)
                _add_missing_columns(db)
                db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('encoding_hash', ?)", (encoding_hash,)
                )
                # The log's identity, made once with the log (see `log_id`).
                db.execute("INSERT OR IGNORE INTO meta VALUES ('log_id', ?)", (uuid.uuid4().hex,))
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"Cannot use the event log {self.path}: {exc}.") from None
        stored = meta["encoding_hash"]
        self._log_id: str = meta["log_id"]
        if stored != encoding_hash:
            self.close()
            raise StoreError(
                f"The event log {self.path} belongs to schema {stored[:12]}…, not to the "
                f"configured schema {encoding_hash[:12]}…; use another database file."
            )

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        except sqlite3.Error as exc:
            raise StoreError(f"Cannot open the event log {self.path}: {exc}.") from None
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock, self._writer_turn():
            db = self._write
            db.execute("BEGIN IMMEDIATE")  # take the write lock now, not at the first write
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        # Writers of several processes (uvicorn workers) queue on an flock beside the
        # database: the next one wakes the moment the lock is released. Left to SQLite, a
        # writer that finds the database locked sleeps 1, 2, 5, 10... ms between tries,
        # which was most of the latency tail with two workers. Processes that do not take
        # this lock (other tools) still wait through SQLite's busy timeout as before.
        if self._turn_fd is None:
            yield
            return
        fcntl.flock(self._turn_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._turn_fd, fcntl.LOCK_UN)

    def start(self) -> None:
        """Start the WAL checkpointer (`start_checkpointer`)."""
        self.start_checkpointer()

    def start_checkpointer(self, interval: float = 0.25) -> None:
        """Checkpoint the WAL every `interval` seconds on a thread of its own.

        SQLite otherwise checkpoints in the committing thread once the WAL reaches 1000
        pages: a commit then also copies the WAL into the database and fsyncs both (10-20 ms
        here), and every decision waiting for the next group commit waits for that too. Done
        here instead (PASSIVE: writers go on meanwhile), commits stay short, and a power loss
        can cost only what was committed since the last checkpoint, about `interval` seconds
        (with ``synchronous=NORMAL``; with FULL every commit is fsynced anyway). The writer
        keeps a far larger automatic checkpoint as a safety net should this thread fall
        behind. `close` stops the thread.
        """
        if self._checkpointer is not None:
            return
        with self._write_lock:
            self._write.execute(f"PRAGMA wal_autocheckpoint={_SAFETY_NET_WAL_PAGES}")
        db = self._connect()
        stop = threading.Event()

        def run() -> None:
            try:
                while not stop.wait(interval):
                    try:
                        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    except sqlite3.Error:  # e.g. locked by another process's checkpoint
                        continue
            finally:
                db.close()

        thread = threading.Thread(target=run, name="banditrec-checkpoint", daemon=True)
        thread.start()
        self._checkpointer = (stop, thread)

    def close(self) -> None:
        if self._checkpointer is not None:
            stop, thread = self._checkpointer
            stop.set()
            thread.join()
            self._checkpointer = None
        # Wait for a call in flight on another thread: a task cancelled at shutdown leaves
        # its executor thread running, and closing a connection under it crashes the process
        # (segmentation fault in SQLite). Calls after this one raise a ProgrammingError.
        with self._write_lock, self._read_lock:
            for db in (self._write, self._read):
                db.close()
        if self._turn_fd is not None:
            os.close(self._turn_fd)
            self._turn_fd = None

    # -- decisions ---------------------------------------------------------------------

    def log_decisions(
        self, records: Sequence[DecisionRecord], rules: RewardRules
    ) -> list[DecisionRecord]:
        with self._transaction() as db:
            return self._insert_decisions(db, records, rules)

    def _insert_decisions(
        self, db: sqlite3.Connection, records: Sequence[DecisionRecord], rules: RewardRules
    ) -> list[DecisionRecord]:
        """Insert `records` in the open transaction; a repeated event id keeps its first."""
        rows = [_decision_row(r, rules.window_seconds) for r in records]
        # Many rows a statement (as a batch's): executemany steps, and hands the GIL back
        # and forth with the event loop, once a row. If an event id was logged before (a
        # client repeated it), the statement fails whole: undo it and go row by row, so the
        # first decision of each id stands.
        db.execute("SAVEPOINT decisions")
        try:
            for start in range(0, len(rows), _ROWS_PER_INSERT):
                chunk = rows[start : start + _ROWS_PER_INSERT]
                db.execute(_insert_rows(len(chunk)), tuple(chain.from_iterable(chunk)))
        except sqlite3.IntegrityError:
            db.execute("ROLLBACK TO decisions")
        else:
            db.execute("RELEASE decisions")
            return list(records)
        db.execute("RELEASE decisions")
        results: list[DecisionRecord] = []
        for record, row in zip(records, rows, strict=True):
            if db.execute(_INSERT_DECISION, row).rowcount == 1:
                results.append(record)
            else:
                existing = self._select_decision(db, record.event_id)
                assert existing is not None
                results.append(existing)
        return results

    def try_write_group(
        self,
        records: Sequence[DecisionRecord],
        rewards: Sequence[tuple[str, float, float]],
        rules: RewardRules,
    ) -> tuple[list[DecisionRecord], list[RewardResult]] | None:
        """`log_decisions` then `record_rewards`, in one transaction, if that can be done now
        without waiting for anything; else None, and nothing is written.

        This is what lets the event loop commit a group itself (`GroupCommitLog`): handing
        each group to a writer thread cost more than the commit (the thread's wake-ups and
        its turns at the GIL with the loop; docs/benchmarks.md, "HTTP at the ceiling"). It
        declines whenever the commit could block: another thread of this process or another
        process is writing (their locks are tried, not waited for; SQLite's busy timeout is
        0 meanwhile), or ``synchronous=FULL`` (an fsync per commit). Also when a statement
        fails: the caller then goes the usual way, which reports the error as it always did.
        """
        if self._synchronous != "NORMAL" or not self._write_lock.acquire(blocking=False):
            return None
        try:
            if self._turn_fd is not None:
                try:
                    fcntl.flock(self._turn_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return None
            try:
                return self._write_group_now(records, rewards, rules)
            finally:
                if self._turn_fd is not None:
                    fcntl.flock(self._turn_fd, fcntl.LOCK_UN)
        finally:
            self._write_lock.release()

    def _write_group_now(
        self,
        records: Sequence[DecisionRecord],
        rewards: Sequence[tuple[str, float, float]],
        rules: RewardRules,
    ) -> tuple[list[DecisionRecord], list[RewardResult]] | None:
        db = self._write
        try:
            # Another tool (a backup, the CLI) may hold SQLite's lock without our flock.
            db.execute("PRAGMA busy_timeout=0")
            try:
                db.execute("BEGIN IMMEDIATE")
            finally:
                db.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        except sqlite3.Error:
            return None
        try:
            decided = self._insert_decisions(db, records, rules) if records else []
            rewarded = self._record_rewards(db, rewards, rules) if rewards else []
            db.execute("COMMIT")
        except Exception:  # nothing written: the usual way reports it (see the docstring)
            if db.in_transaction:
                db.execute("ROLLBACK")
            return None
        return decided, rewarded

    def log_decision_batch(self, batch: DecisionBatch, rules: RewardRules) -> None:
        # The rows are built column by column (one bytes slice per vector, each list of
        # names encoded once), then inserted with one plain INSERT: a batch's ids are new,
        # and a repeated one raises, which rolls the whole batch back.
        n = len(batch)
        if n == 0:
            return
        x, ps, ss = (
            _row_bytes(batch.X, n), _row_bytes(batch.probabilities, n),
            _row_bytes(batch.scores, n),
        )  # fmt: skip
        names = batch.actions
        chosen = batch.action_index.tolist()
        rows = list(
            zip(
                batch.event_ids, repeat(batch.created_at), repeat(batch.model_version),
                [orjson.dumps(c).decode() for c in batch.contexts], x,
                repeat(_names_json(names)), map(_names_json, batch.eligible), chosen,
                [names[i] for i in chosen], batch.probability.tolist(), ps, ss,
                repeat("pending"), repeat(batch.created_at + rules.window_seconds),
                repeat(None) if batch.user_ids is None else batch.user_ids,
            )
        )  # fmt: skip
        with self._transaction() as db:
            # Many rows a statement: executemany steps (and hands the GIL back and forth)
            # once a row, which cost a fifth of the insert's CPU.
            for start in range(0, n, _ROWS_PER_INSERT):
                chunk = rows[start : start + _ROWS_PER_INSERT]
                db.execute(_insert_rows(len(chunk)), tuple(chain.from_iterable(chunk)))

    def get_decision(self, event_id: str) -> DecisionRecord | None:
        with self._read_lock:
            return self._select_decision(self._read, event_id)

    @staticmethod
    def _select_decision(db: sqlite3.Connection, event_id: str) -> DecisionRecord | None:
        row = db.execute(
            f"SELECT {DECISION_COLUMNS} FROM decisions WHERE event_id = ?", (event_id,)
        ).fetchone()
        return None if row is None else decision_from_row(row)

    def iter_decisions(self, batch_size: int = 10_000) -> Iterator[tuple[DecisionRecord, Any]]:
        """Every decision in log order with its learned reward total (None if none yet)."""
        last = 0
        while True:
            with self._read_lock:
                rows = self._read.execute(
                    f"SELECT seq, {DECISION_COLUMNS}, reward_total FROM decisions "
                    "WHERE seq > ? ORDER BY seq LIMIT ?",
                    (last, batch_size),
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield decision_from_row(row[1:-1]), row[-1]
            last = rows[-1][0]

    # -- rewards -----------------------------------------------------------------------

    def record_reward(
        self, event_id: str, value: float, now: float, rules: RewardRules
    ) -> RewardResult:
        return self.record_rewards([(event_id, value, now)], rules)[0]

    def record_rewards(
        self, rewards: Sequence[tuple[str, float, float]], rules: RewardRules
    ) -> list[RewardResult]:
        """`record_reward` for each (event id, value, time), in order, in one transaction."""
        with self._transaction() as db:
            return self._record_rewards(db, rewards, rules)

    def _record_rewards(
        self,
        db: sqlite3.Connection,
        rewards: Sequence[tuple[str, float, float]],
        rules: RewardRules,
    ) -> list[RewardResult]:
        results: list[RewardResult] = []
        for event_id, value, now in rewards:
            outcome, total, action = self._join(db, event_id, value, now, rules)
            db.execute(
                "INSERT INTO rewards (event_id, received_at, value, outcome) VALUES (?, ?, ?, ?)",
                (event_id, now, value, outcome.value),
            )
            results.append(RewardResult(event_id, outcome, value, total, action))
        return results

    def _join(
        self, db: sqlite3.Connection, event_id: str, value: float, now: float, rules: RewardRules
    ) -> tuple[RewardOutcome, float | None, str | None]:
        row = db.execute(
            "SELECT state, deadline, action_index, action, x, reward_total, probability "
            "FROM decisions WHERE event_id = ?",
            (event_id,),
        ).fetchone()
        if row is None:
            return RewardOutcome.unknown, None, None
        state, deadline, action_index, action, x, total, propensity = row
        join = rewards.join_reward(state, deadline, total, value, now, rules)
        if join.learn is not None:
            self._append_learn_event(
                db, event_id, join.learn.kind.value, action_index, x, join.learn.reward, now,
                propensity,
            )  # fmt: skip
            db.execute(
                "UPDATE decisions SET state = ?, reward_total = ? WHERE event_id = ?",
                (join.state, join.total, event_id),
            )
        return join.outcome, join.total, action

    @staticmethod
    def _append_learn_event(
        db: sqlite3.Connection,
        event_id: str,
        kind: str,
        action_index: int,
        x: bytes,
        reward: float,
        now: float,
        propensity: float,
    ) -> None:
        db.execute(
            "INSERT INTO learn_events (event_id, kind, action_index, x, reward, weight, "
            "created_at, propensity) VALUES (?, ?, ?, ?, ?, 1.0, ?, ?)",
            (event_id, kind, action_index, x, reward, now, propensity),
        )

    def activate(self, event_id: str, now: float, rules: RewardRules) -> bool | None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT state FROM decisions WHERE event_id = ?", (event_id,)
            ).fetchone()
            if row is None:
                return None
            activation = rewards.activate(row[0], now, rules)
            if activation.activated:
                db.execute(
                    "UPDATE decisions SET state = ?, deadline = ? WHERE event_id = ?",
                    (activation.state, activation.deadline, event_id),
                )
            return activation.activated

    def apply_default_rewards(
        self, now: float, rules: RewardRules, limit: int = 1000
    ) -> dict[str, int]:
        by_action: dict[str, int] = {}
        with self._transaction() as db:
            expired = db.execute(
                "SELECT seq, event_id, action_index, action, x, probability FROM decisions "
                "WHERE state = 'pending' AND deadline < ? ORDER BY deadline LIMIT ?",
                (now, limit),
            ).fetchall()
            if not expired:
                return by_action
            reward = rules.default_reward
            db.executemany(
                "INSERT INTO learn_events (event_id, kind, action_index, x, reward, weight, "
                "created_at, propensity) VALUES (?, 'default', ?, ?, ?, 1.0, ?, ?)",
                [(event_id, index, x, reward, now, p) for _, event_id, index, _, x, p in expired],
            )
            db.executemany(
                "UPDATE decisions SET state = 'defaulted', reward_total = ? WHERE seq = ?",
                [(reward, seq) for seq, *_ in expired],
            )
        for row in expired:
            by_action[row[3]] = by_action.get(row[3], 0) + 1
        return by_action

    def pending_backlog(self, now: float) -> int:
        # Counted on the partial index of pending decisions by deadline.
        with self._read_lock:
            row = self._read.execute(
                "SELECT count(*) FROM decisions WHERE state = 'pending' AND deadline < ?", (now,)
            ).fetchone()
        return int(row[0])

    # -- the learn stream --------------------------------------------------------------

    def learn_events_after(self, offset: int, limit: int = 10_000) -> list[LearnEvent]:
        with self._read_lock:
            rows = self._read.execute(LEARN_EVENTS_AFTER, (offset, limit)).fetchall()
        return [learn_event_from_row(row) for row in rows]

    def append_action_change(self, kind: LearnKind, action: str, now: float) -> int:
        # The index of an added action is decided when replicas apply the event (the next
        # free one), so the row holds only the name; all replicas agree because they apply
        # the stream in the same order.
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO learn_events (event_id, kind, action_index, x, reward, weight, "
                "created_at) VALUES (?, ?, -1, x'', 0.0, 0.0, ?)",
                (action, kind.value, now),
            )
            seq = cursor.lastrowid
        assert seq is not None
        return seq

    def last_offset(self) -> int:
        with self._read_lock:
            row = self._read.execute(_LAST_OFFSET).fetchone()
        return int(row[0] or 0)

    def epoch_offset(self, base_version: str) -> int:
        """The log offset a base model starts from, registered on first sight.

        A newly trained base model starts a new epoch at the current end of the log: the
        learn events before it were (or could have been) in its training data.
        """
        with self._transaction() as db:
            db.execute(
                f"INSERT OR IGNORE INTO epochs SELECT ?, coalesce(({_LAST_OFFSET}), 0)",
                (base_version,),
            )
            row = db.execute(
                "SELECT base_offset FROM epochs WHERE base_version = ?", (base_version,)
            ).fetchone()
        return int(row[0])

    def acquire_lease(self, name: str, owner: str, now: float, ttl_seconds: float) -> bool:
        """Hold the lease `name` for `ttl_seconds` if it is free, expired or already ours."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "owner = excluded.owner, expires_at = excluded.expires_at "
                "WHERE leases.owner = excluded.owner OR leases.expires_at < ?",
                (name, owner, now + ttl_seconds, now),
            )
            row = db.execute("SELECT owner FROM leases WHERE name = ?", (name,)).fetchone()
        return bool(row[0] == owner)

    def release_lease(self, name: str, owner: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    def log_id(self) -> str:
        return self._log_id

    # -- retention and privacy ---------------------------------------------------------

    def retirable_decisions(
        self, before: float, now: float, limit: int = 1000
    ) -> list[RetirableDecision]:
        """Decisions retention may remove (see `EventStore.retirable_decisions`).

        Read in log order from the oldest, on the read connection (writers go on); the scan
        stops at the first decision made at or after `before` (decisions are logged in
        about the order they are made) or after ``20 * limit`` rows.
        """
        found: list[RetirableDecision] = []
        last, scanned = 0, 0
        while len(found) < limit and scanned < 20 * limit:
            with self._read_lock:
                rows = self._read.execute(
                    f"SELECT seq, {DECISION_COLUMNS}, reward_total FROM decisions "
                    "WHERE seq > ? ORDER BY seq LIMIT ?",
                    (last, _SCAN_ROWS),
                ).fetchall()
            for row in rows:
                created_at, state, deadline = row[2], row[13], row[14]
                if created_at >= before:
                    return found
                if state in RETIRABLE_STATES and not (state == "rewarded" and deadline >= now):
                    found.append(RetirableDecision(decision_from_row(row[1:-1]), row[-1], state))
                    if len(found) == limit:
                        return found
            if len(rows) < _SCAN_ROWS:
                return found
            last, scanned = rows[-1][0], scanned + len(rows)
        return found

    def delete_decisions(self, decisions: Sequence[tuple[str, str]]) -> int:
        with self._transaction() as db:
            before = db.total_changes
            db.executemany("DELETE FROM decisions WHERE event_id = ? AND state = ?", decisions)
            return db.total_changes - before

    def retirable_rewards(self, before: float, limit: int = 1000) -> list[StoredReward]:
        with self._read_lock:
            rows = self._read.execute(
                "SELECT seq, event_id, received_at, value, outcome FROM rewards "
                "ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        found = []
        for row in rows:
            if row[2] >= before:  # received in about log order: the rest is newer
                break
            found.append(StoredReward(*row))
        return found

    def delete_rewards(self, keys: Sequence[Any]) -> int:
        with self._transaction() as db:
            before = db.total_changes
            db.executemany("DELETE FROM rewards WHERE seq = ?", [(int(k),) for k in keys])
            return db.total_changes - before

    def trim_learn_events(self, up_to_offset: int, before: float, limit: int = 10_000) -> int:
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM learn_events WHERE seq IN (SELECT seq FROM learn_events "
                "WHERE seq <= ? AND created_at < ? ORDER BY seq LIMIT ?)",
                (up_to_offset, before, limit),
            )
            return cursor.rowcount

    def user_history(self, user_id: str, since: float) -> UserHistory:
        with self._read_lock:
            db = self._read
            db.execute("BEGIN")  # one snapshot of the WAL for both reads
            try:
                row = db.execute(
                    "SELECT version FROM user_versions WHERE user_id = ?", (user_id,)
                ).fetchone()
                events = db.execute(
                    "SELECT kind, action, at FROM user_events WHERE user_id = ? AND at >= ? "
                    "ORDER BY at",
                    (user_id, since),
                ).fetchall()
            finally:
                db.execute("COMMIT")
        return UserHistory(
            0 if row is None else int(row[0]),
            tuple((a, t) for kind, a, t in events if kind == "serve"),
            tuple((a, t) for kind, a, t in events if kind == "negative"),
        )

    def claim_serve(
        self, user_id: str, action: str, at: float, version: int, keep_after: float
    ) -> bool:
        # BEGIN IMMEDIATE holds the write lock of every process from the version check to
        # the commit: two workers cannot both claim from the same version.
        with self._transaction() as db:
            if not self._bump_version(db, user_id, version):
                return False
            db.execute(
                "DELETE FROM user_events WHERE user_id = ? AND at < ?", (user_id, keep_after)
            )
            db.execute("INSERT INTO user_events VALUES (?, 'serve', ?, ?)", (user_id, action, at))
        return True

    def record_negative(self, user_id: str, action: str, at: float, keep_after: float) -> None:
        with self._transaction() as db:
            self._bump_version(db, user_id, None)
            db.execute(
                "DELETE FROM user_events WHERE user_id = ? AND at < ?", (user_id, keep_after)
            )
            db.execute(
                "INSERT INTO user_events VALUES (?, 'negative', ?, ?)", (user_id, action, at)
            )

    @staticmethod
    def _bump_version(db: sqlite3.Connection, user_id: str, expected: int | None) -> bool:
        row = db.execute("SELECT version FROM user_versions WHERE user_id = ?", (user_id,))
        current = row.fetchone()
        version = 0 if current is None else int(current[0])
        if expected is not None and version != expected:
            return False
        db.execute(
            "INSERT INTO user_versions VALUES (?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET version = excluded.version",
            (user_id, version + 1),
        )
        return True

    def forget_user(self, user_id: str) -> list[str]:
        """Remove the user's decisions and their rewards (see `EventStore.forget_user`).

        Both are looked up on the read connection (a scan: user ids are not indexed, so
        that logging a decision costs no index write), then removed by key in one short
        write transaction. The user's serves and negative rewards (caps) go too.
        """
        with self._transaction() as db:
            db.execute("DELETE FROM user_events WHERE user_id = ?", (user_id,))
            db.execute("DELETE FROM user_versions WHERE user_id = ?", (user_id,))
        with self._read_lock:
            ids = [
                row[0]
                for row in self._read.execute(
                    "SELECT event_id FROM decisions WHERE user_id = ?", (user_id,)
                )
            ]
            if not ids:
                return []
            wanted = set(ids)
            reward_rows = [
                (seq,)
                for seq, event_id in self._read.execute("SELECT seq, event_id FROM rewards")
                if event_id in wanted
            ]
        with self._transaction() as db:
            removed = [
                event_id
                for event_id in ids
                if db.execute(
                    "DELETE FROM decisions WHERE event_id = ? AND user_id = ?", (event_id, user_id)
                ).rowcount
            ]
            db.executemany("DELETE FROM rewards WHERE seq = ?", reward_rows)
        return removed

    def count(self, table: Literal["decisions", "rewards", "learn_events"]) -> int:
        with self._read_lock:
            return int(self._read.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Add the columns of later versions to a log written by an earlier one (in place)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(decisions)")}
    if "user_id" not in columns:  # logs written before user ids were kept: NULL for those
        db.execute("ALTER TABLE decisions ADD COLUMN user_id TEXT")
    learned = {row[1] for row in db.execute("PRAGMA table_info(learn_events)")}
    if "propensity" not in learned:  # learn events written before: NULL (read as None)
        db.execute("ALTER TABLE learn_events ADD COLUMN propensity REAL")


def _check_writable(path: Path) -> None:
    """Refuse a database whose files this process cannot write, with a clear message.

    SQLite opens an unwritable ``-shm`` file read-only and maps it into memory; reading past
    its end then kills the process with SIGBUS, with no log line at all.
    """
    suffixes = ("", "-wal", "-shm", "-writers.lock")
    for file in (path.with_name(path.name + suffix) for suffix in suffixes):
        if file.exists() and not os.access(file, os.R_OK | os.W_OK):
            raise StoreError(
                f"The event log file {file} is not readable and writable by this process "
                f"(user id {os.geteuid()}); give it the server's owner or permissions."
            )
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise StoreError(
            f"The event log's directory {path.parent} is not writable by this process "
            f"(user id {os.geteuid()}); SQLite creates its -wal and -shm files there."
        )


def _decision_row(r: DecisionRecord, window_seconds: float) -> tuple[Any, ...]:
    return (
        r.event_id,
        r.created_at,
        r.model_version,
        orjson.dumps(r.context).decode(),
        np.ascontiguousarray(r.x, dtype=np.float64).tobytes(),
        _names_json(r.actions),
        _names_json(r.eligible),
        r.action_index,
        r.action,
        r.probability,
        np.ascontiguousarray(r.probabilities, dtype=np.float64).tobytes(),
        np.ascontiguousarray(r.scores, dtype=np.float64).tobytes(),
        "inactive" if r.deferred else "pending",
        None if r.deferred else r.created_at + window_seconds,
        r.user_id,
    )


def _row_bytes(matrix: NDArray[np.float64], n: int) -> list[bytes]:
    """Each row of `matrix` as float64 bytes: one copy of the whole, then one slice a row."""
    data = np.ascontiguousarray(matrix, dtype=np.float64).tobytes()
    size = len(data) // n
    return [data[i : i + size] for i in range(0, len(data), size)]


@functools.lru_cache(maxsize=256)
def _names_json(names: tuple[str, ...]) -> str:
    # Every decision logs the same few action lists; encode each once.
    return orjson.dumps(names).decode()


#: The learn stream after an offset, in seq order (the live log and the read-only reader).
LEARN_EVENTS_AFTER = (
    "SELECT seq, event_id, kind, action_index, x, reward, weight, propensity "
    "FROM learn_events WHERE seq > ? ORDER BY seq LIMIT ?"
)


def learn_event_from_row(row: Sequence[Any]) -> LearnEvent:
    """A row of `LEARN_EVENTS_AFTER` as the `LearnEvent` it stores."""
    seq, event_id, kind, action_index, x, reward, weight, propensity = row
    return LearnEvent(
        seq=seq,
        event_id=event_id,
        action_index=action_index,
        x=np.frombuffer(x, dtype=np.float64),
        reward=reward,
        weight=weight,
        kind=LearnKind(kind),
        propensity=propensity,
    )


def decision_from_row(row: Sequence[Any]) -> DecisionRecord:
    (event_id, created_at, version, context, x, actions, eligible, index, _action, p, ps, scores,
     state, _deadline, user_id) = row  # fmt: skip
    return DecisionRecord(
        event_id=event_id,
        created_at=created_at,
        model_version=version,
        context=orjson.loads(context),
        x=np.frombuffer(x, dtype=np.float64),
        actions=tuple(orjson.loads(actions)),
        eligible=tuple(orjson.loads(eligible)),
        action_index=index,
        probability=p,
        probabilities=np.frombuffer(ps, dtype=np.float64),
        scores=np.frombuffer(scores, dtype=np.float64),
        deferred=state == "inactive",
        user_id=user_id,
    )
