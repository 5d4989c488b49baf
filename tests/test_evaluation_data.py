"""Reading logged rounds for evaluation: from the live SQLite log (read-only), the Parquet
archive, or both, with the same rounds bit for bit however the log is split.

Real SQLite files and real Parquet files throughout; retention (moving the oldest decisions
out of the live store) is done here by hand: archive them, then delete them from the file.
"""

from __future__ import annotations

import itertools
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from banditrec import evaluation as ev
from banditrec.archive import Archive, ArchiveWriter, export_log
from banditrec.features import load_default_schema, load_schema
from banditrec.store import DecisionRecord, RewardRules
from banditrec.store.sqlite import SQLiteEventStore
from banditrec.store.sqlite_reader import ReadOnlyEventLog
from conftest import other_schema_toml

SCHEMA = load_default_schema()
T0 = 1_700_000_000.0
RULES = RewardRules(window_seconds=60.0)


def make_log(path: Path, n: int = 400, seed: int = 3) -> None:
    """A log with every kind of decision: rewarded, defaulted, pending, never activated,
    activated, and decisions made after an action was added at run time."""
    rng = np.random.default_rng(seed)
    store = SQLiteEventStore(path, SCHEMA.encoding_hash)
    base = SCHEMA.actions
    records = []
    for i in range(n):
        actions = base if i < n // 2 else (*base, "new_offer")
        k = len(actions)
        p = rng.dirichlet(np.ones(k))
        p[0] = -0.0 if i % 50 == 7 else p[0]  # a signed zero must survive too
        a = int(rng.integers(1, k))
        eligible = actions if i % 7 else actions[1:]
        records.append(
            DecisionRecord(
                event_id=f"e{i:04d}",
                created_at=T0 + i,
                model_version=f"v@{i}",
                context={"i": i},
                x=rng.normal(size=SCHEMA.n_features),
                actions=actions,
                eligible=eligible,
                action_index=a,
                probability=float(p[a]),
                probabilities=p,
                scores=rng.normal(size=k),
                deferred=i % 11 == 0,
            )
        )
    store.log_decisions(records, RULES)
    for i in range(0, n, 22):  # half the deferred decisions are activated
        store.activate(f"e{i:04d}", T0 + i + 1, RULES)
    rewards = [(f"e{i:04d}", float(rng.random()), T0 + i + 2) for i in range(n) if i % 3]
    store.record_rewards(rewards, RULES)
    store.apply_default_rewards(T0 + 0.75 * n, RULES, limit=n)  # the oldest are defaulted
    store.close()


def same_rounds(a: ev.LoggedRounds, b: ev.LoggedRounds) -> None:
    assert a.actions == b.actions
    assert a.counts == b.counts
    for name in ("X", "action", "propensity", "reward", "eligible", "logged_dist", "created_at"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), name


def retain(live: Path, archive: Path, archived: int, deleted: int, per_file: int = 70) -> None:
    """Move the `deleted` oldest decisions of `live` out to `archive`, having archived the
    `archived` oldest (more than deleted: a retention that crashed in between)."""
    writer = ArchiveWriter(archive, SCHEMA.encoding_hash)
    with ReadOnlyEventLog(live, SCHEMA.encoding_hash) as log:
        rows = list(itertools.islice(log.iter_decision_rows(), archived))
        rewards = list(log.iter_rewards())
    for start in range(0, archived, per_file):
        writer.write_decisions(rows[start : start + per_file])
    gone = [r.record.event_id for r in rows[:deleted]]
    writer.write_rewards(r for r in rewards if r.event_id in set(gone))
    with sqlite3.connect(live) as db:
        db.executemany("DELETE FROM decisions WHERE event_id = ?", [(e,) for e in gone])
        db.executemany("DELETE FROM rewards WHERE event_id = ?", [(e,) for e in gone])


