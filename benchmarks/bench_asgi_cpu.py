"""CPU per decision in process: banditrec's app against the bare ASGI ceiling, no server.

`bench_http` measures rates over loopback, which a shared 2-core machine makes noisy: the
servers, wrk and every other job compete for the same cores. This benchmark drives the
ASGI apps directly (requests built as uvicorn would hand them over, `--in-flight` of them at
once on a uvloop event loop, as `banditrec serve` runs) and reads the process's CPU time, so
it measures the cost of a decision in banditrec's own code and its durable log (the SQLite
writer thread included) against `benchmarks.http_ceiling.CeilingApp` (the same model and
encoder, no framework, no log). The HTTP server's own share (uvicorn, httptools, the socket)
is not in these figures: it is about the same for both apps, so the ratio here is lower than
the one over HTTP, where both carry that share.

Rounds alternate between the apps, and the table gives medians, so a burst of load from
another job moves both columns alike.

Run::

    python -m benchmarks.bench_asgi_cpu               # 5 rounds of 6,000 requests each
    python -m benchmarks.bench_asgi_cpu --in-flight 4 --markdown
    python -m benchmarks.bench_asgi_cpu --skip-log   # diagnostic: what the log's hand-off costs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import uvloop

ASGIApp = Callable[..., Awaitable[None]]

#: The rows of the table: what is driven, and the path and body file it is driven with.
TARGETS = {
    "ceiling": ("/recommend_action", "ceiling"),
    "/recommend_action": ("/recommend_action", "decision"),
    "/v1/rank": ("/v1/rank", "rank"),
}


async def drive(app: ASGIApp, path: str, bodies: list[bytes], n: int, in_flight: int) -> None:
    """`n` POST requests to `path`, `in_flight` at a time, each checked to answer 200."""
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]

    async def one(body: bytes) -> None:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
            "root_path": "", "query_string": b"", "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2), "state": {},
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }  # fmt: skip
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        if sent[0].get("status") != 200:
            raise RuntimeError(f"{path} answered {sent}")

    async def client(k: int) -> None:
        for i in range(k, n, in_flight):
            await one(bodies[i % len(bodies)])

    await asyncio.gather(*(client(k) for k in range(in_flight)))


async def start(app: ASGIApp) -> Callable[[], Awaitable[None]]:
    """Run the app's lifespan start-up (opens the log, loads the model); return its shutdown."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.get_running_loop().create_task(app(scope, inbox.get, outbox.put))
    message = await outbox.get()
    if message["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"The app did not start: {message}")

    async def stop() -> None:  # closes the log (the writer thread's last commit) as uvicorn
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task

    return stop


async def measure(
    args: argparse.Namespace, root: Path
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    from banditrec.api import create_app
    from banditrec.config import Settings
    from benchmarks.bench_http import train_model, write_scripts
    from benchmarks.http_ceiling import CeilingApp

    model = train_model(root, args.seed)
    _, files = write_scripts(root, args.contexts, args.seed)
    bodies = {name: path.read_bytes().splitlines() for name, path in files.items()}
    settings = Settings(
        db_path=root / "events.db", snapshot_dir=root / "snapshots", model_path=model
    )
    apps: dict[str, ASGIApp] = {"ceiling": CeilingApp(model)}
    banditrec = create_app(settings)
    stop = await start(banditrec)
    apps["/recommend_action"] = apps["/v1/rank"] = banditrec
    for name, (path, body) in TARGETS.items():  # warm-up: kernels, caches, the log's pages
        await drive(apps[name], path, bodies[body], args.requests // 3, args.in_flight)
    cpu: dict[str, list[float]] = {name: [] for name in TARGETS}
    rate: dict[str, list[float]] = {name: [] for name in TARGETS}
    for r in range(args.rounds):
        for name, (path, body) in TARGETS.items():
            started = time.process_time()  # every thread: the SQLite writer's commits too
            wall = time.perf_counter()
            await drive(apps[name], path, bodies[body], args.requests, args.in_flight)
            cpu[name].append(1e6 * (time.process_time() - started) / args.requests)
            rate[name].append(args.requests / (time.perf_counter() - wall))
        if not args.quiet:
            line = ", ".join(f"{k} {v[-1]:.1f} µs" for k, v in cpu.items())
            print(f"  round {r + 1}/{args.rounds}: {line}", file=sys.stderr)
    await stop()
    return cpu, rate


def table(cpu: dict[str, list[float]], rate: dict[str, list[float]], markdown: bool) -> str:
    """Medians per app: CPU per decision (and its range) and the wall-clock rate, with the
    ratios to the ceiling (of rates: the ceiling's CPU over the app's, and rate over rate)."""
    ceiling = statistics.median(cpu["ceiling"])
    ceiling_rate = statistics.median(rate["ceiling"])
    header = ["app", "µs CPU/decision", "min", "max", "÷ ceiling (CPU)", "decisions/s"]
    header.append("÷ ceiling (wall)")
    rows = [
        [
            name,
            f"{statistics.median(v):.1f}",
            f"{min(v):.1f}",
            f"{max(v):.1f}",
            f"{ceiling / statistics.median(v):.2f}",
            f"{statistics.median(rate[name]):,.0f}",
            f"{statistics.median(rate[name]) / ceiling_rate:.2f}",
        ]
        for name, v in cpu.items()
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    return "\n".join(lines)


@contextlib.contextmanager
def _log_skipped(skip: bool) -> Iterator[None]:
    """With `skip`, the group-commit log answers every decision at once, unlogged, until the
    block ends: the difference to a normal run is what logging (the hand-off to the writer
    thread and the commit) costs."""
    from banditrec.group_commit import GroupCommitLog

    original = GroupCommitLog.log_decision

    async def log_decision(self: GroupCommitLog, record: Any) -> Any:
        return record

    if skip:
        GroupCommitLog.log_decision = log_decision  # type: ignore[method-assign]
    try:
        yield
    finally:
        GroupCommitLog.log_decision = original  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="Alternating rounds per app.")
    parser.add_argument("--requests", type=int, default=6000, help="Requests per round.")
    parser.add_argument("--in-flight", type=int, default=32, help="Requests at once.")
    parser.add_argument("--contexts", type=int, default=2000, help="Distinct request bodies.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip-log",
        action="store_true",
        help="Diagnostic: answer decisions without logging them (the rest of the path as is).",
    )
    parser.add_argument("--markdown", action="store_true", help="Print the table as markdown.")
    parser.add_argument("-q", "--quiet", action="store_true", help="No progress lines.")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.requests < 1 or args.in_flight < 1:
        parser.error("--rounds, --requests and --in-flight must be at least 1.")
    for name in [k for k in os.environ if k.startswith("BANDITREC_")]:
        del os.environ[name]  # the benchmark's own settings only
    started = dt.datetime.now(dt.UTC)
    with (
        _log_skipped(args.skip_log),
        tempfile.TemporaryDirectory(prefix="banditrec-bench-asgi-") as tmp,
    ):
        cpu, rate = uvloop.run(measure(args, Path(tmp)))  # the event loop uvicorn serves on
    print(
        f"# CPU per decision in process, {started:%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}; {args.rounds} rounds × {args.requests:,} requests, "
        f"{args.in_flight} in flight; "
        + ("log SKIPPED (diagnostic)" if args.skip_log else "SQLite log (banditrec)")
        + ", no log (ceiling)"
    )
    print(table(cpu, rate, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
