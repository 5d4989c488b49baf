"""Batch decisions over HTTP: ``POST /v1/rank/batch`` against ``POST /v1/rank``, same run.

One command, two tables::

    .venv/bin/python -m benchmarks.bench_batch_http                  # ~2 minutes
    .venv/bin/python -m benchmarks.bench_batch_http --duration 3     # quicker
    .venv/bin/python -m benchmarks.bench_batch_http --workers 2      # one setup only
    .venv/bin/python -m benchmarks.bench_batch_http --markdown       # for docs/benchmarks.md

For each ``--workers`` count (default 1, then 2), one ``banditrec serve --workers N`` (a fresh
SQLite log in a temporary directory, a model trained on simulated logs) is loaded by `wrk`
(C, epoll) in turn with:

- single decisions: ``POST /v1/rank`` with one context each (varied contexts drawn by the
  app simulator), ``--connections`` keep-alive connections;
- batches of 100 and of 1,000 contexts (``--batches``): ``POST /v1/rank/batch``, with
  ``--batch-connections`` connections: each request is a large unit of work.

Decisions per second are requests per second times contexts per request. Every decision is
logged durably (one SQLite transaction per batch) before its answer; after each setup the log
must hold at least as many decisions as the answers that `wrk` counted.

The load generator shares the two cores with the server, and on a shared machine so do other
jobs. So the table also shows the server's CPU time per decision (all its processes, from
/proc) and the CPU the rest of the machine used meanwhile ("other", in cores): a rate
measured while other jobs took a core is no measure of what the server can do, its CPU per
decision much more so. ``2 cores ÷ CPU`` is what two cores would serve at that CPU cost if the
server had them to itself (no load generator): an upper bound, not a measurement.

Then the in-process table of `benchmarks.bench_speed` (``--batch-only``): banditrec's batch
decide + update against a plain-numpy batched LinUCB (``--no-in-process`` skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:  # python -m benchmarks.<name>, or python benchmarks/<name>.py
    from benchmarks import _machine, bench_speed
    from benchmarks.bench_http import Server, _cpu_seconds, _machine_busy_seconds, train_model
except ImportError:
    import _machine  # type: ignore[no-redef]
    import bench_speed  # type: ignore[no-redef]
    from bench_http import (  # type: ignore[no-redef]
        Server,
        _cpu_seconds,
        _machine_busy_seconds,
        train_model,
    )
from banditrec.sim import AppSimulator

TARGET_DECISIONS_PER_S = 100_000
TARGET_BATCH = 1000

# Pre-built request bodies (one a line of the file given after --), sent round-robin; the
# JSON summary goes to $BENCH_OUT.
_LUA = r"""
function init(args)
  local path, bodies_path = args[1], args[2]
  reqs = {}
  local headers = {["Content-Type"] = "application/json"}
  for line in io.lines(bodies_path) do
    table.insert(reqs, wrk.format("POST", path, headers, line))
  end
  n, i = #reqs, 0
end

function request()
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  local f = io.open(os.getenv("BENCH_OUT"), "w")
  f:write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "status": %d, ' ..
    '"errors": %d}',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
  f:close()
end
"""


@dataclass
class Run:
    """One load: `wrk` on one route with one body size, and the CPU it cost."""

    workers: int
    label: str
    per_request: int  # contexts per request
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    failed: int  # non-2xx answers and socket errors
    server_cpu: float  # CPU seconds of the server's processes
    wrk_cpu: float
    other_cpu: float  # CPU seconds the rest of the machine used meanwhile

    @property
    def decisions(self) -> int:
        return (self.requests - self.failed) * self.per_request

    @property
    def rate(self) -> float:
        return self.decisions / self.seconds

    @property
    def cpu_us(self) -> float:
        """The server's CPU microseconds per decision."""
        return 1e6 * self.server_cpu / max(self.decisions, 1)


def contexts(n: int, seed: int) -> list[dict[str, Any]]:
    columns = AppSimulator().sample_contexts(n, np.random.default_rng(seed))
    del columns["user_id"]
    return [{k: v[i].item() for k, v in columns.items()} for i in range(n)]


def write_bodies(workdir: Path, sizes: list[int], seed: int) -> dict[int, Path]:
    """Files of request bodies: 2,000 single contexts (size 1), 16 batches of each size."""
    pool = contexts(max(2_000, max(sizes) * 4), seed)
    files = {1: workdir / "single.jsonl"}
    with open(files[1], "w") as f:
        for c in pool[:2_000]:
            f.write(json.dumps({"context": c}, separators=(",", ":")) + "\n")
    rng = np.random.default_rng(seed + 1)
    for size in sizes:
        files[size] = workdir / f"batch-{size}.jsonl"
        with open(files[size], "w") as f:
            for _ in range(16):
                rows = rng.choice(len(pool), size=size, replace=False)
                body = {"contexts": [pool[i] for i in rows]}
                f.write(json.dumps(body, separators=(",", ":")) + "\n")
    return files


def run_wrk(
    server: Server, path: str, bodies: Path, script: Path, seconds: int, connections: int
) -> tuple[dict[str, Any], float, float, float]:
    """`wrk`'s summary, and the CPU seconds of the server, of `wrk` and of the rest."""
    out = bodies.with_suffix(f".{time.monotonic_ns()}.json")
    threads = min(2, connections)
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s",
        "-s", str(script), server.url, "--", path, str(bodies),
    ]  # fmt: skip
    pids = server.pids()
    server_before = sum(_cpu_seconds(pid) for pid in pids)
    machine_before = _machine_busy_seconds()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        command, env=dict(os.environ, BENCH_OUT=str(out)), capture_output=True, check=False
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    machine = _machine_busy_seconds() - machine_before
    server_cpu = sum(_cpu_seconds(pid) for pid in pids) - server_before
    wrk_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout.decode()}")
    summary: dict[str, Any] = json.loads(out.read_text())
    return summary, server_cpu, wrk_cpu, max(machine - server_cpu - wrk_cpu, 0.0)


