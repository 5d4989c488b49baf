"""Logged bandit data as CSV or Parquet: one row per decision with its action, propensity
and reward.

The layout is the seed's: the request fields, then `action` (its name), `propensity` (the
probability with which the logging policy chose it) and `reward`; extra columns are kept
but ignored. A file whose name ends in ``.parquet`` (or that starts with Parquet's magic
bytes) is Parquet; anything else is CSV.

Files are read as a stream of record batches (pyarrow's readers), each validated and
encoded on its own, so memory holds a batch, never the file: a file larger than RAM trains.
Every value is checked: a missing column, a non-numeric value, a NaN or an out-of-range
value is reported with the column and the first bad row of the file (row 1 is the first
data row), so a bad file is named precisely and never produces a model.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from banditrec.features import CategoricalField, Dictionary, FeatureSchema

if TYPE_CHECKING:  # pyarrow costs ~0.1 s to import: loaded when a file is read or written
    import pyarrow as pa

__all__ = [
    "LoggedData",
    "LoggedDataError",
    "Progress",
    "is_parquet",
    "iter_logged",
    "read_logged",
    "read_logged_csv",
    "write_logged",
    "write_logged_csv",
]

#: Called as ``progress(stage, done, total)`` while a long file is read, checked or written.
Progress = Callable[[str, int, int], None]

#: Rows written per pyarrow call: small enough for a smooth progress bar, large enough to
#: cost nothing (the bytes are the same as one call's: each row is formatted on its own).
WRITE_CHUNK_ROWS = 100_000

#: Bytes of CSV parsed per record batch (~10,000 rows of the seed's layout). pyarrow reads
#: a few dozen blocks ahead while batches are checked and learned, so this bounds memory:
#: ~25 MB in flight, whatever the size of the file; larger blocks are no faster.
READ_BLOCK_BYTES = 1 << 20

#: Rows per record batch read from a Parquet file.
PARQUET_BATCH_ROWS = 131_072

#: Columns every logged-data file has besides the schema's context fields.
LOG_COLUMNS = ("action", "propensity", "reward")

PARQUET_SUFFIXES = (".parquet", ".pq")
_PARQUET_MAGIC = b"PAR1"


class LoggedDataError(ValueError):
    """A logged-data file cannot be used; the message names the column and the row."""


@dataclass(frozen=True)
class LoggedData:
    """Validated logged rounds.

    Attributes
    ----------
    X : ndarray of shape (n_rounds, n_features)
        Feature vectors under the schema.
    action : ndarray of shape (n_rounds,)
        Index of the logged action in ``schema.actions``.
    propensity : ndarray of shape (n_rounds,)
        Probability with which the logging policy chose that action, in (0, 1].
    reward : ndarray of shape (n_rounds,)
        Observed reward.
    """

    X: NDArray[np.float64]
    action: NDArray[np.intp]
    propensity: NDArray[np.float64]
    reward: NDArray[np.float64]

    @property
    def n_rounds(self) -> int:
        return int(self.action.shape[0])

    def head(self, n: int) -> LoggedData:
        """The first `n` rounds."""
        return LoggedData(self.X[:n], self.action[:n], self.propensity[:n], self.reward[:n])


def is_parquet(path: str | Path) -> bool:
    """Whether `path` names a Parquet file: by its suffix, or by its first bytes."""
    path = Path(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == _PARQUET_MAGIC
    except OSError:
        return False


# -- writing ------------------------------------------------------------------------------


def write_logged(
    columns: Mapping[str, Any] | Iterator[Mapping[str, Any]],
    path: str | Path,
    progress: Progress | None = None,
    total_rows: int | None = None,
) -> None:
    """Write logged columns (name -> array) as CSV or Parquet (by suffix), atomically.

    `columns` is one mapping, or an iterator of mappings with the same columns (batches
    written as they come, so memory holds one batch); `total_rows` sizes the progress bar of
    an iterator. CSV floats are rounded to 6 decimals (a million rows near 100 MB);
    Parquet keeps every bit (zstd-compressed, categorical columns dictionary-encoded).
    """
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    path = Path(path)
    batches = iter([columns]) if isinstance(columns, Mapping) else columns
    parquet = path.suffix.lower() in PARQUET_SUFFIXES
    csv_options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    written = 0
    try:
        # CSV: two threads format chunks into bytes at once (pyarrow releases the GIL) while
        # this one draws the next batch and writes the bytes in order. Parquet: one thread
        # writes the chunks, in order. At most `_PENDING_CHUNKS` chunks wait in memory.
        with open(tmp, "wb") as f, ThreadPoolExecutor(1 if parquet else 2) as workers:
            parquet_writer: Any = None
            pending: deque[tuple[Future[pa.Buffer | None], int]] = deque()

            def settle(keep: int) -> None:
                nonlocal written
                while len(pending) > keep:
                    future, rows = pending.popleft()
                    data = future.result()
                    if data is not None:
                        f.write(data)
                    written += rows
                    if progress is not None:
                        progress("writing", written, max(total, written))

            for batch in batches:
                table = _to_table(batch, rounded=not parquet)
                total = total_rows or written + sum(n for _, n in pending) + table.num_rows
                if parquet and parquet_writer is None:
                    parquet_writer = pq.ParquetWriter(f, table.schema, compression="zstd")
                elif not parquet and written == 0 and not pending:  # pyarrow quotes headers
                    f.write((",".join(table.column_names) + "\n").encode())
                for start in range(0, table.num_rows, WRITE_CHUNK_ROWS):
                    chunk = table.slice(start, WRITE_CHUNK_ROWS)
                    if parquet_writer is not None:
                        job = workers.submit(_write_parquet, parquet_writer, chunk)
                    else:
                        job = workers.submit(_csv_bytes, chunk, csv_options)
                    pending.append((job, chunk.num_rows))
                    settle(_PENDING_CHUNKS)
            settle(0)
            if parquet_writer is not None:
                parquet_writer.close()
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a data file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: Chunks formatted or written ahead of the file (see `write_logged`).
_PENDING_CHUNKS = 4


def _csv_bytes(table: pa.Table, options: Any) -> pa.Buffer:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    sink = pa.BufferOutputStream()
    pa_csv.write_csv(table, sink, options)
    return sink.getvalue()


def _write_parquet(writer: Any, table: pa.Table) -> None:
    writer.write_table(table)


def write_logged_csv(
    columns: Mapping[str, NDArray[Any]], path: str | Path, progress: Progress | None = None
) -> None:
    """Write columns (name -> array) as CSV, atomically (temp file + rename)."""
    write_logged(columns, path, progress)


def _to_table(columns: Mapping[str, Any], *, rounded: bool) -> pa.Table:
    import pyarrow as pa

    arrays: dict[str, Any] = {}
    for name, value in columns.items():
        if isinstance(value, Dictionary):
            arrays[name] = pa.DictionaryArray.from_arrays(
                _arrow_array(np.asarray(value.codes, dtype=np.int32)),
                _arrow_strings([str(v) for v in value.values]),
            )
        elif isinstance(value, np.ndarray) and value.dtype.kind == "S":
            # Fixed-width ASCII text (simulated user ids): arrow's layout as is, no copy.
            width, data = value.dtype.itemsize, np.ascontiguousarray(value)
            offsets = np.arange(0, width * len(value) + 1, width, dtype=np.int32)
            arrays[name] = pa.StringArray.from_buffers(
                len(value), pa.py_buffer(offsets), pa.py_buffer(data)
            )
        elif isinstance(value, np.ndarray) and value.dtype.kind == "U":
            arrays[name] = _arrow_strings(value.tolist())
        elif isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
            arrays[name] = _arrow_array(
                np.round(value, 6) if rounded and value.dtype.kind == "f" else value
            )
        else:
            arrays[name] = value
    return pa.table(arrays)


# NumPy <-> Arrow through buffers. `pa.array(ndarray)` and `Array.to_numpy()` import pandas
# when it is installed (pyarrow checks for pandas objects, and its conversion to NumPy is
# pandas' own): 0.25-0.5 s of a `train` or `simulate` process that needs no pandas at all.


def _arrow_array(values: NDArray[Any]) -> pa.Array:
    """A NumPy array of numbers (or booleans) as an Arrow array without nulls, no copy."""
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    if values.dtype.kind == "b":  # Arrow packs booleans into bits
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    kind = pa.from_numpy_dtype(values.dtype)
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])


def _arrow_strings(values: list[str]) -> pa.Array:
    """Python strings as an Arrow string array."""
    import pyarrow as pa

    encoded = [v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    data = pa.py_buffer(b"".join(encoded))
    if offsets[-1] >= 2**31:  # past string's 32-bit offsets
        return pa.LargeStringArray.from_buffers(len(encoded), pa.py_buffer(offsets), data)
    small = pa.py_buffer(offsets.astype(np.int32))
    return pa.StringArray.from_buffers(len(encoded), small, data)


def _numpy_view(array: pa.Array, dtype: type[np.generic]) -> NDArray[Any]:
    """A primitive Arrow array without nulls (its type matching `dtype`) as a read-only view."""
    itemsize = np.dtype(dtype).itemsize
    buffer = array.buffers()[1]
    if not len(array) or buffer is None:
        return np.empty(0, dtype=dtype)
    return np.frombuffer(buffer, dtype=dtype, count=len(array), offset=array.offset * itemsize)


# -- reading ------------------------------------------------------------------------------


def read_logged(
    path: str | Path, schema: FeatureSchema, progress: Progress | None = None
) -> LoggedData:
    """Read and validate a whole logged-data file (CSV or Parquet) under `schema`, in memory.

    Rows are numbered like a spreadsheet's data rows: the first row after the header is row
    1. For files larger than memory, use `iter_logged`.
    """
    parts = list(iter_logged(path, schema, progress))
    return LoggedData(
        X=np.concatenate([p.X for p in parts]),
        action=np.concatenate([p.action for p in parts]),
        propensity=np.concatenate([p.propensity for p in parts]),
        reward=np.concatenate([p.reward for p in parts]),
    )


#: The CSV reader of the seed's files, by its old name.
read_logged_csv = read_logged


def iter_logged(
    path: str | Path, schema: FeatureSchema, progress: Progress | None = None
) -> Iterator[LoggedData]:
    """Validated, encoded batches of a logged-data file (CSV or Parquet), in file order.

    A batch is yielded only once it is fully checked; the first bad value of the file
    raises `LoggedDataError` naming its column and row (the first bad row; within a row,
    the first column in schema order), after the batches before it were yielded. A file
    with no rows raises before any batch. `progress` hears ``("reading", done, total)``
    when a batch is parsed and ``("checking", done, total)`` when it is checked and
    encoded, in bytes of a CSV file or rows of a Parquet file.
    """
    path = Path(path)
    if not path.exists():
        raise LoggedDataError(f"The data file {path} does not exist.")
    parquet = is_parquet(path)
    reader = _ParquetBatches(path, schema) if parquet else _CsvBatches(path, schema)
    step = progress or _no_progress
    offset = 0
    for batch in reader:
        step("reading", reader.done, reader.total)
        yield _check_batch(batch, schema, _Place(path, offset, lines=not parquet))
        offset += batch.num_rows
        step("checking", reader.done, reader.total)
    if offset == 0:
        raise LoggedDataError(f"The data file {path} has a header but no rows.")
    step("checking", reader.total, reader.total)


def _no_progress(stage: str, done: int, total: int) -> None:
    pass


def _needed(schema: FeatureSchema) -> tuple[str, ...]:
    return (*schema.field_names, *LOG_COLUMNS)


def _missing(path: Path, names: list[str], schema: FeatureSchema) -> None:
    missing = [c for c in _needed(schema) if c not in names]
    if missing:
        raise LoggedDataError(f"The data file {path} has no column {', '.join(missing)}.")


class _CsvBatches:
    """A CSV file's needed columns as record batches: categorical columns dictionary-encoded
    (each distinct value once per batch), numbers as the strings written, so that a bad
    value is quoted as it stands in the file."""

    def __init__(self, path: Path, schema: FeatureSchema) -> None:
        import pyarrow as pa
        import pyarrow.csv as pa_csv

        self.path, self.total = path, max(path.stat().st_size, 1)
        numeric = {f.name for f in schema.fields if not isinstance(f, CategoricalField)}
        numeric |= {"propensity", "reward"}
        text = pa.dictionary(pa.int32(), pa.string())
        types = {c: pa.string() if c in numeric else text for c in _needed(schema)}
        # "NA" is a country (Namibia) and "" a value to refuse by name: nothing is null.
        convert = pa_csv.ConvertOptions(
            include_columns=list(_needed(schema)),
            column_types=types,
            null_values=[],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        self._source = pa.OSFile(str(path))
        try:
            _missing(path, _csv_header(path), schema)
            self._reader = pa_csv.open_csv(
                self._source,
                read_options=pa_csv.ReadOptions(block_size=READ_BLOCK_BYTES),
                convert_options=convert,
            )
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            self._source.close()
            raise _csv_error(path, exc) from None
        except BaseException:
            self._source.close()
            raise

    @property
    def done(self) -> int:
        return min(int(self._source.tell()), self.total)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        with self._source:
            while True:
                try:
                    batch = self._reader.read_next_batch()
                except StopIteration:
                    return
                except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
                    raise _csv_error(self.path, exc) from None
                if batch.num_rows:
                    yield batch


def _csv_header(path: Path) -> list[str]:
    """The column names of a CSV file, from its first non-blank line (as pyarrow reads it)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        for line in f:
            if line.strip():
                return next(csv.reader([line]))
    raise LoggedDataError(f"The data file {path} is empty.")


