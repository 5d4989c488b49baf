"""HTTP decisions over loopback: `banditrec serve` under `wrk`, against its own ceiling.

One command, one table::

    .venv/bin/python -m benchmarks.bench_http                  # ~2 minutes
    .venv/bin/python -m benchmarks.bench_http --duration 5     # quicker
    .venv/bin/python -m benchmarks.bench_http --markdown       # table for docs/benchmarks.md

What is measured, for a server of 1 and of 2 worker processes (``--workers``), each started
by this script on a free 127.0.0.1 port with a fresh SQLite event log in a temporary
directory (``--log-level warning``) and stopped at the end:

``GET /ping``
    A constant JSON answer through the same app and the same middleware (metrics, request
    guard): the ceiling of this stack on this machine.
``POST /recommend_action``
    The seed's decision endpoint with varied contexts (drawn by the app simulator, unknown
    categories included). Every decision is durably logged (group commit in SQLite WAL)
    before its response is sent.
``POST /v1/events/{id}/reward``
    ``{"value": 1.0}`` for decisions made earlier in the same run, each rewarded exactly
    once: first rewards, joined to their decision and learned at once (a learn event).

Each endpoint is loaded by `wrk` (C, epoll; ``apt-get install wrk``) for a fixed time with
``--connections`` keep-alive connections and ``--wrk-threads`` threads, after a warm-up
(numba compilation, first requests). The figure is the ratio of an endpoint's requests/s to
``/ping``'s on the same server in the same run: the load generator shares the machine's
cores with the server, so absolute numbers move with the machine, ratios much less.

The table also shows the CPU time the server's processes used per answered request (from
/proc) and its ratio to /ping's: the same figure measured in CPU rather than in wall time,
which moves less when other jobs share the machine ("other CPU": what the rest of the
machine used meanwhile, in cores).

After each server stops, the log is checked: it holds at least as many decisions as
`wrk` received 200 answers for, and one learned reward per reward answer.

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

from banditrec.features import load_default_schema
from banditrec.logged_data import write_logged_csv
from banditrec.policies import LinUCB
from banditrec.sim import AppSimulator
from banditrec.training import train_from_csv

# A wrk script: pre-built requests (read from a file, one body or event id a line) served
# round-robin, and a JSON summary written by done() to $BENCH_OUT.
_LUA = r"""
local mode, items_path = "%(mode)s", "%(items)s"
local threads, counter = {}, 0

function setup(thread)
  thread:set("tid", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  local nthreads = tonumber(args[1])
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
      reqs[i] = wrk.format("POST", "/recommend_action", headers, item)
    end
  end
  n, i, wrapped = #reqs, 0, 0
end

function request()
  i = i + 1
  if i > n then i = 1; wrapped = wrapped + 1 end
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
    "ping": "GET /ping",
    "decision": "POST /recommend_action",
    "reward": "POST /v1/events/{id}/reward",
}


@dataclass
class Result:
    workers: int
    endpoint: str
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors + non-2xx/3xx answers + timeouts
    wrapped: int  # reward ids reused (should be 0: every reward a first reward)
    server_cpu: float  # CPU seconds of the server's processes per second of wall time
    server_cpu_us: float  # the server's CPU microseconds per answered request
    wrk_cpu: float
    other_cpu: float  # CPU used meanwhile by the rest of the machine (other jobs)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


