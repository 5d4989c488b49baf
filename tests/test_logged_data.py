"""Logged-data CSV: the written layout, a faithful round trip, and every way a file is refused.

Every refusal is a `LoggedDataError` naming the column and the first bad row, where row 1 is
the first data row (line 2 of the file, after the header).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from banditrec.features import OTHER, load_default_schema, load_schema
from banditrec.logged_data import LoggedDataError, read_logged_csv, write_logged_csv
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
