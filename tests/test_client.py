"""The typed client's contract, against real `banditrec serve` processes.

Every method, every error class from a real answer, and the retries: a real TCP proxy
(`FaultyProxy`) between the client and the server loses replies after the server acted on
the request, answers 502/503/504 itself like a load balancer, or stalls a reply past the
client's timeout; one test kills the server and starts it again on the same port and log.
No part of httpx or of the server is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from banditrec.client import (
    ActionExists,
    AsyncClient,
    BadRequest,
    BanditrecError,
    Client,
    ConnectionFailed,
    Decision,
    EventNotActivated,
    Forbidden,
    InvalidResponse,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    RewardReceipt,
    ServerError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    WindowClosed,
)
from banditrec.client.errors import error_from_response
from banditrec.policies import DEFAULT_POLICY, build_policy
from conftest import ACTIONS, SEED_CONTEXT, SEED_REQUEST
from serving import Server, free_port, running_process, running_server, server_env

KEYS = {"r-key": "reader", "w-key": "writer", "a-key": "admin"}

# ----------------------------------------------------------------------------- servers


class Served:
    """A running server: its URL and its SQLite log (to count what was logged)."""

    def __init__(self, server: Server, db: Path) -> None:
        self.server, self.url, self.db = server, server.url, db

    def decisions(self, event_id: str) -> int:
        with sqlite3.connect(self.db) as db:
            row = db.execute("SELECT count(*) FROM decisions WHERE event_id = ?", (event_id,))
            return int(row.fetchone()[0])

    def rewards(self, event_id: str) -> list[tuple[float, str]]:
        with sqlite3.connect(self.db) as db:
            rows = db.execute(
                "SELECT value, outcome FROM rewards WHERE event_id = ? ORDER BY seq", (event_id,)
            )
            return [(float(v), str(o)) for v, o in rows]


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """No keys, aggregation earliest, a one-hour window: the defaults."""
    root = tmp_path_factory.mktemp("open")
    with running_server(root, seed="0") as server:
        yield Served(server, root / "events.db")


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """API keys, a 4 s reward window, aggregation sum and a 2 KiB body limit."""
    root = tmp_path_factory.mktemp("strict")
    settings = {
        "seed": "0",
        "api_keys": json.dumps(KEYS),
        "reward_window_seconds": "4",  # short, yet long enough for a loaded machine
        "reward_aggregation": "sum",
        "max_body_bytes": "2048",
    }
    with running_server(root, **settings) as server:
        yield Served(server, root / "events.db")


# ------------------------------------------------------------------------------ proxy

_METHODS = (b"GET ", b"POST ")


class FaultyProxy:
    """A TCP proxy in front of a server that can lose, replace or stall its replies.

    ``drop``: forward the request, then close the client's connection when the reply
    starts (the server acted; the client gets no answer). ``replace``: forward the request,
    then answer this status instead of the server's reply. ``answer``: do not forward;
    answer this (status, body, content type) at once. ``stall``: hold the reply that many
    seconds before sending it. Each is a queue consumed one request at a time.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = ("127.0.0.1", int(upstream.rsplit(":", 1)[1]))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.drop = 0
        self.replace: list[int] = []
        self.answer: list[tuple[int, bytes, str]] = []
        self.stall: list[float] = []
        self.requests = 0
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.closed = True
        self.listener.close()

    def __enter__(self) -> FaultyProxy:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            for source, sink, upstream in ((client, server, True), (server, client, False)):
                threading.Thread(
                    target=self._pump, args=(source, sink, client, server, upstream), daemon=True
                ).start()

    def _pump(
        self,
        source: socket.socket,
        sink: socket.socket,
        client: socket.socket,
        server: socket.socket,
        to_server: bool,
    ) -> None:
        try:
            while chunk := source.recv(65536):
                if to_server and chunk.startswith(_METHODS):
                    with self.lock:
                        self.requests += 1
                        canned = self.answer.pop(0) if self.answer else None
                    if canned is not None:
                        client.sendall(_reply(*canned))
                        break
                if not to_server and chunk.startswith(b"HTTP/1.1 "):
                    with self.lock:
                        drop = self.drop > 0
                        self.drop -= drop
                        status = self.replace.pop(0) if self.replace and not drop else None
                        stall = self.stall.pop(0) if self.stall and not drop else 0.0
                    if drop:
                        break
                    if status is not None:
                        client.sendall(_reply(status, b"<html>Bad Gateway</html>", "text/html"))
                        break
                    time.sleep(stall)
                sink.sendall(chunk)
        except OSError:
            pass
        for s in (client, server):  # one side ended: end the other (wakes its pump)
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def _reply(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status} {httpx.codes.get_reason_phrase(status)}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def banditrec_body(code: str, message: str) -> bytes:
    return json.dumps({"error": code, "message": message, "detail": []}).encode()


