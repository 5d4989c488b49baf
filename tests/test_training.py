"""Training and model files: what is learned, what is written, and what is refused.

A bad CSV never writes a model (nor touches an existing one); a model file is arrays plus JSON
metadata, loads with `allow_pickle=False`, scores exactly like the model that was saved, and
is refused when corrupt or trained under another schema.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from banditrec import logged_data
from banditrec.exploration import EpsilonGreedy
from banditrec.features import load_default_schema, load_schema
from banditrec.logged_data import LoggedDataError, read_logged, read_logged_csv, write_logged
from banditrec.policies import LinUCB
from banditrec.sim import AppSimulator
from banditrec.snapshot import ModelFileError, load_model
from banditrec.training import train_from_csv, train_from_file
from conftest import other_schema_toml, write_schema_toml

SCHEMA = load_default_schema()


def rewrite(source: Path, target: Path, column: str, row: int, value: str) -> Path:
    with source.open(newline="") as f:
        header, *rows = csv.reader(f)
    rows[row - 1][header.index(column)] = value
    with target.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])
    return target


def drop_column(source: Path, target: Path, column: str) -> Path:
    with source.open(newline="") as f:
        header, *rows = csv.reader(f)
    keep = [i for i, name in enumerate(header) if name != column]
    with target.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(
            [[r[i] for i in keep] for r in [header, *rows]]
        )
    return target


# -- what training learns and writes -----------------------------------------------------------


def test_training_fits_ridge_statistics_per_action(data_file: Path, tmp_path: Path) -> None:
    model_path = tmp_path / "out" / "model.npz"
    model = train_from_csv(data_file, model_path, SCHEMA, LinUCB(ridge=2.0))
    data = read_logged_csv(data_file, SCHEMA)
    assert model_path.exists()
    assert model.n_updates == data.n_rounds == 2000
    assert model.version.endswith(f"-2000-{SCHEMA.hash[:8]}")
    policy = model.policy
    for a in range(SCHEMA.n_actions):
        Xa, ra = data.X[data.action == a], data.reward[data.action == a]
        assert policy.n_updates_[a] == len(Xa)
        A = 2.0 * np.eye(SCHEMA.n_features) + Xa.T @ Xa
        np.testing.assert_allclose(policy.A_[a], A, rtol=1e-12)
        np.testing.assert_allclose(policy.b_[a], Xa.T @ ra, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(policy.theta_[a], np.linalg.solve(A, Xa.T @ ra), atol=1e-10)


def test_model_file_round_trip_scores_identically(data_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    policy = LinUCB(alpha=0.7, ridge=1.5, exploration=EpsilonGreedy(0.1))
    trained = train_from_csv(data_file, path, SCHEMA, policy)
    loaded = load_model(path, SCHEMA)
    assert loaded.version == trained.version
    assert loaded.created_at == trained.created_at
    assert loaded.policy.get_params() == trained.policy.get_params()
    assert loaded.policy.exploration == EpsilonGreedy(0.1)
    # Bitwise on purpose, one code path: the arrays are stored exactly, loading refreshes A⁻¹
    # and θ by the same strict Cholesky kernel as the end of training, and both score with
    # the same kernel on the same arrays.
    for name, value in trained.policy.get_state().items():
        np.testing.assert_array_equal(loaded.policy.get_state()[name], value, err_msg=name)
    X = read_logged_csv(data_file, SCHEMA).X[:300]
    for x in X:
        a, b = trained.policy.score(x), loaded.policy.score(x)
        np.testing.assert_array_equal(a.score, b.score)
        np.testing.assert_array_equal(a.mean, b.mean)
        np.testing.assert_array_equal(a.width, b.width)


def test_model_file_holds_only_arrays_and_json_metadata(model_file: Path) -> None:
    with np.load(model_file, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    assert all(a.dtype.kind != "O" for a in arrays.values())
    assert {"A_", "b_", "n_updates_", "__metadata__"} <= set(arrays)
    metadata = json.loads(str(arrays["__metadata__"]))
    assert {"schema", "schema_hash", "actions", "n_updates", "created_at"} <= set(metadata)
    assert metadata["schema_hash"] == SCHEMA.hash
    assert metadata["schema"] == SCHEMA.to_dict()
    assert metadata["actions"] == list(SCHEMA.actions)
    assert metadata["n_updates"] == 2000 == int(arrays["n_updates_"].sum())
    assert metadata["policy"] == "linucb"
    assert metadata["policy_params"]["alpha"] == 1.0
    assert metadata["policy_params"]["ridge"] == 10.0
    assert metadata["exploration_params"]["epsilon"] == 0.01
    assert arrays["A_"].shape == (4, SCHEMA.n_features, SCHEMA.n_features)


# -- model files that are refused ---------------------------------------------------------


def test_load_refuses_a_model_trained_under_another_schema(
    model_file: Path, tmp_path: Path
) -> None:
    other = load_schema(other_schema_toml(tmp_path / "other.toml"))
    assert other.hash != SCHEMA.hash
    with pytest.raises(ModelFileError, match="trained with schema") as info:
        load_model(model_file, other)
    assert SCHEMA.hash[:12] in str(info.value) and other.hash[:12] in str(info.value)


def test_the_same_schema_from_another_file_loads_the_model(
    model_file: Path, tmp_path: Path
) -> None:
    # Rewritten from its dict form: other formatting, no comments, the same encoding.
    same = write_schema_toml(tmp_path / "same.toml", SCHEMA.to_dict())
    assert "#" not in same.read_text()
    assert load_model(model_file, load_schema(same)).n_updates == 2000


def _flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0xFF
    return bytes(out)


CORRUPTIONS = {
    "empty": lambda d: b"",
    "truncated-half": lambda d: d[: len(d) // 2],
    "truncated-last-byte": lambda d: d[:-1],
    "garbage": lambda d: b"\x00" * 200,
    "text": lambda d: b"not a model at all\n",
    "flipped-array-byte": lambda d: _flip(d, 1000),
    "flipped-metadata-byte": lambda d: _flip(d, len(d) - 300),
}


@pytest.mark.parametrize("damage", list(CORRUPTIONS))
def test_corrupt_model_file_is_refused(model_file: Path, damage: str) -> None:
    model_file.write_bytes(CORRUPTIONS[damage](model_file.read_bytes()))
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(model_file, SCHEMA)


def test_missing_model_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "absent.npz", SCHEMA)


def _arrays(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def test_model_without_metadata_is_refused(model_file: Path) -> None:
    arrays = _arrays(model_file)
    del arrays["__metadata__"]
    np.savez(model_file, **arrays)
    with pytest.raises(ModelFileError, match="no valid metadata"):
        load_model(model_file, SCHEMA)


def test_model_of_another_format_version_is_refused(model_file: Path) -> None:
    arrays = _arrays(model_file)
    metadata = json.loads(str(arrays["__metadata__"]))
    arrays["__metadata__"] = np.array(json.dumps({**metadata, "format_version": 99}))
    np.savez(model_file, **arrays)
    with pytest.raises(ModelFileError, match="format version 99"):
        load_model(model_file, SCHEMA)


def test_model_holding_nan_is_refused(model_file: Path) -> None:
    arrays = _arrays(model_file)
    arrays["b_"][2, 5] = np.nan
    np.savez(model_file, **arrays)
    with pytest.raises(ModelFileError, match="NaN or infinity"):
        load_model(model_file, SCHEMA)


class _Payload:
    """Pickles to a call that creates a marker file: proof of code execution on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def test_pickled_objects_in_a_model_file_are_never_executed(
    model_file: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    arrays = _arrays(model_file)
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(marker)
    arrays["b_"] = evil
    np.savez(model_file, **arrays)  # numpy pickles the object array
    with zipfile.ZipFile(model_file) as z:
        assert b"mkdir" in z.read("b_.npy")
    with pytest.raises(ModelFileError):
        load_model(model_file, SCHEMA)
    assert not marker.exists()


# -- a bad CSV writes nothing ---------------------------------------------------------------

BAD_FILES = {
    "missing-column": lambda src, dst: drop_column(src, dst, "avg_session_length"),
    "non-numeric": lambda src, dst: rewrite(src, dst, "n_sessions", 5, "ten"),
    "nan-text": lambda src, dst: rewrite(src, dst, "recent_engagement", 5, "nan"),
    "empty-cell": lambda src, dst: rewrite(src, dst, "avg_session_length", 5, ""),
    "out-of-range": lambda src, dst: rewrite(src, dst, "days_since_install", 5, "99999"),
    "unknown-action": lambda src, dst: rewrite(src, dst, "action", 5, "buy_a_pony"),
    "propensity-0": lambda src, dst: rewrite(src, dst, "propensity", 5, "0"),
    "propensity-over-1": lambda src, dst: rewrite(src, dst, "propensity", 5, "1.01"),
    "nan-reward": lambda src, dst: rewrite(src, dst, "reward", 5, "NaN"),
}
EXPECTED = {
    "missing-column": "has no column avg_session_length",
    "non-numeric": "column 'n_sessions', row 5",
    "nan-text": "column 'recent_engagement', row 5",
    "empty-cell": "column 'avg_session_length', row 5",
    "out-of-range": "column 'days_since_install', row 5",
    "unknown-action": "column 'action', row 5",
    "propensity-0": "column 'propensity', row 5",
    "propensity-over-1": "column 'propensity', row 5",
    "nan-reward": "column 'reward', row 5",
}


def _bad_file(kind: str, data_file: Path, directory: Path) -> Path:
    target = directory / "bad.csv"
    if kind == "empty-file":
        target.write_text("")
    elif kind == "header-only":
        target.write_text(data_file.read_text().splitlines()[0] + "\n")
    else:
        BAD_FILES[kind](data_file, target)
    return target


ALL_BAD = [*BAD_FILES, "empty-file", "header-only"]
EXPECTED |= {"empty-file": "is empty", "header-only": "has a header but no rows"}


@pytest.mark.parametrize("kind", ALL_BAD)
def test_bad_csv_writes_no_model(data_file: Path, tmp_path: Path, kind: str) -> None:
    bad = _bad_file(kind, data_file, tmp_path)
    out = tmp_path / "models"
    with pytest.raises(LoggedDataError, match=EXPECTED[kind]):
        train_from_csv(bad, out / "model.npz", SCHEMA, LinUCB())
    assert not out.exists()


@pytest.mark.parametrize("kind", ALL_BAD)
def test_bad_csv_leaves_an_existing_model_byte_identical(
    data_file: Path, model_file: Path, tmp_path: Path, kind: str
) -> None:
    bad = _bad_file(kind, data_file, tmp_path)
    before, stat = model_file.read_bytes(), model_file.stat()
    listing = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(LoggedDataError, match=EXPECTED[kind]):
        train_from_csv(bad, model_file, SCHEMA, LinUCB())
    assert model_file.read_bytes() == before
    assert model_file.stat().st_mtime_ns == stat.st_mtime_ns
    assert model_file.stat().st_ino == stat.st_ino  # not even replaced by an identical copy
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no temp file left behind


# -- streaming: Parquet, batches, memory ---------------------------------------------------


def _online(X: np.ndarray, actions: np.ndarray, rewards: np.ndarray, policy: Any) -> Any:
    policy.reset(SCHEMA.n_actions, SCHEMA.n_features)
    for x, a, r in zip(X, actions, rewards, strict=True):
        policy.update(x, int(a), float(r))
    return policy


@pytest.mark.parametrize("gamma", [1.0, 0.999])
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_training_in_batches_equals_learning_row_by_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, gamma: float
) -> None:
    # Many small batches (one batched ridge fit per action each) against the online path,
    # one Sherman–Morrison update per row: the same statistics and θ to 1e-9.
    logged = AppSimulator().simulate_logged(3000, np.random.default_rng(11))
    path = tmp_path / f"logged{suffix}"
    write_logged(logged, path)
    monkeypatch.setattr(logged_data, "READ_BLOCK_BYTES", 30_000)
    monkeypatch.setattr(logged_data, "PARQUET_BATCH_ROWS", 300)
    assert len(list(logged_data.iter_logged(path, SCHEMA))) >= 10
    model = train_from_file(path, tmp_path / "m.npz", SCHEMA, LinUCB(gamma=gamma))
    data = read_logged(path, SCHEMA)
    online = _online(data.X, data.action, data.reward, LinUCB(gamma=gamma))
    for name in ("A_", "b_", "theta_", "A_inv_"):
        np.testing.assert_allclose(
            getattr(model.policy, name), getattr(online, name), rtol=1e-9, atol=1e-9
        )
    np.testing.assert_array_equal(model.policy.n_updates_, online.n_updates_)


