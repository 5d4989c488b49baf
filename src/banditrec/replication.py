"""Following the learn stream: every process applies every learn event, in log order.

A reward posted to any process becomes a learn event in the shared log; every serving
process applies the stream in ``seq`` order, so all of them hold the same model (DESIGN
principle 3). How a process hears of new events depends on the store:

- **pushed** (Redis): a thread of its own waits in a blocking stream read
  (`wait_learn_events`) and hands the events to the event loop the moment they are
  appended, so a reward posted to one replica changes the decisions of all within
  milliseconds, with no polling;
- **polled** (SQLite, one host): the learner reads the log every `poll_interval` seconds,
  one indexed read (`Engine.catch_up`).

`LogFollower` does the first. Either way the events are applied on the event loop thread,
where decisions are made, so a decision never sees half an update. A failing read (the store
is unreachable) is retried with backoff and reported by `fault`.

While it runs, the follower is the only reader of the stream in its process: a reward this
process wrote waits for the follower to apply the reward's learn event
(`LogFollower.wait_applied`, which `Engine.reward` awaits) instead of reading the stream
again on the event loop. Each event is read and decoded once, off the event loop, and
applied once, in ``seq`` order (`Engine.apply` skips what is already applied), and a reward
still returns only once this process's model includes it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

from banditrec.engine import Engine
from banditrec.store import LearnEvent

__all__ = ["LogFollower", "PushingStore"]

logger = logging.getLogger("banditrec.replication")


@runtime_checkable
class PushingStore(Protocol):
    """A store that can wait for new learn events instead of being polled."""

    def wait_learn_events(self, offset: int, timeout_seconds: float) -> list[LearnEvent]:
        """Learn events with ``seq > offset``, waiting up to `timeout_seconds` for one."""
        ...


class LogFollower:
    """Keeps `engine` current with `store`'s learn stream until cancelled.

    Parameters
    ----------
    engine
        The model to keep current.
    store
        The event log: it must push (`PushingStore`).
    retry_interval
        The first pause after a failed read; it doubles up to `max_backoff`.
    block_seconds
        The longest one blocking read of a pushed store waits (it returns at the first new
        event); bounds how long a cancelled follower's thread lingers.
    max_backoff
        The longest pause between two tries after a failed read.
    """

    def __init__(
        self,
        engine: Engine,
        store: PushingStore,
        retry_interval: float = 0.05,
        block_seconds: float = 1.0,
        max_backoff: float = 5.0,
    ) -> None:
        self.engine = engine
        self.store = store
        self.retry_interval = retry_interval
        self.block_seconds = block_seconds
        self.max_backoff = max_backoff
        self.fault: str | None = None
        self._failures = 0
        #: Rewards waiting for their learn event: (seq, tie-breaker, future), lowest first.
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._tickets = itertools.count()

    async def run(self) -> None:
        """Apply new learn events as they come, forever. Cancel to stop."""
        # A thread of its own: the blocking read holds it for up to `block_seconds`, which
        # must not starve the default executor the API's other work runs on.
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="banditrec-follow")
        loop = asyncio.get_running_loop()
        self.engine.wait_applied = self.wait_applied
        try:
            while True:
                offset = self.engine.applied_offset
                try:
                    events = await loop.run_in_executor(
                        executor, self.store.wait_learn_events, offset, self.block_seconds
                    )
                    self._apply(events)
                except Exception as exc:
                    self._release(everyone=True)  # they read the stream themselves
                    await asyncio.sleep(self._failed(exc))
                    continue
                self._succeeded()
        finally:
            self.engine.wait_applied = None
            executor.shutdown(wait=False, cancel_futures=True)
            self._release(everyone=True)

    async def wait_applied(self, seq: int) -> None:
        """Return once the engine has applied the learn event `seq` (and all before it).

        The follower's blocking read returns it as soon as it is appended (a read waits at
        most `block_seconds`, and within the store's socket timeout). Should a read fail, or
        the follower stop, the waiting rewards read the stream themselves, as they would
        without a follower. No timer per reward: this is on every reward's path.
        """
        if self.engine.applied_offset >= seq:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (seq, next(self._tickets), future))
        await future
        if self.engine.applied_offset < seq:  # the follower failed, or stopped
            self.engine.catch_up()

    def _apply(self, events: Sequence[LearnEvent]) -> None:
        # The next blocking read starts after the last event applied, so anything appended
        # meanwhile comes back at once: no second read here.
        if events:
            self.engine.apply(events)
        self._release()

    def _release(self, everyone: bool = False) -> None:
        """Wake the rewards whose learn event is applied (all of them when stopping)."""
        applied = self.engine.applied_offset
        while self._waiters and (everyone or self._waiters[0][0] <= applied):
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)

    def _failed(self, exc: Exception) -> float:
        self._failures += 1
        delay = min(self.retry_interval * 2.0**self._failures, self.max_backoff)
        self.fault = (
            f"Reading the learn stream failed {self._failures} time(s) in a row "
            f"({type(exc).__name__}: {exc}); next try in {delay:.1f} s."
        )
        if self._failures == 1:
            logger.error("Reading the learn stream failed; retrying with backoff: %s", exc)
        return delay

    def _succeeded(self) -> None:
        if self._failures:
            logger.warning(
                "The learn stream is readable again after %d failure(s); the model is at "
                "offset %d.",
                self._failures,
                self.engine.applied_offset,
            )
        self._failures, self.fault = 0, None