def fast(url: str, **kwargs: Any) -> Client:
    """A client with short waits between retries, so that retry tests take milliseconds."""
    kwargs = {"backoff": 0.01, "max_backoff": 0.05, "trust_env": False} | kwargs
    return Client(url, **kwargs)


# ------------------------------------------------------------------- every method


def test_health_model_actions_and_metrics_are_typed(open_server: Served) -> None:
    with Client(open_server.url, trust_env=False) as client:
        health = client.health()
        assert (health.status, health.ok, health.faults) == ("ok", True, ())
        assert health.n_actions == 4 and not health.model_loaded

        model = client.model()
        # Served from the prior: the default policy, its parameters as JSON values.
        assert model.policy == DEFAULT_POLICY and model.schema_hash == health.schema_hash
        assert model.policy_params == build_policy(DEFAULT_POLICY).get_params()
        assert set(model.n_updates_by_action) == set(ACTIONS)
        assert model.version == health.model_version

        actions = client.actions()
        assert [a.action_id for a in actions] == list(ACTIONS)
        assert all(a.enabled for a in actions)

        assert "banditrec_decisions_total" in client.metrics()


def test_rank_then_reward_is_learned_once(open_server: Served) -> None:
    with Client(open_server.url, trust_env=False) as client:
        before = client.model().n_updates
        decision = client.rank(SEED_CONTEXT, excluded_actions=["invite_friend"])
        assert isinstance(decision, Decision)
        assert len(decision.event_id) == 32  # made by the client
        assert decision.action_id in ACTIONS and decision.action_id != "invite_friend"
        assert decision.probabilities["invite_friend"] == 0.0
        assert decision.probability == decision.probabilities[decision.action_id]
        assert sum(decision.probabilities.values()) == pytest.approx(1.0)
        assert (decision.replayed, decision.context_mismatch, decision.attempts) == (
            False,
            False,
            1,
        )
        assert open_server.decisions(decision.event_id) == 1

        receipt = client.reward(decision.event_id, 1.0)
        assert receipt == RewardReceipt(decision.event_id, "learned", True, False, 1.0, 1.0)
        assert client.model().n_updates == before + 1

        again = client.reward(decision.event_id, 0.0)  # another reward: recorded only
        assert (again.status, again.learned, again.duplicate, again.recovered) == (
            "duplicate",
            False,
            True,
            False,
        )
        assert client.model().n_updates == before + 1


def test_rank_with_actions_and_a_repeated_event_id(open_server: Served) -> None:
    with Client(open_server.url, trust_env=False) as client:
        first = client.rank(SEED_CONTEXT, actions=["show_bonus_offer"], event_id="order-1")
        assert (first.event_id, first.action_id, first.probability) == (
            "order-1",
            "show_bonus_offer",
            1.0,
        )
        same = client.rank(SEED_CONTEXT, event_id="order-1")
        assert same.replayed and not same.context_mismatch
        assert (same.action_id, same.ranking) == (first.action_id, first.ranking)
        other = client.rank({**SEED_CONTEXT, "n_sessions": 99}, event_id="order-1")
        assert other.replayed and other.context_mismatch
        assert open_server.decisions("order-1") == 1


def test_rank_with_explain_types_every_actions_explanation(open_server: Served) -> None:
    with Client(open_server.url, trust_env=False) as client:
        plain = client.rank(SEED_CONTEXT)
        explained = client.rank(SEED_CONTEXT, excluded_actions=["invite_friend"], explain=True)
    assert all(a.mean is None and a.reason is None for a in plain.ranking)
    assert plain.explanation_version is None
    assert explained.explanation_version is not None
    by_action = {a.action_id: a for a in explained.ranking}
    assert by_action["invite_friend"].reason == "excluded"
    assert by_action[explained.action_id].reason in ("best", "explored")
    for action in explained.ranking:
        assert action.mean is not None and action.width is not None and action.width >= 0
        assert action.contributions  # LinUCB: a sum over the features
        assert sum(action.contributions.values()) == pytest.approx(action.mean, abs=1e-9)


