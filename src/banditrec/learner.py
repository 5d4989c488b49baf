"""Keeping a serving model current: recovery at start, then tail the log and snapshot.

A model is a snapshot plus the learn events after the snapshot's log offset (DESIGN
principle 2). At start a process removes the temporary files of interrupted snapshot writes,
loads the newest valid snapshot of its base model that belongs to the event log (or the base
model itself) and replays the tail of the learn stream. While serving it applies new learn
events every `poll_interval` seconds (rewards posted to any worker reach every worker),
applies default rewards to every decision whose window closed, and, if it holds the snapshot
lease, writes a snapshot every N learn events or T seconds.

A snapshot belongs to the log when it records the log's identity (`EventStore.log_id`), its
offset is not past the log's end, and the learn event at its offset is the one it applied
(`Model.log_tip`). Anything else means the log was reset, replaced or restored from an older
copy; trusting such a snapshot would silently skip the new log's events up to its offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from dataclasses import dataclass, field

from banditrec.engine import Engine
from banditrec.metrics import Metrics
from banditrec.replication import LogFollower, PushingStore
from banditrec.retention import Retention
from banditrec.snapshot import Model
from banditrec.snapshot_store import SnapshotStore
from banditrec.store import EventStore

__all__ = ["Learner", "recover_model"]

logger = logging.getLogger("banditrec.learner")

_LEASE = "snapshot"


def recover_model(base: Model, store: EventStore, snapshots: SnapshotStore) -> tuple[Model, str]:
    """The model to start from (before replaying the log tail) and where it came from.

    Removes the temporary files that interrupted snapshot writes left, then takes the newest
    snapshot of `base` that belongs to `store`'s log. Snapshots that do not belong are set
    aside and reported in one ERROR line; the model is then rebuilt from an older snapshot
    of this log or from `base` and the whole epoch.
    """
    snapshots.remove_stale()
    base_offset = store.epoch_offset(base.version)
    refused: list[str] = []
    foreign = False  # as opposed to snapshots that predate log identities (an upgrade)
    chosen: tuple[str, Model] | None = None
    for name, snapshot in snapshots.candidates(base.schema, base.version, base_offset):
        problem = _not_of_this_log(snapshot, store)
        if problem is None:
            chosen = name, snapshot
            break
        refused.append(f"{name} {problem}")
        foreign = foreign or snapshot.log_id is not None
        snapshots.set_aside(name)
    if chosen is not None:
        model, origin = chosen[1], f"snapshot at offset {chosen[1].log_offset}"
    else:
        base.log_offset = base_offset
        model = base
        origin = f"base model {base.version} (epoch from offset {base_offset})"
    model.log_id = store.log_id()
    if refused:
        rebuilt = (
            f"snapshot {chosen[0]} of this log and the learn events after it"
            if chosen is not None
            else f"the base model {base.version} and the whole epoch (every learn event "
            f"after offset {base_offset})"
        )
        cause = (
            "The log was reset, replaced or restored from an older copy"
            if foreign
            else "They were written before snapshots recorded their log"
        )
        logger.log(
            logging.ERROR if foreign else logging.WARNING,
            "Snapshots that do not belong to the event log (log id %s, last offset %d) were "
            "found: %s. %s; those snapshots were set aside (renamed rejected-<name> in a "
            "directory), and the model is "
            "rebuilt from %s.",
            store.log_id(),
            store.last_offset(),
            "; ".join(refused),
            cause,
            rebuilt,
        )
    return model, origin


def _not_of_this_log(snapshot: Model, store: EventStore) -> str | None:
    """Why `snapshot` does not summarise a prefix of `store`'s log (None if it does)."""
    log_id, offset = store.log_id(), snapshot.log_offset
    if snapshot.log_id is None:
        return "records no log identity (written by an older banditrec)"
    if snapshot.log_id != log_id:
        return f"belongs to another log (log id {snapshot.log_id})"
    end = store.last_offset()
    if offset > end:
        return f"is at offset {offset}, past the end of this log ({end})"
    if offset > 0 and snapshot.log_tip != _tip(store, offset):
        return f"did not apply this log's learn event {offset} (the log was restored and grew)"
    return None


def _tip(store: EventStore, offset: int) -> str | None:
    """The fingerprint of the learn event at `offset` (None at 0 or if there is none)."""
    if offset <= 0:
        return None
    events = store.learn_events_after(offset - 1, limit=1)
    return events[0].fingerprint if events and events[0].seq == offset else None


