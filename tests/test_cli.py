"""The `banditrec` command: simulate, train, serve — and the real server, end to end.

The end-to-end tests start real processes (`python -m banditrec serve`, `python -m uvicorn`)
on a free port, talk to them over HTTP with httpx, and always terminate them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from banditrec.cli import app
from banditrec.features import load_default_schema
from banditrec.snapshot import load_model, read_metadata
from banditrec.store.redis import RedisEventStore
from conftest import ACTIONS, SEED_REQUEST, other_schema_toml
from redis_server import RedisServer
from serving import clean_env, free_port, running_process

SCHEMA = load_default_schema()
HEADER = [
    *SEED_REQUEST, "action", "propensity", "reward",
    *(f"expected_reward_{a}" for a in ACTIONS),
]  # fmt: skip
STARTUP_TIMEOUT = 60.0  # a cold numba cache compiles the kernels in the fresh process

runner = CliRunner()


@pytest.fixture(autouse=True)
def _scratch_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in tmp_path: the CLI's default paths are relative to the working directory.

    `serve` passes its settings to the workers through BANDITREC_* variables of this
    process; they are put back afterwards so that no later test reads them.
    """
    monkeypatch.chdir(tmp_path)
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


# -- simulate and train --------------------------------------------------------------------


def test_simulate_writes_the_seed_layout_reproducibly(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    for out, seed in ((a, "5"), (b, "5"), (c, "6")):
        result = invoke("simulate", "--rows", "200", "--seed", seed, "--out", str(out))
        assert result.exit_code == 0, result.output
        assert "Wrote 200 rows" in flat(result.output)
    lines = a.read_text().splitlines()
    assert lines[0].split(",") == HEADER
    assert len(lines) == 201
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_train_fits_the_simulated_file(tmp_path: Path) -> None:
    data, model = tmp_path / "sim.csv", tmp_path / "models" / "m.npz"
    assert invoke("simulate", "--rows", "300", "--seed", "1", "--out", str(data)).exit_code == 0
    result = invoke(
        "train", "--data", str(data), "--model", str(model),
        "--alpha", "0.5", "--ridge", "2", "--epsilon", "0.1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Trained on 300 rounds" in flat(result.output)
    loaded = load_model(model, SCHEMA)
    assert loaded.n_updates == 300
    # The default policy (auto) takes --alpha as its widest width, --ridge as its λ.
    assert loaded.policy.name == "auto"
    params = loaded.policy.get_params()
    assert params | {"max_alpha": 0.5, "ridge": 2.0} == params
    assert loaded.policy.exploration.get_params()["epsilon"] == 0.1
    linucb = tmp_path / "models" / "linucb.npz"
    result = invoke(
        "train", "--data", str(data), "--model", str(linucb), "--policy", "linucb",
        "--alpha", "0.5", "--ridge", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    params = load_model(linucb, SCHEMA).policy.get_params()
    assert params | {"alpha": 0.5, "ridge": 2.0} == params


def test_default_paths_are_relative_to_the_working_directory(tmp_path: Path) -> None:
    assert invoke("simulate", "--rows", "100").exit_code == 0
    assert (tmp_path / "data" / "bandit_simulated.csv").exists()
    result = invoke("train")
    assert result.exit_code == 0, result.output
    assert load_model(tmp_path / "data" / "linucb_model.npz", SCHEMA).n_updates == 100
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "bandit_simulated.csv",
        "linucb_model.npz",
    ]


def _with_cell(source: Path, target: Path, column: str, row: int, value: str) -> Path:
    header, *rows = source.read_text().splitlines()
    cells = rows[row - 1].split(",")
    cells[header.split(",").index(column)] = value
    rows[row - 1] = ",".join(cells)
    target.write_text("\n".join([header, *rows]) + "\n")
    return target


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("n_sessions", "lots", "column 'n_sessions', row 4 (line 5 of the file): value 'lots'"),
        ("avg_session_length", "nan", "column 'avg_session_length', row 4"),
        ("action", "teleport", "column 'action', row 4"),
        ("propensity", "0", "column 'propensity', row 4"),
    ],
)
def test_train_reports_a_bad_csv_exits_1_and_writes_nothing(
    data_file: Path, model_file: Path, tmp_path: Path, column: str, value: str, expected: str
) -> None:
    bad = _with_cell(data_file, tmp_path / "bad.csv", column, 4, value)
    fresh = tmp_path / "fresh" / "model.npz"
    result = invoke("train", "--data", str(bad), "--model", str(fresh))
    assert result.exit_code == 1
    assert "error:" in result.output and expected in flat(result.output)
    assert not fresh.parent.exists()

    before = model_file.read_bytes()
    result = invoke("train", "--data", str(bad), "--model", str(model_file))
    assert result.exit_code == 1
    assert model_file.read_bytes() == before


