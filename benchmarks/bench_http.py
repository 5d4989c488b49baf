"""HTTP decisions over loopback: `banditrec serve` under `wrk`, against its own ceiling.

One command, one table::

    .venv/bin/python -m benchmarks.bench_http --redis          # ~5 minutes; make bench-http
    .venv/bin/python -m benchmarks.bench_http                  # SQLite only, ~2 minutes
    .venv/bin/python -m benchmarks.bench_http --duration 5     # quicker
    .venv/bin/python -m benchmarks.bench_http --markdown       # table for docs/benchmarks.md
    .venv/bin/python -m benchmarks.bench_http --no-ceiling     # without the bare ASGI app

What is measured, for each *setup*, each started by this script on free 127.0.0.1 ports with
a fresh event log in a temporary directory (``--log-level warning``) and stopped at the end:

- SQLite, 1 and 2 worker processes (``--workers``): one ``banditrec serve --workers N``
  sharing one SQLite file (the kernel spreads connections over the workers);
- with ``--redis``, a fresh ``redis-server`` (``appendonly yes``, ``appendfsync everysec``,
  no RDB snapshots) and 1 and 2 *replicas*: separate ``banditrec serve`` processes on their own
  ports with ``BANDITREC_STORE_URL=redis://...``, as separate hosts would run. Two replicas
  are loaded by two `wrk` processes at once, each with half the connections, straight to
  its replica (no load balancer: SQLite's two workers have none either, and a proxy on the
  same two cores would take CPU from the servers); rates are summed, latencies are the worse
  of the two. One more setup runs 1 replica on Redis with ``appendfsync always``
  (``--always``, on by default with ``--redis``).

Like with like: SQLite's default ``synchronous=NORMAL`` survives a crash of the process but
not a power loss (the WAL is fsynced at checkpoints, every 0.25 s); Redis with ``everysec``
survives a crash of the process (and of Redis) but not a power loss (the AOF is fsynced once
a second). ``--synchronous FULL`` and ``always`` are the power-loss-safe pair.

Endpoints:

The ceiling (``--ceiling``, on by default)
    Before each SQLite setup, a bare ASGI app (`benchmarks.http_ceiling`: no framework, no
    validation, no metrics, no log) that scores the same model file with the same feature
    encoder and policy, run under the same server with as many worker processes, loaded
    with the same ``/recommend_action`` bodies: what this machine answers without
    banditrec's work around a decision. Every row's "÷ ceiling" divides by the ceiling
    with as many processes (a Redis setup's too: the ceiling does not depend on the store).
``GET /ping``
    A constant JSON answer through the same app and the same middleware (metrics, request
    guard): the cost of the framework path alone.
``POST /recommend_action``
    The seed's decision endpoint with varied contexts (drawn by the app simulator, unknown
    categories included). Every decision is durably logged (group commit: one SQLite
    transaction or one Redis script per group) before its response is sent.
``POST /v1/rank``
    The same contexts under ``"context"``, with the same ``user_id``: logged alike.
``POST /v1/events/{id}/reward``
    ``{"value": 1.0}`` for decisions made earlier in the same run, each rewarded exactly
    once: first rewards, joined to their decision and learned at once (a learn event).

Each endpoint is loaded by `wrk` (C, epoll; ``apt-get install wrk``) for a fixed time with
``--connections`` keep-alive connections and ``--wrk-threads`` threads, after a warm-up
(numba compilation, first requests). Three figures compare: an endpoint's requests/s to
the ceiling's and to ``/ping``'s in the same setup (the load generator shares the machine's
cores with the server, so absolute numbers move with the machine, ratios much less), and a
Redis setup's requests/s to the SQLite setup's with as many processes, in the same run. A
second table puts the ceiling, both decision routes and ``/ping`` of each setup side by side.

The table also shows the CPU time the server's processes used per answered request (from
/proc; Redis's own CPU is included, and shown apart) and its ratios to /ping's and to the
SQLite twin's: the same figures measured in CPU rather than in wall time, which move less
when other jobs share the machine ("other CPU": what the rest of the machine used meanwhile,
in cores).

After each setup stops, the log is checked: it holds at least as many decisions as `wrk`
received 200 answers for, and one learned reward per reward answer.

Latency is wrk's: from writing a request to reading its whole response, per request, in a
closed loop (each connection sends its next request when the previous answer arrives).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis

from banditrec.features import load_default_schema
from banditrec.logged_data import write_logged_csv
from banditrec.policies import LinUCB
from banditrec.sim import AppSimulator
from banditrec.training import train_from_csv

# A wrk script: pre-built requests (read from a file, one body or event id a line) served
# round-robin, and a JSON summary written by done() to $BENCH_OUT.
_LUA = r"""
local mode, path = "%(mode)s", "%(path)s"
local threads, counter = {}, 0