@dataclass
class _Retry:
    """Backoff for a task that fails, its fault, and logs that do not flood.

    The first failure of a streak logs its traceback, each further *distinct* failure one
    line, repeats nothing; the delay doubles from `base` up to `cap`.
    """

    what: str
    base: float
    cap: float
    metrics: Metrics | None = None
    failures: int = 0
    fault: str | None = None
    retry_at: float = 0.0
    _seen: set[str] = field(default_factory=set)

    def ready(self, now: float) -> bool:
        return now >= self.retry_at

    def failed(self, exc: BaseException) -> float:
        """Record a failure; return how long to wait before the next try."""
        reason = _reason(exc)
        self.failures += 1
        delay = min(self.base * 2.0**self.failures, self.cap)
        self.retry_at = time.monotonic() + delay
        self.fault = (
            f"{self.what} failed {self.failures} time(s) in a row ({reason}), "
            f"next try in {delay:.1f} s."
        )
        if self.failures == 1:
            logger.error("%s failed; retrying with backoff.", self.what, exc_info=exc)
        elif reason not in self._seen:
            logger.error("%s failed again, differently: %s", self.what, reason)
        self._seen.add(reason)
        if self.metrics is not None:
            self.metrics.learner_failed()
        return delay

    def succeeded(self) -> None:
        if self.failures:
            logger.warning("%s works again after %d failure(s).", self.what, self.failures)
        self.failures, self.fault, self.retry_at = 0, None, 0.0
        self._seen.clear()