# -- the server ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`banditrec serve` in its own process group on a free loopback port; always stopped."""

    def __init__(self, root: Path, model: Path, workers: int, synchronous: str) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = root / "events.db"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BANDITREC_")}
        env.update(
            BANDITREC_DB_PATH=str(self.db_path),
            BANDITREC_SNAPSHOT_DIR=str(root / "snapshots"),
            BANDITREC_SQLITE_SYNCHRONOUS=synchronous,
        )
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        command = [
            sys.executable, "-m", "banditrec", "serve", "--model", str(model),
            "--port", str(self.port), "--workers", str(workers), "--log-level", "warning",
        ]  # fmt: skip
        self.log_path = root / "server.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, workers: int, timeout: float = 120.0) -> None:
        """Until /health answers (and, with several workers, until all of them are up)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"The server exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200 and len(self.pids()) >= workers:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"The server did not answer in {timeout:.0f} s:\n{self.log()}")
            time.sleep(0.2)

    def pids(self) -> list[int]:
        """The server's process and its descendants (uvicorn's worker processes)."""
        return _process_tree(self.process.pid)

    def cpu_seconds(self) -> float:
        return sum(_cpu_seconds(pid) for pid in self.pids())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


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
    server: Server,
    endpoint: str,
    script: Path,
    seconds: float,
    connections: int,
    threads: int,
    workdir: Path,
) -> dict[str, Any]:
    """One bounded wrk run; its summary plus the CPU used by the server and by wrk."""
    out = workdir / f"wrk-{endpoint}-{time.monotonic_ns()}.json"
    path = "/ping" if endpoint == "ping" else "/"
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        "--timeout", "10s", "-s", str(script), f"{server.url}{path}",
    ]  # fmt: skip
    if endpoint != "ping":
        command += ["--", str(threads)]  # the script splits its items between the threads
    env = dict(os.environ, BENCH_OUT=str(out))
    server_cpu, machine_cpu = server.cpu_seconds(), _machine_busy_seconds()
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except BaseException:
        process.kill()
        process.wait()
        raise
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    server_cpu = server.cpu_seconds() - server_cpu
    machine_cpu = _machine_busy_seconds() - machine_cpu
    output = process.stdout.read().decode(errors="replace") if process.stdout else ""
    if process.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{output}")
    summary: dict[str, Any] = json.loads(out.read_text())
    summary["server_cpu"] = server_cpu / wall
    summary["wrk_cpu"] = (usage.ru_utime + usage.ru_stime) / wall
    summary["server_cpu_seconds"] = server_cpu
    # Everything else the machine did meanwhile (other users' jobs): the CPU not ours.
    summary["other_cpu"] = max(0.0, machine_cpu - server_cpu) / wall - summary["wrk_cpu"]
    return summary


def write_scripts(workdir: Path, contexts: int, seed: int) -> dict[str, Path]:
    """The wrk scripts and the request bodies of the decisions."""
    columns = AppSimulator().sample_contexts(contexts, np.random.default_rng(seed))
    bodies = workdir / "bodies.jsonl"
    with open(bodies, "w") as f:
        for i in range(contexts):
            row = {name: values[i].item() for name, values in columns.items()}
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
    scripts = {"ping": workdir / "ping.lua"}
    scripts["ping"].write_text(_PING_LUA)
    scripts["decision"] = workdir / "decision.lua"
    scripts["decision"].write_text(_LUA % {"mode": "decision", "items": bodies})
    scripts["reward"] = workdir / "reward.lua"
    scripts["reward"].write_text(_LUA % {"mode": "reward", "items": workdir / "event_ids.txt"})
    return scripts


def train_model(workdir: Path, seed: int) -> Path:
    data, model = workdir / "logged.csv", workdir / "model.npz"
    write_logged_csv(AppSimulator().simulate_logged(20_000, np.random.default_rng(seed)), data)
    train_from_csv(data, model, load_default_schema(), LinUCB())
    return model


# -- one server ---------------------------------------------------------------------------


def bench_server(
    workers: int, model: Path, scripts: dict[str, Path], args: argparse.Namespace, root: Path
) -> list[Result]:
    workdir = root / f"workers-{workers}"
    server = Server(workdir, model, workers, args.synchronous)
    results: list[Result] = []
    ok_decisions = ok_rewards = 0
    run = {"duration": args.duration, "connections": args.connections, "threads": args.wrk_threads}

    def measure(endpoint: str, seconds: float) -> dict[str, Any]:
        return run_wrk(
            server, endpoint, scripts[endpoint], seconds, run["connections"], run["threads"],
            workdir,
        )  # fmt: skip

    try:
        server.wait_ready(workers)
        _progress(args, f"{workers} worker(s): server up on {server.url}; warming up")
        for endpoint in ("ping", "decision", "reward"):
            if endpoint == "reward":
                _write_event_ids(server.db_path, root / "event_ids.txt")
            summary = measure(endpoint, args.warmup)
            if endpoint == "decision":
                ok_decisions += summary["requests"] - summary["status"]
        rates: dict[str, float] = {}
        for endpoint in ("ping", "decision", "reward"):
            if endpoint == "reward":  # first rewards of the decisions made so far
                have = _write_event_ids(server.db_path, root / "event_ids.txt")
                # Enough for rewards as fast as /ping; top up with more decisions if needed.
                need = int(1.2 * max(rates.values()) * args.duration)
                if have < need:
                    top_up = min(3 * args.duration, 1 + (need - have) / rates["decision"])
                    _progress(args, f"{workers} worker(s): {top_up:.0f} s more decisions")
                    s = measure("decision", top_up)
                    ok_decisions += s["requests"] - s["status"]
                    _write_event_ids(server.db_path, root / "event_ids.txt")
            _progress(args, f"{workers} worker(s): {ENDPOINTS[endpoint]} for {args.duration:g} s")
            s = measure(endpoint, args.duration)
            rates[endpoint] = s["requests"] / s["duration_us"] * 1e6
            errors = s["connect"] + s["read"] + s["write"] + s["status"] + s["timeout"]
            if endpoint == "decision":
                ok_decisions += s["requests"] - s["status"]
            elif endpoint == "reward":
                ok_rewards += s["requests"] - s["status"]
            results.append(
                Result(
                    workers=workers,
                    endpoint=endpoint,
                    connections=args.connections,
                    requests=s["requests"],
                    seconds=s["duration_us"] / 1e6,
                    p50_ms=s["p50_us"] / 1e3,
                    p90_ms=s["p90_us"] / 1e3,
                    p99_ms=s["p99_us"] / 1e3,
                    max_ms=s["max_us"] / 1e3,
                    errors=errors,
                    wrapped=s["wrapped"] if endpoint == "reward" else 0,
                    server_cpu=s["server_cpu"],
                    server_cpu_us=s["server_cpu_seconds"] / max(1, s["requests"]) * 1e6,
                    wrk_cpu=s["wrk_cpu"],
                    other_cpu=s["other_cpu"],
                )
            )
    finally:
        server.stop()
    _check_log(server.db_path, ok_decisions, ok_rewards, args)
    return results


def _write_event_ids(db_path: Path, out: Path) -> int:
    """Event ids of the decisions logged so far, not yet rewarded, oldest first."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        ids = [r[0] for r in db.execute("SELECT event_id FROM decisions WHERE state = 'pending'")]
    finally:
        db.close()
    out.write_text("\n".join(ids) + "\n")
    return len(ids)


