"""Group commit: every write of a process in order, decisions and rewards in groups.

Under load, committing each decision in its own transaction would cost one commit (and, with
``synchronous=FULL`` or Redis's ``appendfsync always``, one fsync) per request. Instead the
requests that arrive while a commit is in flight wait, and go together in the next one; each
request still returns only once its own write is committed, so nothing acknowledged is lost
in a crash.

Where a store's call may wait (a network round trip to Redis, an fsync, a lock another
process holds), it runs on a writer thread of its own, never on the event loop. A group of
decisions and rewards that the store can commit *now without waiting* (SQLite with
``synchronous=NORMAL`` whose locks are free: `SQLiteEventStore.try_write_group`) is
committed by the event loop itself: the thread's hand-off (its wake-ups, and its turns at the
GIL with the loop) cost more than such a commit, a third of a decision's server CPU over HTTP
(docs/benchmarks.md, "HTTP at the ceiling").
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from banditrec.store import DecisionRecord, EventStore, RewardResult, RewardRules

__all__ = ["GroupCommitLog"]

T = TypeVar("T")

#: A job for the writer thread; None tells it to stop.
_Job = Callable[[], None] | None

#: Commits the group (decisions, rewards) now if it can without waiting, else returns None.
TryWriteGroup = Callable[
    [Sequence[DecisionRecord], Sequence[tuple[str, float, float]], RewardRules],
    tuple[list[DecisionRecord], list[RewardResult]] | None,
]

#: A group goes to the writer thread when its decisions log more probabilities than this in
#: all (a reward counts as 4): a longer commit would hold up the event loop, so every other
#: request of the process, by more than about half a millisecond. 128 decisions over 4
#: actions commit on the loop; one over 1,000 actions (~40 KB a row) never does: on the
#: loop, such commits added 5-10 ms to the p99 at 4-8 connections (bench_many_actions).
_MAX_PROBABILITIES_ON_LOOP = 512


class GroupCommitLog:
    """Runs every write of this process in order, committing decisions and rewards in
    groups.

    Decisions (and rewards) that arrive in one turn of the event loop, or while a commit is
    in flight, go together in the next transaction: one commit serves many requests under
    load, and each request still returns only after its own write is committed (durable
    against a process crash). After a group of rewards, `on_rewards` runs once (the engine
    applies the new learn events) before any of them returns. A group is committed on the
    loop when the store can do it without waiting (see the module's docstring) and nothing
    handed to the writer thread is still unanswered; anything else runs on the thread, in
    the order it came.
    """

    def __init__(
        self, store: EventStore, rules: RewardRules, on_rewards: Callable[[], object]
    ) -> None:
        self.store = store
        self.rules = rules
        self.on_rewards = on_rewards
        # One writer thread fed by a queue, not a ThreadPoolExecutor: a group costs one
        # `put` (one wake-up of the thread) and one `call_soon_threadsafe` back that answers
        # the whole group, instead of an executor future, a work item and an asyncio future
        # chained to it, and a flush task resumed per group (~10 % of the event loop's time
        # at a few decisions per group). The queue is FIFO like the executor was, so every
        # store call of this process still runs in order on one thread.
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        # A single decision waits on its own future; a batch (`log_decisions`) on one future
        # for all of its records, which go into the same commit. (One future per request,
        # not one per group: a shared future would be cancelled for everyone with the first
        # request whose task is cancelled.)
        self._pending: list[tuple[DecisionRecord, asyncio.Future[Any]]] = []
        self._batches: list[tuple[list[DecisionRecord], asyncio.Future[Any]]] = []
        self._rewards: list[tuple[tuple[str, float, float], asyncio.Future[RewardResult]]] = []
        self._flushing = False
        #: The store's commit without waiting, if it has one (`TryWriteGroup`).
        self._try_now: TryWriteGroup | None = getattr(store, "try_write_group", None)
        # Jobs handed to the thread and not yet answered on the loop: while there are any,
        # a group goes to the thread too, after them (every write in the order it came).
        self._in_thread = 0

    def log_decision(self, record: DecisionRecord) -> asyncio.Future[DecisionRecord]:
        """Log `record` in the next group commit: await the future for the logged record
        (the one logged first, for a repeated event id).

        A future, not a coroutine: a decision waits on it through one frame fewer.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[DecisionRecord] = loop.create_future()
        self._pending.append((record, future))
        if not self._flushing:
            self._start_flushing(loop)
        return future

    async def log_decisions(self, records: list[DecisionRecord]) -> list[DecisionRecord]:
        """Log `records` together, in the next group commit (one `log_decisions` call)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[DecisionRecord]] = loop.create_future()
        self._batches.append((records, future))
        if not self._flushing:
            self._start_flushing(loop)
        return await future

    async def record_reward(self, event_id: str, value: float, now: float) -> RewardResult:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RewardResult] = loop.create_future()
        self._rewards.append(((event_id, value, now), future))
        if not self._flushing:
            self._start_flushing(loop)
        return await future

    def _start_flushing(self, loop: asyncio.AbstractEventLoop) -> None:
        # The group leaves at the loop's next turn, not now: the requests already waiting
        # to run in this turn join it.
        self._flushing = True
        loop.call_soon(self._send_group, loop)

    def _send_group(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand everything waiting to the writer thread as one group (on the event loop)."""
        singles, self._pending = self._pending, []
        batches, self._batches = self._batches, []
        rewards, self._rewards = self._rewards, []
        if not (singles or batches or rewards):
            self._flushing = False
            return
        records = [record for record, _ in singles]
        for batch, _ in batches:
            records.extend(batch)
        items = [item for item, _ in rewards]
        if (
            self._try_now is not None
            and self._in_thread == 0
            and sum(len(r.probabilities) for r in records) + 4 * len(items)
            <= _MAX_PROBABILITIES_ON_LOOP
        ):
            written = self._try_now(records, items, self.rules)
            if written is not None:
                self._group_committed(*written, singles, batches, rewards)
                return
        try:
            self._put(partial(self._write_group, loop, records, items, singles, batches, rewards))
        except Exception as exc:  # closed: every waiting request learns of it
            self._flushing = False
            for _, future in (*singles, *batches, *rewards):
                if not future.done():
                    future.set_exception(exc)

    def _write_group(
        self,
        loop: asyncio.AbstractEventLoop,
        records: list[DecisionRecord],
        items: list[tuple[str, float, float]],
        *waiting: Any,
    ) -> None:
        """Commit a group (on the writer thread), then answer it with one call on the loop."""
        # Decisions first: a reward may refer to a decision committed in the same group.
        decided: list[DecisionRecord] | BaseException = []
        rewarded: list[RewardResult] | BaseException = []
        if records:
            try:
                decided = self.store.log_decisions(records, self.rules)
            except Exception as exc:
                decided = exc
        if items:
            try:
                rewarded = self.store.record_rewards(items, self.rules)
            except Exception as exc:
                rewarded = exc
        _call_back(loop, self._answered, self._group_committed, decided, rewarded, *waiting)

    def _group_committed(
        self,
        decided: list[DecisionRecord] | BaseException,
        rewarded: list[RewardResult] | BaseException,
        singles: list[tuple[DecisionRecord, asyncio.Future[Any]]],
        batches: list[tuple[list[DecisionRecord], asyncio.Future[Any]]],
        rewards: list[tuple[tuple[str, float, float], asyncio.Future[RewardResult]]],
    ) -> None:
        """Answer every request of a committed group (on the event loop), then send the next."""
        try:
            if isinstance(decided, BaseException):  # every waiting request learns of it
                for _, future in (*singles, *batches):
                    if not future.done():
                        future.set_exception(decided)
            else:
                for (_, future), result in zip(singles, decided, strict=False):
                    if not future.done():
                        future.set_result(result)
                start = len(singles)
                for batch, future in batches:
                    if not future.done():
                        future.set_result(decided[start : start + len(batch)])
                    start += len(batch)
            if rewards:
                if not isinstance(rewarded, BaseException):
                    try:
                        self.on_rewards()
                    except Exception as exc:
                        rewarded = exc
                if isinstance(rewarded, BaseException):
                    for _, waiter in rewards:
                        if not waiter.done():
                            waiter.set_exception(rewarded)
                else:
                    for (_, waiter), reward in zip(rewards, rewarded, strict=True):
                        if not waiter.done():
                            waiter.set_result(reward)
        finally:
            # What arrived during the commit goes now, as the next group.
            self._send_group(asyncio.get_running_loop())

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the writer thread, after every write handed to it before."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put(partial(self._run_call, loop, future, fn, args))
        return await future

    def _run_call(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        """Run a `call` (on the writer thread) and hand its outcome to the loop."""
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the caller, as an executor does
            _call_back(loop, self._answered, _settle, future, None, exc)
        else:
            _call_back(loop, self._answered, _settle, future, result, None)

    def _answered(self, fn: Callable[..., None], *args: Any) -> None:
        """A job of the thread is answered (on the event loop): `fn(*args)`."""
        self._in_thread -= 1
        fn(*args)

    def _put(self, job: Callable[[], None]) -> None:
        if self._closed:
            raise RuntimeError("This log is closed: no more writes can be scheduled.")
        if self._thread is None:
            # A daemon thread, stopped and joined when the log is closed, collected or at
            # exit (after the work already queued), as the executor's thread was.
            thread = threading.Thread(
                target=_write_jobs, args=(self._jobs,), name="banditrec-log", daemon=True
            )
            thread.start()
            self._thread = thread
            weakref.finalize(self, _stop_writer, self._jobs, thread)
        self._jobs.put(job)
        self._in_thread += 1

    def close(self) -> None:
        """Stop the writer thread once the work handed to it is done."""
        self._closed = True
        if self._thread is not None:
            _stop_writer(self._jobs, self._thread)


def _write_jobs(jobs: queue.SimpleQueue[_Job]) -> None:
    """The writer thread: run the jobs in order until told to stop."""
    while (job := jobs.get()) is not None:
        job()


def _stop_writer(jobs: queue.SimpleQueue[_Job], thread: threading.Thread) -> None:
    jobs.put(None)
    if thread is not threading.current_thread():
        thread.join()


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _call_back(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(*args)`` on `loop` from the writer thread (the loop's single wake-up)."""
    # RuntimeError: the loop is closed, nobody is waiting for the answer any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)