def test_recommend_is_the_seeds_route(open_server: Served) -> None:
    context = {k: v for k, v in SEED_REQUEST.items() if k != "user_id"}
    with Client(open_server.url, trust_env=False) as client:
        recommendation = client.recommend("u123", context)
    assert recommendation.user_id == "u123"
    assert recommendation.recommended_action in ACTIONS
    assert set(recommendation.scores) == set(ACTIONS)
    assert recommendation.ucb_score == recommendation.scores[recommendation.recommended_action]
    assert open_server.decisions(recommendation.event_id) == 1


def test_deferred_decision_is_learned_only_after_activation(open_server: Served) -> None:
    with Client(open_server.url, trust_env=False) as client:
        decision = client.rank(SEED_CONTEXT, defer_activation=True)
        assert decision.deferred
        with pytest.raises(EventNotActivated) as caught:
            client.reward(decision.event_id, 1.0)
        exc = caught.value
        assert (exc.status, exc.code) == (409, "event_not_activated")
        assert "activate it first" in exc.message
        assert client.activate(decision.event_id).activated
        assert not client.activate(decision.event_id).activated  # a repeat is harmless
        assert client.reward(decision.event_id, 1.0).learned


def test_admin_calls(open_server: Served, tmp_path: Path) -> None:
    from banditrec.features import load_default_schema
    from banditrec.snapshot import load_model

    with Client(open_server.url, trust_env=False) as client:
        listed = client.add_action("spin_the_wheel")
        assert [a.action_id for a in listed][-1] == "spin_the_wheel"
        with pytest.raises(ActionExists) as caught:
            client.add_action("spin_the_wheel")
        assert (caught.value.status, caught.value.code) == (409, "action_exists")

        disabled = client.disable_action("spin_the_wheel")
        assert {a.action_id: a.enabled for a in disabled}["spin_the_wheel"] is False
        assert client.rank(SEED_CONTEXT).probabilities["spin_the_wheel"] == 0.0
        enabled = client.enable_action("spin_the_wheel")
        assert {a.action_id: a.enabled for a in enabled}["spin_the_wheel"] is True
        with pytest.raises(NotFound) as missing:
            client.disable_action("no_such_action")
        assert (missing.value.code, missing.value.status) == ("action_not_found", 404)
        assert "no_such_action" in missing.value.message

        snapshot = client.snapshot()
        assert Path(snapshot.path).exists()
        assert snapshot.log_offset == client.model().log_offset

        data = client.export_model()
    path = tmp_path / "exported.npz"
    path.write_bytes(data)
    model = load_model(path, load_default_schema())
    assert "spin_the_wheel" in model.actions


def test_forget_user_deletes_their_decisions_and_a_lost_reply_is_retried(
    open_server: Served,
) -> None:
    with Client(open_server.url, trust_env=False) as client:
        mine = [client.rank(SEED_CONTEXT, user_id="u-forget").event_id for _ in range(2)]
        other = client.rank(SEED_CONTEXT, user_id="u-keep").event_id
        with FaultyProxy(open_server.url) as proxy, fast(proxy.url) as retrying:
            proxy.drop = 1  # deleted, but the reply is lost
            forgotten = retrying.forget_user("u-forget")
        assert (forgotten.user_id, forgotten.live, forgotten.repeated) == ("u-forget", 0, True)
        assert [open_server.decisions(e) for e in mine] == [0, 0]
        assert open_server.decisions(other) == 1
        again = client.forget_user("u-keep")
        assert (again.live, again.archive, again.repeated) == (1, 0, False)


# ------------------------------------------------------------- every error mapped


def test_unknown_event_is_not_found(open_server: Served) -> None:
    with Client(open_server.url, trust_env=False) as client:
        with pytest.raises(NotFound) as caught:
            client.reward("no-such-event", 1.0)
        with pytest.raises(NotFound) as activation:
            client.activate("no-such-event")
    assert (caught.value.status, caught.value.code) == (404, "event_not_found")
    assert caught.value.message == "No decision has the event id 'no-such-event'."
    assert activation.value.code == "event_not_found"


