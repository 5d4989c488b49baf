"""Prometheus metrics: what was decided, what was rewarded, how fast requests were served.

A `Metrics` object owns the metric families and offers one cheap method per event;
`MetricsMiddleware` times every HTTP request by route template and loop; `metrics_response` renders
``GET /metrics`` in the Prometheus text format.

Single process (the default): each `Metrics` has its own `CollectorRegistry`, so several
apps in one process (tests) never collide, and ``/metrics`` also shows the process's CPU,
memory and garbage-collector metrics.

Several worker processes (``uvicorn --workers N``): set ``PROMETHEUS_MULTIPROC_DIR`` to an
empty directory *before the server starts* (prometheus-client picks its storage when it is
first imported), and empty it on every server start. Each process then writes its values
to memory-mapped files in that directory, and ``/metrics``, whichever worker answers it,
adds up the counters and histograms of all of them. Per-process metrics (CPU, memory) are
not available in this mode; that is a limitation of prometheus-client.

The two counts every decision makes (``banditrec_decisions_total`` and the request-duration
histogram) are kept in plain integers by the process and added into prometheus-client in
one go: when the process answers ``/metrics`` (so its own counts are exact at every
scrape), at exit, and, in multiprocess mode, every 0.1 s from a background thread (so a
scrape answered by *another* worker misses at most this worker's last 0.1 s; a worker
killed with ``kill -9`` loses at most that much of its counts). prometheus-client takes a
lock and, in multiprocess mode, writes a memory-mapped file on every increment; this costs
about 3 µs of every decision with one process and 6 µs with several.

Examples
--------
>>> metrics = Metrics(actions=["a", "b"])
>>> metrics.decision("a")
>>> b'banditrec_decisions_total{action="a",loop="default"} 1.0' in metrics_response(metrics).body
True
"""

from __future__ import annotations

import atexit
import bisect
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from typing import Literal, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_TYPE", "Metrics", "MetricsMiddleware", "RewardOutcome", "metrics_response"]

RewardOutcome = Literal["learned", "duplicate", "summed", "late", "unknown", "not_activated"]
"""What became of a reported reward: learned (first reward), a duplicate (ignored), summed
into an earlier one, too late (window closed), for an unknown event, or for a decision that
was never activated."""

#: `generate_latest` writes the text format 0.0.4; Prometheus 3 refuses a scrape whose
#: content type does not name its format. (prometheus-client's CONTENT_TYPE_LATEST names
#: format 1.0.0 in recent releases, which is not what `generate_latest` writes by default.)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Request latency buckets (seconds) for a service answering in about a millisecond.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

_OUTCOMES: frozenset[str] = frozenset(get_args(RewardOutcome))
# Any other method is labelled "other": a client must not be able to mint new series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


#: How often a multiprocess worker adds its tallied counts into the shared files (seconds).
FLUSH_INTERVAL = 0.1


