"""Prometheus metrics: counters, route-template latency, and the multiprocess aggregate."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import timeit
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from banditrec.metrics import (
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    Metrics,
    MetricsMiddleware,
    metrics_response,
)

ACTIONS = ("show_bonus_offer", "invite_friend")


def samples(body: bytes | str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, keyed by (sample name, labels)."""
    text = body.decode() if isinstance(body, bytes) else body
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


#: Families labelled by loop (`Metrics.for_loop`); a test names a loop only when it is not
#: the default one.
LOOP_LABELLED = (
    "banditrec_decisions_total",
    "banditrec_rewards_total",
    "banditrec_reward_joins_total",
    "banditrec_default_rewards_total",
    "banditrec_model_updates",
    "banditrec_learner_faults_total",
    "banditrec_learner_fault",
    "banditrec_model_info",
    "banditrec_default_reward_backlog",
    "banditrec_http_request_duration_seconds_bucket",
    "banditrec_http_request_duration_seconds_count",
    "banditrec_http_request_duration_seconds_sum",
)


def value(body: bytes | str, name: str, **labels: str) -> float | None:
    if name in LOOP_LABELLED:
        labels.setdefault("loop", "default")
    return samples(body).get((name, frozenset(labels.items())))


def exposition(metrics: Metrics) -> bytes:
    response = metrics_response(metrics)
    assert response.media_type == CONTENT_TYPE
    return bytes(response.body)


def test_counters_count_by_label() -> None:
    metrics = Metrics(ACTIONS)
    for _ in range(3):
        metrics.decision("show_bonus_offer")
    metrics.decision("invite_friend")
    metrics.reward("show_bonus_offer", "learned")
    metrics.reward("show_bonus_offer", "duplicate")
    metrics.reward("invite_friend", "late")
    metrics.reward(None, "unknown")
    metrics.join()
    metrics.join()
    metrics.default_reward("invite_friend", 5)
    metrics.default_reward("invite_friend")
    body = exposition(metrics)

    assert value(body, "banditrec_decisions_total", action="show_bonus_offer") == 3
    assert value(body, "banditrec_decisions_total", action="invite_friend") == 1
    assert value(body, "banditrec_rewards_total", action="show_bonus_offer", outcome="learned") == 1
    assert (
        value(body, "banditrec_rewards_total", action="show_bonus_offer", outcome="duplicate") == 1
    )
    assert value(body, "banditrec_rewards_total", action="invite_friend", outcome="late") == 1
    assert value(body, "banditrec_rewards_total", action="", outcome="unknown") == 1
    assert value(body, "banditrec_reward_joins_total") == 2
    assert value(body, "banditrec_default_rewards_total", action="invite_friend") == 6
    assert value(body, "banditrec_default_rewards_total", action="show_bonus_offer") == 0
    # The usual process metrics are there too in single-process mode.
    assert value(body, "process_cpu_seconds_total") is not None


def test_known_actions_show_up_before_their_first_event() -> None:
    body = exposition(Metrics(ACTIONS))
    for action in ACTIONS:
        assert value(body, "banditrec_decisions_total", action=action) == 0
        assert value(body, "banditrec_rewards_total", action=action, outcome="learned") == 0
        assert value(body, "banditrec_rewards_total", action=action, outcome="summed") == 0
    assert value(body, "banditrec_rewards_total", action="", outcome="unknown") == 0


def test_an_unknown_outcome_is_refused() -> None:
    with pytest.raises(ValueError, match="Unknown reward outcome 'won'"):
        Metrics().reward("a", "won")  # type: ignore[arg-type]


def test_model_version_and_updates() -> None:
    metrics = Metrics()
    body = exposition(metrics)
    assert value(body, "banditrec_model_updates") == 0
    assert not [k for k in samples(body) if k[0] == "banditrec_model_info"]

    metrics.model("v1", 10)
    metrics.model("v2", 11)
    body = exposition(metrics)
    assert value(body, "banditrec_model_updates") == 11
    # Only the current version: a version per learn event must not pile up series.
    info = {k: v for k, v in samples(body).items() if k[0] == "banditrec_model_info"}
    assert info == {
        ("banditrec_model_info", frozenset({("version", "v2"), ("loop", "default")})): 1.0
    }