def _csv_error(path: Path, exc: Exception) -> LoggedDataError:
    if "Empty CSV file" in str(exc):
        return LoggedDataError(f"The data file {path} is empty.")
    return LoggedDataError(f"The data file {path} is not valid CSV: {exc}")


class _ParquetBatches:
    """A Parquet file's needed columns as record batches, whatever their stored types."""

    def __init__(self, path: Path, schema: FeatureSchema) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path
        try:
            self._file = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise LoggedDataError(f"The data file {path} is not valid Parquet: {exc}") from None
        _missing(path, self._file.schema_arrow.names, schema)
        self._columns = list(_needed(schema))
        self.total, self.done = max(self._file.metadata.num_rows, 1), 0

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        try:
            for batch in self._file.iter_batches(PARQUET_BATCH_ROWS, columns=self._columns):
                self.done += batch.num_rows
                if batch.num_rows:
                    yield batch
        except (pa.ArrowInvalid, OSError) as exc:
            raise LoggedDataError(
                f"The data file {self.path} is not valid Parquet: {exc}"
            ) from None
        finally:
            self._file.close()


# -- checking -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Place:
    """Where a batch sits in its file: to name a bad row as the user sees it."""

    path: Path
    offset: int  # rows of the file before this batch
    lines: bool  # a CSV (rows are lines after the header) or not

    def at(self, row: int) -> str:
        n = self.offset + row + 1
        return f"row {n} (line {n + 1} of the file)" if self.lines else f"row {n}"


