"""A thousand actions: K = 1,000 actions, d = 50 features, in process and over HTTP.

One command::

    .venv/bin/python -m benchmarks.bench_many_actions               # ~1 minute
    .venv/bin/python -m benchmarks.bench_many_actions --quick       # smoke test

The schema has one categorical field of 9 values (10 columns with "other"), 39 real fields
and the bias: d = 50; its 1,000 actions are ``a0000`` … ``a0999``. A LinUCB model is trained
on `--rows` random rounds (one batched ridge fit per action), then measured:

in process
    One decision as the server computes it, without logging: `FeatureSchema.vectorize` of a
    context, `Policy.distribution` over all 1,000 actions (scores, ε-greedy probabilities)
    and `sample_action`. Timed one by one (`--decisions` of them); p50, p99, max.
model file
    `save_model` (npz, atomic) and `load_model` (checks, exact Cholesky refresh of A⁻¹ and θ
    of every action), and the file's size.
snapshot
    What the learner does every N learn events: a copy of the model (`Policy.clone`) and
    `SnapshotDirectory.save` (the same file format, fsynced).
over HTTP
    `banditrec serve` with this schema and model (`--workers`, a fresh SQLite log: every
    decision is logged durably), loaded by `wrk` with each of `--connections` keep-alive
    connections for `--seconds` on ``POST /v1/rank`` (the answer ranks all 1,000 actions:
    ~70 KB of JSON). wrk's latency percentiles and rate, and the server's CPU time per
    request (all its processes, from /proc: the figure that holds on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

try:  # python -m benchmarks.<name>, or python benchmarks/<name>.py
    from benchmarks import _machine
except ImportError:
    import _machine  # type: ignore[no-redef]
from banditrec.exploration import sample_action
from banditrec.features import FeatureSchema
from banditrec.policies import LinUCB
from banditrec.snapshot import Model, load_model, new_version, save_model
from banditrec.snapshot_store import SnapshotDirectory

K, N_REAL = 1000, 39
PLANS = ("free", "basic", "plus", "pro", "team", "edu", "trial", "family", "legacy")
TARGET_IN_PROCESS_MS = 1.0
TARGET_HTTP_P99_MS = 20.0
JSON_HEADERS = {"Content-Type": "application/json"}

WRK_SCRIPT = """
local body = io.open(os.getenv("BENCH_BODY")):read("*a")
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
"""


def schema_dict() -> dict[str, Any]:
    fields: list[dict[str, Any]] = [{"name": "plan", "kind": "categorical", "values": list(PLANS)}]
    fields += [
        {"name": f"x{j:02d}", "kind": "real", "min": -100.0, "max": 100.0} for j in range(N_REAL)
    ]
    return {
        "name": "many-actions",
        "bias": True,
        "actions": [f"a{k:04d}" for k in range(K)],
        "fields": fields,
    }


def toml(data: dict[str, Any]) -> str:
    lines = [f'name = "{data["name"]}"', "bias = true", f"actions = {json.dumps(data['actions'])}"]
    for f in data["fields"]:
        lines.append("\n[[fields]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in f.items()]
    return "\n".join(lines) + "\n"


def contexts(n: int, rng: np.random.Generator) -> dict[str, Any]:
    columns: dict[str, Any] = {"plan": rng.choice(np.array(PLANS), size=n)}
    for j in range(N_REAL):
        columns[f"x{j:02d}"] = np.round(rng.normal(0.0, 1.0, size=n), 3)
    return columns


def percentiles(seconds: list[float]) -> str:
    ms = np.array(seconds) * 1e3
    p50, p99 = np.percentile(ms, [50, 99])
    return f"p50 {p50:.3f} ms, p99 {p99:.3f} ms, max {ms.max():.3f} ms"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wrk_latency(text: str) -> dict[str, float]:
    """wrk --latency's percentiles (ms) and requests/s from its text output."""
    units = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    out: dict[str, float] = {}
    for pct, value, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        out[f"p{pct}"] = float(value) * units[unit]
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["rate"] = float(rate.group(1)) if rate else float("nan")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non_2xx"] = float(errors.group(1)) if errors else 0.0
    return out


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants so far (Linux /proc)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):  # exited meanwhile
            continue
    return total


