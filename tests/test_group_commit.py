"""Group commit on a real SQLite file: where each group is committed, and that nothing
acknowledged is missing, out of order or written twice whichever way it went.

A group the store can commit without waiting is committed by the event loop itself (the
writer thread is then never started); a group that would wait (another process holds the
writers' lock, SQLite's own lock is held by another connection, ``synchronous=FULL``, or a
job handed to the thread is still unanswered) goes to the writer thread.
"""

import asyncio
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from banditrec.engine import new_event_id
from banditrec.group_commit import GroupCommitLog
from banditrec.store import DecisionRecord, RewardOutcome, RewardRules
from banditrec.store.sqlite import SQLiteEventStore

RULES = RewardRules()
ACTIONS = ("a", "b", "c")


def record(i: int, event_id: str | None = None) -> DecisionRecord:
    probabilities = np.array([0.8, 0.1, 0.1])
    return DecisionRecord(
        event_id=event_id or new_event_id(),
        created_at=1_000.0 + i,
        model_version="v1",
        context={"i": i},
        x=np.array([1.0, float(i)]),
        actions=ACTIONS,
        eligible=ACTIONS,
        action_index=i % 3,
        probability=float(probabilities[i % 3]),
        probabilities=probabilities,
        scores=np.array([0.5, 0.2, 0.1]),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteEventStore]:
    store = SQLiteEventStore(tmp_path / "events.db", "hash")
    yield store
    store.close()


def logged(path: Path) -> list[tuple[str, Any]]:
    """Every decision in the file, in log order, read by a connection of its own."""
    with sqlite3.connect(path) as db:
        return db.execute("SELECT event_id, context FROM decisions ORDER BY seq").fetchall()


async def log_many(log: GroupCommitLog, records: list[DecisionRecord]) -> list[DecisionRecord]:
    return await asyncio.gather(*(log.log_decision(r) for r in records))


def test_a_group_that_can_commit_now_is_committed_by_the_loop(store: SQLiteEventStore) -> None:
    log = GroupCommitLog(store, RULES, on_rewards=lambda: None)
    records = [record(i) for i in range(40)]
    returned = asyncio.run(log_many(log, records))
    assert [r.event_id for r in returned] == [r.event_id for r in records]
    assert [e for e, _ in logged(store.path)] == [r.event_id for r in records]
    assert log._thread is None  # no hand-off: the writer thread was never started
    log.close()


def test_rewards_are_joined_in_the_same_turn_and_learned(store: SQLiteEventStore) -> None:
    learned: list[int] = []
    log = GroupCommitLog(store, RULES, on_rewards=lambda: learned.append(store.last_offset()))

    async def run() -> list[Any]:
        decided = await log_many(log, [record(i) for i in range(5)])
        now = 1_001.0
        return await asyncio.gather(
            *(log.record_reward(d.event_id, 1.0, now) for d in decided),
            log.record_reward("never-decided", 1.0, now),
        )

    results = asyncio.run(run())
    assert [r.outcome for r in results] == [RewardOutcome.learned] * 5 + [RewardOutcome.unknown]
    assert learned == [5]  # once for the group, after its learn events were committed
    assert log._thread is None
    log.close()


def test_a_repeated_event_id_keeps_its_first_decision(store: SQLiteEventStore) -> None:
    log = GroupCommitLog(store, RULES, on_rewards=lambda: None)
    first, again = record(1, event_id="client-1"), record(2, event_id="client-1")
    other = record(3)
    returned = asyncio.run(log_many(log, [first, again, other]))
    # One multi-row INSERT fails on the repeat; row by row, the first stands.
    assert [r.context for r in returned] == [{"i": 1}, {"i": 1}, {"i": 3}]
    assert logged(store.path) == [("client-1", '{"i":1}'), (other.event_id, '{"i":3}')]
    log.close()


