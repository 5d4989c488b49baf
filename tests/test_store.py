"""The event log contract, on a real SQLite file (and one shared by two processes)."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import numpy as np
import pytest

from banditrec.store import DecisionRecord, RewardOutcome, RewardRules, StoreError
from banditrec.store.sqlite import SQLiteEventStore

ACTIONS = ("a", "b", "c")
RULES = RewardRules(window_seconds=100.0, default_reward=0.0)
SUM_RULES = RewardRules(window_seconds=100.0, aggregation="sum", min_reward=0.0, max_reward=1.0)


def decision(event_id: str, created_at: float = 1000.0, deferred: bool = False) -> DecisionRecord:
    return DecisionRecord(
        event_id=event_id,
        created_at=created_at,
        model_version="v@0",
        context={"country": "AT", "n": 3},
        x=np.array([1.0, 0.5, -2.0]),
        actions=ACTIONS,
        eligible=("a", "c"),
        action_index=2,
        probability=0.9,
        probabilities=np.array([0.1, 0.0, 0.9]),
        scores=np.array([0.3, 0.7, 0.5]),
        deferred=deferred,
    )


@pytest.fixture
def store(tmp_path: Path) -> SQLiteEventStore:
    s = SQLiteEventStore(tmp_path / "events.db", encoding_hash="h1")
    yield s  # type: ignore[misc]
    s.close()


def test_decisions_round_trip_exactly(store: SQLiteEventStore) -> None:
    (logged,) = store.log_decisions([decision("e1")], RULES)
    loaded = store.get_decision("e1")
    assert loaded is not None
    assert loaded.context == {"country": "AT", "n": 3}
    assert loaded.actions == ACTIONS and loaded.eligible == ("a", "c")
    assert loaded.action == "c" and loaded.probability == 0.9
    np.testing.assert_array_equal(loaded.x, logged.x)
    np.testing.assert_array_equal(loaded.probabilities, logged.probabilities)
    np.testing.assert_array_equal(loaded.scores, logged.scores)
    assert store.get_decision("missing") is None


def test_a_repeated_event_id_returns_the_first_decision(store: SQLiteEventStore) -> None:
    store.log_decisions([decision("e1")], RULES)
    other = decision("e1", created_at=2000.0)
    other = DecisionRecord(**{**other.__dict__, "action_index": 0, "probability": 0.1})
    (again,) = store.log_decisions([other], RULES)
    assert again.action_index == 2 and again.created_at == 1000.0
    assert store.count("decisions") == 1


def test_first_reward_is_learned_then_duplicates_are_only_recorded(
    store: SQLiteEventStore,
) -> None:
    store.log_decisions([decision("e1")], RULES)
    first = store.record_reward("e1", 0.7, now=1001.0, rules=RULES)
    assert (first.outcome, first.total, first.action) == (RewardOutcome.learned, 0.7, "c")
    second = store.record_reward("e1", 0.2, now=1002.0, rules=RULES)
    assert (second.outcome, second.total) == (RewardOutcome.duplicate, 0.7)
    events = store.learn_events_after(0)
    assert len(events) == 1
    assert (events[0].action_index, events[0].reward, events[0].correction) == (2, 0.7, False)
    np.testing.assert_array_equal(events[0].x, [1.0, 0.5, -2.0])
    assert store.count("rewards") == 2


def test_sum_aggregation_corrects_the_total_clipped_to_the_range(
    store: SQLiteEventStore,
) -> None:
    store.log_decisions([decision("e1")], SUM_RULES)
    store.record_reward("e1", 0.4, now=1001.0, rules=SUM_RULES)
    second = store.record_reward("e1", 0.4, now=1002.0, rules=SUM_RULES)
    third = store.record_reward("e1", 0.4, now=1003.0, rules=SUM_RULES)
    assert (second.outcome, second.total) == (RewardOutcome.summed, pytest.approx(0.8))
    assert (third.outcome, third.total) == (RewardOutcome.summed, 1.0)  # clipped
    events = store.learn_events_after(0)
    assert [e.correction for e in events] == [False, True, True]
    assert sum(e.reward for e in events) == pytest.approx(1.0)


def test_unknown_and_late_rewards_are_recorded_not_learned(store: SQLiteEventStore) -> None:
    store.log_decisions([decision("e1", created_at=1000.0)], RULES)
    assert store.record_reward("nope", 1.0, 1001.0, RULES).outcome is RewardOutcome.unknown
    assert store.record_reward("e1", 1.0, 1100.5, RULES).outcome is RewardOutcome.late
    assert store.learn_events_after(0) == []
    assert store.count("rewards") == 2


def test_expired_decisions_get_the_default_reward_once(tmp_path: Path) -> None:
    rules = RewardRules(window_seconds=10.0, default_reward=0.25)
    store = SQLiteEventStore(tmp_path / "e.db", "h1")
    store.log_decisions([decision("old", 1000.0), decision("new", 1005.0)], rules)
    store.record_reward("new", 1.0, 1006.0, rules)
    assert store.apply_default_rewards(now=1009.0, rules=rules) == {}  # not expired yet
    assert store.apply_default_rewards(now=1020.0, rules=rules) == {"c": 1}  # "new" was rewarded
    assert store.apply_default_rewards(now=1030.0, rules=rules) == {}  # never twice
    kinds = [(e.event_id, e.reward) for e in store.learn_events_after(0)]
    assert kinds == [("new", 1.0), ("old", 0.25)]
    assert store.record_reward("old", 1.0, 1031.0, rules).outcome is RewardOutcome.late
    store.close()


def test_deferred_decisions_learn_only_after_activation(store: SQLiteEventStore) -> None:
    store.log_decisions([decision("d1", deferred=True)], RULES)
    assert store.record_reward("d1", 1.0, 1001.0, RULES).outcome is RewardOutcome.not_activated
    assert store.apply_default_rewards(now=10**9, rules=RULES) == {}  # never defaulted
    assert store.activate("d1", now=5000.0, rules=RULES) is True
    assert store.activate("d1", now=5001.0, rules=RULES) is False
    assert store.activate("missing", now=5001.0, rules=RULES) is None
    # The window starts at activation, not at the decision.
    assert store.record_reward("d1", 1.0, 5050.0, RULES).outcome is RewardOutcome.learned
    assert len(store.learn_events_after(0)) == 1


def test_learn_stream_offsets_are_ordered_and_paged(store: SQLiteEventStore) -> None:
    store.log_decisions([decision(f"e{i}") for i in range(25)], RULES)
    for i in range(25):
        store.record_reward(f"e{i}", i / 25, 1001.0, RULES)
    page = store.learn_events_after(0, limit=10)
    assert [e.seq for e in page] == list(range(1, 11))
    assert [e.seq for e in store.learn_events_after(20)] == [21, 22, 23, 24, 25]
    assert store.last_offset() == 25


def test_epochs_start_where_the_log_ends(store: SQLiteEventStore) -> None:
    assert store.epoch_offset("base-1") == 0
    store.log_decisions([decision("e1")], RULES)
    store.record_reward("e1", 1.0, 1001.0, RULES)
    assert store.epoch_offset("base-1") == 0  # registered once, stable
    assert store.epoch_offset("base-2") == 1  # a new base model starts after the log


def test_leases_have_one_holder_until_they_expire(store: SQLiteEventStore) -> None:
    assert store.acquire_lease("snapshot", "w1", now=0.0, ttl_seconds=10.0)
    assert not store.acquire_lease("snapshot", "w2", now=5.0, ttl_seconds=10.0)
    assert store.acquire_lease("snapshot", "w1", now=6.0, ttl_seconds=10.0)  # renewal
    assert store.acquire_lease("snapshot", "w2", now=17.0, ttl_seconds=10.0)  # expired


def test_a_database_belongs_to_one_schema(tmp_path: Path) -> None:
    SQLiteEventStore(tmp_path / "e.db", "h1").close()
    with pytest.raises(StoreError, match="belongs to schema h1"):
        SQLiteEventStore(tmp_path / "e.db", "h2")


def test_wal_mode_and_pragmas(store: SQLiteEventStore) -> None:
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def _log_and_reward(path: str, worker: int, n: int) -> None:
    store = SQLiteEventStore(path, "h1")
    for i in range(n):
        event_id = f"w{worker}-{i}"
        store.log_decisions([decision(event_id)], RULES)
        store.record_reward(event_id, 1.0, 1001.0, RULES)
    store.close()


def test_two_processes_write_one_log_without_losing_anything(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    SQLiteEventStore(path, "h1").close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_log_and_reward, args=(path, w, 200)) for w in (1, 2)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=120)
        assert p.exitcode == 0
    store = SQLiteEventStore(path, "h1")
    events = store.learn_events_after(0)
    assert [e.seq for e in events] == list(range(1, 401))
    assert {e.event_id for e in events} == {f"w{w}-{i}" for w in (1, 2) for i in range(200)}
    store.close()


def test_each_log_has_its_own_identity_kept_across_opens(tmp_path: Path) -> None:
    first = SQLiteEventStore(tmp_path / "a.db", "h1")
    log_id = first.log_id()
    first.close()
    again = SQLiteEventStore(tmp_path / "a.db", "h1")
    assert again.log_id() == log_id and len(log_id) == 32
    again.close()
    other = SQLiteEventStore(tmp_path / "b.db", "h1")
    assert other.log_id() != log_id
    other.close()
    (tmp_path / "a.db").unlink()  # a log deleted and made anew is another log
    renewed = SQLiteEventStore(tmp_path / "a.db", "h1")
    assert renewed.log_id() != log_id
    renewed.close()


def test_a_released_lease_is_free_at_once(store: SQLiteEventStore) -> None:
    assert store.acquire_lease("snapshot", "w1", now=0.0, ttl_seconds=900.0)
    store.release_lease("snapshot", "w2")  # not the holder: nothing happens
    assert not store.acquire_lease("snapshot", "w2", now=1.0, ttl_seconds=900.0)
    store.release_lease("snapshot", "w1")
    assert store.acquire_lease("snapshot", "w2", now=2.0, ttl_seconds=900.0)
    store.release_lease("snapshot", "w1")  # no longer the holder: w2 keeps it
    assert not store.acquire_lease("snapshot", "w1", now=3.0, ttl_seconds=900.0)


def test_the_backlog_counts_closed_windows_waiting_for_their_default(tmp_path: Path) -> None:
    rules = RewardRules(window_seconds=10.0, default_reward=0.0)
    store = SQLiteEventStore(tmp_path / "e.db", "h1")
    store.log_decisions([decision(f"e{i}", 1000.0 + i) for i in range(5)], rules)
    store.log_decisions([decision("deferred", 1000.0, deferred=True)], rules)
    store.record_reward("e0", 1.0, 1001.0, rules)  # rewarded: no default due
    assert store.pending_backlog(now=1010.5) == 0  # e1 closes at 1011
    assert store.pending_backlog(now=1012.5) == 2  # e1, e2
    assert store.pending_backlog(now=10**9) == 4  # never the deferred one
    assert store.apply_default_rewards(now=1012.5, rules=rules, limit=1) == {"c": 1}
    assert store.pending_backlog(now=1012.5) == 1
    assert store.apply_default_rewards(now=10**9, rules=rules, limit=10) == {"c": 3}
    assert store.pending_backlog(now=10**9) == 0
    defaulted = [e.event_id for e in store.learn_events_after(1)]
    assert defaulted == ["e1", "e2", "e3", "e4"]  # in the order their windows closed
    store.close()


def _open_as_nobody(path: Path) -> tuple[int, str]:
    """Open the store in a forked child that became `nobody`: (exit code, error message).

    Root may write any file, so only another user shows the refusal. A fork needs no
    interpreter start (the test's venv may sit where `nobody` cannot read).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            SQLiteEventStore(path, "h1").close()
            code = 0
        except StoreError as exc:
            os.write(write_end, str(exc).encode())
            code = 3
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), message


