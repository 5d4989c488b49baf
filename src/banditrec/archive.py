"""The archive of the event log: Parquet files that old decisions and rewards move to.

Retention moves decisions and rewards out of the live store into this archive, ``banditrec
export`` writes any range of the log to it, and evaluation reads it beside the live log
(`banditrec.evaluation.data.load_event_log`). Anyone can read it with pyarrow, pandas, DuckDB or
Spark: the layout below is the contract.

Layout, version 1
-----------------
One directory of Parquet files, written atomically (a hidden temporary file, fsynced, renamed
into place, directory fsynced): a file is either absent or complete. Names sort by time::

    decisions-<first created_at>-<last created_at>-<uuid>.parquet
    rewards-<first received_at>-<last received_at>-<uuid>.parquet

with times in UTC as ``YYYYmmddTHHMMSS.ffffffZ`` (the first rounded down and the last rounded
up, by one microsecond more, so the name's range always holds the file's rows). Each file's
key-value metadata holds ``banditrec.archive_layout`` ("1"), ``banditrec.table``
("decisions" or "rewards") and ``banditrec.encoding_hash``: the feature schema's encoding
hash, which fixes the length and meaning of ``x``. Reading under another encoding is refused.

Decisions (one row per logged decision, in log order within a file; see `DECISION_SCHEMA`):
``event_id``, ``created_at`` (Unix seconds), ``model_version``, ``context`` (the request's
context as JSON text), ``x`` (list<float64>, the feature vector), ``actions`` (the action
names ``probabilities`` and ``scores`` are aligned with), ``eligible``, ``action_index``,
``action``, ``probability``, ``probabilities``, ``scores`` (list<float64>), ``deferred``,
``user_id`` (nullable), ``reward_total`` (nullable: the reward learned, none yet or never),
``state`` (inactive | pending | rewarded | defaulted; null when the exporter's source did not
say). Float vectors are stored as float64 values, so they read back bit for bit.

Rewards (every reward received, see `REWARD_SCHEMA`): ``event_id``, ``received_at``,
``value``, ``outcome`` (a `banditrec.store.RewardOutcome`).
"""

from __future__ import annotations

import math
import os
import re
import uuid
from collections.abc import Collection, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from banditrec.store import DecisionRecord

__all__ = [
    "ARCHIVE_LAYOUT",
    "DECISION_SCHEMA",
    "REWARD_SCHEMA",
    "Archive",
    "ArchiveError",
    "ArchiveWriter",
    "ArchivedDecision",
    "ArchivedReward",
    "Exported",
    "export_log",
]

ARCHIVE_LAYOUT = "1"
_LAYOUT_KEY, _TABLE_KEY, _HASH_KEY = (
    b"banditrec.archive_layout",
    b"banditrec.table",
    b"banditrec.encoding_hash",
)
STATES = ("inactive", "pending", "rewarded", "defaulted")
#: Which copy of a decision archived twice is read: the highest (see `iter_decision_rows`).
_FINALITY = {"rewarded": 2, "defaulted": 2, "pending": 1}