def test_a_log_half_archived_gives_the_same_rounds(tmp_path: Path) -> None:
    make_log(tmp_path / "events.db")
    whole = ev.load_event_log(tmp_path / "events.db", SCHEMA)
    assert whole.counts["pending"] > 0 and whole.counts["never_activated"] > 0
    assert "new_offer" in whole.actions and whole.n_rounds > 200

    shutil.copy(tmp_path / "events.db", tmp_path / "live.db")
    retain(tmp_path / "live.db", tmp_path / "archive", archived=200, deleted=200)
    with ReadOnlyEventLog(tmp_path / "live.db") as log:
        assert log.count() == 200
    split = ev.load_event_log(tmp_path / "live.db", SCHEMA, archive=tmp_path / "archive")
    same_rounds(split, whole)
    assert split.source == {
        "kind": "event_log",
        "path": str(tmp_path / "live.db"),
        "encoding_hash": SCHEMA.encoding_hash,
        "archive": str(tmp_path / "archive"),
    }


def test_decisions_both_archived_and_live_are_read_once(tmp_path: Path) -> None:
    make_log(tmp_path / "events.db")
    whole = ev.load_event_log(tmp_path / "events.db", SCHEMA)
    shutil.copy(tmp_path / "events.db", tmp_path / "live.db")
    retain(tmp_path / "live.db", tmp_path / "archive", archived=250, deleted=130)
    same_rounds(ev.load_event_log(tmp_path / "live.db", SCHEMA, archive=tmp_path / "archive"),
                whole)  # fmt: skip


def test_a_log_wholly_archived_gives_the_same_rounds(tmp_path: Path) -> None:
    make_log(tmp_path / "events.db")
    whole = ev.load_event_log(tmp_path / "events.db", SCHEMA)
    shutil.copy(tmp_path / "events.db", tmp_path / "live.db")
    retain(tmp_path / "live.db", tmp_path / "archive", archived=400, deleted=400)
    same_rounds(ev.load_event_log(tmp_path / "archive", SCHEMA), whole)
    same_rounds(ev.load_event_log(None, SCHEMA, archive=tmp_path / "archive"), whole)
    with pytest.raises(ev.EvaluationError, match=r"The event log .*live.db has no decisions"):
        ev.load_event_log(tmp_path / "live.db", SCHEMA)


def files(directory: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in directory.iterdir()}


def test_evaluating_never_writes_to_the_log(tmp_path: Path) -> None:
    make_log(tmp_path / "events.db")
    before = files(tmp_path)
    assert "events.db-wal" not in before
    rounds = ev.load_event_log(tmp_path / "events.db", SCHEMA)
    assert rounds.n_rounds > 200
    assert files(tmp_path) == before  # same bytes, same times, no -wal or -shm created


def test_evaluating_while_a_writer_holds_a_transaction(tmp_path: Path) -> None:
    make_log(tmp_path / "events.db")
    expected = ev.load_event_log(tmp_path / "events.db", SCHEMA)
    store = SQLiteEventStore(tmp_path / "events.db", SCHEMA.encoding_hash)  # a running server
    writer = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # holds the write lock: opening the store waited
        writer.execute("DELETE FROM decisions WHERE event_id > 'e0100'")  # not committed
        db = (tmp_path / "events.db").stat().st_mtime_ns, (tmp_path / "events.db").read_bytes()
        same_rounds(ev.load_event_log(tmp_path / "events.db", SCHEMA), expected)
        path = tmp_path / "events.db"
        assert (path.stat().st_mtime_ns, path.read_bytes()) == db
        writer.execute("ROLLBACK")
    finally:
        writer.close()
        store.close()


