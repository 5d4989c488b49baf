"""The dashboard's data: the event log and the process's metrics, in time buckets.

`DashboardFeed.update` is called by ``GET /v1/dashboard/data`` (the page polls it) and reads
two sources incrementally, so a poll costs what happened since the last one:

- the **learn stream**, through the `EventStore` protocol (``learn_events_after`` from a
  cursor, ``get_decision`` for the decision a reward was learned for): every decision whose
  reward was learned (reported, or the default once its window closed) is counted in the
  bucket of the time it was *made*, with its reward, its logged probability and its full
  distribution. That gives the reward rate with its interval, the uniform-random baseline
  and the lift (inverse propensity scoring on the same decisions), the apprentice baseline
  for decisions served in apprentice mode, and the exploration figures. The other entries
  (action changes, serve-mode switches, promotions, rollbacks) go on the timeline;
- the process's **metrics** (`banditrec.metrics.Metrics`; with several workers and
  ``PROMETHEUS_MULTIPROC_DIR``, the sum over the workers), sampled at each poll: decisions
  by action, request latencies and errors, joined and default rewards.

Decisions still waiting for their reward are not in the log-based panels yet: an app that
reports rewards late shows them late. On first use the feed reads the last
`HISTORY_EVENTS` learn events, so a dashboard opened on a running server starts with
recent history; metric-based panels start at the first poll. With several workers, each
keeps its own feed (the numbers are the same; the histories start when each was polled).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from banditrec.dashboard.stats import MetricSample, Moments, read_metrics, served_version
from banditrec.engine import Engine
from banditrec.lifecycle.apprentice import apprentice_round
from banditrec.metrics import Metrics
from banditrec.store import DecisionRecord, LearnEvent, LearnKind

__all__ = ["BUCKET_SECONDS", "HISTORY_EVENTS", "N_BUCKETS", "Bucket", "DashboardFeed"]

#: Width of a time bucket and how many are kept (10 minutes).
BUCKET_SECONDS = 5.0
N_BUCKETS = 120
#: Learn events read back from the end of the stream when the feed starts.
HISTORY_EVENTS = 5000
#: Learn events read per poll at most (the rest on the next poll).
MAX_EVENTS_PER_UPDATE = 20_000
#: Upper edges of the served-probability histogram (the ε floor is often under 0.01).
PROBABILITY_EDGES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
#: Timeline entries kept.
MAX_TIMELINE = 200

_RESOLVED = (LearnKind.reward, LearnKind.default)


@dataclass
class Bucket:
    """What one time bucket holds: log-based sums and metric deltas."""

    reward: Moments = field(default_factory=Moments)  # r of resolved decisions
    uniform: Moments = field(default_factory=Moments)  # IPS terms of uniform random
    lift: Moments = field(default_factory=Moments)  # r − uniform term, paired
    weights: Moments = field(default_factory=Moments)  # uniform's importance weights
    apprentice_served: Moments = field(default_factory=Moments)  # r, apprentice decisions
    apprentice_baseline: Moments = field(default_factory=Moments)  # IPS of the app's rule
    apprentice_own: Moments = field(default_factory=Moments)  # IPS of banditrec's own
    apprentice_lift: Moments = field(default_factory=Moments)  # own − baseline, paired
    defaulted: int = 0
    entropy: float = 0.0  # sum over resolved decisions
    probability_counts: list[int] = field(default_factory=lambda: [0] * len(PROBABILITY_EDGES))
    versions: set[str] = field(default_factory=set)  # served versions (no offsets)
    # From the metrics (deltas between samples, over `seconds` of samples).
    seconds: float = 0.0
    decisions: dict[str, float] = field(default_factory=dict)
    joins: float = 0.0
    defaults: float = 0.0
    errors: float = 0.0
    client_errors: float = 0.0
    requests: float = 0.0
    latency: list[float] | None = None  # per-bucket counts of the decision routes' latency
    backlog: int | None = None


class DashboardFeed:
    """Incremental aggregates of the event log and the metrics for the dashboard.

    Parameters
    ----------
    engine
        The engine serving (its store is the event log; its model the actions and version).
    metrics
        The process's metrics.
    clock
        Wall-clock time (tests may pass their own).
    """

    def __init__(self, engine: Engine, metrics: Metrics, clock: Any = time.time) -> None:
        self.engine = engine
        self.metrics = metrics
        self.clock = clock
        self._buckets: dict[int, Bucket] = {}
        self._cursor: int | None = None
        self._last_sample: MetricSample | None = None
        self._latest_decision_time: float | None = None
        self.timeline: deque[dict[str, Any]] = deque(maxlen=MAX_TIMELINE)

    # -- reading -------------------------------------------------------------------------

    def update(self) -> None:
        """Read the learn events appended and sample the metrics (blocking: run in a thread)."""
        now = float(self.clock())
        self._read_log(now)
        self._sample_metrics(now)
        oldest = self._key(now) - N_BUCKETS + 1
        for key in [k for k in self._buckets if k < oldest]:
            del self._buckets[key]

    def _key(self, t: float) -> int:
        return math.floor(t / BUCKET_SECONDS)

    def _bucket(self, t: float) -> Bucket | None:
        key = self._key(t)
        if key <= self._key(float(self.clock())) - N_BUCKETS:
            return None  # older than the window
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket()
        return bucket

    def _read_log(self, now: float) -> None:
        store = self.engine.store
        if store is None:
            return
        if self._cursor is None:
            self._cursor = max(0, store.last_offset() - HISTORY_EVENTS)
        read = 0
        while read < MAX_EVENTS_PER_UPDATE:
            events = store.learn_events_after(self._cursor, limit=5000)
            if not events:
                return
            for event in events:
                self._apply(event, now)
            self._cursor = events[-1].seq
            read += len(events)

    def _apply(self, event: LearnEvent, now: float) -> None:
        if event.kind in _RESOLVED:
            store = self.engine.store
            record = store.get_decision(event.event_id) if store is not None else None
            if record is not None:  # None: removed by retention or a privacy request
                self._resolved(record, event.reward, event.kind is LearnKind.default)
            return
        if event.kind is LearnKind.correction:
            return  # a summed reward's change: the panels count the first reward
        # Action changes and switches carry no time: read live, they happened since the
        # last poll (now, to a poll's interval); read from history, they are placed at the
        # latest decision time seen before them in the stream.
        history = self._last_sample is None and self._latest_decision_time is not None
        at = self._latest_decision_time if history else now
        self.timeline.append(
            {"t": at, "seq": event.seq, "kind": event.kind.value, "target": event.event_id}
        )

    def _resolved(self, record: DecisionRecord, reward: float, defaulted: bool) -> None:
        self._latest_decision_time = max(self._latest_decision_time or 0.0, record.created_at)
        bucket = self._bucket(record.created_at)
        if bucket is None:
            return
        p = float(record.probability)
        if p <= 0:  # never for a served action; a guard against a damaged log
            return
        n_eligible = max(len(record.eligible), 1)
        uniform = reward / (n_eligible * p) if record.action in record.eligible else 0.0
        bucket.reward.add(reward)
        bucket.uniform.add(uniform)
        bucket.lift.add(reward - uniform)
        if record.action in record.eligible:
            bucket.weights.add(1.0 / (n_eligible * p))
        bucket.defaulted += int(defaulted)
        probabilities = np.asarray(record.probabilities, dtype=np.float64)
        positive = probabilities[probabilities > 0]
        bucket.entropy += float(-(positive * np.log(positive)).sum())
        for i, edge in enumerate(PROBABILITY_EDGES):
            if p <= edge:
                bucket.probability_counts[i] += 1
                break
        bucket.versions.add(served_version(record.model_version))
        found = apprentice_round(record.model_version, probabilities, record.action_index)
        if found is not None and found.propensity > 0:
            baseline = reward * found.baseline / found.propensity
            own = reward * found.own / found.propensity
            bucket.apprentice_served.add(reward)
            bucket.apprentice_baseline.add(baseline)
            bucket.apprentice_own.add(own)
            bucket.apprentice_lift.add(own - baseline)

    def _sample_metrics(self, now: float) -> None:
        sample = read_metrics(self.metrics, now)
        backlog = None
        if self.engine.store is not None:
            backlog = self.engine.store.pending_backlog(now)
        previous, self._last_sample = self._last_sample, sample
        bucket = self._bucket(now)
        if bucket is None:
            return
        bucket.backlog = backlog
        if previous is None:
            return
        delta = sample.minus(previous)
        bucket.seconds += max(now - previous.at, 0.0)
        for action, n in delta.decisions.items():
            bucket.decisions[action] = bucket.decisions.get(action, 0.0) + n
        bucket.joins += delta.joins
        bucket.defaults += delta.defaults
        bucket.errors += delta.errors
        bucket.client_errors += delta.client_errors
        bucket.requests += delta.requests
        if bucket.latency is None:
            bucket.latency = list(delta.latency)
        else:
            bucket.latency = [a + b for a, b in zip(bucket.latency, delta.latency, strict=True)]

    # -- the answer ----------------------------------------------------------------------

    def buckets(self) -> list[tuple[float, Bucket]]:
        """(start time, bucket) of the window, oldest first, empty buckets included."""
        last = self._key(float(self.clock()))
        return [
            (key * BUCKET_SECONDS, self._buckets.get(key) or Bucket())
            for key in range(last - N_BUCKETS + 1, last + 1)
        ]
