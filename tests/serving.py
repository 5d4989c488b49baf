"""Start a real `banditrec serve` process for a test, and always stop it."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the server (and its workers): no shutdown code runs."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def server_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = clean_env()
    env.update(
        BANDITREC_DB_PATH=str(tmp_path / "events.db"),
        BANDITREC_SNAPSHOT_DIR=str(tmp_path / "snapshots"),
    )
    env.update({f"BANDITREC_{k.upper()}": v for k, v in settings.items()})
    return env


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any BANDITREC_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANDITREC_")}
    return env | {"COLUMNS": "200", "PYTHONUNBUFFERED": "1"} | extra


@contextmanager
def running_process(
    command: list[str], cwd: Path, url: str, env: dict[str, str], timeout: float = 90.0
) -> Iterator[Server]:
    """Run `command` (a server), ready when `url`/health answers; always stop it.

    The process gets its own process group, so a test can SIGKILL it with its workers. Its
    output goes to a file, not a pipe: a full pipe would block the server.
    """
    log_path = cwd / f"server-{url.rsplit(':', 1)[-1]}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    server = Server(url, process, log_path)
    try:
        deadline = time.monotonic() + timeout  # a cold numba cache compiles at start-up
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"The server exited early:\n{server.log()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"The server did not answer in {timeout} s:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)


@contextmanager
def running_server(
    tmp_path: Path,
    *args: str,
    model: Path | None = None,
    timeout: float = 90.0,
    **settings: str,
) -> Iterator[Server]:
    """`banditrec serve` on a free loopback port with its log, snapshots and `settings`
    (``BANDITREC_<NAME>``) in `tmp_path`, ready when /health answers."""
    port = free_port()
    # An explicit --model must exist; without one the server starts from the prior when the
    # configured model path is absent.
    model_args = [] if model is None else ["--model", str(model)]
    command = [
        sys.executable, "-m", "banditrec", "serve", *model_args,
        "--port", str(port), "--log-level", "warning", *args,
    ]  # fmt: skip
    env = server_env(tmp_path, **settings)  # no model: the default path, absent in tmp_path
    with running_process(command, tmp_path, f"http://127.0.0.1:{port}", env, timeout) as server:
        yield server


def fetch_live_model(
    url: str, pid: int | None = None, attempts: int = 400
) -> dict[str, np.ndarray]:
    """The live model arrays of the worker with `pid` (any worker if None).

    Each request goes on a new connection, so the kernel hands it to any worker; we retry
    until the wanted one answers.
    """
    for _ in range(attempts):
        response = httpx.get(f"{url}/v1/admin/model", headers={"Connection": "close"}, timeout=10)
        response.raise_for_status()
        if pid is None or int(response.headers["X-Banditrec-Pid"]) == pid:
            with np.load(io.BytesIO(response.content), allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
    raise AssertionError(f"Worker {pid} never answered in {attempts} requests.")
