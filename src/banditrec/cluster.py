"""Several hosts on one machine: Redis, N serving replicas and HAProxy in front, supervised.

A replica is a separate ``banditrec serve`` process on its own port, as a separate host would
be; the replicas share nothing but the Redis event log (``BANDITREC_STORE_URL``), through which
they learn as one. HAProxy spreads requests over them round-robin and takes a replica out of
rotation when its ``/health`` stops answering 200.

`Cluster` starts the three kinds of processes, waits until every replica is healthy and in
HAProxy's rotation, and can kill (SIGKILL, like a crashed host) and restart a replica or Redis:
the multi-replica test (tests/test_cluster.py) does. ``python -m banditrec.cluster`` runs one
until Ctrl-C (docs/scale-out.md). Standard library only; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

__all__ = ["Cluster", "ClusterError", "main"]


class ClusterError(RuntimeError):
    """A process of the cluster could not be started or did not become healthy."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_program(name: str, fallback: str) -> str:
    """`name` on the PATH, else its usual Debian location (``/usr/sbin`` is often not on a
    user's PATH); a missing program is an error, never a reason to run without it."""
    path = shutil.which(name) or (fallback if os.access(fallback, os.X_OK) else None)
    if path is None:
        raise ClusterError(f"{name} is not installed; install the Debian package {name}.")
    return path


