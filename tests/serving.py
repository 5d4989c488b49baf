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
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANDITREC_")}
    env.update(
        BANDITREC_DB_PATH=str(tmp_path / "events.db"),
        BANDITREC_SNAPSHOT_DIR=str(tmp_path / "snapshots"),
    )
    env.update({f"BANDITREC_{k.upper()}": v for k, v in settings.items()})
    return env


@contextmanager
def running_server(
    tmp_path: Path,
    *args: str,
    model: Path | None = None,
    timeout: float = 90.0,
    **settings: str,
) -> Iterator[Server]:
    """`banditrec serve` on a free loopback port, ready when /health answers.

    The server runs in its own process group so that a test can SIGKILL it with its workers,
    and it is always killed at the end.
    """
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    command = [
        sys.executable,
        "-m",
        "banditrec",
        "serve",
        "--model",
        str(model or tmp_path / "no-model.npz"),
        "--port",
        str(port),
        "--log-level",
        "warning",
        *args,
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=server_env(tmp_path, **settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"The server exited early:\n{server.log()}")
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
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