function setup(thread)
  thread:set("tid", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  local nthreads, items_path = tonumber(args[1]), args[2]
  local items, k = {}, 0
  for line in io.lines(items_path) do
    -- thread t takes items t, t + n, t + 2n, ...: no two threads share an event id
    if k %% nthreads == tid then table.insert(items, line) end
    k = k + 1
  end
  reqs = {}
  local headers = {["Content-Type"] = "application/json"}
  for i, item in ipairs(items) do
    if mode == "reward" then
      reqs[i] = wrk.format("POST", "/v1/events/" .. item .. "/reward", headers, '{"value": 1.0}')
    else
      reqs[i] = wrk.format("POST", path, headers, item)
    end
  end
  n, i, sent, wrapped = #reqs, 0, 0, 0
end

function request()
  i = i + 1
  if i > n then i = 1 end
  sent = sent + 1
  if sent > n then wrapped = wrapped + 1 end  -- requests after the first pass: reused ids
  return reqs[i]
end

function done(summary, latency, requests)
  local wrapped_total = 0
  for _, thread in ipairs(threads) do wrapped_total = wrapped_total + thread:get("wrapped") end
  local e = summary.errors
  local f = io.open(os.getenv("BENCH_OUT"), "w")
  f:write(string.format(
    '{"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, ' ..
    '"max_us": %%d, "connect": %%d, "read": %%d, "write": %%d, "status": %%d, ' ..
    '"timeout": %%d, "wrapped": %%d}',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout,
    wrapped_total))
  f:close()
end
"""

_PING_LUA = r"""
function done(summary, latency, requests)
  local e = summary.errors
  local f = io.open(os.getenv("BENCH_OUT"), "w")
  f:write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, "wrapped": 0}',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
  f:close()
end
"""

ENDPOINTS = {
    "ceiling": "bare ASGI, no log: POST /recommend_action",
    "ping": "GET /ping",
    "decision": "POST /recommend_action",
    "rank": "POST /v1/rank",
    "reward": "POST /v1/events/{id}/reward",
}
#: The decision endpoints: every answer is a logged decision.
DECISIONS = ("decision", "rank")


@dataclass(frozen=True)
class Setup:
    """One way to serve: the event log's backend and how many serving processes."""

    store: str  # "sqlite" or "redis"
    processes: int  # SQLite: workers of one server; Redis: replicas (one server each)
    appendfsync: str = "everysec"  # Redis only

    @property
    def label(self) -> str:
        plural = "" if self.processes == 1 else "s"
        if self.store == "sqlite":
            return f"SQLite, {self.processes} worker{plural}"
        return f"Redis {self.appendfsync}, {self.processes} replica{plural}"


@dataclass
class Result:
    setup: Setup
    endpoint: str
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors + non-2xx/3xx answers + timeouts
    wrapped: int  # rewards sent for reused ids (should be 0: every reward a first reward)
    server_cpu: float  # CPU seconds of the server's processes (Redis included) per second
    server_cpu_us: float  # the server's CPU microseconds per answered request
    redis_cpu: float  # of server_cpu, Redis's share (0 for SQLite)
    wrk_cpu: float
    other_cpu: float  # CPU used meanwhile by the rest of the machine (other jobs)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


# -- the servers --------------------------------------------------------------------------