def _check_log(db_path: Path, decisions: int, rewards: int, args: argparse.Namespace) -> None:
    """Every decision answered with a 200 is in the log; every reward answered is learned."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        logged = db.execute("SELECT count(*) FROM decisions").fetchone()[0]
        learned = db.execute("SELECT count(*) FROM rewards WHERE outcome = 'learned'").fetchone()[0]
    finally:
        db.close()
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


def table(results: list[Result], markdown: bool) -> str:
    ping = {r.workers: r for r in results if r.endpoint == "ping"}
    header = [
        "workers", "endpoint", "conns", "req/s", "p50 ms", "p99 ms", "÷ /ping",
        "server CPU", "µs CPU/req", "÷ /ping (CPU)", "wrk CPU", "other CPU", "errors",
    ]  # fmt: skip
    rows = [
        [
            str(r.workers),
            ENDPOINTS[r.endpoint],
            str(r.connections),
            f"{r.rate:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.rate / ping[r.workers].rate:.2f}" if r.workers in ping else "-",
            f"{r.server_cpu:.0%}",
            f"{r.server_cpu_us:.0f}",
            f"{ping[r.workers].server_cpu_us / r.server_cpu_us:.2f}" if r.workers in ping else "-",
            f"{r.wrk_cpu:.0%}",
            f"{r.other_cpu:.0%}",
            str(r.errors) + (f" ({r.wrapped} reused ids)" if r.wrapped else ""),
        ]
        for r in results
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def targets(results: list[Result], connections: int) -> list[tuple[str, bool]]:
    by = {(r.workers, r.endpoint): r for r in results}
    checks = []
    for workers in sorted({r.workers for r in results}):
        d, p = by.get((workers, "decision")), by.get((workers, "ping"))
        if d is None or p is None:
            continue
        ratio = d.rate / p.rate
        checks.append((f"{workers} worker(s): decisions ÷ /ping = {ratio:.2f} ≥ 0.6", ratio >= 0.6))
        checks.append(
            (f"{workers} worker(s): decision p99 {d.p99_ms:.1f} ms < 15 ms at {connections} "
             "connections", d.p99_ms < 15.0)
        )  # fmt: skip
    if (2, "decision") in by:
        rate = by[2, "decision"].rate
        checks.append((f"2 workers: {rate:,.0f} decisions/s ≥ 10,000", rate >= 10_000))
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per endpoint.")
    parser.add_argument("--warmup", type=float, default=3.0, help="Warm-up seconds.")
    parser.add_argument("--connections", type=int, default=32, help="Keep-alive connections.")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1).")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="Server worker processes."
    )
    parser.add_argument("--synchronous", choices=("NORMAL", "FULL"), default="NORMAL")
    parser.add_argument("--contexts", type=int, default=2000, help="Distinct request bodies.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="Print the table as markdown.")
    parser.add_argument("-q", "--quiet", action="store_true", help="No progress lines.")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    if not 1 <= args.duration <= 600 or not 1 <= args.warmup <= 600:
        parser.error("--duration and --warmup must be between 1 and 600 seconds.")

    started = dt.datetime.now(dt.UTC)
    root = Path(tempfile.mkdtemp(prefix="banditrec-bench-http-"))
    try:
        _progress(args, "training a model on 20,000 simulated rows")
        model = train_model(root, args.seed)
        scripts = write_scripts(root, args.contexts, args.seed)
        results: list[Result] = []
        for workers in args.workers:
            results += bench_server(workers, model, scripts, args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(
        f"# banditrec HTTP over loopback, {started:%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}; "
        f"wrk -t{args.wrk_threads} -c{args.connections} -d{args.duration:g}s; "
        f"SQLite synchronous={args.synchronous}"
    )
    print(table(results, args.markdown))
    print()
    for text, ok in targets(results, args.connections):
        print(f"{'met   ' if ok else 'MISSED'}  {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