def test_validation_errors_name_the_field(open_server: Served) -> None:
    with Client(open_server.url, trust_env=False) as client:
        before = client.model().n_updates
        with pytest.raises(ValidationFailed) as caught:
            client.rank({**SEED_CONTEXT, "n_sessions": -1})
        exc = caught.value
        assert (exc.status, exc.code) == (422, "validation_error")
        assert [d.field for d in exc.detail] == ["context.n_sessions"]
        assert "greater than or equal to 0" in exc.detail[0].message

        decision = client.rank(SEED_CONTEXT)
        with pytest.raises(ValidationFailed) as out_of_range:
            client.reward(decision.event_id, 2.0)
        assert [d.field for d in out_of_range.value.detail] == ["value"]
        with pytest.raises(ValidationFailed) as bad_id:
            client.rank(SEED_CONTEXT, event_id="no/slash")
        assert [d.field for d in bad_id.value.detail] == ["event_id"]

        with pytest.raises(ValidationFailed) as unknown:
            client.rank(SEED_CONTEXT, actions=["no_such_action"])
        assert unknown.value.code == "unknown_action" and unknown.value.detail == ()
        with pytest.raises(ValidationFailed) as none_left:
            client.rank(SEED_CONTEXT, excluded_actions=[*ACTIONS, "spin_the_wheel"])
        assert none_left.value.code == "no_eligible_action"
        assert client.model().n_updates == before  # nothing learned
        assert open_server.decisions("no/slash") == 0


def test_bad_json_and_media_type_map_to_their_classes(open_server: Served) -> None:
    # The client always sends JSON; these answers are the server's real ones to raw requests.
    bad = httpx.post(f"{open_server.url}/v1/rank", content=b"{", trust_env=False,
                     headers={"Content-Type": "application/json"})  # fmt: skip
    exc = error_from_response(bad)
    assert isinstance(exc, BadRequest) and exc.code == "invalid_json"
    text = httpx.post(f"{open_server.url}/v1/rank", content=b"x", trust_env=False,
                      headers={"Content-Type": "text/plain"})  # fmt: skip
    exc = error_from_response(text)
    assert type(exc) is BanditrecError and (exc.status, exc.code) == (
        415,
        "unsupported_media_type",
    )


def test_keys_roles_window_and_body_limit(strict_server: Served) -> None:
    url = strict_server.url
    with Client(url, trust_env=False) as anonymous, pytest.raises(Unauthorized) as caught:
        anonymous.rank(SEED_CONTEXT)
    assert (caught.value.status, caught.value.code) == (401, "missing_api_key")
    with Client(url, "wrong", trust_env=False) as wrong, pytest.raises(Unauthorized) as caught:
        wrong.model()
    assert caught.value.code == "invalid_api_key"
    with Client(url, "r-key", trust_env=False) as reader:
        assert reader.model().policy == DEFAULT_POLICY
        with pytest.raises(Forbidden) as denied:
            reader.rank(SEED_CONTEXT)
    assert (denied.value.status, denied.value.code) == (403, "insufficient_role")

    with Client(url, "w-key", trust_env=False) as writer:
        with pytest.raises(Forbidden):
            writer.snapshot()
        with pytest.raises(PayloadTooLarge) as large:
            writer.rank({**SEED_CONTEXT, "notes": "x" * 4096})
        assert (large.value.status, large.value.code) == (413, "payload_too_large")

        decision = writer.rank(SEED_CONTEXT)
        time.sleep(4.5)  # past the 4 s window
        with pytest.raises(WindowClosed) as late:
            writer.reward(decision.event_id, 1.0)
    assert (late.value.status, late.value.code) == (410, "reward_window_closed")
    assert "recorded, not learned" in late.value.message
    assert strict_server.rewards(decision.event_id) == [(1.0, "late")]
    with Client(url, "a-key", trust_env=False) as admin:
        assert admin.snapshot().log_offset >= 0


def test_server_errors_are_not_retried_and_foreign_pages_are_quoted(open_server: Served) -> None:
    with FaultyProxy(open_server.url) as proxy, fast(proxy.url, retries=3) as client:
        proxy.answer = [(500, banditrec_body("internal_error", "The server failed."), "json")]
        with pytest.raises(ServerError) as caught:
            client.model()
        assert (caught.value.status, caught.value.code, caught.value.attempts) == (
            500,
            "internal_error",
            1,
        )
        assert proxy.requests == 1  # a 500 is not retried

        page = b"<html><body><h1>503 Service Unavailable</h1>No server is available.</body>"
        proxy.answer = [(503, page, "text/html")] * 4
        with pytest.raises(Unavailable) as unavailable:
            client.health()
        exc = unavailable.value
        assert (exc.status, exc.code, exc.attempts) == (503, "http_503", 4)
        assert "No server is available" in exc.message
        assert proxy.requests == 1 + 4

        proxy.answer = [(200, b"<html>hello</html>", "text/html")]
        with pytest.raises(InvalidResponse, match="not JSON"):
            client.health()
        proxy.answer = [(200, b'{"hello": "world"}', "application/json")]
        with pytest.raises(InvalidResponse, match="has no 'status' field") as wrong:
            client.health()
        assert (wrong.value.status, wrong.value.code) == (200, "invalid_response")


