"""Logged data (CSV, Parquet): the written layout, a faithful round trip, batches, and every
way a file is refused.

Every refusal is a `LoggedDataError` naming the column and the first bad row, where row 1 is
the first data row (line 2 of the file, after the header).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from banditrec import logged_data
from banditrec.features import (
    OTHER,
    Dictionary,
    NumericField,
    SchemaError,
    load_default_schema,
    load_schema,
)
from banditrec.logged_data import (
    LoggedDataError,
    is_parquet,
    iter_logged,
    read_logged,
    read_logged_csv,
    write_logged,
    write_logged_csv,
)
from banditrec.sim import AppSimulator
from conftest import other_schema_toml

SCHEMA = load_default_schema()
REQUEST_FIELDS = [
    "user_id", "country", "device", "segment",
    "n_sessions", "days_since_install", "recent_engagement", "avg_session_length",
]  # fmt: skip
ACTIONS = ["show_bonus_offer", "invite_friend", "suggest_new_app", "deep_link_to_store"]


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        header, *rows = csv.reader(f)
    return header, rows


def write_rows(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])


def with_cell(source: Path, target: Path, column: str, row: int, value: str) -> Path:
    """Copy `source` to `target` with data row `row` (1-based) of `column` set to `value`."""
    header, rows = read_rows(source)
    rows[row - 1][header.index(column)] = value
    write_rows(target, header, rows)
    return target


def test_written_file_has_the_seed_layout(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "logged.csv"
    write_logged_csv(AppSimulator().simulate_logged(50, np.random.default_rng(0)), path)
    header, rows = read_rows(path)
    assert header == [
        *REQUEST_FIELDS, "action", "propensity", "reward",
        *(f"expected_reward_{a}" for a in ACTIONS),
    ]  # fmt: skip
    assert len(rows) == 50
    assert all(len(r) == len(header) for r in rows)
    assert {r[header.index("action")] for r in rows} <= set(ACTIONS)
    assert {r[header.index("propensity")] for r in rows} == {"0.25"}
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["logged.csv"]  # no temp file left


def test_round_trip_gives_the_simulated_rounds(tmp_path: Path) -> None:
    columns = AppSimulator().simulate_logged(300, np.random.default_rng(1))
    path = tmp_path / "logged.csv"
    write_logged_csv(columns, path)
    data = read_logged_csv(path, SCHEMA)
    assert data.n_rounds == 300
    np.testing.assert_array_equal(data.X, SCHEMA.vectorize_many(columns))
    np.testing.assert_array_equal(data.action, [ACTIONS.index(a) for a in columns["action"]])
    np.testing.assert_array_equal(data.propensity, np.full(300, 0.25))
    np.testing.assert_array_equal(data.reward, columns["reward"])


def test_column_order_and_extra_columns_do_not_matter(data_file: Path, tmp_path: Path) -> None:
    header, rows = read_rows(data_file)
    order = list(reversed(range(len(header))))
    shuffled = tmp_path / "shuffled.csv"
    write_rows(
        shuffled,
        [header[i] for i in order] + ["note"],
        [[r[i] for i in order] + ["free text"] for r in rows],
    )
    a, b = read_logged_csv(data_file, SCHEMA), read_logged_csv(shuffled, SCHEMA)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.action, b.action)
    np.testing.assert_array_equal(a.reward, b.reward)


def test_unknown_category_goes_to_the_other_bucket(data_file: Path, tmp_path: Path) -> None:
    path = with_cell(data_file, tmp_path / "zz.csv", "country", 2, "ZZ")
    x = read_logged_csv(path, SCHEMA).X[1]
    names = SCHEMA.feature_names()
    assert x[names.index(f"country={OTHER}")] == 1.0
    assert sum(x[i] for i, n in enumerate(names) if n.startswith("country=")) == 1.0


def test_unknown_category_is_refused_when_the_schema_says_reject(
    data_file: Path, tmp_path: Path
) -> None:
    schema_path = other_schema_toml(tmp_path / "reject.toml", country={"on_unknown": "reject"})
    header, rows = read_rows(data_file)
    col = header.index("country")
    for r in rows:  # the simulator emits "XX" on purpose; make every row known first
        r[col] = "US"
    clean = tmp_path / "clean.csv"
    write_rows(clean, header, rows)
    path = with_cell(clean, tmp_path / "zz.csv", "country", 4, "ZZ")
    with pytest.raises(LoggedDataError, match=r"column 'country', row 4 .*not a known value"):
        read_logged_csv(path, load_schema(schema_path))


BAD_CELLS = [
    ("n_sessions", "abc", "is not a finite number"),
    ("n_sessions", "nan", "is not a finite number"),
    ("n_sessions", "NaN", "is not a finite number"),
    ("n_sessions", "", "is not a finite number"),
    ("n_sessions", "inf", "is not a finite number"),
    ("n_sessions", "-1", "is outside [0, 1e+06]"),
    ("n_sessions", "1000000000", "is outside [0, 1e+06]"),
    ("n_sessions", "2.5", "is not an integer"),
    ("days_since_install", "36501", "is outside [0, 36500]"),
    ("recent_engagement", "ten", "is not a finite number"),
    ("avg_session_length", "", "is not a finite number"),
    ("avg_session_length", "nan", "is not a finite number"),
    ("avg_session_length", "1e9", "is outside [0, 86400]"),
    ("avg_session_length", "-0.5", "is outside [0, 86400]"),
    ("country", "", "is empty"),
    ("device", "", "is empty"),
    ("segment", "", "is empty"),
    ("action", "fly_to_the_moon", "is not one of the schema's actions"),
    ("action", "", "is not one of the schema's actions"),
    ("propensity", "0", "is not in (0, 1]"),
    ("propensity", "-0.25", "is not in (0, 1]"),
    ("propensity", "1.5", "is not in (0, 1]"),
    ("propensity", "nan", "is not a finite number"),
    ("propensity", "", "is not a finite number"),
    ("reward", "x", "is not a finite number"),
    ("reward", "nan", "is not a finite number"),
    ("reward", "", "is not a finite number"),
    ("reward", "inf", "is not a finite number"),
]


@pytest.mark.parametrize(("column", "value", "reason"), BAD_CELLS)
def test_bad_cell_names_column_and_first_bad_row(
    data_file: Path, tmp_path: Path, column: str, value: str, reason: str
) -> None:
    # Bad at rows 3 and 7: the message must name row 3, the first one.
    path = with_cell(data_file, tmp_path / "bad.csv", column, 3, value)
    path = with_cell(path, path, column, 7, value)
    with pytest.raises(LoggedDataError) as info:
        read_logged_csv(path, SCHEMA)
    message = str(info.value)
    assert f"column {column!r}, row 3 (line 4 of the file)" in message
    assert reason in message
    assert str(path) in message


def test_rows_are_numbered_from_the_first_data_row(data_file: Path, tmp_path: Path) -> None:
    path = with_cell(data_file, tmp_path / "bad.csv", "reward", 1, "oops")
    with pytest.raises(LoggedDataError, match=re.escape("column 'reward', row 1 (line 2 ")):
        read_logged_csv(path, SCHEMA)
    _, rows = read_rows(data_file)
    last = len(rows)
    path = with_cell(data_file, tmp_path / "last.csv", "reward", last, "oops")
    with pytest.raises(LoggedDataError, match=f"column 'reward', row {last} "):
        read_logged_csv(path, SCHEMA)


@pytest.mark.parametrize(
    "column",
    [*REQUEST_FIELDS[1:], "action", "propensity", "reward"],
)
def test_missing_column_is_named(data_file: Path, tmp_path: Path, column: str) -> None:
    header, rows = read_rows(data_file)
    keep = [i for i, name in enumerate(header) if name != column]
    path = tmp_path / "missing.csv"
    write_rows(path, [header[i] for i in keep], [[r[i] for i in keep] for r in rows])
    with pytest.raises(LoggedDataError, match=f"has no column {column}"):
        read_logged_csv(path, SCHEMA)


def test_user_id_is_not_needed_for_training(data_file: Path, tmp_path: Path) -> None:
    header, rows = read_rows(data_file)
    path = tmp_path / "anonymous.csv"
    write_rows(path, header[1:], [r[1:] for r in rows])
    assert read_logged_csv(path, SCHEMA).n_rounds == len(rows)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "is empty"),
        ("\n\n", "is empty"),
        (",".join([*REQUEST_FIELDS, "action", "propensity", "reward"]) + "\n", "no rows"),
    ],
    ids=["empty", "blank-lines", "header-only"],
)
def test_empty_and_header_only_files_are_refused(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "data.csv"
    path.write_text(content)
    with pytest.raises(LoggedDataError, match=expected) as info:
        read_logged_csv(path, SCHEMA)
    assert str(path) in str(info.value)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LoggedDataError, match="does not exist"):
        read_logged_csv(tmp_path / "nope.csv", SCHEMA)


@pytest.mark.parametrize("damage", ["ragged", "not-utf8"])
def test_malformed_csv_is_refused(data_file: Path, tmp_path: Path, damage: str) -> None:
    raw = data_file.read_bytes()
    if damage == "ragged":
        lines = raw.split(b"\n")
        lines[3] = lines[3].rsplit(b",", 2)[0]  # two cells short
        raw = b"\n".join(lines)
    else:
        raw = raw.replace(b"ios", b"\xff\xfe", 1)
    path = tmp_path / "bad.csv"
    path.write_bytes(raw)
    with pytest.raises(LoggedDataError, match="is not valid CSV"):
        read_logged_csv(path, SCHEMA)


# -- Parquet, batches and the batch encoder ------------------------------------------------


def test_parquet_reads_as_the_same_rounds_as_csv(tmp_path: Path) -> None:
    columns = AppSimulator().simulate_logged(3000, np.random.default_rng(2))
    write_logged_csv(columns, tmp_path / "logged.csv")
    write_logged(columns, tmp_path / "logged.parquet")
    a, b = (
        read_logged(tmp_path / "logged.csv", SCHEMA),
        read_logged(tmp_path / "logged.parquet", SCHEMA),
    )
    # CSV rounds floats to 6 decimals; the Parquet file keeps every bit.
    np.testing.assert_array_equal(b.X, SCHEMA.vectorize_many(columns))
    np.testing.assert_allclose(a.X, b.X, atol=1e-5)
    np.testing.assert_array_equal(a.action, b.action)
    np.testing.assert_array_equal(a.reward, b.reward)
    assert is_parquet(tmp_path / "logged.parquet") and not is_parquet(tmp_path / "logged.csv")


def test_a_parquet_file_without_the_suffix_is_read_as_parquet(tmp_path: Path) -> None:
    columns = AppSimulator().simulate_logged(100, np.random.default_rng(2))
    write_logged(columns, tmp_path / "logged.parquet")
    renamed = (tmp_path / "logged.parquet").rename(tmp_path / "logged.data")
    assert read_logged(renamed, SCHEMA).n_rounds == 100


def test_batches_give_the_whole_file_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    columns = AppSimulator().simulate_logged(5000, np.random.default_rng(3))
    path = tmp_path / "logged.csv"
    write_logged_csv(columns, path)
    whole = read_logged(path, SCHEMA)
    monkeypatch.setattr(logged_data, "READ_BLOCK_BYTES", 20_000)  # ~200 rows a batch
    parts = list(iter_logged(path, SCHEMA))
    assert len(parts) > 10
    np.testing.assert_array_equal(np.concatenate([p.X for p in parts]), whole.X)
    np.testing.assert_array_equal(np.concatenate([p.action for p in parts]), whole.action)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_bad_value_in_a_later_batch_names_its_row_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    columns = AppSimulator().simulate_logged(4000, np.random.default_rng(4))
    columns["reward"][3456] = np.nan
    columns["n_sessions"] = columns["n_sessions"].astype(str).astype(object)
    columns["n_sessions"][3700] = "ten"
    path = tmp_path / f"bad{suffix}"
    write_logged(columns, path)
    monkeypatch.setattr(logged_data, "READ_BLOCK_BYTES", 20_000)
    monkeypatch.setattr(logged_data, "PARQUET_BATCH_ROWS", 500)
    batches = iter_logged(path, SCHEMA)
    good = [next(batches) for _ in range(3)]  # the batches before it are yielded
    assert sum(b.n_rounds for b in good) < 3456
    with pytest.raises(LoggedDataError) as info:
        list(batches)
    where = "row 3457 (line 3458 of the file)" if suffix == ".csv" else "row 3457:"
    assert f"column 'reward', {where}" in str(info.value)
    assert "is not a finite number" in str(info.value)


def test_the_first_bad_row_is_named_whatever_its_column(data_file: Path, tmp_path: Path) -> None:
    # reward comes after n_sessions in the schema, but its bad row comes first in the file.
    path = with_cell(data_file, tmp_path / "bad.csv", "n_sessions", 9, "-3")
    path = with_cell(path, path, "reward", 4, "x")
    with pytest.raises(LoggedDataError, match=r"column 'reward', row 4 "):
        read_logged(path, SCHEMA)
    path = with_cell(path, path, "n_sessions", 4, "-3")  # a tie: the schema's order
    with pytest.raises(LoggedDataError, match=r"column 'n_sessions', row 4 .*outside"):
        read_logged(path, SCHEMA)


@pytest.mark.parametrize(
    ("column", "reason"),
    [
        ("country", "is missing (null)"),
        ("n_sessions", "is missing (null), not a finite number"),
        ("action", "is missing (null)"),
        ("reward", "is missing (null), not a finite number"),
    ],
)
def test_a_null_in_parquet_names_its_column_and_row(
    tmp_path: Path, column: str, reason: str
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = AppSimulator().simulate_logged(50, np.random.default_rng(5))
    values = columns[column].tolist()
    values[6] = None
    table = pa.table({**{k: v for k, v in columns.items() if k != column}, column: values})
    path = tmp_path / "nulls.parquet"
    pq.write_table(table, path)
    with pytest.raises(LoggedDataError) as info:
        read_logged(path, SCHEMA)
    assert f"column {column!r}, row 7: {reason}." in str(info.value)


def test_numbers_stored_as_text_in_parquet_are_read_and_checked(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = AppSimulator().simulate_logged(50, np.random.default_rng(6))
    text = {k: (v.astype(str) if v.dtype.kind in "fi" else v) for k, v in columns.items()}
    pq.write_table(pa.table(text), tmp_path / "text.parquet")
    np.testing.assert_array_equal(
        read_logged(tmp_path / "text.parquet", SCHEMA).X, SCHEMA.vectorize_many(columns)
    )
    text["avg_session_length"][20] = "long"
    pq.write_table(pa.table(text), tmp_path / "text.parquet")
    with pytest.raises(LoggedDataError, match=r"'avg_session_length', row 21: value 'long' "):
        read_logged(tmp_path / "text.parquet", SCHEMA)


def test_a_broken_parquet_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(LoggedDataError, match="is not valid Parquet"):
        read_logged(path, SCHEMA)


def test_namibia_is_a_country_not_a_missing_value(data_file: Path, tmp_path: Path) -> None:
    schema_path = other_schema_toml(tmp_path / "na.toml", country={"values": ["US", "NA"]})
    path = with_cell(data_file, tmp_path / "na.csv", "country", 2, "NA")
    schema = load_schema(schema_path)
    x = read_logged(path, schema).X[1]
    assert x[schema.feature_names().index("country=NA")] == 1.0


def test_dictionary_columns_encode_like_arrays_and_rows() -> None:
    # The batch encoder takes categorical columns as (values, codes), the layout pyarrow
    # reads: the same vectors as plain arrays and as `vectorize`, row by row, bit for bit.
    contexts = AppSimulator().sample_contexts(6000, np.random.default_rng(7))
    encoded = {
        k: Dictionary(*np.unique(v, return_inverse=True)) if v.dtype.kind == "U" else v
        for k, v in contexts.items()
    }
    X = SCHEMA.vectorize_many(encoded)
    np.testing.assert_array_equal(X, SCHEMA.vectorize_many(contexts))
    for i in range(0, 6000, 7):
        row = {name: contexts[name][i] for name in SCHEMA.field_names}
        np.testing.assert_array_equal(X[i], SCHEMA.vectorize(row), err_msg=f"row {i}")


def test_the_logarithm_table_of_integer_columns_is_libms_bit_for_bit() -> None:
    # Long integer columns take log1p from a table of distinct values (`_log1p_many`):
    # the same libm function on the same doubles as `apply_one`, row by row.
    rng = np.random.default_rng(8)
    field = SCHEMA.fields[SCHEMA.field_names.index("n_sessions")]
    assert isinstance(field, NumericField) and field.transform == "log1p_scale"
    for values in (
        rng.integers(0, 900, 50_000).astype(np.float64),  # the table
        rng.integers(0, 10**6, 5_000).astype(np.float64),  # too wide a range: the map
        rng.uniform(0, 900, 50_000),  # not integers: the map
    ):
        expected = np.array([field.apply_one(v) for v in values.tolist()])
        np.testing.assert_array_equal(field.apply(values), expected)


def test_a_dictionary_column_refuses_an_unknown_value_only_when_a_row_holds_it(
    tmp_path: Path,
) -> None:
    schema = load_schema(other_schema_toml(tmp_path / "r.toml", device={"on_unknown": "reject"}))
    contexts = {
        k: v[:3] for k, v in AppSimulator().sample_contexts(3, np.random.default_rng(0)).items()
    }
    values = ("ios", "android", "fridge")  # "fridge" is not a device of the schema
    held = dict(contexts, device=Dictionary(values, np.array([0, 1, 0])))
    X = schema.vectorize_many(held)  # no row holds "fridge": encoded, nothing refused
    np.testing.assert_array_equal(
        X, schema.vectorize_many(dict(contexts, device=np.array(["ios", "android", "ios"])))
    )
    with pytest.raises(SchemaError, match="device: unknown value 'fridge'"):
        schema.vectorize_many(dict(contexts, device=Dictionary(values, np.array([0, 2, 1]))))


# -- NumPy <-> Arrow through buffers (no pandas) -------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        np.array([0.5, -1.25, 3.0, 1e-300, 7.0]),
        np.array([3, -2, 0, 2**40, 5], dtype=np.int64),
        np.array([1, 2, 3, 4, 5], dtype=np.int32),
        np.array([True, False, True, True, False]),
    ],
)
def test_arrays_cross_to_arrow_and_back_through_buffers(values: np.ndarray) -> None:
    import pyarrow as pa

    array = logged_data._arrow_array(values)
    assert array.to_pylist() == values.tolist()
    assert array.null_count == 0
    if values.dtype.kind != "b":
        view = logged_data._numpy_view(array, values.dtype.type)
        np.testing.assert_array_equal(view, values)
        # A slice keeps its offset into the parent's buffer: the view starts there.
        np.testing.assert_array_equal(
            logged_data._numpy_view(array.slice(2, 2), values.dtype.type), values[2:4]
        )
        assert len(logged_data._numpy_view(array.slice(5, 0), values.dtype.type)) == 0
    strided = values[::2]  # not contiguous: copied first
    assert logged_data._arrow_array(strided).to_pylist() == strided.tolist()
    strings = logged_data._arrow_strings(["US", "", "Zürich"])
    assert strings.type == pa.string()
    assert strings.to_pylist() == ["US", "", "Zürich"]


_NO_PANDAS_PROBE = """
import sys
import numpy as np
from banditrec.features import load_default_schema
from banditrec.logged_data import read_logged, write_logged
from banditrec.sim import AppSimulator

schema = load_default_schema()
for suffix in (".csv", ".parquet"):
    path = sys.argv[1] + suffix
    write_logged(AppSimulator().simulate_logged(500, np.random.default_rng(0)), path)
    assert read_logged(path, schema).n_rounds == 500
print("pandas" in sys.modules)
"""


def test_reading_and_writing_files_never_imports_pandas(tmp_path: Path) -> None:
    # pyarrow imports pandas (0.25-0.5 s) from `pa.array` and `to_numpy`: the reader and the
    # writer avoid both, so `train` and `simulate` start without it.
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _NO_PANDAS_PROBE, str(tmp_path / "logged")],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "False"