@pytest.mark.skipif(
    not hasattr(os, "fork") or os.geteuid() != 0,
    reason="needs root to open the log as another user",
)
@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_a_log_file_this_process_cannot_write_is_refused_clearly(suffix: str) -> None:
    # The files live in a directory `nobody` can enter (pytest's tmp_path is root's alone).
    directory = Path(tempfile.mkdtemp(prefix="banditrec-perm-", dir="/tmp"))
    try:
        directory.chmod(0o777)
        path = directory / "events.db"
        SQLiteEventStore(path, "h1").close()
        for name in ("events.db", "events.db-wal", "events.db-shm", "events.db-writers.lock"):
            (directory / name).touch()
            (directory / name).chmod(0o666)
        (directory / f"events.db{suffix}").chmod(0o644)  # root's, read-only for nobody
        code, message = _open_as_nobody(path)
        assert code == 3, message
        assert message.startswith(f"The event log file {path}{suffix} is not readable and")
        (directory / f"events.db{suffix}").chmod(0o666)
        assert _open_as_nobody(path) == (0, "")  # and with the permission back, it opens
    finally:
        shutil.rmtree(directory)


def test_a_log_written_before_user_ids_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    old = SQLiteEventStore(path, "h")
    old.log_decisions([decision("before")], RULES)
    old.close()
    with sqlite3.connect(path) as db:  # the table as earlier versions created it
        db.execute("ALTER TABLE decisions DROP COLUMN user_id")
    store = SQLiteEventStore(path, "h")
    try:
        mine = DecisionRecord(**{**decision("after").__dict__, "user_id": "u-1"})
        store.log_decisions([mine], RULES)
        assert [(d.event_id, d.user_id) for d, _ in store.iter_decisions()] == [
            ("before", None),
            ("after", "u-1"),
        ]
        assert store.forget_user("u-1") == ["after"]
    finally:
        store.close()