class _Process:
    """One supervised process: its command, environment and log file, started on demand."""

    def __init__(self, name: str, command: list[str], env: Mapping[str, str], log: Path) -> None:
        self.name, self.command, self.env, self.log_path = name, command, dict(env), log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Output goes to a file, not a pipe that nobody reads (a full pipe blocks the child).
        # A session of its own: Ctrl-C in the terminal reaches the supervisor only, which
        # then stops everything in order.
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise ClusterError(
                f"{self.name} exited with code {self.popen.returncode}; its log "
                f"({self.log_path}) ends with:\n{self.log_tail()}"
            )

    def log_tail(self, n: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def kill(self) -> None:
        """SIGKILL the process group: no shutdown code runs, as when a host dies."""
        self._signal(signal.SIGKILL, timeout=30.0)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL after `timeout` seconds."""
        try:
            self._signal(signal.SIGTERM, timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # exited between poll and kill
                os.killpg(self.popen.pid, sig)
        self.popen.wait(timeout=timeout)


class Cluster:
    """Redis, `replicas` banditrec replicas and HAProxy on 127.0.0.1, as one context manager.

    Parameters
    ----------
    work_dir
        Holds Redis's append-only file, each replica's snapshots, the HAProxy configuration
        and every process's log. Reusing it keeps the log (Redis reloads its AOF).
    model_path
        The model file every replica serves (None: ``banditrec serve``'s default, the prior
        if there is no ``data/linucb_model.npz``).
    replicas
        Number of serving processes, each on its own port.
    port
        HAProxy's port, the one clients use (0: a free port).
    store
        ``"redis"`` (the scale-out backend), or ``"sqlite"``: the replicas share one SQLite
        file in `work_dir`, which only works on one host (for comparisons).
    appendfsync
        Redis's AOF fsync policy: ``"always"`` (an acknowledged write survives a power loss)
        or ``"everysec"`` (it survives a crash of Redis; a power loss may lose the last
        second). See docs/scale-out.md.
    env
        The replicas' environment (default: this process's); ``BANDITREC_*`` settings in it
        reach every replica, except those the cluster sets per replica.
    log_level
        The replicas' uvicorn log level.
    startup_timeout
        Seconds to wait for a process to become healthy (a cold numba cache compiles).

    Examples
    --------
    Nothing starts before `start` (or ``with``):

    >>> cluster = Cluster("/tmp/banditrec-cluster", replicas=2, port=8020)
    >>> cluster.url, len(cluster.replica_urls), cluster.redis_url.startswith("redis://")
    ('http://127.0.0.1:8020', 2, True)
    >>> for line in cluster.haproxy_config().splitlines():
    ...     if "roundrobin" in line or "chk" in line or "check" in line:
    ...         print(line.split(":")[0].strip())
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    server r0 127.0.0.1
    server r1 127.0.0.1
    """

    def __init__(
        self,
        work_dir: str | Path,
        model_path: str | Path | None = None,
        replicas: int = 3,
        port: int = 0,
        store: Literal["redis", "sqlite"] = "redis",
        appendfsync: Literal["always", "everysec"] = "always",
        env: Mapping[str, str] | None = None,
        log_level: str = "warning",
        startup_timeout: float = 120.0,
    ) -> None:
        if replicas < 1:
            raise ValueError("A cluster needs at least one replica.")
        self.work_dir = Path(work_dir).resolve()
        self.store = store
        self.startup_timeout = startup_timeout
        self.port = port or free_port()
        self.stats_port = free_port()
        self.redis_port = free_port()
        self.replica_ports = [free_port() for _ in range(replicas)]

        # The cluster decides where the log is, whatever the environment says.
        given = os.environ if env is None else env
        self._env = {k: v for k, v in given.items() if k != "BANDITREC_STORE_URL"}
        self._env["PYTHONUNBUFFERED"] = "1"
        self._logs = self.work_dir / "logs"
        self._redis = (
            self._process("redis-server", self._redis_command(appendfsync))
            if store == "redis"
            else None
        )
        model = None if model_path is None else Path(model_path).resolve()
        self._replicas = [self._replica(i, model, log_level) for i in range(replicas)]
        config = self.work_dir / "haproxy.cfg"
        haproxy = [find_program("haproxy", "/usr/sbin/haproxy"), "-db", "-f", str(config)]
        self._haproxy = self._process("haproxy", haproxy)

    def _process(self, name: str, command: list[str], **env: str) -> _Process:
        log = self._logs / f"{name.replace(' ', '-')}.log"
        return _Process(name, command, self._env | env, log)

    def _replica(self, i: int, model: Path | None, log_level: str) -> _Process:
        home = self.work_dir / f"replica-{i}"
        env = {"BANDITREC_SNAPSHOT_DIR": str(home / "snapshots")}
        if self.store == "redis":
            # A SQLite path of its own, as on its own host (unused with Redis).
            env |= {"BANDITREC_STORE_URL": self.redis_url, "BANDITREC_DB_PATH": str(home / "db")}
        else:  # one host: the replicas share one SQLite file
            env["BANDITREC_DB_PATH"] = str(self.work_dir / "events.db")
        command = [
            sys.executable, "-m", "banditrec", "serve", "--port", str(self.replica_ports[i]),
            "--log-level", log_level, "--no-access-log",
            *(["--model", str(model)] if model is not None else []),
        ]  # fmt: skip
        return self._process(f"replica {i}", command, **env)

    # -- addresses ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """HAProxy: where clients send their requests."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def replica_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.replica_ports]

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def stats_url(self) -> str:
        """HAProxy's statistics page (add ``;csv`` for a machine-readable one)."""
        return f"http://127.0.0.1:{self.stats_port}/stats"

    # -- starting and stopping ---------------------------------------------------------

    def start(self) -> Cluster:
        """Start Redis, every replica and HAProxy; return once all are healthy."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.store == "redis":
                self.start_redis()
            for replica in self._replicas:  # all at once: their start-ups overlap
                replica.start()
            (self.work_dir / "haproxy.cfg").write_text(self.haproxy_config(), encoding="utf-8")
            self._haproxy.start()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything: the load balancer first (no new requests), Redis last."""
        for process in self.processes():
            process.stop()

    def processes(self) -> list[_Process]:
        """Every supervised process, in stopping order."""
        return [self._haproxy, *self._replicas, *([self._redis] if self._redis else [])]

    def exited(self) -> list[str]:
        """The names of processes that were started and have exited since."""
        return [p.name for p in self.processes() if p.popen is not None and not p.running]

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def kill_replica(self, i: int) -> None:
        """SIGKILL replica `i` (a host crash); HAProxy takes it out of rotation."""
        self._replicas[i].kill()

    def start_replica(self, i: int) -> None:
        """Start replica `i` again on its port; return once it is back in rotation."""
        if not self._replicas[i].running:
            self._replicas[i].start()
        self.wait_healthy()

    def kill_redis(self) -> None:
        """SIGKILL Redis: no shutdown code runs, only what its AOF holds survives."""
        self._require_redis().kill()

    def start_redis(self) -> None:
        """Start Redis on the same port and directory (it reloads its AOF); return once it
        answers. The replicas reconnect by themselves."""
        redis = self._require_redis()
        (self.work_dir / "redis").mkdir(parents=True, exist_ok=True)
        if not redis.running:
            redis.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._redis_answers():
            redis.check_alive()
            if time.monotonic() > deadline:
                raise ClusterError(f"Redis did not answer in {self.startup_timeout} s.")
            time.sleep(0.05)

    def _require_redis(self) -> _Process:
        if self._redis is None:
            raise ClusterError("This cluster's replicas share a SQLite file; it has no Redis.")
        return self._redis

    def _redis_command(self, appendfsync: str) -> list[str]:
        return [
            find_program("redis-server", "/usr/bin/redis-server"),
            "--bind", "127.0.0.1", "--port", str(self.redis_port),
            "--dir", str(self.work_dir / "redis"), "--daemonize", "no",
            # The AOF alone is the durable copy: RDB snapshots would add fork pauses.
            "--appendonly", "yes", "--appendfsync", appendfsync, "--save", "",
            # A decision's hash holds its 160-byte vector: allowed in the compact encoding,
            # it takes half the memory (docs/scale-out.md).
            "--hash-max-listpack-value", "1024",
        ]  # fmt: skip

    def _redis_answers(self) -> bool:
        # PING in the inline protocol; "-LOADING" while the AOF is replayed.
        try:
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    # -- health ------------------------------------------------------------------------

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Wait until every running replica's /health says "ok" and HAProxy has each in
        rotation. Raises `ClusterError` if a process exits or time runs out."""
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        while True:
            for process in (self._haproxy, *self._replicas):
                process.check_alive()
            running = self.running_replicas()
            in_rotation = self.haproxy_status()
            if all(self.replica_health(i) == "ok" for i in running) and all(
                in_rotation.get(f"r{i}") == "UP" for i in running
            ):
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"The cluster was not healthy in {timeout or self.startup_timeout} s; "
                    f"HAProxy sees {self.haproxy_status()}."
                )
            time.sleep(0.1)

    def running_replicas(self) -> list[int]:
        return [i for i, replica in enumerate(self._replicas) if replica.running]

    def replica_health(self, i: int) -> str | None:
        """The "status" replica `i`'s /health reports ("ok", "degraded"), None if it does
        not answer."""
        try:
            status = json.loads(_get(f"{self.replica_urls[i]}/health")).get("status")
        except (OSError, ValueError):  # not answering yet, or not JSON
            return None
        return str(status) if status is not None else None

    def haproxy_status(self) -> dict[str, str]:
        """HAProxy's view of each replica ("UP", "DOWN", ...), by server name r0, r1, ...;
        empty while HAProxy does not answer."""
        try:
            text = _get(f"{self.stats_url};csv").decode()
        except (OSError, ValueError):
            return {}
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == "replicas"}

    def haproxy_config(self) -> str:
        """HAProxy's configuration: round-robin over the replicas, health-checked often."""
        servers = "\n".join(
            f"    server r{i} 127.0.0.1:{port} check" for i, port in enumerate(self.replica_ports)
        )
        return _HAPROXY_CONFIG.format(port=self.port, stats_port=self.stats_port, servers=servers)