def test_a_writer_opening_the_log_during_a_lock_free_read(tmp_path: Path) -> None:
    # Read lock-free (no process had the log open), a log that a writer opens and writes to
    # meanwhile is read again, sharing the writer's snapshots.
    make_log(tmp_path / "events.db")
    before = ev.load_event_log(tmp_path / "events.db", SCHEMA)
    stores: list[SQLiteEventStore] = []
    passes: list[int] = []

    def progress(stage: str, done: int, total: int, detail: str) -> None:
        if done == 0:
            passes.append(total)
        if not stores:
            stores.append(SQLiteEventStore(tmp_path / "events.db", SCHEMA.encoding_hash))
            rec = DecisionRecord("late", T0 + 999, "v", {}, np.zeros(SCHEMA.n_features),
                                 SCHEMA.actions, SCHEMA.actions, 1, 0.25, np.full(4, 0.25),
                                 np.zeros(4))  # fmt: skip
            stores[0].log_decisions([rec], RULES)
            stores[0].record_reward("late", 1.0, T0 + 1000, RULES)

    try:
        rounds = ev.load_event_log(tmp_path / "events.db", SCHEMA, progress)
    finally:
        stores[0].close()
    assert passes == [400, 401]
    assert rounds.counts["decisions"] == 401 and rounds.n_rounds == before.n_rounds + 1
    assert rounds.reward[-1] == 1.0 and rounds.X[-1].tolist() == [0.0] * SCHEMA.n_features


def test_the_reader_tells_when_a_writer_came(tmp_path: Path) -> None:
    make_log(tmp_path / "events.db", n=20)
    with ReadOnlyEventLog(tmp_path / "events.db") as log:
        assert not log.changed()
        SQLiteEventStore(tmp_path / "events.db", SCHEMA.encoding_hash).close()
        assert not log.changed()  # a writer came and went, writing nothing
        store = SQLiteEventStore(tmp_path / "events.db", SCHEMA.encoding_hash)
        store.record_reward("e0001", 1.0, T0, RULES)
        assert log.changed()  # it has the log open
        store.close()
        assert log.changed()  # gone, but it checkpointed its WAL into the file
    store = SQLiteEventStore(tmp_path / "events.db", SCHEMA.encoding_hash)
    try:
        with ReadOnlyEventLog(tmp_path / "events.db") as log:  # shares the writer's WAL
            assert not log.changed() and log.count() == 20
    finally:
        store.close()


def test_bad_logs_get_clear_errors_and_are_left_alone(tmp_path: Path) -> None:
    def refused(path: Any, message: str, **kwargs: Any) -> None:
        before = files(tmp_path)
        with pytest.raises(ev.EvaluationError, match=message):
            ev.load_event_log(path, SCHEMA, **kwargs)
        assert files(tmp_path) == before

    refused(tmp_path / "missing.db", r"The event log .*missing.db does not exist\.")
    (tmp_path / "notes.txt").write_text("not a database at all, " * 100)
    refused(tmp_path / "notes.txt", r".*notes.txt is not a readable SQLite database: file is")
    with sqlite3.connect(tmp_path / "other.db") as db:
        db.execute("CREATE TABLE people (name TEXT)")
    refused(tmp_path / "other.db", r".*other.db is not a banditrec event log: it has no decis")
    (tmp_path / "empty.db").touch()
    refused(tmp_path / "empty.db", r".*empty.db is not a banditrec event log")
    make_log(tmp_path / "events.db", n=20)
    other = load_schema(other_schema_toml(tmp_path / "other.toml"))
    before = files(tmp_path)
    wrong = r"belongs to schema [0-9a-f]{12}…, not to the configured schema [0-9a-f]{12}…; "
    with pytest.raises(ev.EvaluationError, match=wrong + "read it with the schema it was written"):
        ev.load_event_log(tmp_path / "events.db", other)
    assert files(tmp_path) == before
    refused(None, "Give an event log file, an archive directory or both.")
    refused(tmp_path, r"is a directory; give the event log file and the archive directory\.",
            archive=tmp_path)  # fmt: skip
    refused(tmp_path / "events.db", r"The archive directory .*nowhere does not exist\.",
            archive=tmp_path / "nowhere")  # fmt: skip