def _reason(exc: BaseException) -> str:
    # An OSError's file name may differ at every try (temporary files): leave it out, so
    # that a repeated failure is recognised as one.
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__}: [Errno {exc.errno}] {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class Learner:
    """The background loop of one serving process.

    Parameters
    ----------
    default_batch
        Decisions defaulted per write. The sweep repeats batches until no decision whose
        window closed is left, yielding between them, so decisions wait for at most one
        batch however large the backlog: 1,000 take 10-20 ms to write and apply here, and a
        sweep so defaults over 50,000 decisions a second, far above what a worker serves.
    lease_seconds
        The snapshot lease's time to live; its holder renews it every quarter of it, so a
        holder that died without releasing it is replaced within this time.
    max_backoff
        The longest wait between two tries of a failing step or snapshot.
    retention
        Moves old decisions to the archive every `Retention.every_seconds` (in the one
        process holding the retention lease); None keeps everything.
    """

    engine: Engine
    store: EventStore
    snapshots: SnapshotStore
    poll_interval: float = 0.05
    default_sweep_interval: float = 1.0
    default_batch: int = 1000
    snapshot_every_events: int = 10_000
    snapshot_every_seconds: float = 300.0
    lease_seconds: float = 10.0
    max_backoff: float = 5.0
    owner: str = ""
    metrics: Metrics | None = None
    retention: Retention | None = None

    def __post_init__(self) -> None:
        self.owner = self.owner or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._last_sweep = 0.0
        self._last_snapshot_time = time.monotonic()
        self._last_snapshot_offset = self.engine.applied_offset
        self._holding = False
        self._lease_checked = float("-inf")
        self._step = _Retry("The learner step", self.poll_interval, self.max_backoff, self.metrics)
        self._snapshot = _Retry(
            f"Writing a snapshot to {self.snapshots.where}",
            self.poll_interval,
            self.max_backoff,
            self.metrics,
        )
        self._retention = _Retry(
            "Retention (archiving old decisions)", self.poll_interval, 60.0, self.metrics
        )
        # A store that pushes new learn events (Redis) is followed by a blocking read of
        # its own; one that does not (SQLite) is read every step.
        self._follower = (
            LogFollower(self.engine, self.store, self.poll_interval, max_backoff=self.max_backoff)
            if isinstance(self.store, PushingStore)
            else None
        )
        if self.metrics is not None:
            self.metrics.learner_faulty(False)
            store, clock = self.store, self.engine.clock
            self.metrics.watch_backlog(lambda: store.pending_backlog(clock()))

    @property
    def fault(self) -> str | None:
        """None while the learner works; else one sentence saying what fails."""
        following = self._follower.fault if self._follower is not None else None
        return following or self._step.fault or self._snapshot.fault or self._retention.fault

    @property
    def holds_lease(self) -> bool:
        """Whether this process held the snapshot lease at its last check."""
        return self._holding

    async def run(self) -> None:
        """Forever: apply new learn events, default rewards, snapshots. Cancel to stop.

        A failing step is retried with exponential backoff (see `fault`); on the way out
        the snapshot lease is released, so a restarted server snapshots at once.
        """
        follow = None if self._follower is None else asyncio.create_task(self._follower.run())
        # Retention runs beside the steps, not in them: a long first run over a large log
        # must not hold up learning, default rewards or snapshots.
        retain = None if self.retention is None else asyncio.create_task(self._retain())
        try:
            while True:
                try:
                    await self.step()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # keep serving; retry after a pause
                    delay = self._step.failed(exc)
                else:
                    self._step.succeeded()
                    delay = self.poll_interval
                if self.metrics is not None:
                    self.metrics.learner_faulty(self.fault is not None)
                await asyncio.sleep(delay)
        finally:
            for task in (follow, retain):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self.release_lease()

    async def step(self) -> None:
        """Apply new learn events, then (when due) default rewards and a snapshot.

        A failing snapshot does not fail the step (learning goes on): it is retried on its
        own backoff and reported by `fault`.
        """
        if self._follower is None:  # polled; a pushed store's follower does it at once
            self.engine.catch_up()
        now = time.monotonic()
        if now - self._last_sweep >= self.default_sweep_interval:
            self._last_sweep = now
            await self.apply_default_rewards()
        await self._refresh_lease(now)
        if self._holding and self._snapshot_due(now) and self._snapshot.ready(now):
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.snapshot)
            except Exception as exc:
                self._snapshot.failed(exc)
            else:
                self._snapshot.succeeded()

    async def apply_default_rewards(self) -> int:
        """Learn the default reward of every decision whose window has closed by now.

        Returns how many were defaulted. Batches of `default_batch` go through the
        engine's writer one at a time, with the decisions that arrive meanwhile between
        them, so the sweep keeps up with any decision rate without stalling decisions.
        """
        now = self.engine.clock()  # fixed: the sweep ends even while new windows close
        total = 0
        while True:
            by_action = await self.engine.apply_default_rewards(self.default_batch, now)
            if self.metrics is not None:
                for action, n in by_action.items():
                    self.metrics.default_reward(action, n)
            n = sum(by_action.values())
            total += n
            if n < self.default_batch:
                break
            await asyncio.sleep(0)
        if total:
            logger.info("Applied the default reward to %d expired decisions.", total)
        return total

    async def _retain(self) -> None:
        assert self.retention is not None
        while True:
            await asyncio.sleep(self.retention.every_seconds)  # not at once: starting up
            await self.run_retention()

    async def run_retention(self) -> None:
        """Run the retention job once if it is configured (see `banditrec.retention`); a
        failure is reported by `fault` and retried at its next turn, learning goes on."""
        if self.retention is None or not self._retention.ready(time.monotonic()):
            return
        try:
            await self.retention.run(self.engine, self.owner)
        except Exception as exc:
            self._retention.failed(exc)
        else:
            self._retention.succeeded()

    def _snapshot_due(self, now: float) -> bool:
        new_events = self.engine.applied_offset - self._last_snapshot_offset
        if new_events <= 0:
            return False
        return (
            new_events >= self.snapshot_every_events
            or now - self._last_snapshot_time >= self.snapshot_every_seconds
        )

    async def _refresh_lease(self, now: float) -> None:
        # One snapshot writer per log. Every process asks for the lease every quarter of its
        # lifetime (the holder renews it, the others take it once it lapsed), a write every
        # few seconds, not one per step.
        if now - self._lease_checked < self.lease_seconds / 4:
            return
        self._lease_checked = now
        self._holding = await asyncio.get_running_loop().run_in_executor(
            None, self.store.acquire_lease, _LEASE, self.owner, time.time(), self.lease_seconds
        )

    def release_lease(self) -> None:
        """Give up the snapshot lease (if held), so another process can take it at once."""
        self._holding = False
        try:
            self.store.release_lease(_LEASE, self.owner)
        except Exception as exc:  # on the way out: it lapses within `lease_seconds` anyway
            logger.warning("Could not release the snapshot lease: %s", exc)

    def snapshot(self) -> str:
        """Write a snapshot of the live model now (atomically); return where it is."""
        model = self.engine.snapshot_model()
        model.log_id = self.store.log_id()
        model.log_tip = _tip(self.store, model.log_offset)
        name = self.snapshots.save(model)
        self._last_snapshot_time = time.monotonic()
        self._last_snapshot_offset = model.log_offset
        logger.info(
            "Snapshot %s written to %s (offset %d).", name, self.snapshots.where, model.log_offset
        )
        return name
