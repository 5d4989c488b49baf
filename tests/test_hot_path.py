"""The hot path: decisions and rewards answered without FastAPI's machinery, identically.

Every request is sent twice, to two apps with the same model and seed: one as served (valid
requests take the hot path) and one with a dependency override, which turns the hot path off,
so FastAPI answers everything. Status, body and the decisions made must be the same.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from banditrec import api
from banditrec.api import create_app
from banditrec.auth import Role, require
from banditrec.config import Settings
from banditrec.store.sqlite import SQLiteEventStore
from conftest import SEED_REQUEST

WRITER_KEY = "w" * 24
READER_KEY = "r" * 24
KEYS = {WRITER_KEY: "writer", READER_KEY: "reader"}


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # `banditrec serve` (run in process by the CLI tests) leaves BANDITREC_* variables set.
    for name in [n for n in os.environ if n.startswith("BANDITREC_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def hot_calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each request to a hot route was answered by the hot path."""
    calls: list[bool] = []
    original = api.HotRoutes.__call__

    async def spy(self: api.HotRoutes, scope: Any, *args: Any) -> bool:
        answered = await original(self, scope, *args)
        if not scope["app"].dependency_overrides:  # the served app, not its FastAPI twin
            calls.append(answered)
        return answered

    monkeypatch.setattr(api.HotRoutes, "__call__", spy)
    return calls


def _client(tmp_path: Path, model: Path, name: str, hot: bool, **settings: Any) -> TestClient:
    app = create_app(
        Settings(
            model_path=model,
            db_path=tmp_path / f"{name}.db",
            snapshot_dir=tmp_path / f"{name}-snapshots",
            seed=0,
            **settings,
        )
    )
    if not hot:  # any override sends every request through FastAPI
        guard = require(Role.writer)
        app.dependency_overrides[guard] = guard
    return TestClient(app)


@pytest.fixture
def pair(tmp_path: Path, model_file: Path) -> Iterator[tuple[TestClient, TestClient]]:
    with (
        _client(tmp_path, model_file, "hot", True) as hot,
        _client(tmp_path, model_file, "slow", False) as slow,
    ):
        yield hot, slow


def _same(pair: tuple[TestClient, TestClient], path: str, **kwargs: Any) -> dict[str, Any]:
    hot, slow = (client.post(path, **kwargs) for client in pair)
    assert hot.status_code == slow.status_code, (hot.text, slow.text)
    assert hot.headers["content-type"] == slow.headers["content-type"]
    body, expected = hot.json(), slow.json()
    for answer in (body, expected):
        answer.pop("event_id", None)  # random
    assert body == expected
    return {"status": hot.status_code, **hot.json()}


def test_decisions_are_the_same_on_both_paths(
    pair: tuple[TestClient, TestClient], hot_calls: list[bool]
) -> None:
    for n in range(20):
        request = {**SEED_REQUEST, "n_sessions": n, "user_id": f"u{n}"}
        assert _same(pair, "/recommend_action", json=request)["status"] == 200
    rank = {"context": SEED_REQUEST, "excluded_actions": ["invite_friend"]}
    assert _same(pair, "/v1/rank", json=rank)["status"] == 200
    assert hot_calls.count(True) == 21


def test_rewards_and_their_errors_are_the_same_on_both_paths(
    pair: tuple[TestClient, TestClient], hot_calls: list[bool]
) -> None:
    event_id = "client-event-1"  # the same id on both servers
    _same(pair, "/v1/rank", json={"context": SEED_REQUEST, "event_id": event_id})
    assert _same(pair, f"/v1/events/{event_id}/reward", json={"value": 1.0})["learned"]
    assert _same(pair, f"/v1/events/{event_id}/reward", json={"value": 1.0})["duplicate"]
    assert _same(pair, "/v1/events/nope/reward", json={"value": 1.0})["status"] == 404
    assert _same(pair, f"/v1/events/{event_id}/reward", json={"value": 7.0})["status"] == 422
    assert hot_calls == [True, True, True, True, False]


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({**SEED_REQUEST, "n_sessions": -1}, None),
        ({**SEED_REQUEST, "n_sessions": "10"}, None),
        ({k: v for k, v in SEED_REQUEST.items() if k != "device"}, None),
        ([SEED_REQUEST], None),
        (None, None),
    ],
)
def test_bad_requests_are_answered_by_fastapi(
    pair: tuple[TestClient, TestClient],
    hot_calls: list[bool],
    body: Any,
    headers: dict[str, str] | None,
) -> None:
    assert _same(pair, "/recommend_action", json=body, headers=headers)["status"] == 422
    assert hot_calls == [False]