# A request is sent again, to another replica, only when it never reached one (the connection
# was refused or timed out): a decision or reward that reached a replica may have been logged
# or learned. Such a request fails (502, or a closed connection) and the client may retry it
# by its event id, which is idempotent (banditrec.client does). deploy/haproxy.cfg follows
# the same rules (tests/test_container.py compares the two).
# Health checks every 200 ms, two failures to leave the rotation, two successes to rejoin.
_HAPROXY_CONFIG = """\
global
    maxconn 4096

defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    retries 3
    retry-on conn-failure
    option redispatch 1

frontend banditrec
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    default-server inter 200ms fastinter 100ms downinter 500ms fall 2 rise 2
{servers}

listen stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
"""


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=2) as response:
        body: bytes = response.read()
        return body


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m banditrec.cluster``: run a cluster until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m banditrec.cluster",
        description="Redis, N banditrec replicas and HAProxy on this machine, until Ctrl-C.",
    )
    parser.add_argument("--replicas", type=int, default=3, help="serving processes (3)")
    parser.add_argument("--port", type=int, default=8020, help="HAProxy's port (8020)")
    parser.add_argument("--model", help="model file to serve (default: serve's default)")
    parser.add_argument("--work-dir", default="data/cluster", help="AOF, snapshots, logs")
    parser.add_argument("--store", choices=("redis", "sqlite"), default="redis")
    parser.add_argument("--appendfsync", choices=("always", "everysec"), default="always")
    args = parser.parse_args(argv)
    if args.replicas < 1:
        parser.error("--replicas must be at least 1.")

    # SIGTERM stops everything too, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    cluster = Cluster(
        args.work_dir, args.model, args.replicas, args.port, args.store, args.appendfsync
    )
    print(f"Starting {args.replicas} replicas in {cluster.work_dir} ...", flush=True)
    try:
        with cluster:
            if args.store == "redis":
                print(f"redis      {cluster.redis_url}  (AOF, appendfsync {args.appendfsync})")
            for i, url in enumerate(cluster.replica_urls):
                print(f"replica {i}  {url}")
            print(f"haproxy    {cluster.url}  (statistics: {cluster.stats_url})")
            print(f"logs       {cluster.work_dir / 'logs'}")
            print(f"Ready: send requests to {cluster.url}. Ctrl-C stops everything.", flush=True)
            _watch(cluster)
    except KeyboardInterrupt:
        pass
    except ClusterError as exc:
        sys.exit(f"error: {exc}")
    print("Stopped.")


def _watch(cluster: Cluster) -> None:
    """Until interrupted: report a process that exits (nothing restarts it by itself)."""
    reported: set[str] = set()
    while True:
        time.sleep(1.0)
        for name in set(cluster.exited()) - reported:
            reported.add(name)
            print(f"{name} exited; see its log in {cluster.work_dir / 'logs'}.", flush=True)


if __name__ == "__main__":
    main()