def test_two_instances_do_not_share_counts() -> None:
    first, second = Metrics(ACTIONS), Metrics(ACTIONS)
    first.decision("invite_friend")
    assert value(exposition(first), "banditrec_decisions_total", action="invite_friend") == 1
    assert value(exposition(second), "banditrec_decisions_total", action="invite_friend") == 0


def test_latency_histogram_buckets() -> None:
    metrics = Metrics()
    metrics.observe_request("/r", "POST", 200, 0.0007)
    metrics.observe_request("/r", "POST", 200, 0.2)
    body = exposition(metrics)
    labels = {"route": "/r", "method": "POST", "status": "200"}
    name = "banditrec_http_request_duration_seconds"
    assert LATENCY_BUCKETS[0] == 0.0005 and LATENCY_BUCKETS[-1] == 1.0
    assert value(body, f"{name}_bucket", le="0.0005", **labels) == 0
    assert value(body, f"{name}_bucket", le="0.001", **labels) == 1
    assert value(body, f"{name}_bucket", le="0.25", **labels) == 2
    assert value(body, f"{name}_count", **labels) == 2
    assert value(body, f"{name}_sum", **labels) == pytest.approx(0.2007)


def test_tallied_histogram_matches_prometheus_observe_at_every_bucket_edge() -> None:
    # The hot path tallies observations in plain ints and adds them in one go; each must
    # land in the bucket prometheus-client's own `observe` picks, edges included.
    seconds = [0.0, 1e-9, *LATENCY_BUCKETS, *(b * (1 + 1e-12) for b in LATENCY_BUCKETS), 5.0]
    metrics = Metrics()
    reference = CollectorRegistry()
    histogram = Histogram(
        "reference", "the same buckets", buckets=LATENCY_BUCKETS, registry=reference
    )
    for s in seconds:
        metrics.observe_request("/r", "POST", 200, s)
        histogram.observe(s)
    body = exposition(metrics)
    name = "banditrec_http_request_duration_seconds"
    labels = {"route": "/r", "method": "POST", "status": "200"}
    for bound in (*LATENCY_BUCKETS, float("inf")):
        le = "+Inf" if bound == float("inf") else repr(bound)
        expected = reference.get_sample_value("reference_bucket", {"le": le})
        assert value(body, f"{name}_bucket", le=le, **labels) == expected, le
    assert value(body, f"{name}_count", **labels) == len(seconds)
    assert value(body, f"{name}_sum", **labels) == pytest.approx(sum(seconds))


def test_counts_are_exact_at_every_scrape_after_a_burst() -> None:
    metrics = Metrics(ACTIONS)
    loop_metrics = metrics.for_loop("checkout", ACTIONS)
    total = 0
    for burst in (1, 999, 5_000):
        for _ in range(burst):
            metrics.decision("invite_friend")
            loop_metrics.decision("show_bonus_offer", 2)
            metrics.observe_request("/recommend_action", "POST", 200, 0.002)
        total += burst
        body = exposition(metrics)  # no wait: the scraping process's own counts are exact
        assert value(body, "banditrec_decisions_total", action="invite_friend") == total
        assert value(body, "banditrec_decisions_total", action="show_bonus_offer") == 0
        assert (
            value(body, "banditrec_decisions_total", action="show_bonus_offer", loop="checkout")
            == 2 * total
        )
        assert request_count(body, "/recommend_action", "POST", 200) == total


def test_counts_from_other_threads_during_scrapes_are_never_lost() -> None:
    metrics = Metrics(ACTIONS)
    n_threads, n_each = 4, 20_000

    def count() -> None:
        for _ in range(n_each):
            metrics.decision("invite_friend")
            metrics.observe_request("/recommend_action", "POST", 200, 0.002)

    threads = [threading.Thread(target=count) for _ in range(n_threads)]
    for thread in threads:
        thread.start()
    seen: list[float] = []
    while any(thread.is_alive() for thread in threads):  # scrapes while the threads count
        body = exposition(metrics)
        seen.append(value(body, "banditrec_decisions_total", action="invite_friend") or 0.0)
    for thread in threads:
        thread.join()
    body = exposition(metrics)
    assert seen == sorted(seen)  # a count once shown never goes away
    assert value(body, "banditrec_decisions_total", action="invite_friend") == n_threads * n_each
    assert request_count(body, "/recommend_action", "POST", 200) == n_threads * n_each