@pytest.mark.parametrize(
    "content", [b'{"n_sessions": NaN}', b"{", b"", '{"user_id": "\u00e9"'.encode("latin-1")]
)
def test_unparsable_bodies_are_answered_by_fastapi(
    pair: tuple[TestClient, TestClient], hot_calls: list[bool], content: bytes
) -> None:
    headers = {"content-type": "application/json"}
    # 422, or 400 for bytes that are not UTF-8: FastAPI's answers, whatever they are.
    assert _same(pair, "/recommend_action", content=content, headers=headers)["status"] >= 400
    assert hot_calls == [False]


def test_the_first_content_type_decides_as_in_fastapi(
    pair: tuple[TestClient, TestClient], hot_calls: list[bool]
) -> None:
    # The guard reads the last Content-Type, FastAPI the first: not JSON for FastAPI.
    headers = [("content-type", "text/plain"), ("content-type", "application/json")]
    content = json.dumps(SEED_REQUEST).encode()
    answers = [c.post("/recommend_action", content=content, headers=headers) for c in pair]
    assert answers[0].status_code == answers[1].status_code == 422
    assert answers[0].json() == answers[1].json()
    assert hot_calls == [False]


def test_keys_are_checked_on_the_hot_path(
    tmp_path: Path, model_file: Path, hot_calls: list[bool]
) -> None:
    with (
        _client(tmp_path, model_file, "hot", True, api_keys=KEYS) as hot,
        _client(tmp_path, model_file, "slow", False, api_keys=KEYS) as slow,
    ):
        pair = (hot, slow)
        ok = _same(pair, "/recommend_action", json=SEED_REQUEST, headers={"X-API-Key": WRITER_KEY})
        assert ok["status"] == 200
        bearer = {"Authorization": f"Bearer {WRITER_KEY}"}
        assert _same(pair, "/recommend_action", json=SEED_REQUEST, headers=bearer)["status"] == 200
        for headers, status in [
            ({}, 401),
            ({"X-API-Key": "not-a-key"}, 401),
            ({"X-API-Key": READER_KEY}, 403),
            ({"Authorization": f"Bearer {READER_KEY}", "X-API-Key": WRITER_KEY}, 403),
        ]:
            answer = _same(pair, "/recommend_action", json=SEED_REQUEST, headers=headers)
            assert answer["status"] == status
        assert hot_calls == [True, True, False, False, False, False]


def test_hot_requests_are_timed_under_their_route(pair: tuple[TestClient, TestClient]) -> None:
    hot = pair[0]
    hot.post("/recommend_action", json=SEED_REQUEST)
    metrics = hot.get("/metrics").text
    assert 'route="/recommend_action",status="200"' in metrics


def test_the_checkpointer_copies_the_wal_into_the_database(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = SQLiteEventStore(path, "abc")
    try:
        # Until a checkpoint, the tables live in the WAL and the database file stays small.
        before = path.stat().st_size
        store.start_checkpointer(interval=0.02)
        store.acquire_lease("x", "me", time.time(), 60)
        deadline = time.monotonic() + 10
        while path.stat().st_size <= before:
            assert time.monotonic() < deadline, "no checkpoint in 10 s"
            time.sleep(0.02)
        assert store._checkpointer is not None
        thread = store._checkpointer[1]
    finally:
        store.close()
    assert not thread.is_alive()
