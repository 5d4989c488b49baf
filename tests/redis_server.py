"""A real `redis-server` for tests: its own free port and data directory, strict durability.

The server runs with ``appendonly yes`` and ``appendfsync always`` (every acknowledged write
is fsynced, see `banditrec.store.redis`) and without RDB snapshots, so a test can ``kill -9``
it and restart it on the same directory. A test that needs Redis fails when
``redis-server`` is missing: CI installs it, and a skipped test would hide a broken setup.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ports import free_port

__all__ = ["RedisServer", "free_port", "redis_server"]


class _PortTakenError(RuntimeError):
    """redis-server could not bind its port: another process took it first."""


class RedisServer:
    """One `redis-server` process on 127.0.0.1 with its data in `directory`."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        # A port picked here may be taken by another program before redis-server binds it:
        # the first start then moves to another one. A given port, or a restart, keeps it.
        self._may_move = port is None
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        for attempt in range(3):
            try:
                self._start(timeout)
                break
            except _PortTakenError:
                if attempt == 2:
                    pytest.fail("redis-server found its port taken three times in a row.")
                self.port = free_port()
        self._may_move = False  # restarts keep the port the clients know

    def _start(self, timeout: float) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            pytest.fail("redis-server is not installed (apt-get install redis-server).")
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "redis.log"
        # redis-server appends to its log: only what this start writes tells why it stopped.
        start_of_log = len(log.read_text()) if log.exists() else 0
        # `--save ""` turns RDB snapshots off: the append-only file alone holds the data.
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.directory), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--daemonize", "no", "--logfile", str(log)],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    output = log.read_text()[start_of_log:][-2000:] if log.exists() else ""
                    if self._may_move and "Address already in use" in output:
                        self.process = None
                        raise _PortTakenError(output)
                    pytest.fail(f"redis-server exited at start: {output}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    pytest.fail(f"redis-server did not answer PING within {timeout} s.")
                time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """``kill -9``: no shutdown, no final fsync."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test, killed afterwards."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()