class Reject413:
    """Stands in for a body-size guard that answers before the router runs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/too-large"):
            await JSONResponse({"error": "payload_too_large"}, 413)(scope, receive, send)
            return
        await self.app(scope, receive, send)


@pytest.fixture
def served() -> tuple[TestClient, Metrics]:
    metrics = Metrics(ACTIONS)
    app = FastAPI()

    @app.post("/v1/events/{event_id}/reward")
    async def reward(event_id: str) -> dict[str, str]:
        return {"event_id": event_id}

    @app.get("/items/{n:int}")
    async def item(n: int) -> dict[str, int]:
        return {"n": n}

    @app.post("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    @app.post("/v1/{name}/too-large")
    async def too_large(name: str) -> None:
        raise AssertionError("the guard answers first")

    @app.get("/metrics")
    async def metrics_endpoint(request: Request) -> Response:
        return metrics_response(request.app.state.metrics)

    app.state.metrics = metrics
    app.add_middleware(Reject413)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # last added: outermost
    return TestClient(app, raise_server_exceptions=False), metrics


def request_count(body: bytes, route: str, method: str, status: int) -> float | None:
    labels = {"route": route, "method": method, "status": str(status)}
    return value(body, "banditrec_http_request_duration_seconds_count", **labels)


def test_middleware_labels_by_route_template_and_status(
    served: tuple[TestClient, Metrics],
) -> None:
    client, _ = served
    for event_id in ("e1", "e2", "e3"):
        assert client.post(f"/v1/events/{event_id}/reward").status_code == 200
    assert client.get("/items/7").status_code == 200
    assert client.get("/items/seven").status_code == 404  # the converter does not match
    assert client.get("/nowhere/at/all").status_code == 404
    assert client.get("/v1/events/e1/reward").status_code == 405
    assert client.post("/boom").status_code == 500
    assert client.post("/v1/x/too-large").status_code == 413
    assert client.request("BREW", "/items/7").status_code == 405
    body = client.get("/metrics").content

    assert request_count(body, "/v1/events/{event_id}/reward", "POST", 200) == 3
    assert request_count(body, "/items/{n}", "GET", 200) == 1  # the template without ":int"
    assert request_count(body, "unmatched", "GET", 404) == 2
    assert request_count(body, "/v1/events/{event_id}/reward", "GET", 405) == 1
    assert request_count(body, "/boom", "POST", 500) == 1
    assert request_count(body, "/v1/{name}/too-large", "POST", 413) == 1
    assert request_count(body, "/items/{n}", "other", 405) == 1
    # No raw path ever becomes a label.
    routes = {dict(labels).get("route") for _, labels in samples(body)}
    assert not any(r and ("e1" in r or "nowhere" in r or "/7" in r) for r in routes)


def test_metrics_endpoint_content_type(served: tuple[TestClient, Metrics]) -> None:
    client, metrics = served
    metrics.decision("invite_friend")
    response = client.get("/metrics")
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert value(response.text, "banditrec_decisions_total", action="invite_friend") == 1


def test_multiproc_dir_set_after_import_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # This process imported prometheus_client without the variable: its values are private.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="set it before the server starts"):
        Metrics()


WORKER = textwrap.dedent(
    """
    import sys
    from banditrec.metrics import Metrics

    n_decisions, n_updates = int(sys.argv[1]), int(sys.argv[2])
    metrics = Metrics(["show_bonus_offer", "invite_friend"])
    for _ in range(n_decisions):
        metrics.decision("show_bonus_offer")
        metrics.observe_request("/recommend_action", "POST", 200, 0.001)
    metrics.reward("invite_friend", "learned")
    metrics.join()
    metrics.model(f"v{n_updates}", n_updates)
    """
)
READER = textwrap.dedent(
    """
    from banditrec.metrics import Metrics, metrics_response

    metrics = Metrics()
    assert metrics.multiprocess
    print(metrics_response(metrics).body.decode())
    """
)


def run(code: str, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_multiprocess_mode_adds_up_the_workers(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    # Two workers at once, then a third process (any worker answering /metrics) reads.
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, n, updates], env=env)
        for n, updates in (("3", "100"), ("4", "100"))
    ]
    assert [w.wait(timeout=60) for w in workers] == [0, 0]
    run(WORKER, env, "0", "120")  # the most recent model update, after both
    body = run(READER, env)

    assert len(list(tmp_path.glob("counter_*.db"))) == 4  # one per process, reader included
    assert value(body, "banditrec_decisions_total", action="show_bonus_offer") == 7
    assert value(body, "banditrec_decisions_total", action="invite_friend") == 0
    assert value(body, "banditrec_rewards_total", action="invite_friend", outcome="learned") == 3
    assert value(body, "banditrec_reward_joins_total") == 3
    assert request_count(body.encode(), "/recommend_action", "POST", 200) == 7
    # A gauge is not summed: the workers hold the same model; the last value set wins.
    assert value(body, "banditrec_model_updates") == 120


def test_multiprocess_mode_needs_a_directory(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "absent")}
    done = subprocess.run(
        [sys.executable, "-c", "from banditrec.metrics import Metrics; Metrics()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "must name an existing directory" in done.stderr


@pytest.mark.serial
def test_decision_is_cheap() -> None:
    # A coarse guard against an accidental slow path (the decision route targets >5k req/s);
    # about 1 µs on a laptop, so 20 µs leaves room for a loaded CI machine.
    metrics = Metrics(ACTIONS)
    best = min(timeit.repeat(lambda: metrics.decision("invite_friend"), number=10_000, repeat=3))
    assert best / 10_000 < 20e-6


def test_learner_faults_and_the_default_reward_backlog() -> None:
    metrics = Metrics(ACTIONS)
    body = exposition(metrics)
    assert value(body, "banditrec_default_reward_backlog") is None  # no log watched yet
    assert value(body, "banditrec_learner_faults_total") == 0
    backlog = [42]
    metrics.watch_backlog(lambda: backlog[0])
    metrics.learner_failed()
    metrics.learner_failed()
    metrics.learner_faulty(True)
    body = exposition(metrics)
    assert value(body, "banditrec_default_reward_backlog") == 42
    assert value(body, "banditrec_learner_faults_total") == 2
    assert value(body, "banditrec_learner_fault") == 1
    backlog[0] = 0  # counted afresh at every scrape
    metrics.learner_faulty(False)
    body = exposition(metrics)
    assert value(body, "banditrec_default_reward_backlog") == 0
    assert value(body, "banditrec_learner_fault") == 0


def test_an_unreachable_log_leaves_out_the_backlog_not_the_other_metrics() -> None:
    metrics = Metrics(ACTIONS)

    def unreachable() -> int:
        raise RuntimeError("The event log is closed.")

    metrics.watch_backlog(unreachable)
    metrics.decision("invite_friend")
    body = exposition(metrics)
    assert value(body, "banditrec_default_reward_backlog") is None
    assert value(body, "banditrec_decisions_total", action="invite_friend") == 1


FAULTY_READER = textwrap.dedent(
    """
    from banditrec.metrics import Metrics, metrics_response

    metrics = Metrics()
    metrics.watch_backlog(lambda: 7)
    metrics.learner_failed()
    metrics.learner_faulty(True)
    print(metrics_response(metrics).body.decode())
    """
)


def test_multiprocess_mode_shows_the_backlog_and_a_live_workers_fault(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    run(WORKER, env, "1", "1")  # a healthy worker, gone
    body = run(FAULTY_READER, env)
    assert value(body, "banditrec_default_reward_backlog") == 7
    assert value(body, "banditrec_learner_faults_total") == 1
    assert value(body, "banditrec_learner_fault") == 1
