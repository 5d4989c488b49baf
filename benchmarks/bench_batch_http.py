"""Batch decisions over HTTP: ``POST /v1/rank/batch`` against ``POST /v1/rank``, same run.

One command, one table::

    .venv/bin/python -m benchmarks.bench_batch_http                 # ~30 s
    .venv/bin/python -m benchmarks.bench_batch_http --duration 3    # quicker
    .venv/bin/python -m benchmarks.bench_batch_http --markdown      # for docs/benchmarks.md

One ``banditrec serve`` (``--workers``, default 1; a fresh SQLite log in a temporary
directory, a model trained on simulated logs) is loaded by `wrk` (C, epoll) in turn with:

- single decisions: ``POST /v1/rank`` with one context each (varied contexts drawn by the
  app simulator), ``--connections`` keep-alive connections;
- batches: ``POST /v1/rank/batch`` with ``--batch`` contexts each (default 1,000), fewer
  connections (``--batch-connections``): each request is a large unit of work.

Decisions per second are requests per second times contexts per request. Every decision is
logged durably (group commit) before its answer; after the run the log must hold at least
as many decisions as the answers that `wrk` counted. The load generator shares the two cores
with the server, so absolute figures move with the machine; the ratio moves less.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

try:  # python -m benchmarks.<name>, or python benchmarks/<name>.py
    from benchmarks import _machine
    from benchmarks.bench_http import Server, train_model
except ImportError:
    import _machine  # type: ignore[no-redef]
    from bench_http import Server, train_model  # type: ignore[no-redef]
from banditrec.sim import AppSimulator

TARGET_DECISIONS_PER_S = 100_000

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


def contexts(n: int, seed: int) -> list[dict[str, Any]]:
    columns = AppSimulator().sample_contexts(n, np.random.default_rng(seed))
    del columns["user_id"]
    return [{k: v[i].item() for k, v in columns.items()} for i in range(n)]


def write_bodies(workdir: Path, batch: int, seed: int) -> tuple[Path, Path]:
    """Files of request bodies: 2,000 single contexts, and 16 batches of `batch` contexts."""
    singles, batches = workdir / "single.jsonl", workdir / "batch.jsonl"
    pool = contexts(max(2_000, batch * 4), seed)
    with open(singles, "w") as f:
        for c in pool[:2_000]:
            f.write(json.dumps({"context": c}, separators=(",", ":")) + "\n")
    rng = np.random.default_rng(seed + 1)
    with open(batches, "w") as f:
        for _ in range(16):
            rows = rng.choice(len(pool), size=batch, replace=False)
            body = {"contexts": [pool[i] for i in rows]}
            f.write(json.dumps(body, separators=(",", ":")) + "\n")
    return singles, batches


def run_wrk(
    url: str, path: str, bodies: Path, script: Path, seconds: int, connections: int
) -> dict[str, Any]:
    out = bodies.with_suffix(f".{time.monotonic_ns()}.json")
    threads = min(2, connections)
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s",
        "-s", str(script), url, "--", path, str(bodies),
    ]  # fmt: skip
    done = subprocess.run(
        command, env=dict(os.environ, BENCH_OUT=str(out)), capture_output=True, check=False
    )
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout.decode()}")
    summary: dict[str, Any] = json.loads(out.read_text())
    summary["rate"] = summary["requests"] / summary["duration_us"] * 1e6
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_batch_http",
        description="Decisions/s over HTTP: POST /v1/rank/batch vs POST /v1/rank.",
    )
    parser.add_argument("--duration", type=int, default=8, help="seconds per load [8]")
    parser.add_argument("--batch", type=int, default=1000, help="contexts per batch [1000]")
    parser.add_argument("--connections", type=int, default=32, help="single decisions [32]")
    parser.add_argument("--batch-connections", type=int, default=4, help="batches [4]")
    parser.add_argument("--workers", type=int, default=1, help="server processes [1]")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="banditrec-batch-") as tmp:
        workdir = Path(tmp)
        model = train_model(workdir, args.seed)
        singles, batches = write_bodies(workdir, args.batch, args.seed)
        script = workdir / "bodies.lua"
        script.write_text(_LUA)
        server = Server(workdir / "server", model, args.workers, "NORMAL", None)
        try:
            server.wait_ready()
            for path, bodies in (("/v1/rank", singles), ("/v1/rank/batch", batches)):
                run_wrk(server.url, path, bodies, script, 2, min(2, args.connections))  # warm-up
            single = run_wrk(
                server.url, "/v1/rank", singles, script, args.duration, args.connections
            )
            batch = run_wrk(
                server.url, "/v1/rank/batch", batches, script, args.duration,
                args.batch_connections,
            )  # fmt: skip
        finally:
            server.stop()
        with sqlite3.connect(server.db_path) as db:
            logged = int(db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])

    answered = (
        single["requests"] - single["status"] + args.batch * (batch["requests"] - batch["status"])
    )
    rows = [
        ("POST /v1/rank (1 context)", 1, args.connections, single),
        (f"POST /v1/rank/batch ({args.batch:,} contexts)", args.batch, args.batch_connections,
         batch),
    ]  # fmt: skip
    print("Machine")
    for line in _machine.machine_notes(["numpy", "numba"]):
        print(f"  {line}")
    print(f"Setup: banditrec serve --workers {args.workers}, SQLite (synchronous=NORMAL), "
          f"wrk {args.duration} s per load, seed {args.seed}")  # fmt: skip
    headers = ["request", "connections", "requests/s", "decisions/s", "p50 ms", "p99 ms",
               "non-2xx", "vs single"]  # fmt: skip
    lines = []
    for label, per, connections, s in rows:
        lines.append([
            label, str(connections), f"{s['rate']:,.0f}", f"{s['rate'] * per:,.0f}",
            f"{s['p50_us'] / 1000:.1f}", f"{s['p99_us'] / 1000:.1f}", str(s["status"]),
            f"{s['rate'] * per / single['rate']:.1f}x",
        ])  # fmt: skip
    if args.markdown:
        print("| " + " | ".join(headers) + " |")
        print("|---|" + "---:|" * (len(headers) - 1))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        print("  ".join(f"{h:>14}" for h in headers))
        for line in lines:
            print("  ".join(f"{c:>14}" for c in line))
    ok = logged >= answered
    print(f"\nLog check: {logged:,} decisions logged, {answered:,} answered (timed runs): "
          f"{'ok' if ok else 'FAIL'}")  # fmt: skip
    decisions = batch["rate"] * args.batch
    met = decisions >= TARGET_DECISIONS_PER_S
    print(f"Target: batch decisions ≥ {TARGET_DECISIONS_PER_S:,}/s: "
          f"{'met' if met else 'NOT met'} ({decisions:,.0f}/s)")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
