"""Keeping a serving model current: recovery at start, then tail the log and snapshot.

A model is a snapshot plus the learn events after the snapshot's log offset (DESIGN
principle 2). At start a process loads the newest valid snapshot of its base model (or the
base model itself) and replays the tail of the learn stream; while serving it applies new
learn events every `poll_interval` seconds (rewards posted to any worker reach every worker),
applies default rewards to decisions whose window closed, and, if it holds the snapshot
lease, writes a snapshot every N learn events or T seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from banditrec.engine import Engine
from banditrec.features import FeatureSchema
from banditrec.metrics import Metrics
from banditrec.snapshot import Model, ModelFileError, load_model, save_model
from banditrec.store.sqlite import SQLiteEventStore

__all__ = ["Learner", "SnapshotDirectory", "recover_model"]

logger = logging.getLogger("banditrec.learner")

_SNAPSHOT_NAME = re.compile(r"^model-(\d{12})\.npz$")


class SnapshotDirectory:
    """Snapshot files ``model-<log offset>.npz`` in one directory, newest kept.

    Examples
    --------
    >>> import tempfile
    >>> SnapshotDirectory(tempfile.mkdtemp()).paths()
    []
    """

    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def paths(self) -> list[Path]:
        """Snapshot files, newest (highest offset) first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if _SNAPSHOT_NAME.match(p.name)]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def save(self, model: Model) -> Path:
        path = self.directory / f"model-{model.log_offset:012d}.npz"
        save_model(model, path)
        for old in self.paths()[self.keep :]:
            old.unlink(missing_ok=True)
        return path

    def load_newest(
        self, schema: FeatureSchema, base_version: str, min_offset: int
    ) -> Model | None:
        """The newest snapshot of `base_version` at or after `min_offset` that loads cleanly.

        A corrupt or truncated file is reported and skipped: the previous snapshot (or a full
        replay from the base model) takes its place, so a bad file costs time, not data.
        """
        for path in self.paths():
            try:
                model = load_model(path, schema)
            except ModelFileError as exc:
                logger.error("Skipping an unusable snapshot: %s", exc)
                continue
            if model.version == base_version and model.log_offset >= min_offset:
                return model
        return None


def recover_model(
    base: Model, store: SQLiteEventStore, snapshots: SnapshotDirectory
) -> tuple[Model, str]:
    """The model to start from (before replaying the log tail) and where it came from."""
    base_offset = store.epoch_offset(base.version)
    snapshot = snapshots.load_newest(base.schema, base.version, base_offset)
    if snapshot is not None:
        return snapshot, f"snapshot at offset {snapshot.log_offset}"
    base.log_offset = base_offset
    return base, f"base model {base.version} (epoch from offset {base_offset})"


@dataclass
class Learner:
    """The background loop of one serving process."""

    engine: Engine
    store: SQLiteEventStore
    snapshots: SnapshotDirectory
    poll_interval: float = 0.05
    default_sweep_interval: float = 1.0
    snapshot_every_events: int = 10_000
    snapshot_every_seconds: float = 300.0
    owner: str = ""
    metrics: Metrics | None = None

    def __post_init__(self) -> None:
        self.owner = self.owner or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._last_sweep = 0.0
        self._last_snapshot_time = time.monotonic()
        self._last_snapshot_offset = self.engine.applied_offset

    async def run(self) -> None:
        """Forever: apply new learn events, default rewards, snapshots. Cancel to stop."""
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep serving; the next step retries
                logger.exception("The learner step failed; retrying.")
            await asyncio.sleep(self.poll_interval)

    async def step(self) -> None:
        self.engine.catch_up()
        now = time.monotonic()
        if now - self._last_sweep >= self.default_sweep_interval:
            self._last_sweep = now
            by_action = await self.engine.apply_default_rewards()
            for action, n in by_action.items():
                if self.metrics is not None:
                    self.metrics.default_reward(action, n)
            if by_action:
                n = sum(by_action.values())
                logger.info("Applied the default reward to %d expired decisions.", n)
        if self._snapshot_due(now) and self._hold_lease():
            await asyncio.get_running_loop().run_in_executor(None, self.snapshot)

    def _snapshot_due(self, now: float) -> bool:
        new_events = self.engine.applied_offset - self._last_snapshot_offset
        if new_events <= 0:
            return False
        return (
            new_events >= self.snapshot_every_events
            or now - self._last_snapshot_time >= self.snapshot_every_seconds
        )

    def _hold_lease(self) -> bool:
        # One snapshot writer per database; the lease lapses if its holder dies.
        ttl = max(3 * self.snapshot_every_seconds, 60.0)
        return self.store.acquire_lease("snapshot", self.owner, time.time(), ttl)

    def snapshot(self) -> Path:
        """Write a snapshot of the live model now (atomically) and return its path."""
        model = self.engine.snapshot_model()
        path = self.snapshots.save(model)
        self._last_snapshot_time = time.monotonic()
        self._last_snapshot_offset = model.log_offset
        logger.info("Snapshot %s written (offset %d).", path.name, model.log_offset)
        return path