@pytest.mark.parametrize("holder", ["another process's flock", "another connection"])
def test_a_held_lock_sends_the_group_to_the_thread_without_blocking_the_loop(
    store: SQLiteEventStore, holder: Literal["another process's flock", "another connection"]
) -> None:
    release = threading.Event()
    held = threading.Event()

    def hold() -> None:
        if holder == "another connection":  # SQLite's own lock, as a backup tool takes it
            db = sqlite3.connect(store.path, isolation_level=None)
            db.execute("BEGIN IMMEDIATE")
            held.set()
            release.wait(10)
            db.execute("ROLLBACK")
            db.close()
        else:  # the writers' lock of another banditrec worker
            fd = os.open(f"{store.path}-writers.lock", os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX)
            held.set()
            release.wait(10)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    holder_thread = threading.Thread(target=hold)
    holder_thread.start()
    held.wait(10)
    log = GroupCommitLog(store, RULES, on_rewards=lambda: None)
    records = [record(i) for i in range(3)]

    async def run() -> tuple[list[DecisionRecord], int]:
        pending = asyncio.ensure_future(log_many(log, records))
        ticks = 0
        while ticks < 20:  # the loop keeps turning while the group waits for the lock
            await asyncio.sleep(0.005)
            ticks += 1
        assert not pending.done()
        release.set()
        return await pending, ticks

    returned, ticks = asyncio.run(run())
    holder_thread.join()
    assert ticks == 20
    assert [r.event_id for r in returned] == [r.event_id for r in records]
    assert [e for e, _ in logged(store.path)] == [r.event_id for r in records]
    assert log._thread is not None  # it went to the writer thread
    log.close()


def test_a_group_waits_behind_the_threads_unanswered_job(store: SQLiteEventStore) -> None:
    """A store call handed to the thread before a group runs before it: in order."""
    log = GroupCommitLog(store, RULES, on_rewards=lambda: None)
    started, release = threading.Event(), threading.Event()
    seen_by_call: list[int] = []

    def slow_call() -> None:
        started.set()
        release.wait(10)
        seen_by_call.append(len(logged(store.path)))

    async def run() -> None:
        call = asyncio.ensure_future(log.call(slow_call))
        while not started.is_set():
            await asyncio.sleep(0.001)
        group = asyncio.ensure_future(log_many(log, [record(i) for i in range(4)]))
        await asyncio.sleep(0.02)
        assert not group.done()  # not committed on the loop ahead of the call
        release.set()
        await call
        await group

    asyncio.run(run())
    assert seen_by_call == [0]
    assert len(logged(store.path)) == 4
    log.close()


def test_a_decision_over_a_thousand_actions_is_committed_on_the_thread(
    store: SQLiteEventStore,
) -> None:
    """Its row (~40 KB) would hold up the loop: the group goes to the thread."""
    log = GroupCommitLog(store, RULES, on_rewards=lambda: None)
    names = tuple(f"a{k}" for k in range(1000))
    wide = DecisionRecord(
        event_id=new_event_id(), created_at=1_000.0, model_version="v1", context={"i": 0},
        x=np.ones(2), actions=names, eligible=names, action_index=0, probability=0.001,
        probabilities=np.full(1000, 0.001), scores=np.zeros(1000),
    )  # fmt: skip
    asyncio.run(log_many(log, [wide]))
    assert [e for e, _ in logged(store.path)] == [wide.event_id]
    assert log._thread is not None
    log.close()


def test_synchronous_full_always_commits_on_the_thread(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "events.db", "hash", synchronous="FULL")
    log = GroupCommitLog(store, RULES, on_rewards=lambda: None)
    records = [record(i) for i in range(3)]
    asyncio.run(log_many(log, records))
    assert [e for e, _ in logged(store.path)] == [r.event_id for r in records]
    assert log._thread is not None  # an fsync a commit: never on the loop
    log.close()
    store.close()


def test_a_failing_group_is_reported_as_the_thread_reports_it(store: SQLiteEventStore) -> None:
    """A statement that fails on the loop writes nothing there; the thread then runs the
    group the usual way and every waiting request gets its error."""
    log = GroupCommitLog(store, RULES, on_rewards=lambda: None)
    bad = record(1)
    bad.context[1] = "orjson refuses a non-string key"  # type: ignore[index]
    good = record(2)

    async def run() -> list[DecisionRecord | BaseException]:
        return list(
            await asyncio.gather(
                log.log_decision(good), log.log_decision(bad), return_exceptions=True
            )
        )

    outcomes = asyncio.run(run())
    assert all(isinstance(o, TypeError) for o in outcomes), outcomes
    assert logged(store.path) == []  # the group is one transaction: nothing of it stands
    log.close()
