"""What a named loop costs per decision: ``/v1/loops/{loop}/rank`` against ``/v1/rank``.

One command, one table::

    .venv/bin/python -m benchmarks.bench_loops                 # ~30 s
    .venv/bin/python -m benchmarks.bench_loops --requests 5000

One app (a fresh SQLite log in a temporary directory, API keys on) serves the default loop
and a named loop with the same schema, policy and seed; the loop's writer key is one of the
loop's own keys (checked by digest), the default route's is a server key. Each request is a
whole ASGI call into the app (middleware, hot path, key check, validation, decision, logged
durably before the answer), without a network or an HTTP server, so what differs between
the rows is what the loop routes add: the name check, the loop look-up and the loop's key
table. Rounds alternate between the routes (ABAB...) so that a noisy neighbour hurts both;
the table reports the median round.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from banditrec.api import create_app
from banditrec.config import Settings
from banditrec.features import load_default_schema

try:
    from benchmarks import _machine
except ImportError:  # run as a script
    import _machine  # type: ignore[no-redef]

SERVER_KEY = "bench-server-writer-key-0123456789"
LOOP_KEY = "bench-loop-writer-key-0123456789"
CONTEXT = {
    "country": "AT", "device": "ios", "segment": "high", "n_sessions": 10,
    "days_since_install": 5, "recent_engagement": 12, "avg_session_length": 180.0,
}  # fmt: skip


async def call(app: Any, path: str, body: bytes, key: str) -> int:
    """One POST through the whole app; its status."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", b"Bearer " + key.encode()),
        ],
    }  # fmt: skip
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def run(n_requests: int, n_rounds: int) -> dict[str, list[float]]:
    directory = Path(tempfile.mkdtemp(prefix="bench-loops-"))
    settings = Settings(
        db_path=directory / "events.db",
        snapshot_dir=directory / "snapshots",
        model_path=directory / "none.npz",
        seed=1,
        api_keys={SERVER_KEY: "writer", "bench-admin-key-0123456789": "admin"},
    )
    app = create_app(settings)
    body = orjson.dumps({"context": CONTEXT})
    definition = {
        "schema": load_default_schema().to_dict(),
        "settings": {"seed": 1},
        "api_keys": {LOOP_KEY: "writer"},
    }
    rounds: dict[str, list[float]] = {"/v1/rank": [], "/v1/loops/bench/rank": []}
    async with app.router.lifespan_context(app):
        await app.state.loops.create("bench", _spec(definition))
        for path, key in (("/v1/rank", SERVER_KEY), ("/v1/loops/bench/rank", LOOP_KEY)):
            for _ in range(200):  # warm up both
                assert await call(app, path, body, key) == 200
        for _ in range(n_rounds):
            for path, key in (("/v1/rank", SERVER_KEY), ("/v1/loops/bench/rank", LOOP_KEY)):
                started = time.perf_counter()
                for _ in range(n_requests):
                    await call(app, path, body, key)
                rounds[path].append((time.perf_counter() - started) / n_requests)
    return rounds


def _spec(definition: dict[str, Any]) -> Any:
    from banditrec.loops import LoopSpec

    return LoopSpec.model_validate(definition)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per route")
    args = parser.parse_args()
    rounds = asyncio.run(run(args.requests, args.rounds))
    for note in _machine.machine_notes(["numpy", "numba", "fastapi"]):
        print(note)
    base = statistics.median(rounds["/v1/rank"])
    print(f"\n{'route':<24} {'µs per decision':>16} {'÷ /v1/rank':>11}")
    for path, times in rounds.items():
        median = statistics.median(times)
        print(f"{path:<24} {median * 1e6:>16.1f} {median / base:>11.2f}")


if __name__ == "__main__":
    main()