def test_parquet_trains_the_exact_simulated_values(tmp_path: Path) -> None:
    logged = AppSimulator().simulate_logged(2000, np.random.default_rng(12))
    write_logged(logged, tmp_path / "logged.parquet")
    model = train_from_file(tmp_path / "logged.parquet", tmp_path / "m.npz", SCHEMA, LinUCB())
    X = SCHEMA.vectorize_many(logged)  # Parquet keeps every bit: no CSV rounding
    actions = np.array([SCHEMA.actions.index(a) for a in logged["action"]])
    online = _online(X, actions, logged["reward"], LinUCB())
    np.testing.assert_allclose(model.policy.A_, online.A_, rtol=1e-12)
    np.testing.assert_allclose(model.policy.theta_, online.theta_, atol=1e-9)
    assert load_model(tmp_path / "m.npz", SCHEMA).n_updates == 2000


def test_first_rows_spans_batches_and_still_checks_the_rest(
    data_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logged_data, "READ_BLOCK_BYTES", 20_000)
    model = train_from_file(data_file, tmp_path / "m.npz", SCHEMA, LinUCB(), first_rows=777)
    data = read_logged(data_file, SCHEMA)
    head = _online(data.X[:777], data.action[:777], data.reward[:777], LinUCB())
    assert model.n_updates == 777
    np.testing.assert_allclose(model.policy.A_, head.A_, rtol=1e-12)
    bad = rewrite(data_file, tmp_path / "bad.csv", "reward", 1900, "x")
    with pytest.raises(LoggedDataError, match="column 'reward', row 1900 "):
        train_from_file(bad, tmp_path / "other.npz", SCHEMA, LinUCB(), first_rows=10)
    assert not (tmp_path / "other.npz").exists()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_bad_row_in_a_late_batch_writes_no_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_file: Path, suffix: str
) -> None:
    logged = AppSimulator().simulate_logged(3000, np.random.default_rng(13))
    logged["propensity"][2999] = 0.0
    bad = tmp_path / f"bad{suffix}"
    write_logged(logged, bad)
    monkeypatch.setattr(logged_data, "READ_BLOCK_BYTES", 20_000)
    monkeypatch.setattr(logged_data, "PARQUET_BATCH_ROWS", 300)
    before = model_file.read_bytes()
    with pytest.raises(LoggedDataError, match="column 'propensity', row 3000"):
        train_from_file(bad, model_file, SCHEMA, LinUCB())
    assert model_file.read_bytes() == before