class _BadValueError(Exception):
    """The first bad row of one column of a batch."""

    def __init__(self, row: int, column: str, message: str) -> None:
        self.row, self.column, self.message = row, column, message


def _check_batch(batch: pa.RecordBatch, schema: FeatureSchema, place: _Place) -> LoggedData:
    """Check every needed column of a batch and encode it; raise for its first bad row."""
    bad: list[_BadValueError] = []  # one per bad column, in schema order
    columns: dict[str, Any] = {}
    for f in schema.fields:
        try:
            if isinstance(f, CategoricalField):
                columns[f.name] = _categorical(batch, f.name, f.values, f.on_unknown == "reject")
            else:
                values = _numeric(batch, f.name)
                _first_bad(
                    batch, f.name, (values < f.min) | (values > f.max),
                    f"is outside [{f.min:g}, {f.max:g}]",
                )  # fmt: skip
                if f.kind == "integer":
                    _first_bad(batch, f.name, values != np.round(values), "is not an integer")
                columns[f.name] = values
        except _BadValueError as exc:
            bad.append(exc)
    action: NDArray[np.intp] | None = None
    propensity: NDArray[np.float64] | None = None
    reward: NDArray[np.float64] | None = None
    try:
        action = _actions(batch, schema.actions)
    except _BadValueError as exc:
        bad.append(exc)
    try:
        propensity = _numeric(batch, "propensity")
        out_of_range = (propensity <= 0) | (propensity > 1)
        _first_bad(batch, "propensity", out_of_range, "is not in (0, 1]")
    except _BadValueError as exc:
        bad.append(exc)
    try:
        reward = _numeric(batch, "reward")
    except _BadValueError as exc:
        bad.append(exc)
    if bad:
        first = min(bad, key=lambda b: b.row)  # stable: ties go to the earlier column
        raise LoggedDataError(
            f"{place.path}: column {first.column!r}, {place.at(first.row)}: {first.message}."
        )
    assert action is not None and propensity is not None and reward is not None
    X = schema.vectorize_many(columns)
    return LoggedData(X=X, action=action, propensity=propensity, reward=reward)