def bench_setup(
    workers: int, args: argparse.Namespace, workdir: Path, model: Path, bodies: dict[int, Path]
) -> list[Run]:
    script = workdir / "bodies.lua"
    script.write_text(_LUA)
    server = Server(workdir / f"server-{workers}", model, workers, "NORMAL", None)
    loads = [(1, "/v1/rank", args.connections)]
    loads += [(size, "/v1/rank/batch", args.batch_connections) for size in args.batches]
    runs: list[Run] = []
    try:
        server.wait_ready()
        for size, path, _ in loads:  # warm-up: numba compilation, first requests
            run_wrk(server, path, bodies[size], script, 2, 2)
        for size, path, connections in loads:
            s, server_cpu, wrk_cpu, other = run_wrk(
                server, path, bodies[size], script, args.duration, connections
            )
            label = path if size == 1 else f"{path} ({size:,} contexts)"
            runs.append(
                Run(
                    workers, label, size, connections, s["requests"], s["duration_us"] / 1e6,
                    s["p50_us"] / 1000, s["p99_us"] / 1000, s["status"] + s["errors"],
                    server_cpu, wrk_cpu, other,
                )
            )  # fmt: skip
    finally:
        server.stop()
    with sqlite3.connect(server.db_path) as db:
        logged = int(db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])
    answered = sum(r.decisions for r in runs)
    if logged < answered:
        raise RuntimeError(f"{workers} worker(s): {logged:,} decisions logged < {answered:,}.")
    print(f"  {workers} worker(s): log check ok ({logged:,} logged ≥ {answered:,} answered)")
    return runs


def table(runs: list[Run], markdown: bool) -> str:
    headers = [
        "workers", "request", "conns", "requests/s", "decisions/s", "vs single", "p50 ms",
        "p99 ms", "failed", "server CPU µs/decision", "2 cores ÷ CPU", "other CPU (cores)",
    ]  # fmt: skip
    lines = []
    for r in runs:
        single = next(s for s in runs if s.workers == r.workers and s.per_request == 1)
        lines.append([
            str(r.workers), r.label, str(r.connections), f"{r.requests / r.seconds:,.0f}",
            f"{r.rate:,.0f}", f"{r.rate / single.rate:.1f}x", f"{r.p50_ms:.1f}",
            f"{r.p99_ms:.1f}", str(r.failed), f"{r.cpu_us:.1f}", f"{2e6 / r.cpu_us:,.0f}/s",
            f"{r.other_cpu / r.seconds:.2f}",
        ])  # fmt: skip
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|---|---|" + "---:|" * (len(headers) - 2)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    out = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    out += ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_batch_http",
        description="Decisions/s over HTTP: POST /v1/rank/batch vs POST /v1/rank.",
    )
    parser.add_argument("--duration", type=int, default=8, help="seconds per load [8]")
    parser.add_argument(
        "--batches", type=int, nargs="+", default=[100, 1000],
        help="contexts per batch, one load each [100 1000]",
    )  # fmt: skip
    parser.add_argument("--connections", type=int, default=32, help="single decisions [32]")
    # 8, not 4: two workers share one listening socket, and with 4 connections the kernel
    # once gave all four to one worker (the other idle); with 8 each got its half.
    parser.add_argument("--batch-connections", type=int, default=8, help="batches [8]")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="server processes [1 2]"
    )
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    parser.add_argument(
        "--no-in-process", action="store_true", help="skip bench_speed's batch table"
    )
    args = parser.parse_args(argv)

    print("Machine")
    for line in _machine.machine_notes(["numpy", "numba", "orjson"]):
        print(f"  {line}")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="banditrec-batch-") as tmp:
        workdir = Path(tmp)
        model = train_model(workdir, args.seed)
        bodies = write_bodies(workdir, args.batches, args.seed)
        for workers in args.workers:
            runs += bench_setup(workers, args, workdir, model, bodies)
    print(
        f"\nSetup: banditrec serve --workers N, SQLite (synchronous=NORMAL), wrk {args.duration}"
        f" s per load, seed {args.seed}; {_load_note()}"
    )
    print(table(runs, args.markdown))
    at_target = [r for r in runs if r.per_request == TARGET_BATCH]
    if at_target:
        best = max(at_target, key=lambda r: r.rate)
        met = best.rate >= TARGET_DECISIONS_PER_S
        print(
            f"\nTarget: batch decisions ≥ {TARGET_DECISIONS_PER_S:,}/s at {TARGET_BATCH:,} "
            f"contexts per request: {'met' if met else 'NOT met'} ({best.rate:,.0f}/s with "
            f"{best.workers} worker(s); other jobs used {best.other_cpu / best.seconds:.2f} "
            "cores meanwhile)"
        )
    if not args.no_in_process:
        print("\nIn process (benchmarks.bench_speed --batch-only):")
        sys.stdout.flush()
        in_process = ["--batch-only", "-q", *(["--markdown"] if args.markdown else [])]
        return bench_speed.main(in_process)
    return 0


def _load_note() -> str:
    load = os.getloadavg()
    return f"load average at the end {load[0]:.1f} (1 min), {load[1]:.1f} (5 min)"


if __name__ == "__main__":
    sys.exit(main())