_MEMORY_PROBE = """
import resource, sys
from banditrec.features import load_default_schema
from banditrec.policies import LinUCB
from banditrec.training import train_from_file

schema = load_default_schema()
train_from_file(sys.argv[1], sys.argv[3], schema, LinUCB())  # warm: imports, kernels, pools
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model = train_from_file(sys.argv[2], sys.argv[3], schema, LinUCB())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(model.n_updates, (after - before) * 1024)
"""


def test_training_streams_a_file_in_bounded_memory(tmp_path: Path) -> None:
    # 1.5M rows: their feature matrix alone is 264 MB in memory (the file ~145 MB). Streamed,
    # the peak resident size of the process grows by a small fraction of that.
    rows = 1_500_000
    small, big = tmp_path / "small.csv", tmp_path / "big.csv"
    write_logged(AppSimulator().simulate_logged(20_000, np.random.default_rng(0)), small)
    write_logged(AppSimulator().logged_batches(rows, np.random.default_rng(1)), big)
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(small), str(big), str(tmp_path / "m.npz")],
        capture_output=True, text=True, timeout=240, check=True,
    )  # fmt: skip
    n, growth = map(int, done.stdout.split())
    in_memory = rows * SCHEMA.n_features * 8
    assert n == rows
    assert growth < in_memory / 3, f"peak RSS grew by {growth / 2**20:.0f} MB"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_training_memory_follows_the_batch_size_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    # The NumPy side of training (the encoded batch, its feature matrix), traced by
    # tracemalloc: with small batches its peak is the same for a file 10x longer, and far
    # below the longer file's matrix. The long file's model equals the one learned in a
    # single batch (one `update_batch` of all rows) to 1e-9.
    import tracemalloc

    short, long = tmp_path / f"short{suffix}", tmp_path / f"long{suffix}"
    write_logged(AppSimulator().simulate_logged(20_000, np.random.default_rng(3)), short)
    write_logged(AppSimulator().logged_batches(200_000, np.random.default_rng(4)), long)
    monkeypatch.setattr(logged_data, "READ_BLOCK_BYTES", 64 * 1024)
    monkeypatch.setattr(logged_data, "PARQUET_BATCH_ROWS", 1000)
    train_from_file(short, tmp_path / "warm.npz", SCHEMA, LinUCB())  # imports, kernels, pools

    def traced_peak(path: Path) -> tuple[int, Any]:
        tracemalloc.start()
        try:
            model = train_from_file(path, tmp_path / "m.npz", SCHEMA, LinUCB())
            return tracemalloc.get_traced_memory()[1], model
        finally:
            tracemalloc.stop()

    short_peak, _ = traced_peak(short)
    long_peak, model = traced_peak(long)
    long_matrix = 200_000 * SCHEMA.n_features * 8  # 35 MB
    assert long_peak < 2 * short_peak + 1_000_000, (short_peak, long_peak)
    assert long_peak < long_matrix / 4, long_peak
    data = read_logged(long, SCHEMA)
    at_once = LinUCB().reset(SCHEMA.n_actions, SCHEMA.n_features)
    at_once.update_batch(data.X, data.action, data.reward)
    for name in ("A_", "b_", "theta_"):
        np.testing.assert_allclose(
            getattr(model.policy, name), getattr(at_once, name), rtol=1e-9, atol=1e-9
        )


def test_simulate_and_train_with_parquet_files_from_the_command_line(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "banditrec", *args],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip

    done = run("simulate", "--rows", "3000", "--out", "logged.parquet")
    assert done.returncode == 0, done.stderr
    assert "Wrote 3,000 rows to logged.parquet" in " ".join(done.stderr.split())
    done = run("train", "--data", "logged.parquet", "--model", "m.npz")
    assert done.returncode == 0, done.stderr
    assert load_model(tmp_path / "m.npz", SCHEMA).n_updates == 3000
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 broken")
    done = run("train", "--data", "bad.parquet", "--model", "m2.npz")
    assert done.returncode == 1
    assert "is not valid Parquet" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "m2.npz").exists()