def test_an_archive_of_another_encoding_is_refused(tmp_path: Path) -> None:
    make_log(tmp_path / "events.db", n=20)
    with ReadOnlyEventLog(tmp_path / "events.db") as log:
        ArchiveWriter(tmp_path / "archive", "f" * 64).write_decisions(log.iter_decision_rows())
    with pytest.raises(ev.EvaluationError, match="written under feature encoding ffffffffffff…"):
        ev.load_event_log(tmp_path / "events.db", SCHEMA, archive=tmp_path / "archive")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ev.EvaluationError, match=r"The event log .*empty has no decisions"):
        ev.load_event_log(tmp_path / "empty", SCHEMA)


def test_the_reader_reads_what_the_store_reads(tmp_path: Path) -> None:
    make_log(tmp_path / "events.db", n=120)
    store = SQLiteEventStore(tmp_path / "events.db", SCHEMA.encoding_hash)
    try:
        expected = list(store.iter_decisions(batch_size=7))
    finally:
        store.close()
    with ReadOnlyEventLog(tmp_path / "events.db", SCHEMA.encoding_hash) as log:
        got = list(log.iter_decisions(batch_size=7))
        states = [row.state for row in log.iter_decision_rows()]
    assert len(got) == len(expected) == 120
    for (a, total_a), (b, total_b) in zip(got, expected, strict=True):
        assert total_a == total_b
        for name in ("x", "probabilities", "scores"):
            assert getattr(a, name).tobytes() == getattr(b, name).tobytes()
        assert a == DecisionRecord(**{**vars(b), "x": a.x, "probabilities": a.probabilities,
                                      "scores": a.scores})  # fmt: skip
    assert set(states) == {"inactive", "pending", "rewarded", "defaulted"}


def test_user_ids_are_read_once_the_log_has_them(tmp_path: Path) -> None:
    # The live store has a user_id column (issue 8); the reader takes it when it is there.
    make_log(tmp_path / "events.db", n=12)
    with sqlite3.connect(tmp_path / "events.db") as db:
        db.execute("UPDATE decisions SET user_id = 'u' || (seq % 3) WHERE seq % 4 > 0")
    with ReadOnlyEventLog(tmp_path / "events.db") as log:
        users = [(row.user_id, row.record.user_id) for row in log.iter_decision_rows()]
        export_log(log, tmp_path / "archive", encoding_hash=SCHEMA.encoding_hash)
    expected = [None if s % 4 == 0 else f"u{s % 3}" for s in range(1, 13)]
    assert users == list(zip(expected, expected, strict=True))
    archive = Archive(tmp_path / "archive", SCHEMA.encoding_hash)
    assert [row.user_id for row in archive.iter_decision_rows()] == expected
    assert archive.delete_user("u1") == expected.count("u1") == 3


def test_an_open_store_is_read_through_the_protocol(tmp_path: Path) -> None:
    # Any EventStore (a Redis log, say) is read through iter_decisions, beside an archive.
    make_log(tmp_path / "events.db")
    whole = ev.load_event_log(tmp_path / "events.db", SCHEMA)
    shutil.copy(tmp_path / "events.db", tmp_path / "live.db")
    retain(tmp_path / "live.db", tmp_path / "archive", archived=300, deleted=150)
    store = SQLiteEventStore(tmp_path / "live.db", SCHEMA.encoding_hash)
    try:
        rounds = ev.load_event_log(store, SCHEMA, archive=tmp_path / "archive")
    finally:
        store.close()
    same_rounds(rounds, whole)
    assert rounds.source["path"] == str(tmp_path / "live.db")
    # One that cannot count its decisions is read into memory first.
    uncounted = Archive(tmp_path / "archive", SCHEMA.encoding_hash)
    assert not hasattr(uncounted, "count")
    part = ev.load_event_log(uncounted, SCHEMA)
    assert part.counts["decisions"] == 300 and part.source["path"] == "Archive"
