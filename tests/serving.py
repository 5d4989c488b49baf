"""Start a real `banditrec serve` process for a test, and always stop it."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from ports import free_port

__all__ = [
    "PortTakenError", "Server", "clean_env", "fetch_live_model", "free_port",
    "running_process", "running_server", "server_env",
]  # fmt: skip


class PortTakenError(RuntimeError):
    """The server exited at start because another process had taken its port meanwhile."""


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


def start_process(
    command: list[str], cwd: Path, url: str, env: dict[str, str], timeout: float = 90.0
) -> Server:
    """Start `command` (a server) and return it once `url`/health answers; stop it and
    raise if it exits first or does not answer in `timeout` seconds (`PortTakenError`
    when it exited because its port was taken)."""
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
                output = server.log()
                # banditrec's own check before it starts ("Port ... is already in use"), or
                # uvicorn's bind error after it ("... address already in use").
                if "already in use" in output:
                    raise PortTakenError(f"The server's port was taken:\n{output}")
                raise RuntimeError(f"The server exited early:\n{output}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"The server did not answer in {timeout} s:\n{server.log()}")
            time.sleep(0.1)
    except BaseException:
        stop_process(process)
        raise


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it if it has not stopped 15 s later."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


@contextmanager
def running_process(
    command: list[str], cwd: Path, url: str, env: dict[str, str], timeout: float = 90.0
) -> Iterator[Server]:
    """Run `command` (a server), ready when `url`/health answers; always stop it.

    The process gets its own process group, so a test can SIGKILL it with its workers. Its
    output goes to a file, not a pipe: a full pipe would block the server.
    """
    server = start_process(command, cwd, url, env, timeout)
    try:
        yield server
    finally:
        stop_process(server.process)


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
    # An explicit --model must exist; without one the server starts from the prior when the
    # configured model path is absent.
    model_args = [] if model is None else ["--model", str(model)]
    env = server_env(tmp_path, **settings)  # no model: the default path, absent in tmp_path
    # The port is free when picked (see `ports`), but another program can bind it before
    # the server does: then the server is started again on another port.
    for attempt in range(3):
        port = free_port()
        command = [
            sys.executable, "-m", "banditrec", "serve", *model_args,
            "--port", str(port), "--log-level", "warning", *args,
        ]  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            server = start_process(command, tmp_path, url, env, timeout)
        except PortTakenError:
            if attempt == 2:
                raise
            continue
        try:
            yield server
        finally:
            stop_process(server.process)
        return


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