def test_client_errors_are_never_retried(open_server: Served) -> None:
    with FaultyProxy(open_server.url) as proxy, fast(proxy.url, retries=5) as client:
        with pytest.raises(NotFound) as caught:
            client.reward("nope", 1.0)
        assert caught.value.attempts == 1 and proxy.requests == 1


# ------------------------------------------------------------------------- retries


def test_a_lost_rank_reply_is_retried_and_logged_once(open_server: Served) -> None:
    with FaultyProxy(open_server.url) as proxy, fast(proxy.url) as client:
        proxy.drop = 1  # the server logs the decision; its reply never reaches the client
        decision = client.rank(SEED_CONTEXT)
        assert proxy.requests == 2
        assert (decision.attempts, decision.replayed, decision.context_mismatch) == (
            2,
            True,
            False,
        )
        assert open_server.decisions(decision.event_id) == 1


def test_a_lost_reward_reply_is_reported_learned_once(open_server: Served) -> None:
    with Client(open_server.url, trust_env=False) as direct:
        decision = direct.rank(SEED_CONTEXT)
        before = direct.model().n_updates
        with FaultyProxy(open_server.url) as proxy, fast(proxy.url) as client:
            proxy.drop = 1  # learned, but the reply is lost
            receipt = client.reward(decision.event_id, 1.0)
        assert receipt == RewardReceipt(
            decision.event_id, "learned", True, False, 1.0, 1.0, attempts=2, recovered=True
        )
        assert direct.model().n_updates == before + 1
    assert open_server.rewards(decision.event_id) == [(1.0, "learned"), (1.0, "duplicate")]


def test_a_reward_retried_after_a_502_reports_another_winner_as_duplicate(
    open_server: Served,
) -> None:
    with Client(open_server.url, trust_env=False) as direct:
        decision = direct.rank(SEED_CONTEXT)
        direct.reward(decision.event_id, 0.0)  # someone else's reward was learned first
        with FaultyProxy(open_server.url) as proxy, fast(proxy.url) as client:
            proxy.replace = [502]  # the server answered; the balancer sent 502 instead
            receipt = client.reward(decision.event_id, 1.0)
        assert proxy.requests == 2
    assert (receipt.status, receipt.duplicate, receipt.recovered, receipt.total) == (
        "duplicate",
        True,
        False,
        0.0,
    )


def test_504_and_503_are_retried_then_succeed(open_server: Served) -> None:
    with FaultyProxy(open_server.url) as proxy, fast(proxy.url) as client:
        proxy.replace = [504]
        proxy.answer = [(503, banditrec_body("store_unavailable", "Down."), "json")]
        decision = client.rank(SEED_CONTEXT)  # 503 unsent, then 504 after the server acted
        assert (decision.attempts, decision.replayed) == (3, True)
        assert open_server.decisions(decision.event_id) == 1


@pytest.mark.serial
def test_a_stalled_reply_times_out_and_the_retry_replays(open_server: Served) -> None:
    # The server logs the decision at once; only its reply is held past the timeout.
    with FaultyProxy(open_server.url) as proxy, fast(proxy.url, timeout=1.0) as client:
        proxy.stall = [3.0]
        decision = client.rank(SEED_CONTEXT)
        assert decision.attempts >= 2 and decision.replayed  # >= 2: a loaded machine may be slow
        assert open_server.decisions(decision.event_id) == 1
    with FaultyProxy(open_server.url) as proxy, fast(proxy.url, timeout=1.0, retries=0) as c:
        proxy.stall = [3.0]
        with pytest.raises(RequestTimeout) as caught:
            c.rank(SEED_CONTEXT)
    assert (caught.value.code, caught.value.status, caught.value.attempts) == ("timeout", None, 1)
    assert "may have reached the server" in caught.value.message


