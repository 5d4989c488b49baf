"""Small helpers of the dashboard: running moments, metric samples, latency quantiles.

`Moments` keeps n, Σv and Σv² of per-decision terms (a reward, an inverse-propensity term,
a paired difference), enough for a mean and a normal 95 % interval, and adds up across
time buckets. `read_metrics` reads the counters and the request-latency histogram of a
`Metrics` object (one process, or the sum over worker processes) into a `MetricSample`;
the difference of two samples is what happened between them. `served_version` strips the
log offset from a logged model version, so the decisions of one served version group
together.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from banditrec.metrics import LATENCY_BUCKETS, Metrics

__all__ = [
    "LATENCY_ROUTES",
    "MetricSample",
    "Moments",
    "latency_quantile",
    "read_metrics",
    "served_version",
]

#: The routes whose latency the dashboard shows: deciding and rewarding.
LATENCY_ROUTES = frozenset({"/v1/rank", "/recommend_action", "/v1/events/{event_id}/reward"})
#: Routes left out of the request counts: the dashboard's own polls.
_OWN_ROUTES = ("/dashboard", "/v1/dashboard")
#: z of a two-sided 95 % normal interval.
Z95 = 1.959963984540054


@dataclass
class Moments:
    """n, Σv and Σv² of a stream of values; a mean with a normal 95 % interval."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        self.squares += value * value

    def merge(self, other: Moments) -> None:
        self.n += other.n
        self.total += other.total
        self.squares += other.squares

    def interval(self) -> dict[str, float | int] | None:
        """``{"mean", "low", "high", "n"}``, or None without values.

        The interval is mean ± 1.96 standard errors (the sample variance with n − 1); with
        one value it is the value itself.
        """
        if self.n == 0:
            return None
        mean = self.total / self.n
        if self.n == 1:
            return {"mean": mean, "low": mean, "high": mean, "n": 1}
        variance = max(self.squares - self.n * mean * mean, 0.0) / (self.n - 1)
        half = Z95 * math.sqrt(variance / self.n)
        return {"mean": mean, "low": mean - half, "high": mean + half, "n": self.n}


@dataclass
class MetricSample:
    """Cumulative counters of the metrics at one time (`at`)."""

    at: float
    decisions: dict[str, float] = field(default_factory=dict)
    joins: float = 0.0
    defaults: float = 0.0
    errors: float = 0.0  # requests answered 5xx (any route)
    client_errors: float = 0.0  # requests answered 4xx (any route but the dashboard's)
    requests: float = 0.0  # requests (any route but the dashboard's)
    #: Cumulative counts per upper edge of `LATENCY_BUCKETS` then +Inf, decision routes.
    latency: list[float] = field(default_factory=lambda: [0.0] * (len(LATENCY_BUCKETS) + 1))

    def minus(self, earlier: MetricSample) -> MetricSample:
        """What was counted between `earlier` and this sample (a restarted counter: all)."""

        def delta(now: float, before: float) -> float:
            return now - before if now >= before else now

        return MetricSample(
            at=self.at,
            decisions={
                action: delta(n, earlier.decisions.get(action, 0.0))
                for action, n in self.decisions.items()
            },
            joins=delta(self.joins, earlier.joins),
            defaults=delta(self.defaults, earlier.defaults),
            errors=delta(self.errors, earlier.errors),
            client_errors=delta(self.client_errors, earlier.client_errors),
            requests=delta(self.requests, earlier.requests),
            latency=[delta(a, b) for a, b in zip(self.latency, earlier.latency, strict=True)],
        )


def read_metrics(metrics: Metrics, at: float) -> MetricSample:
    """The counters of `metrics` now (what ``/metrics`` would show)."""
    sample = MetricSample(at)
    edges = [*(float(e) for e in LATENCY_BUCKETS), math.inf]
    for family in metrics.collector().collect():
        for s in family.samples:
            name, labels, value = s.name, s.labels, float(s.value)
            if name == "banditrec_decisions_total":
                action = labels.get("action", "")
                sample.decisions[action] = sample.decisions.get(action, 0.0) + value
            elif name == "banditrec_reward_joins_total":
                sample.joins += value
            elif name == "banditrec_default_rewards_total":
                sample.defaults += value
            elif name == "banditrec_http_request_duration_seconds_count":
                route = labels.get("route", "")
                if route.startswith(_OWN_ROUTES):
                    continue
                status = labels.get("status", "")
                sample.requests += value
                if status.startswith("5"):
                    sample.errors += value
                elif status.startswith("4"):
                    sample.client_errors += value
            elif (
                name == "banditrec_http_request_duration_seconds_bucket"
                and labels.get("route") in LATENCY_ROUTES
            ):
                edge = float(labels.get("le", "+Inf"))
                if edge in edges:
                    sample.latency[edges.index(edge)] += value
    return sample


def latency_quantile(cumulative: list[float], q: float) -> float | None:
    """The q-quantile (seconds) of a latency histogram's cumulative counts, or None if empty.

    Interpolated linearly within the bucket that holds it, as Prometheus'
    ``histogram_quantile`` does; in the +Inf bucket it is the largest finite edge.
    """
    total = cumulative[-1] if cumulative else 0.0
    if total <= 0:
        return None
    target = q * total
    lower, below = 0.0, 0.0
    for edge, count in zip(LATENCY_BUCKETS, cumulative, strict=False):
        if count >= target:
            inside = count - below
            share = (target - below) / inside if inside > 0 else 1.0
            return lower + (float(edge) - lower) * share
        lower, below = float(edge), count
    return float(LATENCY_BUCKETS[-1])


#: The version of the served model in a logged ``model_version``: ``<base>@<offset>`` and,
#: in apprentice mode, ``+apprentice(ε)``.
_VERSION = re.compile(r"^(?P<base>.*?)@\d+(?P<mode>\+apprentice\([^)]*\))?$")


def served_version(model_version: str) -> str:
    """The base version (and serving mode) of a logged model version, without its offset.

    Examples
    --------
    >>> served_version("v3@1042"), served_version("base@7+apprentice(0.1)")
    ('v3', 'base+apprentice(0.1)')
    """
    found = _VERSION.match(model_version)
    if found is None:
        return model_version
    return found.group("base") + (found.group("mode") or "")
