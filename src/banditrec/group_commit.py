"""Group commit: every write of a process on one thread, decisions and rewards in groups.

Under load, committing each decision in its own transaction would cost one commit (and, with
``synchronous=FULL`` or Redis's ``appendfsync always``, one fsync) per request. Instead the
requests that arrive while a commit is in flight wait, and go together in the next one; each
request still returns only once its own write is committed, so nothing acknowledged is lost
in a crash. The store's calls run on one thread of their own, never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from banditrec.store import DecisionRecord, EventStore, RewardResult, RewardRules

__all__ = ["GroupCommitLog"]

T = TypeVar("T")


class GroupCommitLog:
    """Runs every write of this process on one thread, committing decisions and rewards in
    groups.

    Decisions (and rewards) that arrive while a commit is in flight wait and go together in
    the next transaction: one commit serves many requests under load, and each request still
    returns only after its own write is committed (durable against a process crash). After a
    group of rewards, `on_rewards` runs once (the engine applies the new learn events) before
    any of them returns.
    """

    def __init__(
        self, store: EventStore, rules: RewardRules, on_rewards: Callable[[], object]
    ) -> None:
        self.store = store
        self.rules = rules
        self.on_rewards = on_rewards
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="banditrec-log")
        # A single decision waits on its own future; a batch (`log_decisions`) on one future
        # for all of its records, which go into the same commit.
        self._pending: list[tuple[DecisionRecord, asyncio.Future[Any]]] = []
        self._batches: list[tuple[list[DecisionRecord], asyncio.Future[Any]]] = []
        self._rewards: list[tuple[tuple[str, float, float], asyncio.Future[RewardResult]]] = []
        self._flushing = False
        self._flush_task: asyncio.Task[None] | None = None

    async def log_decision(self, record: DecisionRecord) -> DecisionRecord:
        future: asyncio.Future[DecisionRecord] = self._loop().create_future()
        self._pending.append((record, future))
        self._start_flushing()
        return await future

    async def log_decisions(self, records: list[DecisionRecord]) -> list[DecisionRecord]:
        """Log `records` together, in the next group commit (one `log_decisions` call)."""
        future: asyncio.Future[list[DecisionRecord]] = self._loop().create_future()
        self._batches.append((records, future))
        self._start_flushing()
        return await future

    async def record_reward(self, event_id: str, value: float, now: float) -> RewardResult:
        future: asyncio.Future[RewardResult] = self._loop().create_future()
        self._rewards.append(((event_id, value, now), future))
        self._start_flushing()
        return await future

    @staticmethod
    def _loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def _start_flushing(self) -> None:
        if not self._flushing:
            self._flushing = True
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending or self._batches or self._rewards:
                # Decisions first: a reward may refer to a decision waiting beside it.
                if self._pending or self._batches:
                    await self._commit_decisions()
                if self._rewards:
                    rewards, self._rewards = self._rewards, []
                    items = [item for item, _ in rewards]
                    await self._commit(self.store.record_rewards, items, rewards, self.on_rewards)
        finally:
            self._flushing = False

    async def _commit_decisions(self) -> None:
        """Commit the waiting decisions, single and batched, in one `log_decisions` call."""
        singles, self._pending = self._pending, []
        batches, self._batches = self._batches, []
        records = [record for record, _ in singles]
        for batch, _ in batches:
            records.extend(batch)
        try:
            results = await self.call(self.store.log_decisions, records, self.rules)
        except Exception as exc:  # every waiting request learns of the failure
            for _, future in (*singles, *batches):
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(singles, results, strict=False):
            if not future.done():
                future.set_result(result)
        start = len(singles)
        for batch, future in batches:
            if not future.done():
                future.set_result(results[start : start + len(batch)])
            start += len(batch)

    async def _commit(
        self,
        write: Callable[[list[Any], RewardRules], list[Any]],
        items: list[Any],
        waiting: Sequence[tuple[Any, asyncio.Future[Any]]],
        then: Callable[[], object] | None = None,
    ) -> None:
        try:
            results = await self.call(write, items, self.rules)
            if then is not None:
                then()
        except Exception as exc:  # every waiting request learns of the failure
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(waiting, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