def test_recommend_is_not_retried_after_a_lost_reply(open_server: Served) -> None:
    context = {k: v for k, v in SEED_REQUEST.items() if k != "user_id"}
    with FaultyProxy(open_server.url) as proxy, fast(proxy.url) as client:
        proxy.drop = 1
        with pytest.raises(ConnectionFailed) as caught:
            client.recommend("u-lost", context)
        assert (caught.value.attempts, proxy.requests) == (1, 1)
        assert "may have reached the server" in caught.value.message
        proxy.replace = [502]
        with pytest.raises(Unavailable):
            client.recommend("u-lost", context)
        assert proxy.requests == 2


def test_sum_rewards_are_not_retried_after_a_lost_reply(strict_server: Served) -> None:
    with Client(strict_server.url, "w-key", trust_env=False) as direct:
        decision = direct.rank(SEED_CONTEXT)
        before = direct.model().n_updates
        with (
            FaultyProxy(strict_server.url) as proxy,
            fast(proxy.url, api_key="w-key", reward_aggregation="sum") as client,
        ):
            proxy.drop = 1
            with pytest.raises(ConnectionFailed):
                client.reward(decision.event_id, 0.5)
            assert proxy.requests == 1
        assert direct.model().n_updates == before + 1
    # Retried, it would have been summed to 1.0.
    assert strict_server.rewards(decision.event_id) == [(0.5, "learned")]


def test_no_server_is_connection_failed_after_the_retries() -> None:
    with (
        fast(f"http://127.0.0.1:{free_port()}", retries=2) as client,
        pytest.raises(ConnectionFailed) as caught,
    ):
        client.health()
    exc = caught.value
    assert (exc.status, exc.code, exc.attempts) == (None, "connection_failed", 3)
    assert "ConnectError" in exc.message and "may have reached" not in exc.message


def test_a_killed_server_restarted_on_the_same_log_serves_the_retry(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "banditrec", "serve", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    env = server_env(tmp_path, seed="0")
    with running_process(command, tmp_path, url, env) as first:
        with Client(url, trust_env=False) as client:
            decision = client.rank(SEED_CONTEXT)
        first.kill()  # SIGKILL: the server is gone, its port refuses connections
    # Retries long enough to span a restart (a warm start takes a few seconds).
    with (
        Client(url, trust_env=False, retries=1000, backoff=0.1, max_backoff=0.2) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        pending = pool.submit(client.reward, decision.event_id, 1.0)
        time.sleep(0.5)
        assert not pending.done()
        with running_process(command, tmp_path, url, env):
            receipt = pending.result(timeout=120)
            assert receipt.learned and not receipt.recovered and receipt.attempts > 1
            assert client.rank(SEED_CONTEXT, event_id=decision.event_id).replayed


# ---------------------------------------------------------------------- async client


def test_async_client_every_call_and_retries(open_server: Served) -> None:
    async def main(proxy: FaultyProxy) -> None:
        async with AsyncClient(proxy.url, backoff=0.01, trust_env=False) as client:
            assert (await client.health()).ok
            assert (await client.model()).policy == DEFAULT_POLICY
            assert len(await client.actions()) >= 4
            assert "banditrec_rewards_total" in await client.metrics()

            proxy.drop = 1
            decision = await client.rank(SEED_CONTEXT)
            assert (decision.attempts, decision.replayed) == (2, True)
            proxy.drop = 1
            receipt = await client.reward(decision.event_id, 1.0)
            assert (receipt.status, receipt.recovered, receipt.attempts) == ("learned", True, 2)

            deferred = await client.rank(SEED_CONTEXT, defer_activation=True)
            with pytest.raises(EventNotActivated):
                await client.reward(deferred.event_id, 1.0)
            assert (await client.activate(deferred.event_id)).activated
            recommendation = await client.recommend("u1", SEED_CONTEXT)
            assert recommendation.recommended_action in recommendation.scores

            await client.add_action("async_action")
            with pytest.raises(ActionExists):
                await client.add_action("async_action")
            assert not {
                a.action_id: a.enabled for a in await client.disable_action("async_action")
            }["async_action"]
            await client.enable_action("async_action")
            assert (await client.snapshot()).log_offset >= 1
            with np.load(io.BytesIO(await client.export_model())) as npz:
                assert npz.files

            with pytest.raises(ValidationFailed) as caught:
                await client.rank({**SEED_CONTEXT, "device": ""})
            assert [d.field for d in caught.value.detail] == ["context.device"]
            proxy.answer = [(503, b"busy", "text/plain")] * 4
            with pytest.raises(Unavailable) as down:
                await client.health()
            assert down.value.attempts == 4

    with FaultyProxy(open_server.url) as proxy:
        asyncio.run(main(proxy))
