"""The dashboard's routes: the page, its two assets, and the data it polls.

The page and its assets are public (they hold no data); ``GET /v1/dashboard/data`` needs the
``reader`` role when keys are configured. The page is told whether keys are configured (the
OpenAPI document says so publicly too) so that it asks for a key before its first call
rather than after a refusal; the key a user enters is kept in the tab's sessionStorage and
sent as ``X-API-Key``. A Content-Security-Policy limits the page to its own origin: it
works offline, and nothing on it can call elsewhere.
"""

from __future__ import annotations

import asyncio
from functools import cache
from importlib.resources import files
from typing import Any, Literal

from starlette.datastructures import State
from starlette.responses import Response

from banditrec.dashboard.feed import DashboardFeed
from banditrec.dashboard.payload import build_payload

__all__ = ["ASSETS", "Asset", "dashboard_asset", "dashboard_data", "dashboard_page"]

#: The page's assets by name, with their media types.
ASSETS: dict[str, str] = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
Asset = Literal["dashboard.js", "dashboard.css"]

_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


@cache
def _static(name: str) -> str:
    return (files("banditrec.dashboard") / "static" / name).read_text(encoding="utf-8")


async def dashboard_page(state: State) -> Response:
    """The dashboard (HTML): live panels drawn from ``GET /v1/dashboard/data``.

    Open to anyone; its data calls need a ``reader`` key when keys are configured (the page
    asks for one and keeps it in the browser tab's sessionStorage)."""
    required = "true" if state.api_keys else "false"
    html = _static("dashboard.html").replace("{{KEYS_REQUIRED}}", required)
    return Response(html, media_type="text/html; charset=utf-8", headers=_HEADERS)


async def dashboard_asset(_: State, name: Asset) -> Response:
    """The dashboard's script or style sheet."""
    return Response(_static(name), media_type=ASSETS[name], headers=_HEADERS)


async def dashboard_data(state: State) -> dict[str, Any]:
    """What the dashboard draws, in 5-second buckets over the last 10 minutes.

    Reward rate with its 95 % interval and the uniform-random and apprentice baselines
    (inverse propensity scoring on the same decisions), the lift, traffic share by action,
    join rate, default-reward share and backlog, exploration (served probabilities, entropy,
    effective sample size), decisions per second, latency percentiles and errors, the model
    versions and the switches of the learn stream, the actions. Read from the event log and
    this process's metrics, incrementally since the previous call."""
    feed: DashboardFeed | None = getattr(state, "dashboard_feed", None)
    if feed is None:  # the first call; no await before both are set, so no second feed
        feed = state.dashboard_feed = DashboardFeed(state.engine, state.metrics)
        state.dashboard_lock = asyncio.Lock()
    async with state.dashboard_lock:  # the store is read off the event loop
        payload: dict[str, Any] = await asyncio.get_running_loop().run_in_executor(
            None, _read, feed, getattr(state, "lifecycle", None)
        )
        return payload


def _read(feed: DashboardFeed, lifecycle: Any) -> dict[str, Any]:
    feed.update()
    # What the lifecycle service reports (apprentice estimate, shadow candidates, guardrail,
    # switches with their times), where it runs; its `status` reads the store.
    report = getattr(lifecycle, "status", None)
    status = report() if callable(report) else None
    return build_payload(feed, status if isinstance(status, dict) else None)
