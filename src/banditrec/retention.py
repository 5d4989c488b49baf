"""Retention: old decisions and rewards move from the live event log to the Parquet archive.

Without it the live log only grows (about 1.1 KB per rewarded decision). With
``BANDITREC_RETENTION_SECONDS`` set, one process per log (the holder of the ``retention``
lease) runs `Retention.run` every ``retention_every_seconds``:

1. **Decisions** made more than the retention age ago whose reward window is over are
   written to a new Parquet file of the archive (`banditrec.archive.ArchiveWriter`) with
   their reward totals, states and user ids, and then removed from the live log. "Over"
   means rewarded with the window closed (under aggregation ``sum`` a later reward could
   still change the total until then), or defaulted. A pending decision is never removed:
   its default reward is still due. A deferred decision that was never activated is removed
   once older than the retention age, archived with state ``inactive``: a client that
   activates or rewards it later gets 404, as for any unknown event. So keep the retention
   age above the longest time between a deferred decision and its activation.
2. **Rewards** received more than the retention age ago are archived and removed the same
   way (each reward as received, duplicates, late and unknown ones included).
3. **Learn events** appended more than the retention age ago are removed up to the oldest
   snapshot of the current epoch kept for this log (not included): recovery starts from a
   snapshot and replays only the events after it, and it checks the event at the
   snapshot's offset, so that one stays. Without a snapshot nothing is trimmed.

Each step works in batches of `Retention.batch`: the read is on a thread of its own, the
Parquet file is written and fsynced, and only then is the batch removed, through the
engine's writer thread (`Engine.write`) like a default-reward batch, so decisions wait for
one batch at most. Write first, delete after: a crash in between leaves the batch both in
the archive and in the live log, and the next run archives it again; the archive reader
keeps one copy per event id, so nothing is ever lost or counted twice. The removal checks
each decision's state again, so a deferred decision activated meanwhile stays live; it is
archived again once its window is over, and the reader prefers that final copy.

`forget_user` serves privacy requests: it removes a user's decisions and their rewards from
the live log and from every archive file, holding the retention lease meanwhile so that no
file is written behind its back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

from banditrec.archive import Archive, ArchiveWriter
from banditrec.config import Settings
from banditrec.engine import Engine
from banditrec.features import FeatureSchema
from banditrec.snapshot_store import SnapshotStore
from banditrec.store import EventStore, StoreUnavailableError

__all__ = ["LEASE", "Forgotten", "Retention", "RetentionRun", "forget_user", "retention_of"]

logger = logging.getLogger("banditrec.retention")

#: The lease of the one process per log that moves old events to the archive.
LEASE = "retention"

T = TypeVar("T")


class RetentionRun(NamedTuple):
    """What one run of `Retention.run` removed from the live log (and archived)."""

    decisions: int
    rewards: int
    learn_events: int


@dataclass
class Retention:
    """Moves what is older than `retention_seconds` from `store` to `archive_dir`.

    Parameters
    ----------
    store
        The live event log.
    snapshots
        Where this log's snapshots are: learn events are trimmed only up to them.
    schema
        The feature schema (its encoding hash marks the archive's files).
    archive_dir
        The archive's directory (created when first written).
    retention_seconds
        The age after which decisions and rewards leave the live log.
    every_seconds
        How often the learner calls `run`.
    batch
        Decisions (and rewards) per Parquet file and per removal: 1,000 take a few
        milliseconds to remove, the longest a decision waits behind retention.
    lease_seconds
        The retention lease's time to live; renewed after every batch.
    """

    store: EventStore
    snapshots: SnapshotStore
    schema: FeatureSchema
    archive_dir: Path
    retention_seconds: float
    every_seconds: float = 60.0
    batch: int = 1000
    lease_seconds: float = 30.0

    def __post_init__(self) -> None:
        self._writer: ArchiveWriter | None = None
        self._base: tuple[str, int] | None = None  # the current epoch: base version, offset

    @property
    def writer(self) -> ArchiveWriter:
        if self._writer is None:  # created on first use: no directory without retention
            self._writer = ArchiveWriter(self.archive_dir, self.schema.encoding_hash)
        return self._writer

    async def run(self, engine: Engine, owner: str) -> RetentionRun | None:
        """Archive and remove everything due now, in batches; None if another process
        holds the retention lease (it does the work)."""
        if not await self._lease(owner):
            return None
        try:
            now = engine.clock()
            before = now - self.retention_seconds
            decisions = await self._decisions(engine, owner, before, now)
            rewards = await self._rewards(engine, owner, before)
            learn_events = await self._learn_events(engine, owner, before)
        finally:
            await _off_loop(self.store.release_lease, LEASE, owner)
        done = RetentionRun(decisions, rewards, learn_events)
        if any(done):
            logger.info(
                "Retention archived and removed %d decisions and %d rewards to %s, and "
                "trimmed %d learn events.",
                decisions,
                rewards,
                self.archive_dir,
                learn_events,
            )
        return done

    async def _lease(self, owner: str) -> bool:
        return await _off_loop(
            self.store.acquire_lease, LEASE, owner, time.time(), self.lease_seconds
        )

    async def _decisions(self, engine: Engine, owner: str, before: float, now: float) -> int:
        removed = 0
        while True:
            rows = await _off_loop(self.store.retirable_decisions, before, now, self.batch)
            if not rows:
                return removed
            archived = [(r.record, r.reward_total, r.state, r.record.user_id) for r in rows]
            await _off_loop(self.writer.write_decisions, archived)  # first written...
            pairs = [(r.record.event_id, r.state) for r in rows]
            removed += await engine.write(self.store.delete_decisions, pairs)  # ...then gone
            if len(rows) < self.batch or not await self._lease(owner):
                return removed
            await asyncio.sleep(0)  # the decisions that arrived meanwhile go first

    async def _rewards(self, engine: Engine, owner: str, before: float) -> int:
        removed = 0
        while True:
            rows = await _off_loop(self.store.retirable_rewards, before, self.batch)
            if not rows:
                return removed
            archived = [(r.event_id, r.received_at, r.value, r.outcome) for r in rows]
            await _off_loop(self.writer.write_rewards, archived)
            removed += await engine.write(self.store.delete_rewards, [r.key for r in rows])
            if len(rows) < self.batch or not await self._lease(owner):
                return removed
            await asyncio.sleep(0)

    async def _learn_events(self, engine: Engine, owner: str, before: float) -> int:
        keep_from = await self._oldest_snapshot_offset(engine)
        if keep_from is None or keep_from <= 1:
            return 0
        removed = 0
        batch = 10 * self.batch  # learn events are small and removed by key range
        while True:
            n = await engine.write(self.store.trim_learn_events, keep_from - 1, before, batch)
            removed += n
            if n < batch or not await self._lease(owner):
                return removed
            await asyncio.sleep(0)

    async def _oldest_snapshot_offset(self, engine: Engine) -> int | None:
        """The offset of the oldest snapshot of this log's current epoch, None if none."""
        version = engine.model.version
        if self._base is None or self._base[0] != version:
            self._base = version, await engine.write(self.store.epoch_offset, version)
        base_offset = self._base[1]
        log_id = self.store.log_id()

        def offsets() -> list[int]:
            return [
                model.log_offset
                for _, model in self.snapshots.candidates(self.schema, version, base_offset)
                if model.log_id == log_id
            ]

        found = await _off_loop(offsets)
        # The oldest, not the newest: recovery falls back to an older snapshot when the
        # newest cannot be read, and it needs the events after that one too.
        return min(found) if found else None


async def _off_loop(fn: Callable[..., T], *args: object) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class Forgotten(NamedTuple):
    """What `forget_user` removed: decisions in the live log and in the archive."""

    live: int
    archive: int


def forget_user(
    store: EventStore,
    archive_dir: Path,
    user_id: str,
    *,
    encoding_hash: str,
    wait_seconds: float = 30.0,
    lease_seconds: float = 60.0,
) -> Forgotten:
    """Remove every decision of `user_id`, and their rewards, from the live log and the
    archive; return how many decisions went from each.

    Holds the retention lease meanwhile (waiting up to `wait_seconds` for a running
    retention to finish its run), so that no decision of the user is archived between the
    two removals. The model keeps what it learned from those decisions: it holds sums over
    all users, not the decisions themselves.

    Raises
    ------
    StoreUnavailableError
        When the retention lease did not come free in time (retry), or the store cannot be
        reached.
    """
    owner = f"forget-user-{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_seconds
    while not store.acquire_lease(LEASE, owner, time.time(), lease_seconds):
        if time.monotonic() > deadline:
            raise StoreUnavailableError(
                f"The retention job has held its lease for over {wait_seconds:g} s, so the "
                f"user {user_id!r} cannot be forgotten now; nothing was removed. Try again."
            )
        time.sleep(0.1)
    try:
        live = store.forget_user(user_id)
        archived = 0
        if Path(archive_dir).is_dir():
            archive = Archive(archive_dir, encoding_hash)
            archived = archive.delete_user(user_id, also_rewards_of=live)
    finally:
        store.release_lease(LEASE, owner)
    logger.info(
        "Forgot user %r: %d decisions removed from the live log, %d from the archive %s.",
        user_id,
        len(live),
        archived,
        archive_dir,
    )
    return Forgotten(len(live), archived)


def retention_of(
    settings: Settings, store: EventStore, snapshots: SnapshotStore
) -> Retention | None:
    """The retention job the settings ask for, or None (``retention_seconds`` unset)."""
    if settings.retention_seconds is None:
        return None
    return Retention(
        store,
        snapshots,
        settings.feature_schema,
        settings.archive_dir,
        settings.retention_seconds,
        every_seconds=settings.retention_every_seconds,
    )
