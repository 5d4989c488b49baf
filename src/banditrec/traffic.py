"""Simulated traffic: drive a running server with the seed's app users and watch it learn.

`run_traffic` plays the app's side of the loop over HTTP, through `banditrec.client` (whose
retries never rank or learn twice): it draws a user from `AppSimulator`,
asks ``POST /v1/rank`` for an action, draws the click from the simulator's ground truth for
the action actually served, and reports it with ``POST /v1/events/{event_id}/reward``. The
truth is known, so the display shows how good the served actions are (their true expected
reward μ, a low-variance measure of the policy) next to the oracle (the best action's μ) and
uniform random (the mean μ), live.

For a given seed, round i always gets the same user and the same uniform number uᵢ (reward =
uᵢ < μ[served]), whatever the concurrency: two runs differ only by what the server chose.

`rate` paces the users (so that a demo's minute shows a model learning, rather than a few
thousand rounds a second that finish learning in the first seconds), and `reference` scores
the same users with a model file (e.g. the one trained on all the logged data): its row in
the display is the exact expected reward of that model's serving probabilities, for
comparison with the served model as it learns.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math
import os
import time
from collections import Counter, deque
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import numpy as np
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from banditrec.client import AsyncClient, BanditrecError, InvalidResponse
from banditrec.features import load_default_schema
from banditrec.policies import Policy
from banditrec.sim import CONTEXT_FIELDS, AppSimulator
from banditrec.snapshot import load_model

__all__ = ["Display", "TrafficError", "TrafficReport", "WindowStats", "run_traffic"]

Display = Literal["auto", "live", "lines", "none"]
# Rank context, μ of every action, uᵢ, and the reference model's expected μ (NaN: none).
User = tuple[dict[str, Any], list[float], float, float]
_RANK_FIELDS = tuple(f for f in CONTEXT_FIELDS if f != "user_id")  # user_id is no feature
_SPARK = "▁▂▃▄▅▆▇█"
T = TypeVar("T")


@dataclass(frozen=True)
class WindowStats:
    """Means over some rounds: the served action's μ, the observed reward, oracle, uniform,
    and the reference model's expected μ on the same users (NaN without a reference)."""

    n: int
    served: float
    reward: float
    oracle: float
    uniform: float
    reference: float = math.nan

    @property
    def pct_of_oracle(self) -> float:
        """The policy's value as a fraction of the oracle's (1.0: always the best action)."""
        return self.served / self.oracle if self.oracle > 0 else float("nan")

    @property
    def gap_closed(self) -> float:
        """Where the policy sits between uniform random (0.0) and the oracle (1.0)."""
        gap = self.oracle - self.uniform
        return (self.served - self.uniform) / gap if gap > 0 else float("nan")


@dataclass(frozen=True)
class TrafficReport:
    """What a run did. `first`/`last`: the first/last `window` served rounds; `total`: all.

    `updates_start`/`updates_end` are the model's ``n_updates`` before and after the run
    (None when ``GET /v1/model`` did not answer).
    """

    n_rounds: int
    n_rewarded: int
    errors: dict[str, int]
    elapsed: float
    first: WindowStats
    last: WindowStats
    total: WindowStats
    model_version: str | None
    updates_start: int | None
    updates_end: int | None

    @property
    def n_errors(self) -> int:
        """Failed requests, of every kind (`errors` counts them by kind)."""
        return sum(self.errors.values())


class TrafficError(RuntimeError):
    """The run could not start, or was stopped; `report` holds what was done until then."""

    def __init__(self, message: str, report: TrafficReport | None = None) -> None:
        super().__init__(message)
        self.report = report