DECISION_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("created_at", pa.float64(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("context", pa.string(), nullable=False),
        pa.field("x", pa.list_(pa.float64()), nullable=False),
        pa.field("actions", pa.list_(pa.string()), nullable=False),
        pa.field("eligible", pa.list_(pa.string()), nullable=False),
        pa.field("action_index", pa.int32(), nullable=False),
        pa.field("action", pa.string(), nullable=False),
        pa.field("probability", pa.float64(), nullable=False),
        pa.field("probabilities", pa.list_(pa.float64()), nullable=False),
        pa.field("scores", pa.list_(pa.float64()), nullable=False),
        pa.field("deferred", pa.bool_(), nullable=False),
        pa.field("user_id", pa.string()),
        pa.field("reward_total", pa.float64()),
        pa.field("state", pa.string()),
    ]
)
REWARD_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("received_at", pa.float64(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("outcome", pa.string(), nullable=False),
    ]
)
_SCHEMAS = {"decisions": DECISION_SCHEMA, "rewards": REWARD_SCHEMA}
_TIME = r"\d{8}T\d{6}\.\d{6}Z"
_NAME = re.compile(rf"^(decisions|rewards)-({_TIME})-({_TIME})-[0-9a-f]{{32}}\.parquet$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_TIME = 253_402_300_799.0  # 9999-12-31T23:59:59Z: the last time a name can hold


class ArchiveError(RuntimeError):
    """The archive cannot be written or read as asked."""


class ArchivedDecision(NamedTuple):
    """A decision as archived: the record, its reward total, its state and whose it is."""

    record: DecisionRecord
    reward_total: float | None
    state: str | None
    user_id: str | None


class ArchivedReward(NamedTuple):
    """A reward as received (every one, including duplicates, late and unknown ones)."""

    event_id: str
    received_at: float
    value: float
    outcome: str


class ArchiveWriter:
    """Writes decisions and rewards to Parquet files in `directory` (created if missing).

    Parameters
    ----------
    directory
        The archive's directory.
    encoding_hash
        `FeatureSchema.encoding_hash` of the schema the decisions' vectors were made with.
    batch_size
        Rows per Parquet row group: memory use while writing is about one group.
    """

    def __init__(self, directory: str | Path, encoding_hash: str, batch_size: int = 10_000):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.encoding_hash = encoding_hash
        self.batch_size = batch_size

    def write_decisions(
        self, rows: Iterable[tuple[DecisionRecord, float | None, str | None, str | None]]
    ) -> Path | None:
        """Write (record, reward total, state, user id) rows to one new file, in order.

        The user id is the row's, or else the record's. Returns the file, or None when there
        were no rows (no file is written). On any error nothing is left behind.
        """
        return self._write("decisions", _decision_batches(rows, self.batch_size))

    def write_rewards(self, rows: Iterable[tuple[str, float, float, str]]) -> Path | None:
        """Write (event id, received at, value, outcome) rows to one new file, in order."""
        return self._write("rewards", _reward_batches(rows, self.batch_size))

    def _write(
        self, table: str, batches: Iterator[tuple[pa.RecordBatch, float, float]]
    ) -> Path | None:
        schema = _SCHEMAS[table].with_metadata(
            {_LAYOUT_KEY: ARCHIVE_LAYOUT, _TABLE_KEY: table, _HASH_KEY: self.encoding_hash}
        )
        first, last = math.inf, -math.inf
        token = uuid.uuid4().hex
        temporary = self.directory / f".{table}-{token}.parquet.tmp"  # hidden: not a file yet
        try:
            with open(temporary, "wb") as sink:
                with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
                    for batch, low, high in batches:
                        writer.write_batch(batch.replace_schema_metadata(schema.metadata))
                        first, last = min(first, low), max(last, high)
                sink.flush()
                os.fsync(sink.fileno())
            if first > last:  # no rows
                temporary.unlink()
                return None
            name = f"{table}-{_name_time(first, -1)}-{_name_time(last, 1)}-{token}.parquet"
            path = self.directory / name
            _publish(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return path


class Archive:
    """Reads (and deletes users from) an archive directory written by `ArchiveWriter`.

    Parameters
    ----------
    directory
        The archive's directory; it must exist.
    encoding_hash
        When given, files written under another feature encoding are refused; when not, all
        files must share one encoding.
    """

    def __init__(self, directory: str | Path, encoding_hash: str | None = None) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ArchiveError(f"The archive directory {self.directory} does not exist.")
        self.encoding_hash = encoding_hash

    def files(self, table: str = "decisions") -> list[Path]:
        """The archive's complete files of `table`, in name order (by time)."""
        return sorted(
            p
            for p in self.directory.iterdir()
            if (m := _NAME.match(p.name)) is not None and m.group(1) == table
        )

    def count_decisions(self) -> int:
        """Rows in the decision files (an upper bound of distinct decisions)."""
        total = 0
        for path in self.files("decisions"):
            with self._open(path, "decisions") as file:
                total += file.metadata.num_rows
        return total

    def size_bytes(self) -> int:
        """Bytes on disk of the directory's files, leftovers of interrupted writes included."""
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())

    def iter_decisions(
        self, start: float | None = None, end: float | None = None, *, batch_size: int = 10_000
    ) -> Iterator[tuple[DecisionRecord, Any]]:
        """Decisions with ``start <= created_at < end`` and their reward totals, like
        `banditrec.store.EventStore.iter_decisions`; each event id once (see
        `iter_decision_rows` for which copy).

        Files are read in name order, rows in file order: the log's order when the files
        were written by retention, oldest first.
        """
        for row in self.iter_decision_rows(start, end, batch_size=batch_size):
            yield row.record, row.reward_total

    def iter_decision_rows(
        self, start: float | None = None, end: float | None = None, *, batch_size: int = 10_000
    ) -> Iterator[ArchivedDecision]:
        """Like `iter_decisions`, with each decision's state and user id.

        An event id archived more than once (retention that crashed between writing and
        deleting, or a deferred decision activated while retention archived it and archived
        again once rewarded) is read once: the copy whose state is the most final
        (rewarded or defaulted, then pending, then inactive or unknown), the first of those.
        Finding it reads the ``event_id`` and ``state`` columns of every file first.
        """
        chosen = self._chosen_copies(start, end, batch_size)
        for index, path in enumerate(self._files_between("decisions", start, end)):
            position = 0
            with self._open(path, "decisions") as file:
                for batch in file.iter_batches(batch_size=batch_size):
                    ids = batch.column("event_id").to_pylist()
                    wanted = [
                        i for i, event_id in enumerate(ids)
                        if chosen.get(event_id) == (index, position + i)
                    ]  # fmt: skip
                    position += batch.num_rows
                    if wanted:
                        yield from _decisions_of(batch.take(wanted), start, end)

    def _chosen_copies(
        self, start: float | None, end: float | None, batch_size: int
    ) -> dict[str, tuple[int, int]]:
        """Event id -> (file index, row) of the copy `iter_decision_rows` reads."""
        best: dict[str, tuple[int, int, int]] = {}  # id -> (-finality, file, row)
        for index, path in enumerate(self._files_between("decisions", start, end)):
            position = 0
            with self._open(path, "decisions") as file:
                columns = ["event_id", "state", "created_at", "reward_total"]
                for batch in file.iter_batches(batch_size=batch_size, columns=columns):
                    data = batch.to_pydict()
                    for i, (event_id, state, created_at, total) in enumerate(
                        zip(*(data[c] for c in columns), strict=True)
                    ):
                        if not _within(created_at, start, end):
                            continue
                        # No state (an export that could not tell) but a total: final too.
                        final = (
                            2 if state is None and total is not None else _FINALITY.get(state, 0)
                        )
                        key = (-final, index, position + i)
                        if event_id not in best or key < best[event_id]:
                            best[event_id] = key
                    position += batch.num_rows
        return {event_id: (key[1], key[2]) for event_id, key in best.items()}

    def iter_rewards(
        self, start: float | None = None, end: float | None = None, *, batch_size: int = 10_000
    ) -> Iterator[ArchivedReward]:
        """Rewards with ``start <= received_at < end``, in file order."""
        for path in self._files_between("rewards", start, end):
            with self._open(path, "rewards") as file:
                for batch in file.iter_batches(batch_size=batch_size):
                    columns = batch.to_pydict()
                    for event_id, received_at, value, outcome in zip(
                        columns["event_id"], columns["received_at"], columns["value"],
                        columns["outcome"], strict=True,
                    ):  # fmt: skip
                        if _within(received_at, start, end):
                            yield ArchivedReward(event_id, received_at, value, outcome)

    def delete_user(self, user_id: str, also_rewards_of: Collection[str] = ()) -> int:
        """Remove a user's decisions, and the rewards of those decisions, from every file.

        `also_rewards_of` names more decisions whose archived rewards go too: the user's
        decisions just removed from the live log, whose rewards may have been archived
        before them (rewards are archived by the time they were received).

        Each affected file is rewritten without those rows and atomically replaced (or removed
        when nothing is left), so a reader sees the file before or after, never a part.
        Returns the number of decisions removed. Files written while this runs are not
        looked at: hold off retention (its lease) meanwhile.
        """
        removed_ids: set[str] = set()
        for path in self.files("decisions"):
            with self._open(path, "decisions") as file:
                users = file.read(columns=["user_id"])["user_id"]  # most files: not affected
                if not pc.any(pc.fill_null(pc.equal(users, user_id), False)).as_py():
                    continue
                table = file.read()
            mine = pc.fill_null(pc.equal(table["user_id"], user_id), False)
            removed_ids.update(table.filter(mine)["event_id"].to_pylist())
            self._rewrite(path, table.filter(pc.invert(mine)))
        reward_ids = removed_ids | set(also_rewards_of)
        if reward_ids:
            wanted = pa.array(sorted(reward_ids), pa.string())
            for path in self.files("rewards"):
                with self._open(path, "rewards") as file:
                    table = file.read()
                theirs = pc.is_in(table["event_id"], value_set=wanted)
                if pc.any(theirs).as_py():
                    self._rewrite(path, table.filter(pc.invert(theirs)))
        return len(removed_ids)

    def _rewrite(self, path: Path, table: pa.Table) -> None:
        if table.num_rows == 0:
            path.unlink()
            _fsync_directory(path.parent)
            return
        temporary = path.with_name(f".{path.stem}-{uuid.uuid4().hex}.parquet.tmp")
        try:
            with open(temporary, "wb") as sink:
                pq.write_table(table, sink, compression="zstd", row_group_size=10_000)
                sink.flush()
                os.fsync(sink.fileno())
            _publish(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def _files_between(self, table: str, start: float | None, end: float | None) -> list[Path]:
        chosen = []
        for path in self.files(table):
            match = _NAME.match(path.name)
            assert match is not None
            low, high = _parse_time(match.group(2)), _parse_time(match.group(3))
            if (start is None or high >= start) and (end is None or low < end):
                chosen.append(path)
        return chosen

    def _open(self, path: Path, table: str) -> pq.ParquetFile:
        file = pq.ParquetFile(path)
        try:
            self._check(path, table, file.schema_arrow.metadata or {})
        except BaseException:
            file.close()
            raise
        return file

    def _check(self, path: Path, table: str, meta: dict[bytes, bytes]) -> None:
        layout = meta.get(_LAYOUT_KEY, b"?").decode()
        if layout != ARCHIVE_LAYOUT:
            raise ArchiveError(
                f"The archive file {path} has layout version {layout}; this banditrec reads "
                f"version {ARCHIVE_LAYOUT}. Read it with the banditrec version that wrote it."
            )
        if meta.get(_TABLE_KEY, b"").decode() != table:
            raise ArchiveError(f"The archive file {path} does not hold {table}.")
        found = meta.get(_HASH_KEY, b"").decode()
        if self.encoding_hash is None:
            self.encoding_hash = found  # the first file read fixes it for the others
        elif found != self.encoding_hash:
            raise ArchiveError(
                f"The archive file {path} was written under feature encoding {found[:12]}…, "
                f"not under {self.encoding_hash[:12]}… (the configured schema); read it with "
                "the schema it was written with."
            )


class Exported(NamedTuple):
    """What `export_log` wrote."""

    files: list[Path]
    decisions: int
    rewards: int


def export_log(
    source: Any,
    directory: str | Path,
    start: float | None = None,
    end: float | None = None,
    *,
    encoding_hash: str,
) -> Exported:
    """Write the decisions with ``start <= created_at < end`` of a log to Parquet files.

    `source` is anything with ``iter_decision_rows()`` (an `Archive`, the read-only SQLite
    reader `banditrec.store.sqlite_reader.ReadOnlyEventLog`: states and user ids are kept) or
    ``iter_decisions()`` (any `banditrec.store.EventStore`), or an iterable of their rows.
    From (record, reward total) pairs the state is kept where it follows (inactive, pending)
    and left null where it does not (rewarded or defaulted). When `source` has
    ``iter_rewards()``, the rewards received in the range are written too.
    """
    writer = ArchiveWriter(directory, encoding_hash)
    if isinstance(source, Archive):  # its files outside the range need not be read
        rows: Iterable[Any] = source.iter_decision_rows(start, end)
    elif hasattr(source, "iter_decision_rows"):
        rows = source.iter_decision_rows()
    elif hasattr(source, "iter_decisions"):
        rows = source.iter_decisions()
    else:
        rows = source
    counted = [0, 0]

    def decisions() -> Iterator[tuple[DecisionRecord, float | None, str | None, str | None]]:
        for row in rows:
            record, total = row[0], row[1]
            if _within(record.created_at, start, end):
                counted[0] += 1
                if len(row) >= 4:
                    yield record, total, row[2], row[3]
                else:
                    yield record, total, _state_of(record, total), None

    files = [p for p in [writer.write_decisions(decisions())] if p is not None]
    if hasattr(source, "iter_rewards"):

        def rewards() -> Iterator[tuple[str, float, float, str]]:
            for event_id, received_at, value, outcome in source.iter_rewards():
                if _within(received_at, start, end):
                    counted[1] += 1
                    yield event_id, received_at, value, outcome

        files += [p for p in [writer.write_rewards(rewards())] if p is not None]
    return Exported(files, counted[0], counted[1])


def _state_of(record: DecisionRecord, total: float | None) -> str | None:
    if record.deferred:
        return "inactive"
    return "pending" if total is None else None  # rewarded or defaulted: cannot tell


# -- encoding ----------------------------------------------------------------------------


def _decision_batches(
    rows: Iterable[tuple[DecisionRecord, float | None, str | None, str | None]], size: int
) -> Iterator[tuple[pa.RecordBatch, float, float]]:
    chunk: list[tuple[DecisionRecord, float | None, str | None, str | None]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield _decision_batch(chunk)
            chunk = []
    if chunk:
        yield _decision_batch(chunk)


def _decision_batch(
    rows: list[tuple[DecisionRecord, float | None, str | None, str | None]],
) -> tuple[pa.RecordBatch, float, float]:
    records = [row[0] for row in rows]
    created = np.array([r.created_at for r in records], dtype=np.float64)
    if not np.all((created >= 0) & (created <= _MAX_TIME)):
        raise ArchiveError("A decision's created_at is not a time between 1970 and 9999.")
    states = [row[2] for row in rows]
    if any(s is not None and s not in STATES for s in states):
        raise ArchiveError(f"A decision's state is not one of {', '.join(STATES)}.")
    columns = {
        "event_id": [r.event_id for r in records],
        "created_at": created,
        "model_version": [r.model_version for r in records],
        "context": [orjson.dumps(r.context).decode() for r in records],
        "x": _float_lists([r.x for r in records]),
        "actions": [list(r.actions) for r in records],
        "eligible": [list(r.eligible) for r in records],
        "action_index": [r.action_index for r in records],
        "action": [r.action for r in records],
        "probability": [r.probability for r in records],
        "probabilities": _float_lists([r.probabilities for r in records]),
        "scores": _float_lists([r.scores for r in records]),
        "deferred": [r.deferred for r in records],
        "user_id": [row[3] if row[3] is not None else row[0].user_id for row in rows],
        "reward_total": [None if row[1] is None else float(row[1]) for row in rows],
        "state": states,
    }
    batch = pa.RecordBatch.from_pydict(columns, schema=DECISION_SCHEMA)
    return batch, float(created.min()), float(created.max())


def _reward_batches(
    rows: Iterable[tuple[str, float, float, str]], size: int
) -> Iterator[tuple[pa.RecordBatch, float, float]]:
    chunk: list[tuple[str, float, float, str]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield _reward_batch(chunk)
            chunk = []
    if chunk:
        yield _reward_batch(chunk)


def _reward_batch(
    rows: list[tuple[str, float, float, str]],
) -> tuple[pa.RecordBatch, float, float]:
    received = np.array([row[1] for row in rows], dtype=np.float64)
    if not np.all((received >= 0) & (received <= _MAX_TIME)):
        raise ArchiveError("A reward's received_at is not a time between 1970 and 9999.")
    columns = {
        "event_id": [row[0] for row in rows],
        "received_at": received,
        "value": [float(row[2]) for row in rows],
        "outcome": [str(row[3]) for row in rows],
    }
    batch = pa.RecordBatch.from_pydict(columns, schema=REWARD_SCHEMA)
    return batch, float(received.min()), float(received.max())


def _float_lists(vectors: list[Any]) -> pa.ListArray:
    # One flat float64 buffer and offsets: the bits go in as they are (no Python floats).
    lengths = np.array([len(v) for v in vectors], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int32)]).astype(np.int32)
    flat = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in vectors])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.float64()))


