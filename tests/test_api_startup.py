"""Start-up and health: one-line start-up failures (real processes), the serving app's
collector freeze, `banditrec.api.app` built once, and /health's faults."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from banditrec.api import create_app
from banditrec.store.sqlite import SQLiteEventStore
from conftest import other_schema_toml
from serving import clean_env, free_port
from test_api_loop import CONTEXT, settings

STARTUP_TIMEOUT = 120  # a cold numba cache compiles at start-up


def start_and_fail(tmp_path: Path, **env: str) -> str:
    """Run the serving app under uvicorn with `env`; it must exit; return its output."""
    command = [
        sys.executable, "-m", "uvicorn", "banditrec.api:create_serving_app", "--factory",
        "--port", str(free_port()),
    ]  # fmt: skip
    variables = clean_env(
        BANDITREC_DB_PATH=str(tmp_path / "events.db"),
        BANDITREC_SNAPSHOT_DIR=str(tmp_path / "snapshots"),
        **env,
    )
    done = subprocess.run(
        command, cwd=tmp_path, env=variables, capture_output=True, text=True,
        timeout=STARTUP_TIMEOUT,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output and 'File "' not in output, output
    return output


def test_a_model_path_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "typo.npz"
    output = start_and_fail(tmp_path, BANDITREC_MODEL_PATH=str(missing))
    assert (
        f"Cannot start banditrec (ModelFileError): The model file {missing} does not exist; "
        "check the path, or leave BANDITREC_MODEL_PATH (--model) unset to start from the prior."
    ) in output


def test_a_model_of_another_schema_is_one_line(tmp_path: Path, model_file: Path) -> None:
    other = other_schema_toml(tmp_path / "other.toml")
    output = start_and_fail(
        tmp_path, BANDITREC_MODEL_PATH=str(model_file), BANDITREC_SCHEMA_PATH=str(other)
    )
    lines = [line for line in output.splitlines() if "Cannot start banditrec" in line]
    assert len(lines) == 1 and "(ModelFileError)" in lines[0]
    assert "was trained with schema" in lines[0]


def test_an_event_log_of_another_schema_is_one_line(tmp_path: Path) -> None:
    SQLiteEventStore(tmp_path / "events.db", "another-encoding").close()
    output = start_and_fail(tmp_path)
    lines = [line for line in output.splitlines() if "Cannot start banditrec" in line]
    assert len(lines) == 1 and "(StoreError)" in lines[0]
    assert "belongs to schema" in lines[0]


def test_only_the_serving_app_freezes_the_collector(tmp_path: Path) -> None:
    before = gc.get_freeze_count()
    with TestClient(create_app(settings(tmp_path))) as client:
        assert client.get("/health").status_code == 200
    assert gc.get_freeze_count() == before
    # The serving app, in a process of its own (a frozen collector is for the process's life).
    script = (
        "import gc\n"
        "from fastapi.testclient import TestClient\n"
        "from banditrec.api import create_serving_app\n"
        "with TestClient(create_serving_app()) as c:\n"
        "    assert c.get('/health').status_code == 200\n"
        "print(gc.get_freeze_count())\n"
    )
    env = clean_env(
        BANDITREC_DB_PATH=str(tmp_path / "serving.db"),
        BANDITREC_SNAPSHOT_DIR=str(tmp_path / "snapshots"),
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=STARTUP_TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 10_000


def test_the_module_app_is_one_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import banditrec.api

    for name in [n for n in os.environ if n.startswith("BANDITREC_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    first = banditrec.api.app
    assert banditrec.api.app is first
    from banditrec.api import app

    assert app is first


def test_health_is_degraded_while_the_learner_reports_a_fault(tmp_path: Path) -> None:
    # A real fault: snapshots cannot be written (the directory's parent is a file).
    (tmp_path / "file").write_text("not a directory")
    app = create_app(
        settings(tmp_path, snapshot_dir=tmp_path / "file" / "snaps", snapshot_every_events=1)
    )
    with TestClient(app) as client:
        assert client.get("/health").json() | {"status": "ok", "faults": []} == (
            client.get("/health").json()
        )
        event_id = client.post("/v1/rank", json={"context": CONTEXT}).json()["event_id"]
        assert client.post(f"/v1/events/{event_id}/reward", json={"value": 1.0}).is_success
        deadline = time.monotonic() + 30
        while (health := client.get("/health").json())["status"] == "ok":
            assert time.monotonic() < deadline, "no fault reported in 30 s"
            time.sleep(0.05)
        assert health["status"] == "degraded"
        assert len(health["faults"]) == 1 and "failed" in health["faults"][0]
        # Decisions are still served.
        assert client.post("/v1/rank", json={"context": CONTEXT}).status_code == 200