def run_traffic(
    url: str,
    *,
    n_requests: int | None = None,
    duration: float | None = None,
    concurrency: int = 4,
    seed: int = 0,
    api_key: str | None = None,
    reward_delay: float = 0.0,
    window: int = 2000,
    display: Display = "auto",
    console: Console | None = None,
    max_consecutive_errors: int = 20,
    timeout: float = 10.0,
    wait_for_server: float = 0.0,
    rate: float | None = None,
    reference: str | Path | None = None,
    server_pid: int | None = None,
) -> TrafficReport:
    """Drive the server at `url` with simulated users until `n_requests` or `duration`.

    Parameters
    ----------
    url
        Base URL of a running banditrec server, e.g. ``http://127.0.0.1:8020``.
    n_requests, duration
        Stop after this many rank requests and/or seconds; at least one is required.
    concurrency
        Users in flight at once, each worker on a reused keep-alive connection.
    seed
        Seeds the users and the reward draws.
    api_key
        Sent as ``Authorization: Bearer <api_key>`` when given.
    reward_delay
        Seconds between serving an action and reporting its reward (delayed feedback); the
        run ends once the last reward is reported.
    window
        How many of the most recent rounds the "last" statistics cover.
    display
        ``"live"``: a table redrawn 4×/s; ``"lines"``: a line every 5 s and the table at the
        end (logs, CI); ``"none"``; ``"auto"``: live on a terminal, else lines.
    console
        Where to draw (default: standard error).
    max_consecutive_errors
        Stop with `TrafficError` after this many failed requests in a row.
    timeout
        Seconds per request.
    wait_for_server
        Seconds to keep retrying ``GET /health`` before giving up (0: one try).
    rate
        Users per second, all workers together (None: as fast as the server answers).
    reference
        A model file (under the seed's schema) to score the same users with, for the
        display's comparison row.
    server_pid
        Stop waiting for the server when this process (the server's) has exited.

    Returns
    -------
    TrafficReport
        Counts, timing and the first/last/overall learning statistics.

    Raises
    ------
    TrafficError
        The server is not reachable, served an unknown action, or failed too often in a row.
    """
    if n_requests is None and duration is None:
        raise ValueError("Give n_requests or duration: traffic must stop by itself.")
    if min(concurrency, window, max_consecutive_errors) < 1:
        raise ValueError("concurrency, window and max_consecutive_errors must be >= 1.")
    if httpx.URL(url).scheme not in ("http", "https"):
        raise ValueError(f"url must look like http://host:port, got {url!r}.")
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be > 0 users per second, got {rate}.")
    reference_policy = None
    if reference is not None:
        reference_policy = load_model(reference, load_default_schema()).policy
    console = console or Console(stderr=True)
    if display == "auto":
        display = "live" if console.is_terminal else "lines"
    tally = _Tally(AppSimulator(), window, reference_policy is not None)
    driver = _Driver(
        tally,
        _users(tally.sim, seed, reference=reference_policy),
        n_requests,
        duration,
        concurrency,
        reward_delay,
        max_consecutive_errors,
        display,
        console,
        rate,
        server_pid,
    )
    # The typed client: its retries never rank or learn twice (client event ids, duplicate-
    # aware rewards). trust_env=False: no proxy from the environment; requests go to `url`.
    client = AsyncClient(
        url,
        api_key,
        timeout=httpx.Timeout(timeout, pool=None),  # waiting for a free connection is normal
        max_connections=2 * concurrency + 1,  # + poller, delayed rewards
        trust_env=False,
    )
    report = asyncio.run(driver.run(client, wait_for_server))
    if driver.fatal:
        raise TrafficError(driver.fatal, report)
    return report


def _users(
    sim: AppSimulator, seed: int, batch: int = 1024, reference: Policy | None = None
) -> Iterator[User]:
    """Simulated users in round order, drawn `batch` at a time (vectorized, bounded memory).

    With a `reference` policy, each user also carries the expected μ of the action that
    policy would serve: Σₐ p(a) μ(a) over its serving probabilities, exact, no sampling.
    """
    rng = np.random.default_rng(seed)
    reference_rng = np.random.default_rng(seed + 1)  # Thompson sampling's Monte Carlo only
    schema = load_default_schema()
    eligible = np.ones(len(sim.actions), dtype=bool)
    while True:
        cols = sim.sample_contexts(batch, rng)
        mu, u = sim.expected_rewards(cols), rng.random(batch)
        ref = np.full(batch, math.nan)
        if reference is not None:
            X = schema.vectorize_many(cols)
            for i in range(batch):
                ref[i] = reference.distribution(X[i], eligible, reference_rng)[1] @ mu[i]
        for i in range(batch):
            context = {f: cols[f][i].item() for f in _RANK_FIELDS}
            yield context, mu[i].tolist(), float(u[i]), float(ref[i])