class _Tally:
    """The hot path's counts in plain ints, until `flush` adds them into prometheus-client.

    Counting a decision is then a dict update under an uncontended lock instead of
    prometheus-client's lock and, in multiprocess mode, a write to a memory-mapped file per
    increment. The lock makes a flush from another thread (the scrape, the flusher) exact:
    a count lands either in the flush or in the next one, never in neither.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Counter, int] = {}
        # Per histogram child: [sum of the observations, count in bucket 0, 1, ..., +Inf].
        self._observations: dict[Histogram, list[float]] = {}

    def count(self, child: Counter, n: int) -> None:
        with self._lock:
            counts = self._counts
            counts[child] = counts.get(child, 0) + n

    def observe(self, child: Histogram, seconds: float) -> None:
        # The first bucket whose upper bound is >= seconds, as `Histogram.observe` picks it.
        bucket = bisect.bisect_left(LATENCY_BUCKETS, seconds) + 1
        with self._lock:
            tally = self._observations.get(child)
            if tally is None:
                tally = self._observations[child] = [0.0] * (len(LATENCY_BUCKETS) + 2)
            tally[0] += seconds
            tally[bucket] += 1

    def flush(self) -> None:
        """Add every count tallied so far into prometheus-client."""
        with self._lock:
            counts, self._counts = self._counts, {}
            observations, self._observations = self._observations, {}
        for counter, n in counts.items():
            counter.inc(n)
        for histogram, tally in observations.items():
            # prometheus-client keeps a histogram as its sum and one (non-cumulative) value
            # per bucket; adding to those is what `observe` does, n observations at once.
            histogram._sum.inc(tally[0])
            for bucket, hits in zip(histogram._buckets, tally[1:], strict=True):
                if hits:
                    bucket.inc(hits)


class _Flusher:
    """Flushes the process's tallies every `FLUSH_INTERVAL` seconds (multiprocess mode), so
    that a scrape answered by another worker sees them; and once more at exit."""

    def __init__(self) -> None:
        self.tallies: weakref.WeakSet[_Tally] = weakref.WeakSet()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, tally: _Tally) -> None:
        self.tallies.add(tally)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="banditrec-metrics", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL):
            self.flush()

    def flush(self) -> None:
        for tally in list(self.tallies):
            tally.flush()


_flusher = _Flusher()
# Every tally of the process reaches prometheus-client at exit (a worker shut down cleanly
# leaves no count behind in its multiprocess files).
_exit_tallies: weakref.WeakSet[_Tally] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for tally in list(_exit_tallies):
        with suppress(Exception):
            tally.flush()


class _Families:
    """The metric families themselves, on `registry` (None: not registered anywhere)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.tally = _Tally()
        _exit_tallies.add(self.tally)
        self.decisions = Counter(
            "banditrec_decisions",
            "Decisions served, by the action served.",
            ["action", "loop"],
            registry=registry,
        )
        self.rewards = Counter(
            "banditrec_rewards",
            "Rewards reported, by the decision's action and what became of the reward.",
            ["action", "outcome", "loop"],
            registry=registry,
        )
        self.joins = Counter(
            "banditrec_reward_joins",
            "Rewards joined to their decision.",
            ["loop"],
            registry=registry,
        )
        self.default_rewards = Counter(
            "banditrec_default_rewards",
            "Decisions learned with the default reward because their window closed unrewarded.",
            ["action", "loop"],
            registry=registry,
        )
        # A gauge, not a counter: every worker applies every learn event, so adding up the
        # workers' counts would multiply them. "mostrecent": the last value any worker set.
        self.model_updates = Gauge(
            "banditrec_model_updates",
            "Learn events applied to the served model since it was created.",
            ["loop"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.learner_faults = Counter(
            "banditrec_learner_faults",
            "Learner steps and snapshot attempts that failed (each is retried with backoff).",
            ["loop"],
            registry=registry,
        )
        # "livemax": 1 while any live worker's learner is failing.
        self.learner_fault = Gauge(
            "banditrec_learner_fault",
            "1 while the learner is failing (see /health for the fault), else 0.",
            ["loop"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        # `loop`: admin-created, so bounded; a name no open loop has is labelled "".
        self.request_seconds = Histogram(
            "banditrec_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template, method, status code and loop.",
            ["route", "method", "status", "loop"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


# In multiprocess mode a value lives in a per-process file keyed by metric name and labels;
# two objects for the same series in one process would overwrite each other's counts, so
# every `Metrics` of the process shares one set of families.
_shared_families: _Families | None = None
_shared_lock = threading.Lock()


def _process_families() -> _Families:
    global _shared_families
    with _shared_lock:
        if _shared_families is None:
            _shared_families = _Families(registry=None)
        return _shared_families


class _LoopGauges(Collector):
    """The gauges computed when scraped, one series per open loop (label ``loop``):
    ``banditrec_model_info{loop, version}``, ``banditrec_default_reward_backlog{loop}`` and
    the families of each loop's watched collectors (the lifecycle's), relabelled.

    Collected, not stored: the version changes with every learn event, and a stored label
    per version would grow without end (in multiprocess mode labels cannot be removed). The
    backlog belongs to the log, not to a worker: whichever worker answers the scrape counts
    it, so there is nothing to add up across processes.
    """

    def __init__(self) -> None:
        #: Each loop's current `Metrics` (the one that last reported for it); see `_claim`.
        self.views: dict[str, Metrics] = {}
        #: Every loop that reported in this process: request timings name only these.
        self.loops: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        views = sorted(self.views.items())
        info = GaugeMetricFamily(
            "banditrec_model_info",
            "The served model's version (in multiprocess mode, as seen by the scraped worker).",
            labels=["loop", "version"],
        )
        backlog = GaugeMetricFamily(
            "banditrec_default_reward_backlog",
            "Decisions whose reward window closed without a reward and that still wait for "
            "their default reward.",
            labels=["loop"],
        )
        merged: dict[str, Metric] = {}
        for loop, view in views:
            if view._version is not None:
                info.add_metric([loop, view._version], 1.0)
            if view._backlog_source is not None:
                # An unreachable log leaves its backlog out; the other metrics still answer.
                with suppress(Exception):
                    backlog.add_metric([loop], float(view._backlog_source()))
            for collector in view._collectors:
                try:
                    families = list(collector.collect())
                except Exception:  # one loop's failing gauges must not fail the scrape
                    continue
                for family in families:
                    into = merged.get(family.name)
                    if into is None:
                        into = merged[family.name] = Metric(
                            family.name, family.documentation, family.type, family.unit
                        )
                    for sample in family.samples:
                        into.add_sample(sample.name, {**sample.labels, "loop": loop}, sample.value)
        yield info
        if backlog.samples:
            yield backlog
        yield from merged.values()


class Metrics:
    """banditrec's Prometheus metrics, with one cheap method per event.

    Parameters
    ----------
    actions
        The schema's actions: their labelled series are created up front, so they show up
        as 0 before the first decision and the hot path skips the label lookup.
    registry
        Where the metrics are registered in single-process mode (default: a new registry
        with the process, platform and GC collectors). Ignored in multiprocess mode.
    loop
        The ``loop`` label of every series this object counts (`for_loop` makes the
        metrics of a named loop, on the same families).

    Raises
    ------
    RuntimeError
        If ``PROMETHEUS_MULTIPROC_DIR`` is set but prometheus-client was imported before it
        was, or if it does not name a directory.
    """

    def __init__(
        self,
        actions: Iterable[str] = (),
        *,
        registry: CollectorRegistry | None = None,
        loop: str = "default",
        _families: _Families | None = None,
        _gauges: _LoopGauges | None = None,
    ) -> None:
        self.multiprocess = _multiprocess_mode()
        self.loop = loop
        self.registry: CollectorRegistry | None
        self._version: str | None = None
        self._backlog_source: Callable[[], int] | None = None
        self._collectors: list[Collector] = []
        if _families is not None:  # a named loop's view (`for_loop`): nothing to register
            assert _gauges is not None
            self.registry = None
            families = _families
            self._gauges = _gauges
        elif self.multiprocess:
            self.registry = None
            families = _process_families()
            _flusher.add(families.tally)
        else:
            self.registry = registry if registry is not None else _default_registry()
            families = _Families(self.registry)
        if _families is None:
            self._gauges = _LoopGauges()
            self._gauges.loops.add(loop)
        self._families = families
        self._tally = families.tally
        if self.registry is not None:
            self.registry.register(self._gauges)

        # Children cached by label values: `Counter.labels` validates and locks on every call.
        self._decisions: dict[str, Counter] = {}
        self._rewards: dict[tuple[str, str], Counter] = {}
        self._default_rewards: dict[str, Counter] = {}
        self._requests: dict[tuple[str, str, int, str], Histogram] = {}
        self._joins = families.joins.labels(loop)
        self._learner_faults = families.learner_faults.labels(loop)
        self._learner_fault = families.learner_fault.labels(loop)
        self._model_updates = families.model_updates.labels(loop)
        for action in actions:
            self._decision_child(action)
            self._default_reward_child(action)
            for outcome in get_args(RewardOutcome):
                if outcome != "unknown":  # an unknown event has no action
                    self._reward_child(action, outcome)
        self._reward_child("", "unknown")

    def for_loop(self, loop: str, actions: Iterable[str] = ()) -> Metrics:
        """The metrics of the named loop `loop`: the same families, labelled ``loop``.

        The request timings stay with this object (`MetricsMiddleware` labels them by
        route template and loop); the model-info, backlog and watched gauges are shown
        per loop once the returned object reports them.
        """
        return Metrics(actions, loop=loop, _families=self._families, _gauges=self._gauges)

    def decision(self, action: str, n: int = 1) -> None:
        """Count `n` decisions that served `action` (a batch counts each action once)."""
        try:
            child = self._decisions[action]
        except KeyError:
            child = self._decision_child(action)
        self._tally.count(child, n)

    def reward(self, action: str | None, outcome: RewardOutcome) -> None:
        """Count a reported reward by its decision's action and what became of it.

        `action` is None when the reward's event is unknown (the series then has
        ``action=""``).
        """
        key = (action or "", outcome)
        try:
            child = self._rewards[key]
        except KeyError:
            child = self._reward_child(*key)
        child.inc()

    def join(self) -> None:
        """Count a reward joined to its decision."""
        self._joins.inc()

    def default_reward(self, action: str, n: int = 1) -> None:
        """Count `n` decisions of `action` learned with the default reward."""
        try:
            child = self._default_rewards[action]
        except KeyError:
            child = self._default_reward_child(action)
        child.inc(n)

    def model(self, version: str, n_updates: int) -> None:
        """Record the served model's version and its number of learn events."""
        self._version = version
        self._model_updates.set(n_updates)
        self._claim()

    def learner_failed(self) -> None:
        """Count a learner step or snapshot attempt that failed."""
        self._learner_faults.inc()

    def learner_faulty(self, faulty: bool) -> None:
        """Record whether the learner is failing now (1) or healthy (0)."""
        self._learner_fault.set(1.0 if faulty else 0.0)

    def watch_backlog(self, count: Callable[[], int]) -> None:
        """Report ``count()`` as the default-reward backlog whenever metrics are scraped."""
        self._backlog_source = count
        self._claim()

    def watch_collector(self, collector: Collector) -> None:
        """Show `collector`'s families (e.g. the lifecycle's gauges) whenever metrics are
        scraped, each sample labelled with this loop."""
        self._collectors.append(collector)
        self._claim()

    def release(self) -> None:
        """Stop showing this loop's model-info, backlog and watched gauges (its loop was
        stopped); a newer object reporting for the same loop (a reopened loop) keeps its."""
        if self._gauges.views.get(self.loop) is self:
            del self._gauges.views[self.loop]

    def _claim(self) -> None:
        # The loop's gauges are this object's from now on: a loop reopened with a new
        # definition reports through a new object while the old one still serves.
        self._gauges.views[self.loop] = self
        self._gauges.loops.add(self.loop)

    def observe_request(
        self, route: str, method: str, status: int, seconds: float, loop: str | None = None
    ) -> None:
        """Record an HTTP request's duration by route template, method, status code and
        loop (None: the default loop; a name no loop of this process has: ``""``)."""
        if loop is None:
            loop = "default"
        elif loop not in self._gauges.loops:
            loop = ""  # an unknown name (404, 422) must not mint a series
        key = (route, method, status, loop)
        try:
            child = self._requests[key]
        except KeyError:
            label_method = method if method in _METHODS else "other"
            child = self._families.request_seconds.labels(route, label_method, str(status), loop)
            # Only well-known methods are cached, so odd ones cannot grow the cache either.
            if label_method == method:
                self._requests[key] = child
        self._tally.observe(child, seconds)

    def collector(self) -> Collector:
        """What ``/metrics`` shows: this registry, or the sum over all worker processes."""
        # This process's own counts are exact in every scrape it answers.
        self._tally.flush()
        if self.registry is not None:
            return self.registry
        # A fresh registry per scrape, as prometheus-client's multiprocess docs require: the
        # collector reads every process's files afresh each time.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
        registry.register(self._gauges)
        return registry

    def _decision_child(self, action: str) -> Counter:
        child = self._decisions[action] = self._families.decisions.labels(action, self.loop)
        return child

    def _reward_child(self, action: str, outcome: str) -> Counter:
        if outcome not in _OUTCOMES:
            raise ValueError(
                f"Unknown reward outcome {outcome!r}; known outcomes: {sorted(_OUTCOMES)}."
            )
        child = self._rewards[action, outcome] = self._families.rewards.labels(
            action, outcome, self.loop
        )
        return child

    def _default_reward_child(self, action: str) -> Counter:
        child = self._default_rewards[action] = self._families.default_rewards.labels(
            action, self.loop
        )
        return child


def _multiprocess_mode() -> bool:
    path = os.environ.get(_MULTIPROC_ENV)
    storage_is_shared = getattr(values.ValueClass, "_multiprocess", False)
    if path is None and not storage_is_shared:
        return False
    if not storage_is_shared:
        raise RuntimeError(
            f"{_MULTIPROC_ENV} was set after prometheus_client was imported, so this process "
            "keeps its metrics to itself; set it before the server starts."
        )
    if path is None or not os.path.isdir(path):
        raise RuntimeError(
            f"{_MULTIPROC_ENV} must name an existing directory for multiprocess metrics; "
            f"it is {path!r}."
        )
    return True


def _default_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    # The process, platform and GC collectors prometheus-client's global registry has.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def metrics_response(metrics: Metrics) -> Response:
    """``GET /metrics``: every metric in the Prometheus text format."""
    return Response(generate_latest(metrics.collector()), media_type=CONTENT_TYPE)


class MetricsMiddleware:
    """Pure ASGI middleware timing every HTTP request into `Metrics.observe_request`.

    Requests are labelled by route template (``/v1/events/{event_id}/reward``), never by
    raw path, so the number of series stays bounded; requests no route matches are
    labelled ``unmatched``. A named loop's routes (``/v1/loops/{loop}/...``) are also
    labelled with the loop, when it is one this process has opened (else ``""``); the
    other routes with ``default``. Add it last (outermost) so it also times requests that other
    middleware rejects before routing.

    Parameters
    ----------
    app
        The ASGI app to wrap.
    metrics
        Where the timings go.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        # 500 unless a response starts: an exception escaping the app becomes a 500 upstream.
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            seconds = time.perf_counter() - start
            route, params = _route_template(scope)
            loop = params.get("loop") if params else None
            self.metrics.observe_request(route, scope["method"], status, seconds, loop)


def _route_template(scope: Scope) -> tuple[str, dict[str, str] | None]:
    """The request's route template and path parameters (``{loop}`` names its loop)."""
    # The router records the matched route in the (shared) scope as it dispatches.
    route = scope.get("route")
    params = scope.get("path_params")
    if route is None:
        # Not routed: rejected by a middleware before the router ran, or no route matched.
        # Match the routes ourselves; this costs only on such requests.
        for candidate in getattr(scope.get("app"), "routes", ()):
            match, child = candidate.matches(scope)
            if match is not Match.NONE:
                route, params = candidate, child.get("path_params")
                break
        else:
            return "unmatched", None
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return (str(template) if template else "unmatched"), params
