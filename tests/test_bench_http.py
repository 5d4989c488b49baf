"""The HTTP benchmark: its report, and one tiny run end to end when `wrk` is installed."""

from __future__ import annotations

import importlib
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def bh() -> ModuleType:
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:  # `benchmarks` sits beside `tests`, outside the package
        sys.path.insert(0, root)
    return importlib.import_module("benchmarks.bench_http")


def result(
    bh: ModuleType, setup: object, endpoint: str, requests: int, p99: float, cpu_us: float = 100.0
) -> object:
    return bh.Result(
        setup=setup, endpoint=endpoint, connections=32, requests=requests, seconds=1.0,
        p50_ms=1.0, p90_ms=2.0, p99_ms=p99, max_ms=p99, errors=0, wrapped=0,
        server_cpu=1.0, server_cpu_us=cpu_us, redis_cpu=0.1, wrk_cpu=0.1, other_cpu=0.0,
    )  # fmt: skip


def test_ratios_and_targets(bh: ModuleType) -> None:
    sqlite1, sqlite2 = bh.Setup("sqlite", 1), bh.Setup("sqlite", 2)
    redis1, redis2 = bh.Setup("redis", 1), bh.Setup("redis", 2)
    always = bh.Setup("redis", 1, "always")
    results = [
        result(bh, sqlite1, "ceiling", 10_000, 2.0, cpu_us=50.0),
        result(bh, sqlite1, "ping", 8_000, 3.0),
        result(bh, sqlite1, "decision", 7_000, 4.0),
        result(bh, sqlite1, "rank", 5_000, 12.0),
        result(bh, sqlite2, "ceiling", 20_000, 2.0),
        result(bh, sqlite2, "ping", 16_000, 3.0),
        result(bh, sqlite2, "decision", 9_000, 20.0),
        result(bh, sqlite2, "rank", 12_500, 9.0),
        result(bh, redis1, "ping", 10_000, 3.0),
        result(bh, redis1, "decision", 6_300, 5.0, cpu_us=125.0),
        result(bh, redis2, "ping", 20_000, 3.0),
        result(bh, redis2, "decision", 6_000, 5.0),
        result(bh, always, "decision", 3_500, 9.0),
    ]
    text = bh.table(results, markdown=True)
    # ÷ ceiling (the bare app with as many processes), ÷ /ping, ÷ SQLite.
    assert (
        "| SQLite, 1 worker | POST /recommend_action | 32 | 7,000 | 1.00 | 4.00 | 0.70 | 0.88 | - |"
        in text
    )
    assert (
        "| SQLite, 2 workers | POST /v1/rank | 32 | 12,500 | 1.00 | 9.00 | 0.62 | 0.78 | - |"
        in text
    )
    assert "| SQLite, 1 worker | bare ASGI, no log: POST /recommend_action | 32 | 10,000 |" in text
    # Redis rows: ÷ the ceiling with as many processes, ÷ /ping of their own setup, ÷ SQLite.
    assert "| Redis everysec, 1 replica | POST /recommend_action | 32 | 6,300 |" in text
    assert "| 6,300 | 1.00 | 5.00 | 0.63 | 0.63 | 0.90 | 100% | 10% | 125 | 0.80 | 0.80 |" in text
    assert "| Redis everysec, 2 replicas | POST /recommend_action | 32 | 6,000 |" in text
    assert "| 6,000 | 1.00 | 5.00 | 0.30 | 0.30 | 0.67 |" in text
    assert (
        "| Redis always, 1 replica | POST /recommend_action | 32 | 3,500 | 1.00 | 9.00 | 0.35 | - |"
        in text
    )

    summary = bh.ceiling_table(results, markdown=True)
    # Ratios in requests/s, then in CPU per request (the ceiling's 50 µs ÷ the row's 100).
    assert (
        "| SQLite, 1 worker | 10,000 | 50 | 7,000 | 0.70 | 0.50 | 4.0 | 5,000 | 0.50 | 0.50 | 12.0 "
        "| 8,000 | 0.80 | 0.50 |" in summary
    )
    assert (
        "| Redis always, 1 replica | 10,000 | 50 | 3,500 | 0.35 | 0.50 | 9.0 | - | - | - | - "
        "| - | - | - |" in summary
    )

    checks = dict(bh.targets(results, 32))
    assert checks == {
        "SQLite, 1 worker: /recommend_action ÷ ceiling = 0.70 ≥ 0.6": True,
        "SQLite, 1 worker: /recommend_action p99 4.0 ms < 10 ms at 32 connections": True,
        "SQLite, 1 worker: /v1/rank ÷ ceiling = 0.50 ≥ 0.6": False,
        "SQLite, 1 worker: /v1/rank p99 12.0 ms < 10 ms at 32 connections": False,
        "SQLite, 2 workers: /recommend_action ÷ ceiling = 0.45 ≥ 0.6": False,
        "SQLite, 2 workers: /recommend_action p99 20.0 ms < 10 ms at 32 connections": False,
        "SQLite, 2 workers: /v1/rank ÷ ceiling = 0.62 ≥ 0.6": True,
        "SQLite, 2 workers: /v1/rank p99 9.0 ms < 10 ms at 32 connections": True,
        "2 workers: /recommend_action 9,000 decisions/s ≥ 10,000": False,
        "2 workers: /v1/rank 12,500 decisions/s ≥ 10,000": True,
        "Redis everysec, 1 replica: decisions ÷ SQLite, 1 worker = 0.90 ≥ 0.8 "
        "(in CPU per decision: 0.80)": True,
        "Redis everysec, 2 replicas: decisions ÷ SQLite, 2 workers = 0.67 ≥ 0.8 "
        "(in CPU per decision: 1.00)": False,
        "Redis always, 1 replica: decisions ÷ SQLite, 1 worker = 0.50 ≥ 0.8 "
        "(in CPU per decision: 1.00)": False,
        "Redis: 2 replicas serve more decisions than 1 (6,000 vs 6,300/s)": False,
    }


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
@pytest.mark.serial
def test_a_tiny_run_end_to_end(bh: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    """SQLite with one worker, and Redis with two replicas each loaded by its own wrk; the
    run checks itself that every answered decision and reward is in the log (else it raises).
    """
    argv = [
        "--duration", "1", "--warmup", "1", "--workers", "1", "--redis", "--replicas", "2",
        "--no-always", "--connections", "4", "-q",
    ]  # fmt: skip
    assert bh.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    for setup in ("SQLite, 1 worker", "Redis everysec, 2 replicas"):
        endpoints = ["GET /ping", "POST /recommend_action", "POST /v1/rank"]
        endpoints += ["POST /v1/events/{id}/reward"]
        if setup.startswith("SQLite"):  # the ceiling runs with each --workers count
            endpoints.append("bare ASGI, no log: POST /recommend_action")
        for endpoint in endpoints:
            (row,) = [
                line
                for line in lines
                if line.startswith(setup) and re.split(r"\s{2,}", line)[1] == endpoint
            ]
            assert row.split()[-1] == "0", row  # no errors, no reused reward ids