def _value(batch: pa.RecordBatch, column: str, row: int) -> str:
    return f"value {batch.column(column)[row].as_py()!r} "


def _first_bad(
    batch: pa.RecordBatch, column: str, mask: NDArray[np.bool_], reason: str, quote: bool = True
) -> None:
    if mask.any():
        row = int(np.argmax(mask))
        raise _BadValueError(row, column, f"{_value(batch, column, row) if quote else ''}{reason}")


def _nulls(batch: pa.RecordBatch, column: str, reason: str) -> None:
    """Parquet can hold nulls (a CSV read here cannot): a null is refused by row."""
    array = batch.column(column)
    if array.null_count:
        import pyarrow as pa

        row = int(np.argmax(_numpy_view(array.is_null().cast(pa.int8()), np.int8)))
        raise _BadValueError(row, column, reason)


def _numeric(batch: pa.RecordBatch, column: str) -> NDArray[np.float64]:
    """A column as finite float64s; text that is not a number is named by its first row."""
    import pyarrow as pa

    _nulls(batch, column, "is missing (null), not a finite number")
    array = batch.column(column)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    try:
        # Float and integer columns (Parquet's) are read from their buffers: a cast would
        # import pyarrow.compute (~0.05 s) for nothing. CSV's text is cast.
        integers = _INTEGER_TYPES.get(str(array.type))
        if array.type == pa.float64():
            values = array
        elif integers is not None:  # the same IEEE conversion as arrow's cast
            values = _numpy_view(array, integers).astype(np.float64)
        else:
            values = array.cast(pa.float64(), safe=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        row = _first_uncastable(array)
        raise _BadValueError(
            row, column, f"{_value(batch, column, row)}is not a finite number"
        ) from None
    result: NDArray[np.float64] = (
        values if isinstance(values, np.ndarray) else _numpy_view(values, np.float64)
    )  # no nulls (checked)
    _first_bad(batch, column, ~np.isfinite(result), "is not a finite number")
    return result


def _first_uncastable(array: pa.Array) -> int:
    """The first row pyarrow cannot read as a number, by bisection (only on a bad file)."""
    import pyarrow as pa

    lo, hi = 0, len(array)  # the first bad row is in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            array.slice(lo, mid - lo).cast(pa.float64(), safe=False)
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    return lo


def _dictionary(batch: pa.RecordBatch, column: str) -> Dictionary:
    import pyarrow as pa

    array = batch.column(column)
    if not pa.types.is_dictionary(array.type):
        array = array.dictionary_encode()
    values = [None if v is None else str(v) for v in array.dictionary.to_pylist()]
    index_type = _INTEGER_TYPES.get(str(array.indices.type))
    if index_type is None:  # an unusual index type: let pyarrow widen it
        indices = _numpy_view(array.indices.cast(pa.int64()), np.int64)
    else:
        indices = _numpy_view(array.indices, index_type)  # no nulls (checked)
    return Dictionary(values, indices.astype(np.intp))


#: Arrow's integer types as NumPy's, to read integer columns and dictionary indices without
#: a cast (a cast imports pyarrow.compute, ~0.05 s of a process's start).
_INTEGER_TYPES: dict[str, type[np.integer[Any]]] = {
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
}  # fmt: skip


def _categorical(
    batch: pa.RecordBatch, column: str, known: tuple[str, ...], reject: bool
) -> Dictionary:
    _nulls(batch, column, "is missing (null)")
    encoded = _dictionary(batch, column)
    values = encoded.values
    _first_bad(batch, column, _rows_holding(encoded, [v == "" for v in values]), "is empty", False)
    if reject:
        unknown = [v not in known for v in values]
        _first_bad(batch, column, _rows_holding(encoded, unknown), "is not a known value")
    return encoded


def _actions(batch: pa.RecordBatch, actions: tuple[str, ...]) -> NDArray[np.intp]:
    _nulls(batch, "action", "is missing (null)")
    encoded = _dictionary(batch, "action")
    index = {name: i for i, name in enumerate(actions)}
    codes = np.array([index.get(v, -1) if isinstance(v, str) else -1 for v in encoded.values])
    known = f"is not one of the schema's actions {list(actions)}"
    _first_bad(batch, "action", _rows_holding(encoded, list(codes < 0)), known)
    return np.asarray(codes[encoded.codes] if len(codes) else encoded.codes, dtype=np.intp)


def _rows_holding(encoded: Dictionary, flags: list[bool]) -> NDArray[np.bool_]:
    """Rows whose value is flagged (one flag per distinct value)."""
    flagged = np.asarray(flags, dtype=bool)
    if not flagged.any():
        return np.zeros(1, dtype=bool)
    rows: NDArray[np.bool_] = flagged[encoded.codes]
    return rows
