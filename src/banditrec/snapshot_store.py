"""Where snapshots are kept: a directory (one host) or the shared event store (replicas).

A snapshot is a model file (`banditrec.snapshot`) written at some log offset; recovery
loads the newest one that belongs to the log and replays the learn events after it. On one
host the workers share a directory. Replicas on several hosts share nothing but the event
store, so there the snapshots live in the store itself (`SharedStore`): a replica that starts
late catches up from the newest snapshot plus the tail, not from the whole log.

`snapshot_store_for` is the one place that picks the kind from the event store.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from banditrec.features import FeatureSchema
from banditrec.snapshot import Model, ModelFileError, load_model, model_bytes, save_model
from banditrec.snapshot import remove_stale_temp_files as _remove_stale_temp_files
from banditrec.store import EventStore

__all__ = [
    "SharedSnapshots",
    "SnapshotDirectory",
    "SnapshotStore",
    "SnapshotsInStore",
    "snapshot_store_for",
]

logger = logging.getLogger("banditrec.snapshots")

_SNAPSHOT_NAME = re.compile(r"^model-(\d{12})\.npz$")


class SnapshotStore(Protocol):
    """What recovery and the learner need from wherever snapshots are kept."""

    #: Where the snapshots are, for messages.
    where: str

    def save(self, model: Model) -> str:
        """Write a snapshot of `model` atomically; return where it is (a path, or a name)."""
        ...

    def candidates(
        self, schema: FeatureSchema, base_version: str, min_offset: int
    ) -> Iterator[tuple[str, Model]]:
        """The snapshots of `base_version` at or after `min_offset` that load, newest
        first, by name."""
        ...

    def set_aside(self, name: str) -> None:
        """Never offer the snapshot `name` again (it belongs to another log)."""
        ...

    def remove_stale(self) -> None:
        """Remove what interrupted writes left behind."""
        ...


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
        self.where = str(self.directory)

    def paths(self) -> list[Path]:
        """Snapshot files, newest (highest offset) first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if _SNAPSHOT_NAME.match(p.name)]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def save(self, model: Model) -> str:
        path = self.directory / f"model-{model.log_offset:012d}.npz"
        save_model(model, path)
        for old in self.paths()[self.keep :]:
            old.unlink(missing_ok=True)
        return str(path)

    def candidates(
        self, schema: FeatureSchema, base_version: str, min_offset: int
    ) -> Iterator[tuple[str, Model]]:
        # A corrupt or truncated file is reported and skipped: the previous snapshot (or a
        # full replay from the base model) takes its place, so a bad file costs time, not data.
        for path in self.paths():
            try:
                model = load_model(path, schema)
            except ModelFileError as exc:
                logger.error("Skipping an unusable snapshot: %s", exc)
                continue
            if model.version == base_version and model.log_offset >= min_offset:
                yield path.name, model

    def set_aside(self, name: str) -> None:
        """Rename a snapshot to ``rejected-<name>``.

        It is kept for the operator, but never loaded again, and no longer counts among the
        newest: left in place, a foreign snapshot of a higher offset would take the place of
        this log's own ones when old snapshots are removed.
        """
        path = self.directory / name
        try:
            path.replace(path.with_name(f"rejected-{name}"))
        except FileNotFoundError:  # another worker starting beside us moved it first
            pass
        except OSError as exc:
            logger.warning("Could not set aside the snapshot %s: %s", path, exc)

    def remove_stale(self) -> None:
        _remove_stale_temp_files(self.directory)


@runtime_checkable
class SnapshotsInStore(Protocol):
    """An event store that keeps snapshots itself (the Redis one)."""

    def put_snapshot(self, offset: int, data: bytes) -> None: ...

    def snapshots(self) -> list[tuple[int, bytes]]: ...


class SharedSnapshots:
    """Snapshots kept in the event store, so every replica on every host sees them.

    The store keeps the newest few; a write is one atomic command, so there is nothing for
    a crash to leave behind.
    """

    def __init__(self, store: SnapshotsInStore, where: str = "the event store") -> None:
        self.store = store
        self.where = where
        self._set_aside: set[int] = set()

    def save(self, model: Model) -> str:
        self.store.put_snapshot(model.log_offset, model_bytes(model))
        return _name(model.log_offset)

    def candidates(
        self, schema: FeatureSchema, base_version: str, min_offset: int
    ) -> Iterator[tuple[str, Model]]:
        for offset, data in self.store.snapshots():
            if offset in self._set_aside:
                continue
            try:
                model = load_model(_name(offset), schema, data)
            except ModelFileError as exc:
                logger.error("Skipping an unusable snapshot: %s", exc)
                continue
            if model.version == base_version and model.log_offset >= min_offset:
                yield _name(offset), model

    def set_aside(self, name: str) -> None:
        # The snapshots live with the log they summarise, so one that does not belong can
        # only come from a store restored from pieces of different ages: skip it here.
        self._set_aside.add(int(name.removeprefix("snapshot-")))

    def remove_stale(self) -> None:
        return None


def snapshot_store_for(store: EventStore, directory: str | Path) -> SnapshotStore:
    """The store's own snapshots where it keeps them (shared by replicas), else `directory`."""
    if isinstance(store, SnapshotsInStore):
        return SharedSnapshots(store)
    return SnapshotDirectory(directory)


def _name(offset: int) -> str:
    return f"snapshot-{offset:012d}"
