"""What a `banditrec` process imports: each command only its own modules, numba's NumPy
support without scipy.linalg, and train/simulate processes that end cleanly and at once.

Every probe runs in a fresh interpreter (a module imported once stays imported).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from banditrec.logged_data import write_logged
from banditrec.sim import AppSimulator

HEAVY = ("pandas", "fastapi", "uvicorn", "pydantic_settings", "httpx", "redis", "matplotlib")

_COMMAND_PROBE = """
import sys
from typer.testing import CliRunner
from banditrec.cli import app

result = CliRunner().invoke(app, sys.argv[1:])
assert result.exit_code == 0, result.output
names = ("numba", "scipy.linalg", {heavy})
print(" ".join(name for name in names if name in sys.modules))
"""


def _imported_by(*args: str) -> set[str]:
    probe = _COMMAND_PROBE.format(heavy=", ".join(repr(name) for name in HEAVY))
    done = subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return set(done.stdout.split())


def test_simulate_imports_neither_numba_nor_the_server(tmp_path: Path) -> None:
    assert _imported_by("simulate", "--rows", "100", "--out", str(tmp_path / "d.csv")) == set()


def test_train_imports_numba_but_not_scipy_linalg_nor_the_server(tmp_path: Path) -> None:
    data = tmp_path / "d.parquet"
    write_logged(AppSimulator().simulate_logged(300, np.random.default_rng(0)), data)
    args = ("train", "--data", str(data), "--model", str(tmp_path / "m.npz"))
    assert _imported_by(*args) == {"numba"}
    assert (tmp_path / "m.npz").is_file()


_NUMBA_PROBE = """
import sys
import numpy as np
from banditrec._startup import import_numba_numpy_support

import_numba_numpy_support()
assert "numba.np.arraymath" in sys.modules
assert "scipy.linalg" not in sys.modules
from banditrec.policies import LinUCB

policy = LinUCB().reset(3, 4)
rng = np.random.default_rng(0)
X = rng.normal(size=(200, 4))
policy.update_batch(X, rng.integers(0, 3, size=200), rng.random(200))
assert "scipy.linalg" not in sys.modules
# scipy stays importable, and a kernel needing BLAS still compiles and runs with it.
import scipy.linalg.cython_blas
from numba import njit

matmul = njit(lambda a, b: a @ b)
assert np.allclose(matmul(X[:3].T.copy(), X[:3]), X[:3].T @ X[:3])
np.save(sys.argv[1], policy.theta_)
"""


def test_kernels_run_without_scipy_linalg_and_blas_stays_available(tmp_path: Path) -> None:
    out = tmp_path / "theta.npy"
    subprocess.run(
        [sys.executable, "-c", _NUMBA_PROBE, str(out)],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    from banditrec.policies import LinUCB

    policy = LinUCB().reset(3, 4)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    policy.update_batch(X, rng.integers(0, 3, size=200), rng.random(200))
    # The same kernels in another process: the same model (to rounding, see _kernels).
    np.testing.assert_allclose(np.load(out), policy.theta_, rtol=1e-12, atol=1e-12)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "banditrec", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )  # fmt: skip


def test_train_and_simulate_processes_exit_with_their_status_and_full_output(
    tmp_path: Path,
) -> None:
    # They end with os._exit once done: the output must still be flushed, files in place.
    done = _cli("simulate", "--rows", "500", "--out", "d.csv", cwd=tmp_path)
    assert done.returncode == 0
    assert "Wrote 500 rows to d.csv" in done.stderr
    assert len((tmp_path / "d.csv").read_text().splitlines()) == 501
    done = _cli("train", "--data", "d.csv", "--model", "m.npz", cwd=tmp_path)
    assert done.returncode == 0
    assert "Trained on 500 rounds" in done.stderr
    assert (tmp_path / "m.npz").is_file()
    missing = _cli("train", "--data", "nope.csv", "--model", "n.npz", cwd=tmp_path)
    assert missing.returncode == 1
    assert "The data file nope.csv does not exist." in missing.stderr
    assert not (tmp_path / "n.npz").exists()
    usage = _cli("train", "--bogus", cwd=tmp_path)
    assert usage.returncode == 2
    assert "No such option: --bogus" in usage.stderr


def test_train_help_lists_every_policy_though_the_cli_imports_none_up_front() -> None:
    from typer.testing import CliRunner

    from banditrec.cli import app
    from banditrec.policies import POLICIES

    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    assert f"Policy: {', '.join(POLICIES)}." in " ".join(result.output.split())