# -- decoding ----------------------------------------------------------------------------


def _decisions_of(
    batch: pa.RecordBatch, start: float | None, end: float | None
) -> Iterator[ArchivedDecision]:
    created = batch.column("created_at").to_numpy()
    keep = np.ones(len(created), dtype=bool)
    if start is not None:
        keep &= created >= start
    if end is not None:
        keep &= created < end
    if not keep.any():
        return
    vectors = {name: _vectors(batch.column(name)) for name in ("x", "probabilities", "scores")}
    names: dict[tuple[str, ...], tuple[str, ...]] = {}  # few distinct action lists: share them
    columns = {
        name: batch.column(name).to_pylist()
        for name in ("event_id", "model_version", "context", "actions", "eligible",
                     "action_index", "probability", "deferred", "user_id", "reward_total",
                     "state")
    }  # fmt: skip
    for i in np.flatnonzero(keep):
        actions = tuple(columns["actions"][i])
        eligible = tuple(columns["eligible"][i])
        user_id = columns["user_id"][i]
        record = DecisionRecord(
            event_id=columns["event_id"][i],
            created_at=float(created[i]),
            model_version=columns["model_version"][i],
            context=orjson.loads(columns["context"][i]),
            x=vectors["x"][i],
            actions=names.setdefault(actions, actions),
            eligible=names.setdefault(eligible, eligible),
            action_index=columns["action_index"][i],
            probability=columns["probability"][i],
            probabilities=vectors["probabilities"][i],
            scores=vectors["scores"][i],
            deferred=columns["deferred"][i],
            user_id=user_id,
        )
        yield ArchivedDecision(record, columns["reward_total"][i], columns["state"][i], user_id)


