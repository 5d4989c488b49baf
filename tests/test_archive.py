"""The Parquet archive of the event log: layout, round trips, ranges, deletion, atomicity.

Real files in a temporary directory throughout; a crash is simulated by a writer whose input
raises half-way and by a process that dies half-way through a write.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.archive import (
    ARCHIVE_LAYOUT,
    DECISION_SCHEMA,
    Archive,
    ArchiveError,
    ArchiveWriter,
    export_log,
)
from banditrec.store import DecisionRecord, RewardRules
from banditrec.store.sqlite import SQLiteEventStore
from banditrec.store.sqlite_reader import ReadOnlyEventLog

HASH = "e" * 64
ACTIONS = ("bonus", "app", "nothing")
#: Floats whose bits a careless encoder would change: signed zero, NaN, subnormal, extremes.
AWKWARD = np.array([-0.0, np.nan, 5e-324, np.inf, -np.inf, 1.0 / 3.0, -1.7976931348623157e308])

Row = tuple[DecisionRecord, float | None, str | None, str | None]


def record(i: int, created_at: float, rng: np.random.Generator, **kwargs: Any) -> DecisionRecord:
    x = rng.normal(size=6)
    x[i % 6] = AWKWARD[i % len(AWKWARD)]
    p = rng.dirichlet(np.ones(3))
    fields: dict[str, Any] = dict(
        event_id=f"event-{i}",
        created_at=created_at,
        model_version=f"base@{i}",
        context={"country": "FR", "sessions": i, "nested": {"ok": True, "v": [1.5, None]}},
        x=x,
        actions=ACTIONS,
        eligible=ACTIONS[: 1 + i % 3],
        action_index=i % 3,
        probability=float(p[i % 3]),
        probabilities=p,
        scores=np.array([AWKWARD[i % len(AWKWARD)], rng.normal(), -0.0]),
        deferred=i % 5 == 0,
    )
    fields.update(kwargs)
    return DecisionRecord(**fields)


def rows(n: int, start: float = 1_700_000_000.0, seed: int = 0, first: int = 0) -> list[Row]:
    rng = np.random.default_rng(seed)
    out: list[Row] = []
    for i in range(first, first + n):
        rec = record(i, start + 0.25 * i, rng)
        if rec.deferred:
            out.append((rec, None, "inactive", None))
        elif i % 3 == 0:
            out.append((rec, None, "pending", f"user-{i % 4}"))
        else:
            out.append((rec, float(i % 2), "rewarded" if i % 2 else "defaulted", f"user-{i % 4}"))
    return out


def bits(values: Any) -> bytes:
    return np.ascontiguousarray(values, dtype=np.float64).tobytes()


def assert_same(read: DecisionRecord, written: DecisionRecord) -> None:
    """Every field equal; float arrays bit for bit (NaN, -0.0 and subnormals included)."""
    for name in ("x", "probabilities", "scores", "probability"):
        assert bits(getattr(read, name)) == bits(getattr(written, name)), name
    for name in ("event_id", "created_at", "model_version", "context", "actions", "eligible",
                 "action_index", "deferred"):  # fmt: skip
        assert getattr(read, name) == getattr(written, name), name
    assert math.copysign(1.0, read.created_at) == math.copysign(1.0, written.created_at)


def test_decisions_round_trip_bit_for_bit(tmp_path: Path) -> None:
    written = rows(50)
    path = ArchiveWriter(tmp_path, HASH, batch_size=7).write_decisions(written)
    assert path is not None and path.parent == tmp_path
    read = list(Archive(tmp_path, HASH).iter_decision_rows())
    assert len(read) == len(written)
    for got, (rec, total, state, user_id) in zip(read, written, strict=True):
        assert_same(got.record, rec)
        assert (got.reward_total, got.state, got.user_id) == (total, state, user_id)
        assert got.record.user_id == user_id
    pairs = list(Archive(tmp_path).iter_decisions(batch_size=4))
    assert [(r.event_id, t) for r, t in pairs] == [(r.event_id, t) for r, t, _, _ in written]


def test_the_layout_is_plain_parquet_with_its_metadata(tmp_path: Path) -> None:
    path = ArchiveWriter(tmp_path, HASH).write_decisions(rows(3))
    assert path is not None
    name = path.name.split("-")
    assert name[0] == "decisions" and name[1] == "20231114T221319.999999Z"
    assert name[2] == "20231114T221320.500001Z" and path.suffix == ".parquet"
    table = pq.read_table(path)  # any Parquet reader will do
    assert table.schema.remove_metadata() == DECISION_SCHEMA
    meta = table.schema.metadata
    assert meta[b"banditrec.archive_layout"] == ARCHIVE_LAYOUT.encode()
    assert meta[b"banditrec.table"] == b"decisions"
    assert meta[b"banditrec.encoding_hash"] == HASH.encode()
    assert table["context"][0].as_py() == (
        '{"country":"FR","sessions":0,"nested":{"ok":true,"v":[1.5,null]}}'
    )
    assert table["action"].to_pylist() == ["bonus", "app", "nothing"]


def test_rewards_round_trip(tmp_path: Path) -> None:
    written = [("event-1", 1_700_000_001.5, 0.75, "learned"), ("nope", 1_700_000_002.0, -0.0,
               "unknown"), ("event-1", 1_700_000_003.0, 1.0, "duplicate")]  # fmt: skip
    assert ArchiveWriter(tmp_path, HASH).write_rewards(written) is not None
    read = list(Archive(tmp_path, HASH).iter_rewards())
    assert [tuple(r) for r in read] == written
    assert math.copysign(1.0, read[1].value) == -1.0
    assert [r.event_id for r in Archive(tmp_path).iter_rewards(1_700_000_002.0)] == [
        "nope", "event-1"
    ]  # fmt: skip


def test_nothing_to_write_writes_no_file(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path, HASH)
    assert writer.write_decisions([]) is None
    assert writer.write_rewards(iter([])) is None
    assert list(tmp_path.iterdir()) == []


def test_ranges_by_created_at_across_files(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path, HASH, batch_size=4)
    for k in range(3):  # three files of 10 decisions, 2.5 s each, one after the other
        writer.write_decisions(rows(10, first=10 * k))
    archive = Archive(tmp_path, HASH)
    assert len(archive.files()) == 3
    assert archive.files() == sorted(archive.files(), key=lambda p: p.name)
    t0 = 1_700_000_000.0
    ids = [r.event_id for r, _ in archive.iter_decisions(t0 + 2.25, t0 + 5.0)]
    assert ids == [f"event-{i}" for i in range(9, 20)]  # start included, end excluded
    assert len(list(archive.iter_decisions(end=t0))) == 0
    assert len(list(archive.iter_decisions(start=t0 + 100))) == 0
    assert len(list(archive.iter_decisions())) == 30
    # Files outside the range are not even opened: garbage in the first one goes unnoticed.
    archive.files()[0].write_bytes(b"not parquet")
    assert len(list(archive.iter_decisions(start=t0 + 2.5))) == 20
    with pytest.raises(Exception, match="Parquet"):
        list(archive.iter_decisions())


def test_a_decision_archived_twice_is_read_once(tmp_path: Path) -> None:
    # Retention that crashed after writing its file but before deleting from the live store
    # writes those decisions again on its next run.
    writer = ArchiveWriter(tmp_path, HASH)
    writer.write_decisions(rows(6))
    writer.write_decisions(rows(10))
    ids = [r.event_id for r, _ in Archive(tmp_path, HASH).iter_decisions()]
    assert ids == [f"event-{i}" for i in range(10)]


def test_another_encoding_is_refused(tmp_path: Path) -> None:
    ArchiveWriter(tmp_path, HASH).write_decisions(rows(2))
    with pytest.raises(ArchiveError, match=r"written under feature encoding eeeeeeeeeeee…, not "
                       r"under ffffffffffff… \(the configured schema\)"):  # fmt: skip
        list(Archive(tmp_path, "f" * 64).iter_decisions())
    # Without an expected encoding, one directory still holds one encoding.
    ArchiveWriter(tmp_path, "f" * 64).write_decisions(rows(2, start=1_800_000_000.0))
    with pytest.raises(ArchiveError, match="written under feature encoding ffff"):
        list(Archive(tmp_path).iter_decisions())


def test_unknown_layout_and_missing_directory_are_refused(tmp_path: Path) -> None:
    path = ArchiveWriter(tmp_path, HASH).write_decisions(rows(2))
    assert path is not None
    table = pq.read_table(path)
    meta = {**table.schema.metadata, b"banditrec.archive_layout": b"2"}
    pq.write_table(table.replace_schema_metadata(meta), path)
    with pytest.raises(ArchiveError, match="has layout version 2; this banditrec reads version 1"):
        list(Archive(tmp_path).iter_decisions())
    with pytest.raises(ArchiveError, match=r"The archive directory .*nowhere does not exist\."):
        Archive(tmp_path / "nowhere")


def test_bad_rows_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    rec, total, _, user = rows(1)[0]
    with pytest.raises(ArchiveError, match="state is not one of inactive, pending, rewarded"):
        ArchiveWriter(tmp_path, HASH).write_decisions([(rec, total, "lost", user)])
    with pytest.raises(ArchiveError, match="created_at is not a time between 1970 and 9999"):
        ArchiveWriter(tmp_path, HASH).write_decisions(
            [(record(1, math.nan, np.random.default_rng(0)), None, "pending", None)]
        )
    assert list(tmp_path.iterdir()) == []


def test_delete_user_across_files(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path, HASH, batch_size=3)
    everyone = rows(12)
    writer.write_decisions(everyone[:6])
    # A file of the user's decisions only, which disappears entirely.
    only = [(r, t, s, "user-1") for r, t, s, _ in rows(3, start=1_700_001_000.0, first=100)]
    writer.write_decisions(only)
    writer.write_decisions(everyone[6:])
    writer.write_rewards([("event-1", 1_700_000_001.0, 1.0, "learned"),
                          ("event-2", 1_700_000_001.0, 1.0, "learned"),
                          ("event-101", 1_700_001_001.0, 0.0, "learned")])  # fmt: skip
    writer.write_rewards([("event-9", 1_700_000_002.0, 1.0, "learned")])
    archive = Archive(tmp_path, HASH)
    before = {r.record.event_id: r for r in archive.iter_decision_rows()}
    theirs = {e for e, r in before.items() if r.user_id == "user-1"}
    assert theirs == {"event-1", "event-9", "event-100", "event-101", "event-102"}

    assert archive.delete_user("user-1") == 5
    assert len(archive.files("decisions")) == 2 and len(archive.files("rewards")) == 1
    after = list(archive.iter_decision_rows())
    assert [r.record.event_id for r in after] == [e for e in before if e not in theirs]
    for row in after:  # the others are untouched, bit for bit
        assert_same(row.record, before[row.record.event_id].record)
        assert row[1:] == before[row.record.event_id][1:]
    assert [r.event_id for r in archive.iter_rewards()] == ["event-2"]
    assert archive.delete_user("user-1") == 0
    assert archive.delete_user("nobody") == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_size_bytes_counts_every_file(tmp_path: Path) -> None:
    archive = Archive(ArchiveWriter(tmp_path, HASH).directory)
    assert archive.size_bytes() == 0
    path = ArchiveWriter(tmp_path, HASH).write_decisions(rows(20))
    assert path is not None and archive.size_bytes() == path.stat().st_size
    (tmp_path / ".decisions-leftover.parquet.tmp").write_bytes(b"x" * 100)
    assert archive.size_bytes() == path.stat().st_size + 100


def test_a_writer_failing_half_way_leaves_no_file(tmp_path: Path) -> None:
    ArchiveWriter(tmp_path, HASH).write_decisions(rows(5))
    before = sorted(tmp_path.iterdir())

    def failing() -> Any:
        yield from rows(25, first=5)  # more than two row groups are on disk by then
        raise RuntimeError("the live store went away")

    with pytest.raises(RuntimeError, match="the live store went away"):
        ArchiveWriter(tmp_path, HASH, batch_size=10).write_decisions(failing())
    assert sorted(tmp_path.iterdir()) == before  # no partial file, visible or hidden
    assert len(list(Archive(tmp_path, HASH).iter_decisions())) == 5


def test_a_process_dying_mid_write_leaves_no_visible_file(tmp_path: Path) -> None:
    # kill -9 in effect: the process ends in the middle of a write, no cleanup runs.
    script = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_archive import HASH, rows
from banditrec.archive import ArchiveWriter
def dying():
    yield from rows(25)
    os._exit(9)
ArchiveWriter({str(tmp_path)!r}, HASH, batch_size=10).write_decisions(dying())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert done.returncode == 9, done.stderr.decode()
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".decisions-")
    assert leftovers[0].stat().st_size > 0  # the write had begun
    archive = Archive(tmp_path, HASH)
    assert archive.files() == [] and list(archive.iter_decisions()) == []
    assert archive.size_bytes() == leftovers[0].stat().st_size


def test_export_from_an_event_store(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "events.db", HASH)
    rules = RewardRules(window_seconds=10.0)
    logged = [r for r, *_ in rows(10)]
    store.log_decisions(logged, rules)
    store.record_reward("event-1", 1.0, 1_700_000_001.0, rules)
    store.apply_default_rewards(1_700_000_020.0, rules)
    t0 = 1_700_000_000.0
    done = export_log(store, tmp_path / "out", t0 + 0.25, t0 + 1.0, encoding_hash=HASH)
    assert (done.decisions, done.rewards, len(done.files)) == (3, 0, 1)
    got = list(Archive(tmp_path / "out", HASH).iter_decision_rows())
    assert [(g.record.event_id, g.reward_total, g.state) for g in got] == [
        ("event-1", 1.0, None),
        ("event-2", 0.0, None),
        ("event-3", 0.0, None),
    ]  # fmt: skip  (from (record, total) pairs, rewarded and defaulted cannot be told apart)
    for g, rec in zip(got, logged[1:4], strict=True):
        assert_same(g.record, rec)
    # Read-only from the file: every state kept, and the rewards too.
    store.close()
    with ReadOnlyEventLog(tmp_path / "events.db", HASH) as log:
        done = export_log(log, tmp_path / "all", encoding_hash=HASH)
    assert (done.decisions, done.rewards, len(done.files)) == (10, 1, 2)
    archive = Archive(tmp_path / "all", HASH)
    assert [r.state for r in archive.iter_decision_rows()] == [
        "inactive", "rewarded", "defaulted", "defaulted", "defaulted",
        "inactive", "defaulted", "defaulted", "defaulted", "defaulted",
    ]  # fmt: skip
    assert [tuple(r) for r in archive.iter_rewards()] == [
        ("event-1", 1_700_000_001.0, 1.0, "learned")
    ]
    # An archive exports a range of itself; an empty range writes nothing.
    assert export_log(archive, tmp_path / "part", t0, t0 + 0.5, encoding_hash=HASH)[1:] == (2, 0)
    assert export_log(archive, tmp_path / "none", 0.0, 1.0, encoding_hash=HASH).files == []


floats = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True, width=64)
names = st.text(min_size=1, max_size=12)
scalars = st.one_of(st.integers(-(2**53), 2**53), names, st.booleans(), st.none())
scalars = st.one_of(st.integers(-(2**53), 2**53), names, st.booleans(), st.none())


@st.composite
def archived(draw: st.DrawFn) -> Row:
    k = draw(st.integers(1, 5))
    actions = tuple(draw(st.lists(names, min_size=k, max_size=k, unique=True)))
    rec = DecisionRecord(
        event_id=draw(st.uuids()).hex,
        created_at=draw(st.floats(0.0, 4_102_444_800.0)),
        model_version=draw(names),
        context=draw(st.dictionaries(names, scalars)),
        x=np.array(draw(st.lists(floats, max_size=8)), dtype=np.float64),
        actions=actions,
        eligible=tuple(draw(st.lists(st.sampled_from(actions), unique=True))),
        action_index=draw(st.integers(0, k - 1)),
        probability=draw(floats),
        probabilities=np.array(draw(st.lists(floats, min_size=k, max_size=k))),
        scores=np.array(draw(st.lists(floats, min_size=k, max_size=k))),
        deferred=draw(st.booleans()),
    )
    state = draw(st.sampled_from([None, "inactive", "pending", "rewarded", "defaulted"]))
    return rec, draw(st.one_of(st.none(), floats)), state, draw(st.one_of(st.none(), names))


@settings(max_examples=40)
@given(st.lists(archived(), min_size=1, max_size=12, unique_by=lambda r: r[0].event_id))
def test_round_trip_property(tmp_path_factory: pytest.TempPathFactory, written: list[Row]) -> None:
    directory = tmp_path_factory.mktemp("archive")
    ArchiveWriter(directory, HASH, batch_size=5).write_decisions(written)
    read = list(Archive(directory, HASH).iter_decision_rows())
    assert len(read) == len(written)
    for got, (rec, total, state, user_id) in zip(read, written, strict=True):
        assert_same(got.record, rec)
        assert bits([got.reward_total if got.reward_total is not None else 0.0]) == bits(
            [total if total is not None else 0.0]
        )
        assert (got.reward_total is None, got.state, got.user_id) == (
            total is None, state, user_id
        )  # fmt: skip