_REPO = str(Path(__file__).resolve().parents[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`banditrec serve` in its own process group on a free loopback port; always stopped."""

    def __init__(
        self,
        root: Path,
        model: Path,
        workers: int,
        synchronous: str,
        store_url: str | None,
        ceiling: bool = False,
    ) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        self.db_path = root / "events.db"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BANDITREC_")}
        env.update(
            BANDITREC_DB_PATH=str(self.db_path),
            BANDITREC_SNAPSHOT_DIR=str(root / "snapshots"),
            BANDITREC_SQLITE_SYNCHRONOUS=synchronous,
        )
        if store_url is not None:
            env["BANDITREC_STORE_URL"] = store_url
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        options = ["--model", str(model), "--port", str(self.port), "--workers", str(workers)]
        if ceiling:  # the bare ASGI app, under the same server with as many workers
            command = [sys.executable, "-m", "benchmarks.http_ceiling", *options]
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [_REPO, env.get("PYTHONPATH")]))
        else:
            command = [
                sys.executable, "-m", "banditrec", "serve", *options, "--log-level", "warning"
            ]  # fmt: skip
        self.log_path = root / "server.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until /health answers (and, with several workers, until all of them are up)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"The server exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200 and len(self.pids()) >= self.workers:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"The server did not answer in {timeout:.0f} s:\n{self.log()}")
            time.sleep(0.2)

    def pids(self) -> list[int]:
        """The server's process and its descendants (uvicorn's worker processes)."""
        return _process_tree(self.process.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        _stop(self.process)


class RedisServer:
    """`redis-server` on a free loopback port, AOF on with the given fsync policy, no RDB."""

    def __init__(self, root: Path, appendfsync: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.log_path = root / "redis.log"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(root),
             "--appendonly", "yes", "--appendfsync", appendfsync, "--save", "",
             "--daemonize", "no", "--logfile", str(self.log_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self.client = redis.Redis(port=self.port, socket_timeout=10, socket_connect_timeout=1)

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start:\n{self.log_path.read_text()}")
            try:
                if self.client.ping():
                    return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer PING within {timeout} s.")
            time.sleep(0.05)

    def stop(self) -> None:
        self.client.close()
        _stop(self.process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


class Deployment:
    """A setup running: its servers (and Redis), their CPU time, and what their log holds."""

    def __init__(
        self, setup: Setup, root: Path, model: Path, synchronous: str, ceiling: bool = False
    ) -> None:
        self.setup = setup
        self.root = root
        self.redis: RedisServer | None = None
        self.servers: list[Server] = []
        try:  # whatever started is stopped if the rest cannot start
            if ceiling:  # the bare ASGI app, as many worker processes
                home = root / "ceiling"
                self.servers = [Server(home, model, setup.processes, synchronous, None, True)]
            elif setup.store == "redis":
                self.redis = RedisServer(root / "redis", setup.appendfsync)
                self.redis.wait_ready()
                for i in range(setup.processes):
                    home = root / f"replica-{i}"
                    self.servers.append(Server(home, model, 1, synchronous, self.redis.url))
            else:
                self.servers = [Server(root / "server", model, setup.processes, synchronous, None)]
        except BaseException:
            self.stop()
            raise

    def wait_ready(self) -> None:
        for server in self.servers:
            server.wait_ready()

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU seconds used so far by the servers (Redis included) and by Redis alone."""
        store = _cpu_seconds(self.redis.process.pid) if self.redis else 0.0
        servers = sum(_cpu_seconds(pid) for s in self.servers for pid in s.pids())
        return servers + store, store

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        if self.redis is not None:
            self.redis.stop()

    def pending_event_ids(self) -> list[str]:
        """Event ids of the decisions logged so far, not yet rewarded, oldest first."""
        if self.redis is not None:  # the pending set, by deadline: by decision time
            return [i.decode() for i in self.redis.client.zrange("banditrec:pending", 0, -1)]
        db = sqlite3.connect(f"file:{self.servers[0].db_path}?mode=ro", uri=True)
        try:
            query = "SELECT event_id FROM decisions WHERE state = 'pending'"
            return [r[0] for r in db.execute(query)]
        finally:
            db.close()

    def counts(self) -> tuple[int, int]:
        """Decisions logged and rewards learned (read after the servers stopped)."""
        if self.redis is not None:
            client = self.redis.client
            learned, start = 0, "-"
            while entries := client.xrange("banditrec:learn", start, "+", 10_000):
                learned += sum(1 for _, fields in entries if fields[b"k"] == b"reward")
                start = "(" + entries[-1][0].decode()
            return int(client.xlen("banditrec:decisions")), learned
        db = sqlite3.connect(f"file:{self.servers[0].db_path}?mode=ro", uri=True)
        try:
            logged = db.execute("SELECT count(*) FROM decisions").fetchone()[0]
            query = "SELECT count(*) FROM rewards WHERE outcome = 'learned'"
            return int(logged), int(db.execute(query).fetchone()[0])
        finally:
            db.close()


def _process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


_TICKS = os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine spent busy (not idle, not waiting on I/O)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / _TICKS


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


# -- the load generator -------------------------------------------------------------------


def run_wrk(
    deployment: Deployment,
    endpoint: str,
    script: Path,
    items: list[Path],
    seconds: float,
    connections: int,
    threads: int,
    workdir: Path,
) -> dict[str, Any]:
    """Load `endpoint` of every server of `deployment` at once, one `wrk` each, splitting
    `connections` between them; `items[i]` is the i-th wrk's request file (bodies or event
    ids). Rates add up; latencies are the worse of the wrks'. Also returns the CPU time used
    meanwhile by the servers and by the wrks."""
    servers = deployment.servers
    n = len(servers)
    shares = [connections // n + (i < connections % n) for i in range(n)]
    path = "/ping" if endpoint == "ping" else "/"
    cpu, store_cpu = deployment.cpu_seconds()
    machine_cpu = _machine_busy_seconds()
    start = time.perf_counter()
    processes, outs = [], []
    for i, (server, share) in enumerate(zip(servers, shares, strict=True)):
        out = workdir / f"wrk-{endpoint}-{i}-{time.monotonic_ns()}.json"
        command = [
            "wrk", f"-t{threads}", f"-c{max(share, threads)}", f"-d{max(1, round(seconds))}s",
            "--timeout", "10s", "-s", str(script), f"{server.url}{path}",
        ]  # fmt: skip
        if endpoint != "ping":  # the script splits its items between the threads
            command += ["--", str(threads), str(items[i])]
        env = dict(os.environ, BENCH_OUT=str(out))
        processes.append(
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
        outs.append(out)
    wrk_cpu = 0.0
    try:
        for process in processes:
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            wrk_cpu += usage.ru_utime + usage.ru_stime
    except BaseException:
        for process in processes:
            process.kill()
            process.wait()
        raise
    wall = time.perf_counter() - start
    cpu_after, store_after = deployment.cpu_seconds()
    cpu, store_cpu = cpu_after - cpu, store_after - store_cpu
    machine_cpu = _machine_busy_seconds() - machine_cpu
    summaries = []
    for process, out in zip(processes, outs, strict=True):
        output = process.stdout.read().decode(errors="replace") if process.stdout else ""
        if process.returncode != 0 or not out.exists():
            raise RuntimeError(f"wrk failed ({process.returncode}):\n{output}")
        summaries.append(json.loads(out.read_text()))
    summary: dict[str, Any] = {
        key: sum(s[key] for s in summaries)
        for key in ("requests", "connect", "read", "write", "status", "timeout", "wrapped")
    }
    for key in ("p50_us", "p90_us", "p99_us", "max_us"):
        summary[key] = max(s[key] for s in summaries)
    summary["rate"] = sum(s["requests"] / s["duration_us"] * 1e6 for s in summaries)
    summary["duration_us"] = max(s["duration_us"] for s in summaries)
    summary["server_cpu"] = cpu / wall
    summary["redis_cpu"] = store_cpu / wall
    summary["wrk_cpu"] = wrk_cpu / wall
    summary["server_cpu_seconds"] = cpu
    # Everything else the machine did meanwhile (other users' jobs): the CPU not ours.
    summary["other_cpu"] = max(0.0, machine_cpu - cpu) / wall - summary["wrk_cpu"]
    return summary


def write_scripts(
    workdir: Path, contexts: int, seed: int
) -> tuple[dict[str, Path], dict[str, Path]]:
    """The wrk scripts, and the files of the decisions' request bodies (one a line) by
    endpoint: the same contexts, flat for ``/recommend_action`` (and the ceiling), under
    ``"context"`` for ``/v1/rank`` (with the same ``user_id``, logged with the decision)."""
    columns = AppSimulator().sample_contexts(contexts, np.random.default_rng(seed))
    flat, nested = workdir / "bodies.jsonl", workdir / "rank-bodies.jsonl"
    with open(flat, "w") as f, open(nested, "w") as g:
        for i in range(contexts):
            row = {name: values[i].item() for name, values in columns.items()}
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
            user_id = row.pop("user_id")
            rank = {"context": row, "user_id": user_id}
            g.write(json.dumps(rank, separators=(",", ":")) + "\n")
    scripts = {"ping": workdir / "ping.lua"}
    scripts["ping"].write_text(_PING_LUA)
    paths = {"ceiling": "/recommend_action", "decision": "/recommend_action"}
    paths |= {"rank": "/v1/rank", "reward": ""}
    for mode, path in paths.items():
        scripts[mode] = workdir / f"{mode}.lua"
        scripts[mode].write_text(_LUA % {"mode": mode, "path": path})
    return scripts, {"ceiling": flat, "decision": flat, "rank": nested}


def train_model(workdir: Path, seed: int) -> Path:
    data, model = workdir / "logged.csv", workdir / "model.npz"
    write_logged_csv(AppSimulator().simulate_logged(20_000, np.random.default_rng(seed)), data)
    train_from_csv(data, model, load_default_schema(), LinUCB())
    return model


# -- one setup ----------------------------------------------------------------------------


def bench_setup(
    setup: Setup,
    model: Path,
    scripts: dict[str, Path],
    bodies: dict[str, Path],
    args: argparse.Namespace,
    root: Path,
) -> list[Result]:
    workdir = root / setup.label.replace(", ", "-").replace(" ", "-")
    workdir.mkdir(parents=True)
    results: list[Result] = []
    if setup.store == "sqlite" and args.ceiling:  # first the ceiling, with as many workers
        results.append(bench_ceiling(setup, model, scripts, bodies, args, workdir))
    ok_decisions = ok_rewards = 0
    say = setup.label
    n = setup.processes if setup.store == "redis" else 1  # wrks: one per server
    id_files = [workdir / f"event_ids-{i}.txt" for i in range(n)]
    endpoints = ("ping", *DECISIONS, "reward")

    def write_ids() -> int:
        ids = deployment.pending_event_ids()
        for i, path in enumerate(id_files):  # each wrk its own ids: every reward a first one
            path.write_text("\n".join(ids[i::n]) + "\n")
        return len(ids)

    def measure(endpoint: str, seconds: float) -> dict[str, Any]:
        items = id_files if endpoint == "reward" else [bodies.get(endpoint, Path())] * n
        return run_wrk(
            deployment, endpoint, scripts[endpoint], items, seconds, args.connections,
            args.wrk_threads, workdir,
        )  # fmt: skip

    deployment = Deployment(setup, workdir, model, args.synchronous)
    try:
        deployment.wait_ready()
        _progress(args, f"{say}: up on {', '.join(s.url for s in deployment.servers)}; warm-up")
        for endpoint in endpoints:
            if endpoint == "reward":
                write_ids()
            summary = measure(endpoint, args.warmup)
            if endpoint in DECISIONS:
                ok_decisions += summary["requests"] - summary["status"]
            elif endpoint == "reward":  # a reused id is answered, but not learned twice
                ok_rewards += summary["requests"] - summary["status"] - summary["wrapped"]
        rates: dict[str, float] = {}
        for endpoint in endpoints:
            if endpoint == "reward":  # first rewards of the decisions made so far
                have = write_ids()
                # Enough for rewards as fast as /ping; top up with more decisions if needed.
                need = int(1.2 * max(rates.values()) * args.duration)
                if have < need:
                    top_up = min(3 * args.duration, 1 + (need - have) / rates["decision"])
                    _progress(args, f"{say}: {top_up:.0f} s more decisions")
                    s = measure("decision", top_up)
                    ok_decisions += s["requests"] - s["status"]
                    write_ids()
            _progress(args, f"{say}: {ENDPOINTS[endpoint]} for {args.duration:g} s")
            s = measure(endpoint, args.duration)
            rates[endpoint] = s["rate"]
            if endpoint in DECISIONS:
                ok_decisions += s["requests"] - s["status"]
            elif endpoint == "reward":
                ok_rewards += s["requests"] - s["status"] - s["wrapped"]
            results.append(_result(setup, endpoint, s, args.connections))
        for server in deployment.servers:
            server.stop()
        _check_log(deployment.counts(), ok_decisions, ok_rewards, args)
    finally:
        deployment.stop()
    return results


def bench_ceiling(
    setup: Setup,
    model: Path,
    scripts: dict[str, Path],
    bodies: dict[str, Path],
    args: argparse.Namespace,
    workdir: Path,
) -> Result:
    """The bare ASGI app (`benchmarks.http_ceiling`) with `setup`'s worker processes, loaded
    with the same ``/recommend_action`` bodies and connections: what this machine and this
    server answer without banditrec's validation, metrics, keys and log."""
    deployment = Deployment(setup, workdir, model, args.synchronous, ceiling=True)
    try:
        deployment.wait_ready()
        say = f"{setup.label}: ceiling"
        _progress(args, f"{say}: up on {deployment.servers[0].url}; warm-up")
        items = [bodies["ceiling"]]

        def measure(seconds: float) -> dict[str, Any]:
            return run_wrk(
                deployment, "ceiling", scripts["ceiling"], items, seconds, args.connections,
                args.wrk_threads, workdir,
            )  # fmt: skip

        measure(args.warmup)
        _progress(args, f"{say}: {ENDPOINTS['ceiling']} for {args.duration:g} s")
        return _result(setup, "ceiling", measure(args.duration), args.connections)
    finally:
        deployment.stop()


def _result(setup: Setup, endpoint: str, s: dict[str, Any], connections: int) -> Result:
    """A `Result` from `run_wrk`'s summary."""
    return Result(
        setup=setup,
        endpoint=endpoint,
        connections=connections,
        requests=s["requests"],
        seconds=s["requests"] / s["rate"] if s["rate"] else s["duration_us"] / 1e6,
        p50_ms=s["p50_us"] / 1e3,
        p90_ms=s["p90_us"] / 1e3,
        p99_ms=s["p99_us"] / 1e3,
        max_ms=s["max_us"] / 1e3,
        errors=s["connect"] + s["read"] + s["write"] + s["status"] + s["timeout"],
        wrapped=s["wrapped"] if endpoint == "reward" else 0,
        server_cpu=s["server_cpu"],
        server_cpu_us=s["server_cpu_seconds"] / max(1, s["requests"]) * 1e6,
        redis_cpu=s["redis_cpu"],
        wrk_cpu=s["wrk_cpu"],
        other_cpu=s["other_cpu"],
    )


def _check_log(counts: tuple[int, int], decisions: int, rewards: int, args: Any) -> None:
    """Every decision answered with a 200 is in the log; every reward answered is learned."""
    logged, learned = counts
    if logged < decisions or learned < rewards:
        raise RuntimeError(
            f"The log holds {logged} decisions and {learned} learned rewards, but "
            f"{decisions} decisions and {rewards} rewards were answered."
        )
    _progress(
        args,
        f"log check: {logged:,} decisions logged for {decisions:,} answered; "
        f"{learned:,} rewards learned for {rewards:,} answered",
    )


# -- the report ---------------------------------------------------------------------------


def _progress(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(f"  {message}", file=sys.stderr, flush=True)


def _sqlite_twin(results: list[Result], r: Result) -> Result | None:
    """The SQLite result with as many processes for the same endpoint, for a Redis row."""
    if r.setup.store != "redis":
        return None
    for other in results:
        if (other.setup.store, other.setup.processes, other.endpoint) == (
            "sqlite", r.setup.processes, r.endpoint,
        ):  # fmt: skip
            return other
    return None


def _ceilings(results: list[Result]) -> dict[int, Result]:
    """The ceiling measured for each number of processes (it does not depend on the store)."""
    return {r.setup.processes: r for r in results if r.endpoint == "ceiling"}


def _render(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def ceiling_table(results: list[Result], markdown: bool) -> str:
    """Per setup: the ceiling, the decision routes and /ping side by side, with the ratios
    in requests/s and in CPU per request (which moves less when other jobs share the
    machine: the ceiling and banditrec are measured one after the other)."""
    ceilings = _ceilings(results)
    by = {(r.setup, r.endpoint): r for r in results}
    header = [
        "setup", "ceiling req/s", "µs CPU/req", "/recommend_action", "÷ ceiling", "(CPU)",
        "p99 ms", "/v1/rank", "÷ ceiling", "(CPU)", "p99 ms", "/ping", "÷ ceiling", "(CPU)",
    ]  # fmt: skip
    rows = []
    for setup in dict.fromkeys(r.setup for r in results):
        ceiling = ceilings.get(setup.processes)
        row = [setup.label]
        row += [f"{ceiling.rate:,.0f}", f"{ceiling.server_cpu_us:.0f}"] if ceiling else ["-"] * 2
        for endpoint in ("decision", "rank", "ping"):
            r = by.get((setup, endpoint))
            row.append(f"{r.rate:,.0f}" if r else "-")
            if r and ceiling:  # in requests/s, and in the server's CPU per request
                row.append(f"{r.rate / ceiling.rate:.2f}")
                row.append(f"{ceiling.server_cpu_us / r.server_cpu_us:.2f}")
            else:
                row += ["-", "-"]
            if endpoint != "ping":
                row.append(f"{r.p99_ms:.1f}" if r else "-")
        rows.append(row)
    return _render(header, rows, markdown)


def table(results: list[Result], markdown: bool) -> str:
    ping = {r.setup: r for r in results if r.endpoint == "ping"}
    ceilings = _ceilings(results)
    header = [
        "setup", "endpoint", "conns", "req/s", "p50 ms", "p99 ms", "÷ ceiling", "÷ /ping",
        "÷ SQLite",
        "server CPU", "of it Redis", "µs CPU/req", "÷ /ping (CPU)", "÷ SQLite (CPU)", "wrk CPU",
        "other CPU", "errors",
    ]  # fmt: skip
    rows = []
    for r in results:
        p, twin = ping.get(r.setup), _sqlite_twin(results, r)
        ceiling = ceilings.get(r.setup.processes)
        rows.append(
            [
                r.setup.label,
                ENDPOINTS[r.endpoint],
                str(r.connections),
                f"{r.rate:,.0f}",
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                f"{r.rate / ceiling.rate:.2f}" if ceiling else "-",
                f"{r.rate / p.rate:.2f}" if p else "-",
                f"{r.rate / twin.rate:.2f}" if twin else "-",
                f"{r.server_cpu:.0%}",
                f"{r.redis_cpu:.0%}" if r.setup.store == "redis" else "-",
                f"{r.server_cpu_us:.0f}",
                f"{p.server_cpu_us / r.server_cpu_us:.2f}" if p else "-",
                f"{twin.server_cpu_us / r.server_cpu_us:.2f}" if twin else "-",
                f"{r.wrk_cpu:.0%}",
                f"{r.other_cpu:.0%}",
                str(r.errors) + (f" ({r.wrapped} reused ids)" if r.wrapped else ""),
            ]
        )
    return _render(header, rows, markdown)


def targets(results: list[Result], connections: int) -> list[tuple[str, bool]]:
    by = {(r.setup, r.endpoint): r for r in results}
    ceilings = _ceilings(results)
    checks = []
    for setup in dict.fromkeys(r.setup for r in results if r.setup.store == "sqlite"):
        ceiling = ceilings.get(setup.processes)
        for endpoint in DECISIONS:
            d = by.get((setup, endpoint))
            if d is None:
                continue
            route = ENDPOINTS[endpoint].split()[-1]
            if ceiling is not None:
                ratio = d.rate / ceiling.rate
                checks.append(
                    (f"{setup.label}: {route} ÷ ceiling = {ratio:.2f} ≥ 0.6", ratio >= 0.6)
                )
            checks.append(
                (f"{setup.label}: {route} p99 {d.p99_ms:.1f} ms < 10 ms at {connections} "
                 "connections", d.p99_ms < 10.0)
            )  # fmt: skip
    for endpoint in DECISIONS:
        two = by.get((Setup("sqlite", 2), endpoint))
        if two is not None:
            route = ENDPOINTS[endpoint].split()[-1]
            checks.append(
                (f"2 workers: {route} {two.rate:,.0f} decisions/s ≥ 10,000", two.rate >= 10_000)
            )
    for r in results:
        twin = _sqlite_twin(results, r)
        if r.endpoint == "decision" and twin is not None:
            ratio, cpu = r.rate / twin.rate, twin.server_cpu_us / r.server_cpu_us
            checks.append(
                (f"{r.setup.label}: decisions ÷ {twin.setup.label} = {ratio:.2f} ≥ 0.8 "
                 f"(in CPU per decision: {cpu:.2f})", ratio >= 0.8)
            )  # fmt: skip
    one, two = by.get((Setup("redis", 1), "decision")), by.get((Setup("redis", 2), "decision"))
    if one is not None and two is not None:
        checks.append(
            (f"Redis: 2 replicas serve more decisions than 1 ({two.rate:,.0f} vs "
             f"{one.rate:,.0f}/s)", two.rate > one.rate)
        )  # fmt: skip
    return checks


def setups(args: argparse.Namespace) -> list[Setup]:
    chosen = [Setup("sqlite", n) for n in args.workers]
    if args.redis:
        chosen += [Setup("redis", n, "everysec") for n in args.replicas]
        if args.always:
            chosen.append(Setup("redis", 1, "always"))
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per endpoint.")
    parser.add_argument("--warmup", type=float, default=3.0, help="Warm-up seconds.")
    parser.add_argument("--connections", type=int, default=32, help="Keep-alive connections.")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1).")
    parser.add_argument(
        "--workers", type=int, nargs="*", default=[1, 2], help="SQLite server worker processes."
    )
    parser.add_argument("--synchronous", choices=("NORMAL", "FULL"), default="NORMAL")
    parser.add_argument("--redis", action="store_true", help="Add the Redis setups.")
    parser.add_argument(
        "--replicas", type=int, nargs="*", default=[1, 2], help="Redis replicas (--redis)."
    )
    parser.add_argument(
        "--always",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="With --redis, one more setup: 1 replica, appendfsync always.",
    )
    parser.add_argument(
        "--ceiling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Measure the bare ASGI app (benchmarks.http_ceiling) with each --workers count.",
    )
    parser.add_argument("--contexts", type=int, default=2000, help="Distinct request bodies.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="Print the table as markdown.")
    parser.add_argument("-q", "--quiet", action="store_true", help="No progress lines.")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    if args.redis and not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        print("redis-server is not installed: apt-get install -y redis-server", file=sys.stderr)
        return 2
    if not 1 <= args.duration <= 600 or not 1 <= args.warmup <= 600:
        parser.error("--duration and --warmup must be between 1 and 600 seconds.")

    started = dt.datetime.now(dt.UTC)
    root = Path(tempfile.mkdtemp(prefix="banditrec-bench-http-"))
    try:
        _progress(args, "training a model on 20,000 simulated rows")
        model = train_model(root, args.seed)
        scripts, bodies = write_scripts(root, args.contexts, args.seed)
        results: list[Result] = []
        for setup in setups(args):
            results += bench_setup(setup, model, scripts, bodies, args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(
        f"# banditrec HTTP over loopback, {started:%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}; "
        f"wrk -t{args.wrk_threads} -c{args.connections} -d{args.duration:g}s; "
        f"SQLite synchronous={args.synchronous}"
        + (f"; redis-server {_redis_version()}, appendonly yes" if args.redis else "")
    )
    print(table(results, args.markdown))
    print()
    if any(r.endpoint == "ceiling" for r in results):
        print(ceiling_table(results, args.markdown))
        print()
    for text, ok in targets(results, args.connections):
        print(f"{'met   ' if ok else 'MISSED'}  {text}")
    return 0


def _redis_version() -> str:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return next((w[2:] for w in out.split() if w.startswith("v=")), "?")


if __name__ == "__main__":
    sys.exit(main())