class _Tally:
    """Running statistics of the served rounds, and their rendering."""

    def __init__(self, sim: AppSimulator, window: int, has_reference: bool = False) -> None:
        self.sim, self.window, self.start = sim, window, time.monotonic()
        self.has_reference = has_reference
        self.recent: deque[tuple[float, ...]] = deque(maxlen=window)
        self.sums, self.n = [0.0] * 5, 0
        self.first: WindowStats | None = None
        self.errors: Counter[str] = Counter()
        self.last_error = ""
        self.model: dict[str, Any] = {}
        self.spark: deque[float] = deque(maxlen=60)

    def add(self, mu: list[float], action: int, reward: float, reference: float) -> None:
        row = (mu[action], reward, max(mu), sum(mu) / len(mu), reference)
        self.recent.append(row)
        self.sums = [s + v for s, v in zip(self.sums, row, strict=True)]
        self.n += 1
        if self.n == self.window:
            self.first = self.last()

    def last(self) -> WindowStats:
        means = np.mean(self.recent, axis=0) if self.recent else [math.nan] * 5
        return WindowStats(len(self.recent), *map(float, means))

    def total(self) -> WindowStats:
        return WindowStats(self.n, *(s / self.n if self.n else float("nan") for s in self.sums))

    def report(self, n_rewarded: int, updates_start: int | None) -> TrafficReport:
        last = self.last()
        return TrafficReport(
            self.n,
            n_rewarded,
            dict(self.errors),
            time.monotonic() - self.start,
            self.first or last,
            last,
            self.total(),
            self.model.get("version"),
            updates_start,
            self.model.get("n_updates"),
        )

    def status(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        return (
            f"{elapsed:.0f} s, {self.n:,} rounds ({self.n / elapsed:,.0f}/s), "
            f"{sum(self.errors.values())} errors, model {self.model.get('version', '?')} "
            f"({self.model.get('n_updates', '?')} updates)"
        )

    def line(self) -> str:
        """One log line, for logs and CI where redrawing a table would only add noise."""
        w = self.last()
        if not w.n:
            return f"{self.status()}; waiting for the first round"
        reference = f", full-data model {w.reference:.4f}" if self.has_reference else ""
        return (
            f"{self.status()}; last {w.n}: served μ {w.served:.4f} = {w.pct_of_oracle:.1%} "
            f"of oracle {w.oracle:.4f} (random {w.uniform:.4f}{reference})"
        )

    def render(self) -> Group:
        """The live view: status, the learning table, % of oracle over time, errors."""
        last, total = self.last(), self.total()
        table = Table("mean true expected reward", box=box.SIMPLE_HEAD)
        table.add_column(f"last {last.n:,}", justify="right")
        table.add_column(f"all {total.n:,}", justify="right")
        rows = [
            ("served by the model", "served", "bold cyan"),
            ("oracle (best action)", "oracle", ""),
            ("uniform random", "uniform", ""),
            ("observed reward rate", "reward", "dim"),
        ]
        if self.has_reference:
            rows.insert(1, ("full-data model, same users", "reference", "cyan"))
        # Before the first round there is nothing to average: a dash, not "nan".
        for label, name, style in rows:
            table.add_row(
                label, *(_cell(getattr(w, name), ".4f") for w in (last, total)), style=style
            )
        table.add_row("model, % of oracle", *(_cell(w.pct_of_oracle, ".1%") for w in (last, total)))
        table.add_row(
            "gap closed (random 0%, oracle 100%)",
            *(_cell(w.gap_closed, ".1%") for w in (last, total)),
            style="bold",
        )
        parts: list[Text | Table] = [Text(self.status()), table]
        if self.spark and total.oracle > 0:
            floor = total.uniform / total.oracle
            levels = np.nan_to_num((np.asarray(self.spark) - floor) / max(1 - floor, 1e-9))
            bars = "".join(_SPARK[round(v * 7)] for v in np.clip(levels, 0, 1))
            parts.append(Text(f"% of oracle over time (▁ random, █ oracle): {bars}"))
        if self.errors:
            kinds = ", ".join(f"{kind} ×{count}" for kind, count in self.errors.items())
            parts.append(Text(f"errors: {kinds}; last: {self.last_error}", style="red"))
        return Group(*parts)


def _cell(value: float, spec: str) -> str:
    return "—" if math.isnan(value) else format(value, spec)


@dataclass
class _Driver:
    """The workers: rank, draw the reward from the truth, report it; count what fails."""

    tally: _Tally
    users: Iterator[User]
    n_requests: int | None
    duration: float | None
    concurrency: int
    reward_delay: float
    max_consecutive: int
    display: Display
    console: Console
    rate: float | None = None
    server_pid: int | None = None
    n_started: int = 0
    n_rewarded: int = 0
    fatal: str = ""
    # Failures in a row per request kind: a server that ranks but rejects every reward must
    # stop the run too.
    consecutive: Counter[str] = field(default_factory=Counter)
    pending: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, client: AsyncClient, wait: float) -> TrafficReport:
        tally, live = (
            self.tally,
            Live(self.tally.render(), console=self.console, auto_refresh=False),
        )
        async with client:
            await self._wait_healthy(client, wait)
            await self._poll_model(client)
            updates_start = tally.model.get("n_updates")
            tally.start = time.monotonic()
            deadline = None if self.duration is None else tally.start + self.duration

            async def worker() -> None:
                while not self.fatal and self.n_started != self.n_requests:
                    if self.rate is not None:  # user i arrives at i / rate seconds
                        due = tally.start + self.n_started / self.rate
                        self.n_started += 1
                        if due > time.monotonic():
                            await asyncio.sleep(due - time.monotonic())
                    else:
                        self.n_started += 1
                    if deadline is not None and time.monotonic() >= deadline:
                        return
                    await self._round(client, next(self.users))

            async def refresh() -> None:
                for tick in itertools.count(1):
                    await asyncio.sleep(0.25)
                    # A point per half second, once the window holds enough rounds to mean
                    # something (the first few users alone would draw noise).
                    if tick % 2 == 0 and len(tally.recent) >= min(tally.window, 100):
                        tally.spark.append(tally.last().pct_of_oracle)
                    if tick % 8 == 0:
                        await self._poll_model(client)
                    if self.display == "live":
                        live.update(tally.render(), refresh=True)
                    elif self.display == "lines" and tick % 20 == 0:
                        self.console.print(tally.line(), soft_wrap=True, highlight=False)

            # Redrawn from the event loop rather than rich's refresh thread: the tallies only
            # change between awaits, so every frame is consistent.
            with live if self.display == "live" else contextlib.nullcontext():
                background = asyncio.create_task(refresh())
                try:
                    await asyncio.gather(*(worker() for _ in range(self.concurrency)))
                    await asyncio.gather(*self.pending)
                finally:
                    background.cancel()
                await self._poll_model(client)
                live.update(tally.render(), refresh=self.display == "live")
            if self.display == "lines":
                self.console.print(tally.render())
        return tally.report(self.n_rewarded, updates_start)

    async def _wait_healthy(self, client: AsyncClient, wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            if self.server_pid is not None and not _alive(self.server_pid):
                raise TrafficError(
                    f"The server (process {self.server_pid}) exited before it answered; "
                    "its messages are above."
                )
            try:
                await client.health()
                return
            except InvalidResponse:
                return  # it answered 200; what it serves is checked at the first rank
            except BanditrecError as exc:
                problem = f"HTTP {exc.status}" if exc.status else f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise TrafficError(f"No server answers at {client.url}/health ({problem}).")
            await asyncio.sleep(0.2)

    async def _poll_model(self, client: AsyncClient) -> None:
        # For the display only: a server without GET /v1/model still gets its traffic.
        try:
            self.tally.model = dataclasses.asdict(await client.model())
        except BanditrecError:
            self.tally.model = {}

    async def _round(self, client: AsyncClient, user: User) -> None:
        context, mu, u, reference = user
        decision = await self._call("rank", client.rank(context))
        if decision is None:
            return
        actions = self.tally.sim.actions
        if decision.action_id not in actions:
            self.fatal = (
                f"The server served {decision.action_id!r}, not one of the "
                f"simulated app's actions {list(actions)}."
            )
            return
        action = actions.index(decision.action_id)
        reward = 1.0 if u < mu[action] else 0.0
        self.tally.add(mu, action, reward, reference)
        event_id = decision.event_id
        if self.reward_delay > 0:  # reported later by a task, so this worker moves on
            task = asyncio.create_task(self._reward(client, event_id, reward, self.reward_delay))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)
        else:
            await self._reward(client, event_id, reward)

    async def _reward(
        self, client: AsyncClient, event_id: str, value: float, delay: float = 0.0
    ) -> None:
        await asyncio.sleep(delay)
        if await self._call("reward", client.reward(event_id, value)) is not None:
            self.n_rewarded += 1

    async def _call(self, what: str, request: Awaitable[T]) -> T | None:
        """The typed answer, or None once the failure is counted (and the run stopped if due)."""
        try:
            answer = await request
        except BanditrecError as exc:
            kind = f"{what} HTTP {exc.status}" if exc.status else f"{what} {type(exc).__name__}"
            detail = exc.message[:200]
        else:
            self.consecutive[what] = 0
            return answer
        self.tally.errors[kind] += 1
        self.tally.last_error = f"{kind}: {detail}"
        self.consecutive[what] += 1
        if self.consecutive[what] >= self.max_consecutive and not self.fatal:
            self.fatal = (
                f"Stopped after {self.consecutive[what]} failed {what} requests in a row; "
                f"last: {self.tally.last_error}"
            )
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True