def http_runs(
    root: Path,
    model: Path,
    schema_path: Path,
    body: bytes,
    seconds: int,
    connections: list[int],
    workers: int,
) -> list[dict[str, float]]:
    """One server with `workers` workers, measured at each number of connections in turn."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANDITREC_")}
    env.update(BANDITREC_SNAPSHOT_DIR=str(root / "snapshots"))
    command = [
        sys.executable, "-m", "banditrec", "serve", "--model", str(model),
        "--schema", str(schema_path), "--db", str(root / "events.db"), "--port", str(port),
        "--log-level", "warning", "--no-access-log", "--workers", str(workers),
    ]  # fmt: skip
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    try:
        import httpx

        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.post(f"{url}/v1/rank", content=body, timeout=5, headers=JSON_HEADERS)
                if answer.status_code == 200:
                    size = len(answer.content)
                    break
                raise RuntimeError(f"/v1/rank answered {answer.status_code}: {answer.text}")
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    err = server.stderr.read().decode() if server.stderr else ""
                    raise RuntimeError(f"the server did not start:\n{err}") from None
                time.sleep(0.1)
        (root / "body.json").write_bytes(body)
        (root / "rank.lua").write_text(WRK_SCRIPT)
        wrk_env = dict(os.environ, BENCH_BODY=str(root / "body.json"))
        results = []
        for n in connections:
            base = ["wrk", f"-t{min(2, n)}", f"-c{n}", "--latency", "--timeout", "10s"]
            base += ["-s", str(root / "rank.lua")]
            subprocess.run(
                [*base, "-d2s", f"{url}/v1/rank"], env=wrk_env, check=True, capture_output=True
            )
            cpu = tree_cpu_seconds(server.pid)
            done = subprocess.run(
                [*base, f"-d{seconds}s", f"{url}/v1/rank"],
                env=wrk_env, check=True, capture_output=True, text=True,
            )  # fmt: skip
            cpu = tree_cpu_seconds(server.pid) - cpu
            result = wrk_latency(done.stdout)
            result.update(bytes=size, connections=n, workers=workers)
            result["cpu_ms"] = cpu / max(result["rate"] * seconds, 1) * 1e3
            results.append(result)
            print(f"HTTP: {result}", file=sys.stderr)
        return results
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="Training rounds.")
    parser.add_argument("--decisions", type=int, default=3000)
    parser.add_argument("--seconds", type=int, default=15, help="wrk's run.")
    parser.add_argument(
        "--connections", default="2,4,8", help="wrk's connections, comma-separated: one run each."
    )
    parser.add_argument("--workers", default="1,2", help="Server workers, comma-separated.")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-http", action="store_true", help="Skip the HTTP run.")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.decisions, args.seconds = 20_000, 300, 3
    rng = np.random.default_rng(0)
    data = schema_dict()
    schema = FeatureSchema.from_dict(data)
    assert schema.n_actions == K and schema.n_features == 50
    report: list[str] = []

    start = time.perf_counter()
    policy = LinUCB().reset(K, schema.n_features)
    X = schema.vectorize_many(contexts(args.rows, rng))
    truth = rng.normal(0, 0.1, size=(K, schema.n_features))
    actions = rng.integers(0, K, size=args.rows)
    rewards = (rng.random(args.rows) < 1 / (1 + np.exp(-(X * truth[actions]).sum(1)))) * 1.0
    policy.update_batch(X, actions, rewards)
    model = Model(policy, schema, "2026-11-30T00:00:00+00:00", new_version(schema, args.rows))
    report.append(f"trained on {args.rows:,} rounds in {time.perf_counter() - start:.2f} s")

    with tempfile.TemporaryDirectory(prefix="bench-k1000-") as tmp:
        root = Path(tmp)
        schema_path, model_path = root / "schema.toml", root / "model.npz"
        schema_path.write_text(toml(data))
        saves, loads = [], []
        for _ in range(3):
            t = time.perf_counter()
            save_model(model, model_path)
            saves.append(time.perf_counter() - t)
            t = time.perf_counter()
            load_model(model_path, schema)
            loads.append(time.perf_counter() - t)
        report.append(
            f"model file: {model_path.stat().st_size / 2**20:.1f} MB; save best "
            f"{min(saves) * 1e3:.0f} ms (median {statistics.median(saves) * 1e3:.0f}), load "
            f"best {min(loads) * 1e3:.0f} ms (median {statistics.median(loads) * 1e3:.0f})"
        )
        snaps = SnapshotDirectory(root / "snaps")
        snap_times = []
        for _ in range(3):
            t = time.perf_counter()
            snapshot = Model(model.policy.clone(), schema, model.created_at, model.version)
            snaps.save(snapshot)
            snap_times.append(time.perf_counter() - t)
        report.append(
            f"snapshot (clone + write): best {min(snap_times) * 1e3:.0f} ms, median "
            f"{statistics.median(snap_times) * 1e3:.0f} ms"
        )

        one = contexts(args.decisions, rng)
        rows = [{k: v[i].item() for k, v in one.items()} for i in range(args.decisions)]
        eligible = np.ones(K, dtype=bool)
        decide_rng = np.random.default_rng(1)
        for row in rows[:50]:  # warm: kernels loaded
            model.policy.distribution(schema.vectorize(row), eligible)
        times = []
        for row in rows:
            t = time.perf_counter()
            _, p = model.policy.distribution(schema.vectorize(row), eligible)
            sample_action(p, decide_rng)
            times.append(time.perf_counter() - t)
        report.append(f"in process, one decision (K=1000, d=50): {percentiles(times)}")

        if not args.no_http:
            if shutil.which("wrk") is None:
                report.append("over HTTP: skipped (wrk is not installed)")
            else:
                body = json.dumps({"context": rows[0]}).encode()
                connections = [int(n) for n in args.connections.split(",")]
                for workers in (int(n) for n in args.workers.split(",")):
                    runs = http_runs(
                        root, model_path, schema_path, body, args.seconds, connections, workers
                    )
                    for r in runs:
                        nan = float("nan")
                        report.append(
                            f"over HTTP, POST /v1/rank ({r['bytes'] / 1024:.0f} KB answers), "
                            f"{workers} worker(s), {r['connections']:.0f} connections, "
                            f"{args.seconds} s: {r['rate']:.0f}/s, p50 {r.get('p50', nan):.1f} "
                            f"ms, p90 {r.get('p90', nan):.1f} ms, p99 {r.get('p99', nan):.1f} "
                            f"ms; server CPU {r['cpu_ms']:.2f} ms a request; "
                            f"non-2xx: {r['non_2xx']:.0f}"
                        )
    for note in _machine.machine_notes(["numpy", "numba", "fastapi", "uvicorn"]):
        print(note)
    for line in report:
        print(line)
    print(
        f"targets: in process < {TARGET_IN_PROCESS_MS:g} ms a decision; "
        f"over HTTP p99 < {TARGET_HTTP_P99_MS:g} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