def test_train_reports_missing_and_empty_files(tmp_path: Path) -> None:
    model = tmp_path / "model.npz"
    result = invoke("train", "--data", str(tmp_path / "nope.csv"), "--model", str(model))
    assert result.exit_code == 1 and "does not exist" in flat(result.output)
    (tmp_path / "empty.csv").write_text("")
    result = invoke("train", "--data", str(tmp_path / "empty.csv"), "--model", str(model))
    assert result.exit_code == 1 and "is empty" in flat(result.output)
    assert not model.exists()


def test_train_refuses_a_zero_ridge(data_file: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.npz"
    result = invoke("train", "--data", str(data_file), "--model", str(model), "--ridge", "0")
    assert result.exit_code == 1
    assert "ridge must be a finite number > 0" in flat(result.output)
    assert not model.exists()


def test_train_in_a_real_process_exits_1_with_the_message(data_file: Path, tmp_path: Path) -> None:
    bad = _with_cell(data_file, tmp_path / "bad.csv", "reward", 2, "maybe")
    model = tmp_path / "model.npz"
    done = subprocess.run(
        [sys.executable, "-m", "banditrec", "train", "--data", str(bad), "--model", str(model)],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "column 'reward', row 2 (line 3 of the file): value 'maybe'" in flat(done.stderr)
    assert not model.exists()


def test_serve_refuses_an_unreadable_schema_before_starting(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `serve` exports its settings for the workers; let monkeypatch restore the environment.
    monkeypatch.delenv("BANDITREC_MODEL_PATH", raising=False)
    monkeypatch.delenv("BANDITREC_SCHEMA_PATH", raising=False)
    missing = tmp_path / "nope.toml"
    result = invoke("serve", "--model", str(model_file), "--schema", str(missing))
    assert result.exit_code == 1
    assert "Cannot read the schema file" in flat(result.output)


# -- real server processes -------------------------------------------------------------------


@contextmanager
def running(args: list[str], cwd: Path, port: int, **env: str) -> Iterator[str]:
    """Start a server process, wait until /health answers, yield its URL, always stop it."""
    url = f"http://127.0.0.1:{port}"
    with running_process(args, cwd, url, clean_env(**env), STARTUP_TIMEOUT):
        yield url


@pytest.fixture(scope="module")
def server(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m banditrec serve --model ... --port <free>` run from a scratch directory."""
    cwd = tmp_path_factory.mktemp("serve")
    model = cwd / "model.npz"
    shutil.copyfile(trained[1], model)
    port = free_port()
    args = [sys.executable, "-m", "banditrec", "serve", "--model", str(model),
            "--port", str(port), "--log-level", "warning"]  # fmt: skip
    with running(args, cwd, port) as url:
        yield url


def test_end_to_end_seed_request_over_http(server: str, trained: tuple[Path, Path]) -> None:
    health = httpx.get(f"{server}/health", timeout=5)
    assert health.status_code == 200
    h = health.json()
    assert h | {"status": "ok", "model_loaded": True, "n_actions": 4, "alpha": 1.0} == h
    assert h["model_version"].startswith(read_metadata(trained[1])["version"])

    # Exactly the README's curl: the seed's body as JSON text.
    response = httpx.post(
        f"{server}/recommend_action",
        content=json.dumps(SEED_REQUEST),
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_id"] == "u123"
    assert body["recommended_action"] in ACTIONS
    assert list(body["scores"]) == list(ACTIONS)
    assert body["ucb_score"] == body["scores"][body["recommended_action"]]
    assert body["alpha"] == 1.0
    assert len(body["event_id"]) == 32
    probabilities = body["probabilities"]
    assert list(probabilities) == list(ACTIONS)
    assert body["probability"] == probabilities[body["recommended_action"]]
    assert 0 < body["probability"] <= 1
    assert math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-12)
    assert min(probabilities.values()) >= 0.01 / 4 - 1e-12  # LinUCB: ε = 0.01
    assert body["model_version"] == h["model_version"]
    # The served scores are the trained model's.
    model = load_model(trained[1], SCHEMA)
    # (The fused ε-greedy kernel serves, `score` is the split one: equal to rounding.)
    np.testing.assert_allclose(
        list(body["scores"].values()),
        model.policy.score(SCHEMA.vectorize(SEED_REQUEST)).score,
        rtol=1e-13,
        atol=1e-15,
    )

    assert httpx.get(f"{server}/docs", timeout=5).status_code == 200
    paths = httpx.get(f"{server}/openapi.json", timeout=5).json()["paths"]
    assert {"/health", "/recommend_action"} <= set(paths)


def test_end_to_end_bad_requests_over_http(server: str) -> None:
    url = f"{server}/recommend_action"
    bad = httpx.post(url, json={**SEED_REQUEST, "n_sessions": -1}, timeout=5)
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["field"] == "n_sessions"
    assert "greater than or equal to 0" in bad.json()["message"]

    nan = json.dumps(SEED_REQUEST).replace("180.0", "NaN")
    bad = httpx.post(url, content=nan, headers={"Content-Type": "application/json"}, timeout=5)
    assert bad.status_code == 422
    assert "avg_session_length: Input should be a finite number" in bad.json()["message"]

    big = json.dumps({**SEED_REQUEST, "pad": "x" * 70_000})
    too_big = httpx.post(url, content=big, headers={"Content-Type": "application/json"}, timeout=5)
    assert too_big.status_code == 413

    text = httpx.post(url, content=json.dumps(SEED_REQUEST), timeout=5)
    assert text.status_code == 415

    assert httpx.post(url, json=SEED_REQUEST, timeout=5).status_code == 200  # still serving


def test_end_to_end_streamed_body_over_the_limit_is_413(server: str) -> None:
    big = json.dumps({**SEED_REQUEST, "pad": "x" * 200_000}).encode()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    response = httpx.post(
        f"{server}/recommend_action",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text


def test_uvicorn_serves_the_app_configured_by_environment(model_file: Path, tmp_path: Path) -> None:
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "banditrec.api:app", "--port", str(port),
            "--log-level", "warning"]  # fmt: skip
    env = {"BANDITREC_MODEL_PATH": str(model_file), "BANDITREC_SEED": "0"}
    with running(args, tmp_path, port, **env) as url:
        health = httpx.get(f"{url}/health", timeout=5).json()
        assert health["model_loaded"] is True
        assert health["model_version"].startswith(read_metadata(model_file)["version"])
        response = httpx.post(f"{url}/recommend_action", json=SEED_REQUEST, timeout=5)
        assert response.status_code == 200
        assert response.json()["recommended_action"] in ACTIONS


def test_serve_fails_on_a_model_trained_under_another_schema(
    model_file: Path, tmp_path: Path
) -> None:
    other = other_schema_toml(tmp_path / "other.toml")
    port = free_port()
    args = [sys.executable, "-m", "banditrec", "serve", "--model", str(model_file),
            "--schema", str(other), "--port", str(port)]  # fmt: skip
    done = subprocess.run(
        args, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=STARTUP_TIMEOUT
    )
    assert done.returncode == 1
    log = flat(done.stdout + done.stderr)
    assert log.startswith("error: ")  # one line, before any server starts: no traceback
    assert "Traceback" not in log
    assert "was trained with schema" in log and "retrain the model" in log
    with pytest.raises(httpx.TransportError):  # and nothing is listening
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)


# -- the operator's details (issue 7, items 10 and 17) ----------------------------------------


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m banditrec ARGS` in a real process; its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "banditrec", *args],
        cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=STARTUP_TIMEOUT,
    )  # fmt: skip


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    done = run_cli("--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"banditrec {version('banditrec')}"


def test_serve_refuses_an_unknown_log_level_with_the_choices(tmp_path: Path) -> None:
    done = run_cli("serve", "--log-level", "verbose", "--port", str(free_port()), cwd=tmp_path)
    assert done.returncode == 2
    message = flat(done.stderr)
    assert "Invalid value for '--log-level'" in message
    assert "'verbose' is not one of 'critical', 'error', 'warning', 'info', 'debug'" in message
    assert "KeyError" not in message and "Traceback" not in message


def test_serve_refuses_an_explicit_model_path_that_does_not_exist(tmp_path: Path) -> None:
    port = free_port()
    done = run_cli("serve", "--model", "data/linucb_modle.npz", "--port", str(port), cwd=tmp_path)
    assert done.returncode == 1
    assert flat(done.stderr) == (
        "error: The model file data/linucb_modle.npz does not exist. Train one with "
        "`banditrec train --model data/linucb_modle.npz`, or leave out --model to serve "
        "from the prior."
    )
    with pytest.raises(httpx.TransportError):  # nothing started
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
    assert not (tmp_path / "data").exists()  # and no event log was created


def test_serve_refuses_a_model_path_from_the_environment_that_does_not_exist(
    tmp_path: Path,
) -> None:
    done = run_cli(
        "serve", "--port", str(free_port()), cwd=tmp_path, BANDITREC_MODEL_PATH="models/m.npz"
    )
    assert done.returncode == 1
    assert flat(done.stderr) == (
        "error: The model file models/m.npz (BANDITREC_MODEL_PATH) does not exist. Check the "
        "path, or unset the variable to serve from the prior."
    )


def test_serve_refuses_a_busy_port_in_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli("serve", "--port", str(port), cwd=tmp_path)
    assert done.returncode == 1
    message = flat(done.stderr)
    assert message.startswith(f"error: Port {port} on 127.0.0.1 is already in use")
    assert f"fuser -k {port}/tcp" in message and "--port" in message


def test_serve_refuses_bad_settings_in_one_line(tmp_path: Path) -> None:
    done = run_cli("serve", "--port", str(free_port()), cwd=tmp_path, BANDITREC_MAX_CONNECTIONS="0")
    assert done.returncode == 1
    message = flat(done.stderr)
    assert message.startswith("error: Invalid settings: BANDITREC_MAX_CONNECTIONS:")
    assert "greater than or equal to 1" in message and "Traceback" not in message


def test_serve_without_a_model_file_logs_the_prior_and_the_replay_in_uvicorn_format(
    tmp_path: Path,
) -> None:
    """The default model path may be absent (prior, with a warning); the `banditrec`
    logger's lines appear at INFO; --db puts the event log where it says."""
    port = free_port()
    db = tmp_path / "logs" / "mine.db"
    (tmp_path / "logs").mkdir()
    args = [sys.executable, "-m", "banditrec", "serve", "--port", str(port), "--db", str(db),
            "--no-access-log"]  # fmt: skip
    with running(args, tmp_path, port, BANDITREC_SNAPSHOT_DIR=str(tmp_path / "snaps")) as url:
        assert httpx.get(f"{url}/health", timeout=5).json()["model_loaded"] is False
        assert db.exists()
        log = (tmp_path / f"server-{port}.log").read_text()
    assert "WARNING:  No model file at data/linucb_model.npz: serving from the prior." in log
    assert "learn events replayed." in log
    assert any(line.startswith("INFO:     Model from ") for line in log.splitlines())
    assert not (tmp_path / "data" / "events.db").exists()


def test_serve_store_logs_decisions_in_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    """--store redis://... makes the server log to (and learn from) the Redis event log."""
    port = free_port()
    args = [sys.executable, "-m", "banditrec", "serve", "--port", str(port),
            "--store", redis_server.url, "--no-access-log"]  # fmt: skip
    with running(args, tmp_path, port, BANDITREC_SNAPSHOT_DIR=str(tmp_path / "snaps")) as url:
        body = {"context": {k: v for k, v in SEED_REQUEST.items() if k != "user_id"},
                "event_id": "via-redis"}  # fmt: skip
        assert httpx.post(f"{url}/v1/rank", json=body, timeout=5).status_code == 200
        reward = httpx.post(f"{url}/v1/events/via-redis/reward", json={"value": 1.0}, timeout=5)
        assert reward.json()["status"] == "learned"
        log = (tmp_path / f"server-{port}.log").read_text()
    store = RedisEventStore.from_url(redis_server.url, SCHEMA.encoding_hash)
    try:
        logged = store.get_decision("via-redis")
        assert logged is not None and logged.event_id == "via-redis"
        assert [e.event_id for e in store.learn_events_after(0)] == ["via-redis"]
    finally:
        store.close()
    assert f"INFO:     Event log: {redis_server.url}." in log
    assert not (tmp_path / "data" / "events.db").exists()  # nothing went to SQLite


def test_serve_store_with_an_unknown_scheme_is_one_error_line(tmp_path: Path) -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "banditrec", "serve", "--port", str(port), "--store", "mysql://x/y"],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=STARTUP_TIMEOUT,
    )  # fmt: skip
    assert done.returncode != 0
    assert (
        "Cannot start banditrec (StoreError): The store URL 'mysql://x/y' has an unknown "
        "scheme 'mysql'; use sqlite:///path/to/events.db or redis://host:port/db." in done.stderr
    )
    assert "Traceback" not in done.stderr


def test_serve_help_lists_every_setting_with_its_default(tmp_path: Path) -> None:
    from banditrec.config import Settings

    done = run_cli("serve", "--help", cwd=tmp_path, COLUMNS="300")
    assert done.returncode == 0
    text = flat(done.stdout)
    for name in Settings.model_fields:
        assert f"BANDITREC_{name.upper()} (default" in text
    assert "BANDITREC_MAX_CONNECTIONS (default 1000): Open connections per worker" in text
    assert 'BANDITREC_DB_PATH (default "data/events.db"): SQLite event log.' in text


def test_train_rows_learns_only_the_first_rows(data_file: Path, tmp_path: Path) -> None:
    model = tmp_path / "first.npz"
    result = invoke("train", "--data", str(data_file), "--model", str(model), "--rows", "50")
    assert result.exit_code == 0, result.output
    assert "Trained on 50 rounds" in flat(result.output)
    assert load_model(model, SCHEMA).n_updates == 50


def test_serve_removes_metrics_directories_of_dead_servers(
    model_file: Path, tmp_path: Path
) -> None:
    """`kill -9` of a multi-worker server leaves its metrics directory; the next start
    removes the ones whose owner is gone, and keeps a live owner's."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    orphan = tmp / f"banditrec-metrics-{dead.stdout.strip()}-abc123"
    live = tmp / f"banditrec-metrics-{os.getpid()}-def456"
    for directory in (orphan, live):
        directory.mkdir()
        (directory / "counter_1.db").write_bytes(b"x")
    port = free_port()
    args = [sys.executable, "-m", "banditrec", "serve", "--model", str(model_file),
            "--port", str(port), "--workers", "2", "--log-level", "warning"]  # fmt: skip
    env = {"TMPDIR": str(tmp), "BANDITREC_DB_PATH": str(tmp_path / "events.db"),
           "BANDITREC_SNAPSHOT_DIR": str(tmp_path / "snaps")}  # fmt: skip
    with running_process(args, tmp_path, f"http://127.0.0.1:{port}", clean_env(**env)) as server:
        assert not orphan.exists()
        assert live.exists()
        own = [p.name for p in tmp.glob("banditrec-metrics-*") if p != live]
        assert own and all(
            name.startswith(f"banditrec-metrics-{server.process.pid}-") for name in own
        )


# -- make run ---------------------------------------------------------------------------------


def make_checkout(tmp_path: Path) -> tuple[Path, list[str]]:
    """The Makefile and pyproject.toml in a scratch directory, with a venv whose bin/ is
    this interpreter's, marked installed; and the make command that never reinstalls."""
    root = Path(__file__).resolve().parents[1]
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("Makefile", "pyproject.toml"):
        shutil.copyfile(root / name, checkout / name)
    venv = checkout / "venv"
    venv.mkdir()
    (venv / "bin").symlink_to(Path(sys.executable).parent)
    for name in ("pyvenv.cfg", "lib", "lib64"):  # so that venv/bin/python is this venv
        if (Path(sys.prefix) / name).exists():
            (venv / name).symlink_to(Path(sys.prefix) / name)
    (venv / ".installed").touch()
    # -o: treat the install stamp as up to date whatever its age, so the test never runs
    # pip (which would re-point the shared environment's editable install here).
    return checkout, ["make", "--no-print-directory", "VENV=venv", "-o", "venv/.installed"]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_reports_a_busy_port_before_doing_anything(tmp_path: Path) -> None:
    """A second `make run` while the first still serves: a clear error naming the port
    and how to free it or pick another, before simulating, training or serving."""
    import socket

    checkout, make = make_checkout(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [*make, "run", f"PORT={port}"],
            cwd=checkout, env=clean_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode != 0
    message = flat(done.stderr)
    assert f"make run: Port {port} on 127.0.0.1 is already in use by another process." in message
    assert f"fuser -k {port}/tcp" in message and f"make run PORT={port + 1}" in message
    assert not (checkout / "data").exists()  # nothing simulated, trained or logged


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_reuses_data_and_model_and_fails_loudly_when_the_server_does(
    tmp_path: Path,
) -> None:
    """Data and model are files: present, they are reused (and said so). When the server
    cannot start, the traffic phase stops at once and make fails with a message, instead
    of waiting or printing that the server is running."""
    checkout, make = make_checkout(tmp_path)
    env = clean_env()
    first = subprocess.run([*make, "data/linucb_model.npz", "ROWS=300"], cwd=checkout, env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stderr
    model_bytes = (checkout / "data" / "linucb_model.npz").read_bytes()
    # A schema file that does not exist: the server refuses to start.
    done = subprocess.run(
        [*make, "run", f"PORT={free_port()}", "TRAFFIC_SECONDS=5"],
        cwd=checkout, env=env | {"BANDITREC_SCHEMA_PATH": str(tmp_path / "nope.toml")},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = flat(done.stdout + done.stderr)
    assert "Reusing data/bandit_simulated.csv" in out
    assert "Reusing data/linucb_model.npz" in out
    assert (checkout / "data" / "linucb_model.npz").read_bytes() == model_bytes
    assert done.returncode != 0
    assert "Cannot read the schema file" in out
    assert "exited before it answered" in out
    assert "make run: the traffic phase failed or was interrupted (see above)" in out
    assert "the server was stopped." in out
    assert "The server is still running" not in out


def test_long_files_are_written_in_chunks_with_the_same_bytes_and_report_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from banditrec import logged_data
    from banditrec.policies import LinUCB
    from banditrec.sim import AppSimulator
    from banditrec.training import train_from_csv

    logged = AppSimulator().simulate_logged(250, np.random.default_rng(0))
    logged_data.write_logged_csv(logged, tmp_path / "whole.csv")
    monkeypatch.setattr(logged_data, "WRITE_CHUNK_ROWS", 100)
    calls: list[tuple[str, int, int]] = []
    logged_data.write_logged_csv(logged, tmp_path / "chunked.csv", lambda *a: calls.append(a))
    assert (tmp_path / "chunked.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert calls == [("writing", 100, 250), ("writing", 200, 250), ("writing", 250, 250)]

    stages: list[tuple[str, int, int]] = []
    train_from_csv(
        tmp_path / "whole.csv", tmp_path / "m.npz", SCHEMA, LinUCB(),
        progress=lambda *a: stages.append(a),
    )  # fmt: skip
    assert [s[0] for s in stages][:2] == ["reading", "checking"]
    assert stages[-1] == ("learning", 1, 1)
    checks = [s for s in stages if s[0] in ("checking", "encoding")]
    assert checks[-1][1] == checks[-1][2]  # the last check completes its bar


def test_simulate_and_train_report_an_unwritable_place_in_one_line(
    data_file: Path, tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "file.txt"  # a file where a directory should be: even root fails
    not_a_dir.write_text("")
    out = not_a_dir / "x.csv"
    done = run_cli("simulate", "--rows", "10", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 1
    assert flat(done.stderr).startswith(f"error: Cannot write {out}: ")
    model = not_a_dir / "m.npz"
    done = run_cli("train", "--data", str(data_file), "--model", str(model), cwd=tmp_path)
    assert done.returncode == 1
    assert flat(done.stderr).startswith(f"error: Cannot write {model}: ")
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads /proc (Linux)")
def test_serve_raises_the_open_file_limit_to_fit_the_connection_cap(tmp_path: Path) -> None:
    """A soft limit of 256 open files would make the kernel, not the cap, refuse clients:
    serve raises it (up to the hard limit) to BANDITREC_MAX_CONNECTIONS + 256."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1256:
        pytest.skip(f"the hard open-file limit ({hard}) is below what the test needs")
    port = free_port()
    command = (
        f"ulimit -Sn 256 && exec {sys.executable} -m banditrec serve --port {port} "
        "--log-level warning"
    )
    env = {"BANDITREC_MAX_CONNECTIONS": "1000",
           "BANDITREC_SNAPSHOT_DIR": str(tmp_path / "snaps")}  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with running_process(["sh", "-c", command], tmp_path, url, clean_env(**env)) as server:
        # `exec`: the shell's process became the server (one worker: uvicorn serves in it).
        limits = Path(f"/proc/{server.process.pid}/limits").read_text()
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert int(line.split()[3]) == 1256
