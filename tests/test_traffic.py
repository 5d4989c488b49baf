"""Simulated traffic against a real server: it learns, nothing fails, failures stop the run."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice
from pathlib import Path

import httpx
import numpy as np
import pytest
from rich.console import Console

from banditrec.features import load_default_schema
from banditrec.sim import AppSimulator
from banditrec.snapshot import load_model
from banditrec.traffic import TrafficError, _Tally, _users, run_traffic
from serving import free_port, running_server

RANK_FIELDS = {
    "country",
    "device",
    "segment",
    "n_sessions",
    "days_since_install",
    "recent_engagement",
    "avg_session_length",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `banditrec serve` from the prior, in a subprocess; its base URL."""
    root = tmp_path_factory.mktemp("server")
    with running_server(root, seed="0") as server:
        yield server.url


def n_updates(url: str) -> int:
    value: int = httpx.get(f"{url}/v1/model").json()["n_updates"]
    return value


def test_traffic_learns_from_the_prior(server: str) -> None:
    before = n_updates(server)
    report = run_traffic(
        server, n_requests=2000, concurrency=4, seed=0, window=1000, display="none"
    )

    assert (report.n_rounds, report.n_rewarded, report.n_errors) == (2000, 2000, 0)
    # Rewards are learned at once, each exactly once.
    assert n_updates(server) - before == 2000
    assert (report.updates_start, report.updates_end) == (before, before + 2000)
    # Measured from the prior, 2000 rounds, seeds 0-3: over the last 1000 rounds the served
    # μ beats uniform random by 0.13-0.14 (0.378-0.395 vs 0.247-0.252; oracle 0.41-0.42),
    # i.e. 78-85% of the way from random to the oracle; the observed reward rate beats
    # uniform by 0.11-0.13. The margins below leave room for several times the noise (mean
    # μ over 1000 users: standard error about 0.003; a reward rate over 2000: about 0.011).
    last, total = report.last, report.total
    assert last.served > last.uniform + 0.08
    assert last.gap_closed > 0.5
    assert total.reward > total.uniform + 0.06
    assert last.uniform < last.served <= last.oracle


@pytest.mark.serial
def test_duration_bounds_a_run_and_delayed_rewards_are_all_reported(server: str) -> None:
    start = time.monotonic()
    report = run_traffic(server, duration=1.0, reward_delay=0.3, seed=1, display="none")
    assert 1.0 <= time.monotonic() - start < 10
    assert report.n_rounds > 0
    assert report.n_errors == 0
    assert report.n_rewarded == report.n_rounds


def test_users_are_json_contexts_fixed_by_the_seed() -> None:
    users = list(islice(_users(AppSimulator(), seed=3, batch=7), 20))
    again = list(islice(_users(AppSimulator(), seed=3, batch=7), 20))
    assert [user[:3] for user in users] == [user[:3] for user in again]  # NaN != NaN
    for context, mu, u, reference in users:
        assert set(context) == RANK_FIELDS  # user_id is not part of the rank context
        json.dumps(context)  # python scalars only
        assert len(mu) == 4
        assert 0 <= u < 1
        assert math.isnan(reference)  # no reference model given


def test_a_reference_model_scores_the_same_users_exactly(model_file: Path) -> None:
    model = load_model(model_file, load_default_schema())
    plain = list(islice(_users(AppSimulator(), seed=3, batch=7), 20))
    scored = list(islice(_users(AppSimulator(), seed=3, batch=7, reference=model.policy), 20))
    assert [user[:3] for user in scored] == [user[:3] for user in plain]  # the same users
    schema, eligible = load_default_schema(), np.ones(4, dtype=bool)
    for context, mu, _, reference in scored:
        x = schema.vectorize(context)
        expected = float(model.policy.distribution(x, eligible)[1] @ np.asarray(mu))
        assert reference == pytest.approx(expected, rel=1e-12)
        assert min(mu) <= reference <= max(mu)


def test_the_display_shows_no_nan_before_the_first_round() -> None:
    tally = _Tally(AppSimulator(), window=10, has_reference=True)
    console = Console(file=io.StringIO(), width=200)
    console.print(tally.render())
    console.print(tally.line())
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "nan" not in text.lower()
    assert "—" in text and "waiting for the first round" in text
    tally.add([0.1, 0.2, 0.3, 0.4], action=3, reward=1.0, reference=0.35)
    console.print(tally.render())
    assert "0.4000" in console.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.serial
def test_rate_paces_the_users_and_the_reference_is_reported(server: str, model_file: Path) -> None:
    start = time.monotonic()
    report = run_traffic(
        server, n_requests=40, rate=20, seed=2, reference=model_file, display="none"
    )
    # User i is sent at i / rate seconds: the 40th at 1.95 s, whatever the server's speed.
    assert time.monotonic() - start >= 39 / 20
    assert (report.n_rounds, report.n_errors) == (40, 0)
    # The reference is the trained model's exact expected value on the same users.
    assert report.total.uniform < report.total.reference <= report.total.oracle


@pytest.mark.serial
def test_waiting_stops_when_the_server_process_is_gone(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    start = time.monotonic()
    with pytest.raises(TrafficError, match=f"The server \\(process {process.pid}\\) exited"):
        run_traffic(
            f"http://127.0.0.1:{free_port()}",
            n_requests=10,
            wait_for_server=60,
            server_pid=process.pid,
            display="none",
        )
    assert time.monotonic() - start < 30  # not the whole minute of waiting


class FailingHandler(BaseHTTPRequestHandler):
    """Healthy, ranks, but every reward fails (or ranks an unknown action, see `mode`)."""

    mode = "reward-500"

    def do_GET(self) -> None:
        self.reply(200, {"status": "ok"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/rank":
            action = "no_such_action" if self.mode == "unknown-action" else "invite_friend"
            self.reply(200, {"event_id": "e1", "action_id": action, "probability": 1.0})
        else:
            self.reply(500, {"error": "boom"})

    def reply(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("reward-500", "Stopped after 5 failed reward requests in a row"),
        ("unknown-action", "served 'no_such_action'"),
    ],
)
def test_a_failing_server_stops_the_run_with_a_clear_message(mode: str, message: str) -> None:
    handler = type("Handler", (FailingHandler,), {"mode": mode})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        with pytest.raises(TrafficError, match=message) as caught:
            run_traffic(url, n_requests=1000, max_consecutive_errors=5, display="none")
        report = caught.value.report
        assert report is not None
        assert report.n_rounds < 50  # stopped early, not after the 1000 requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_no_server_is_a_clear_error() -> None:
    with pytest.raises(TrafficError, match="No server answers"):
        run_traffic(f"http://127.0.0.1:{free_port()}", n_requests=10, display="none")


def test_traffic_must_be_bounded() -> None:
    with pytest.raises(ValueError, match="stop by itself"):
        run_traffic("http://127.0.0.1:8020")
