"""The HTTP benchmark: its report, and one tiny run end to end when `wrk` is installed."""

from __future__ import annotations

import importlib
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


def result(bh: ModuleType, workers: int, endpoint: str, requests: int, p99: float) -> object:
    return bh.Result(
        workers=workers, endpoint=endpoint, connections=32, requests=requests, seconds=1.0,
        p50_ms=1.0, p90_ms=2.0, p99_ms=p99, max_ms=p99, errors=0, wrapped=0,
        server_cpu=1.0, server_cpu_us=100.0, wrk_cpu=0.1, other_cpu=0.0,
    )  # fmt: skip


def test_ratios_and_targets(bh: ModuleType) -> None:
    results = [
        result(bh, 1, "ping", 10_000, 3.0),
        result(bh, 1, "decision", 7_000, 4.0),
        result(bh, 2, "ping", 20_000, 3.0),
        result(bh, 2, "decision", 9_000, 20.0),
    ]
    text = bh.table(results, markdown=True)
    assert "| 1 | POST /recommend_action | 32 | 7,000 | 1.00 | 4.00 | 0.70 |" in text
    checks = dict(bh.targets(results, 32))
    assert [ok for _, ok in bh.targets(results, 32)] == [True, True, False, False, False]
    assert any("9,000 decisions/s" in text for text in checks)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_a_tiny_run_end_to_end(bh: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--duration", "1", "--warmup", "1", "--workers", "1", "--connections", "4", "-q"]
    assert bh.main(argv) == 0
    out = capsys.readouterr().out
    for endpoint in ("GET /ping", "POST /recommend_action", "POST /v1/events/{id}/reward"):
        assert endpoint in out