def _vectors(column: pa.ListArray) -> list[np.ndarray[Any, np.dtype[np.float64]]]:
    flat = column.values.to_numpy(zero_copy_only=False)
    flat.flags.writeable = False  # like the live store's vectors: shared, so read-only
    offsets = column.offsets.to_numpy()
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(column))]


# -- files and names ---------------------------------------------------------------------


def _within(value: float, start: float | None, end: float | None) -> bool:
    return (start is None or value >= start) and (end is None or value < end)


def _name_time(seconds: float, direction: int) -> str:
    # Rounded outwards by one more microsecond than needed: float rounding can never put a
    # row outside its file's named range, which readers use to skip files.
    micros = math.floor(seconds * 1e6) - 1 if direction < 0 else math.ceil(seconds * 1e6) + 1
    micros = min(max(micros, 0), int(_MAX_TIME * 1e6))
    return (_EPOCH + timedelta(microseconds=micros)).strftime("%Y%m%dT%H%M%S.%fZ")


def _parse_time(text: str) -> float:
    moment = datetime.strptime(text, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)
    return ((moment - _EPOCH) // timedelta(microseconds=1)) / 1e6


def _publish(temporary: Path, path: Path) -> None:
    os.replace(temporary, path)  # atomic: readers see the old file or the new, never a part
    _fsync_directory(path.parent)  # and the rename itself survives a power loss


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
