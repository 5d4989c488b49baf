"""The JSON of ``GET /v1/dashboard/data``: the feed's buckets, window totals and timelines.

One row per time bucket (oldest first, empty ones included so the page's time axis is
regular), then the same figures over the whole window. Every figure that has no data is
``null``; the page says so instead of drawing a zero.
"""

from __future__ import annotations

from typing import Any

from banditrec.dashboard.feed import (
    BUCKET_SECONDS,
    N_BUCKETS,
    PROBABILITY_EDGES,
    Bucket,
    DashboardFeed,
)
from banditrec.dashboard.stats import Moments, latency_quantile, served_version
from banditrec.metrics import LATENCY_BUCKETS

__all__ = ["build_payload"]

_QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
_MOMENTS = (
    "reward", "uniform", "lift", "weights", "apprentice_served", "apprentice_baseline",
    "apprentice_own", "apprentice_lift",
)  # fmt: skip


def _ess(weights: Moments) -> dict[str, float] | None:
    """Kish's effective sample size (Σw)² / Σw² of the uniform policy's importance weights."""
    if weights.n == 0 or weights.squares <= 0:
        return None
    ess = weights.total**2 / weights.squares
    return {"ess": ess, "n": weights.n, "share": ess / weights.n}


def _metric_figures(b: Bucket) -> dict[str, Any]:
    decisions = sum(b.decisions.values())
    joined = b.joins + b.defaults
    latency = b.latency or []
    return {
        "seconds": b.seconds,
        "decisions": decisions,
        "decisions_per_second": decisions / b.seconds if b.seconds > 0 else None,
        "by_action": dict(b.decisions),
        "joins": b.joins,
        "defaults": b.defaults,
        "join_rate": b.joins / decisions if decisions > 0 else None,
        "default_share": b.defaults / joined if joined > 0 else None,
        "requests": b.requests,
        "errors": b.errors,
        "client_errors": b.client_errors,
        "latency_ms": {
            name: None if (v := latency_quantile(latency, q)) is None else 1000.0 * v
            for name, q in _QUANTILES.items()
        },
    }


def _log_figures(b: Bucket) -> dict[str, Any]:
    n = b.reward.n
    figures: dict[str, Any] = {
        name: getattr(b, name).interval() for name in _MOMENTS if name != "weights"
    }
    figures.update(
        resolved=n,
        defaulted=b.defaulted,
        entropy=b.entropy / n if n else None,
        ess=_ess(b.weights),
        probabilities=list(b.probability_counts),
        versions=sorted(b.versions),
    )
    return figures


def _window(rows: list[tuple[float, Bucket]]) -> Bucket:
    total = Bucket()
    for _, b in rows:
        for name in _MOMENTS:
            getattr(total, name).merge(getattr(b, name))
        total.defaulted += b.defaulted
        total.entropy += b.entropy
        total.probability_counts = [
            a + c for a, c in zip(total.probability_counts, b.probability_counts, strict=True)
        ]
        total.versions |= b.versions
        total.seconds += b.seconds
        for action, n in b.decisions.items():
            total.decisions[action] = total.decisions.get(action, 0.0) + n
        total.joins += b.joins
        total.defaults += b.defaults
        total.errors += b.errors
        total.client_errors += b.client_errors
        total.requests += b.requests
        if b.latency is not None:
            total.latency = (
                list(b.latency)
                if total.latency is None
                else [a + c for a, c in zip(total.latency, b.latency, strict=True)]
            )
        if b.backlog is not None:
            total.backlog = b.backlog  # the latest
    return total


def _switches(rows: list[tuple[float, Bucket]]) -> list[dict[str, Any]]:
    """Where the served version (or mode) of the decisions changes, bucket to bucket."""
    switches: list[dict[str, Any]] = []
    previous: str | None = None
    for start, b in rows:
        versions = sorted(b.versions)
        if not versions:
            continue
        current = versions[-1] if previous not in versions else previous
        if previous is not None and current != previous:
            switches.append({"t": start, "from": previous, "to": current})
        previous = current
    return switches


def build_payload(feed: DashboardFeed, lifecycle: dict[str, Any] | None) -> dict[str, Any]:
    """The dashboard's data (see the module); `lifecycle`: what the lifecycle service
    reports (shadows, versions), or None where it does not run."""
    engine = feed.engine
    rows = feed.buckets()
    window = _window(rows)
    n_updates = engine.policy.n_updates_.tolist()
    serving = getattr(engine, "serving", None)
    return {
        "now": float(feed.clock()),
        "bucket_seconds": BUCKET_SECONDS,
        "window_seconds": BUCKET_SECONDS * N_BUCKETS,
        "probability_edges": list(PROBABILITY_EDGES),
        "latency_edges_ms": [1000.0 * e for e in LATENCY_BUCKETS],
        "model": {
            "version": engine.model_version,
            "served": served_version(engine.model_version),
            "policy": engine.policy.name,
            "serving": "own" if serving is None else "apprentice",
        },
        "actions": [
            {"action_id": name, "enabled": name not in engine.disabled, "n_updates": n}
            for name, n in zip(engine.actions, n_updates, strict=True)
        ],
        "buckets": [
            {"t": start, **_log_figures(b), **_metric_figures(b), "backlog": b.backlog}
            for start, b in rows
        ],
        "window": {**_log_figures(window), **_metric_figures(window), "backlog": window.backlog},
        "switches": _switches(rows),
        "timeline": list(feed.timeline),
        "lifecycle": lifecycle,
    }
