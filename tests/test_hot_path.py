"""The hot path: decisions and rewards answered without FastAPI's machinery, identically.

Every request is sent twice, to two apps with the same model and seed: one as served (the
decision and reward routes take the hot path, errors included) and one built with
``hot_path=False``, where FastAPI routes everything. Status, headers, body and the
decisions made must be the same.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from banditrec import api
from banditrec.api import create_app
from banditrec.config import Settings
from banditrec.features import load_default_schema
from banditrec.schemas import rank_request_model, recommend_request_model, reward_request_model
from banditrec.store.sqlite import SQLiteEventStore
from conftest import SEED_REQUEST

WRITER_KEY = "w" * 24
READER_KEY = "r" * 24
KEYS = {WRITER_KEY: "writer", READER_KEY: "reader"}
JSON = {"content-type": "application/json"}


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # `banditrec serve` (run in process by the CLI tests) leaves BANDITREC_* variables set.
    for name in [n for n in os.environ if n.startswith("BANDITREC_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def hot_calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each request the served app's guard handed on was answered by the hot path."""
    calls: list[bool] = []
    original = api.HotRoutes.__call__

    async def spy(self: api.HotRoutes, scope: Any, *args: Any) -> bool:
        answered = await original(self, scope, *args)
        if scope["app"].state.hot_path:  # the served app, not its FastAPI twin
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
        ),
        hot_path=hot,
    )
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
    for name in ("content-type", "content-length", "www-authenticate"):
        assert hot.headers.get(name) == slow.headers.get(name), name
    body, expected = hot.json(), slow.json()
    for answer in (body, expected):
        if isinstance(answer, dict) and "error" not in answer:
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
    assert hot_calls == [True] * 21


def test_rewards_and_their_errors_are_the_same_on_both_paths(
    pair: tuple[TestClient, TestClient], hot_calls: list[bool]
) -> None:
    event_id = "client-event-1"  # the same id on both servers
    _same(pair, "/v1/rank", json={"context": SEED_REQUEST, "event_id": event_id})
    assert _same(pair, f"/v1/events/{event_id}/reward", json={"value": 1.0})["learned"]
    assert _same(pair, f"/v1/events/{event_id}/reward", json={"value": 1.0})["duplicate"]
    assert _same(pair, "/v1/events/nope/reward", json={"value": 1.0})["status"] == 404
    assert _same(pair, f"/v1/events/{event_id}/reward", json={"value": 7.0})["status"] == 422
    replay = _same(pair, "/v1/rank", json={"context": SEED_REQUEST, "event_id": event_id})
    assert replay["replayed"] is True and replay["context_mismatch"] is False
    assert hot_calls == [True] * 6


@pytest.mark.parametrize(
    "path",
    [
        "/v1/events/" + "e" * 60_000 + "/reward",  # too long
        "/v1/events/.../reward",  # only dots
        "/v1/events/has%20space/reward",
    ],
)
def test_bad_event_ids_are_the_same_on_both_paths(
    pair: tuple[TestClient, TestClient], hot_calls: list[bool], path: str
) -> None:
    answer = _same(pair, path, json={"value": 1.0})
    assert answer["status"] == 422 and answer["detail"][0]["field"] == "event_id"
    assert hot_calls == [True]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**SEED_REQUEST, "n_sessions": -1}, "n_sessions"),
        ({**SEED_REQUEST, "n_sessions": "10"}, "n_sessions"),
        ({**SEED_REQUEST, "recent_engagement": 10**30}, "recent_engagement"),
        ({k: v for k, v in SEED_REQUEST.items() if k != "device"}, "device"),
        ([SEED_REQUEST], "body"),
        (None, "body"),
    ],
)
def test_bad_requests_are_the_same_on_both_paths(
    pair: tuple[TestClient, TestClient], hot_calls: list[bool], body: Any, field: str
) -> None:
    answer = _same(pair, "/recommend_action", json=body)
    assert answer["status"] == 422 and answer["detail"][0]["field"] == field
    assert hot_calls == [True]


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b'{"n_sessions": NaN}', 422),  # Python's JSON reads it; the model refuses it
        (b"", 422),  # body: Field required
        (b"{", 400),
        ('{"user_id": "\u00e9"}'.encode("latin-1"), 400),  # not UTF-8
    ],
)
def test_unparsable_bodies_are_the_same_on_both_paths(
    pair: tuple[TestClient, TestClient], hot_calls: list[bool], content: bytes, status: int
) -> None:
    assert _same(pair, "/recommend_action", content=content, headers=JSON)["status"] == status
    assert hot_calls == [True]


def test_the_first_content_type_decides_on_both_paths(
    pair: tuple[TestClient, TestClient], hot_calls: list[bool]
) -> None:
    # Starlette reads the first Content-Type header; so does the guard, for both paths.
    headers = [("content-type", "text/plain"), ("content-type", "application/json")]
    content = json.dumps(SEED_REQUEST).encode()
    answers = [c.post("/recommend_action", content=content, headers=headers) for c in pair]
    assert answers[0].status_code == answers[1].status_code == 415
    assert answers[0].json() == answers[1].json()
    assert hot_calls == []  # the guard answered before either path


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
        # The key is checked before the body: no key and a bad body is a 401.
        assert _same(pair, "/recommend_action", json=[1])["status"] == 401
        assert hot_calls == [True] * 7


def test_other_routes_and_methods_go_to_fastapi(
    pair: tuple[TestClient, TestClient], hot_calls: list[bool]
) -> None:
    assert _same(pair, "/v1/events/e1/activate")["status"] == 404
    assert _same(pair, "/v1/nothing-here", json={})["status"] == 404
    assert _same(pair, "/health", json={})["status"] == 405
    assert hot_calls == [False, False, False]


def test_hot_requests_are_timed_under_their_route(pair: tuple[TestClient, TestClient]) -> None:
    hot = pair[0]
    hot.post("/recommend_action", json=SEED_REQUEST)
    hot.post("/v1/events/nope/reward", json={"value": 1.0})
    metrics = hot.get("/metrics").text
    assert 'route="/recommend_action",status="200"' in metrics
    assert 'route="/v1/events/{event_id}/reward",status="404"' in metrics


def test_hot_requests_never_enter_fastapi(
    pair: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The front door answers them: FastAPI's own handling is not called."""
    entered: list[str] = []
    original = FastAPI.__call__

    async def spy(self: FastAPI, scope: Any, *args: Any) -> None:
        if scope["type"] == "http" and self.state.hot_path:
            entered.append(scope["path"])
        await original(self, scope, *args)

    monkeypatch.setattr(FastAPI, "__call__", spy)
    hot = pair[0]
    assert hot.post("/recommend_action", json=SEED_REQUEST).status_code == 200
    assert hot.post("/v1/rank", json={"context": SEED_REQUEST}).status_code == 200
    assert hot.post("/v1/events/nope/reward", json={"value": 1.0}).status_code == 404
    assert hot.post("/recommend_action", json={"user_id": ""}).status_code == 422
    assert entered == []
    assert hot.get("/health").status_code == 200
    assert entered == ["/health"]


def test_a_bug_is_a_500_on_both_paths_and_raised_for_the_log(
    tmp_path: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug in the decision path")

    monkeypatch.setattr("banditrec.decisions.DecisionWork.recommend", broken)
    answers = []
    for hot in (True, False):
        with _client(tmp_path, model_file, f"bug-{hot}", hot) as client:
            # Raised on after the answer, for the server to log: as FastAPI does.
            with pytest.raises(RuntimeError, match="a bug in the decision path"):
                client.post("/recommend_action", json=SEED_REQUEST)
            quiet = TestClient(client.app, raise_server_exceptions=False)
            answer = quiet.post("/recommend_action", json=SEED_REQUEST)
            metrics = client.get("/metrics").text
            assert 'route="/recommend_action",status="500"} 2.0' in metrics.replace(
                'method="POST",', ""
            ), metrics
            answers.append((answer.status_code, answer.headers["content-type"], answer.json()))
    assert answers[0] == answers[1]
    assert answers[0] == (
        500,
        "application/json",
        {
            "error": "internal_error",
            "message": "The server failed to answer this request; the error is logged.",
            "detail": [],
        },
    )


_SCHEMA = load_default_schema()
_MODELS = {
    "recommend": recommend_request_model(_SCHEMA),
    "rank": rank_request_model(_SCHEMA),
    "reward": reward_request_model(0.0, 1.0),
}
# JSON values as text: numbers spelled every way (huge, tiny, exponents, -0, NaN), strings
# (escapes, lone surrogates, empty, too long), and the other JSON types.
_NUMBERS = st.one_of(
    st.integers(-(10**40), 10**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: json.dumps(v)),
    st.sampled_from(["1e400", "-1e400", "3.0", "-0", "0.1", "1E2", "4.9e-324", "1.5e-400"]),
)
_JSON_VALUES = st.one_of(
    _NUMBERS,
    st.text(max_size=140).map(json.dumps),
    st.sampled_from(['"\\ud800"', '"BR"', '"ios"', '"new"', '""', "true", "false", "null"]),
    st.sampled_from(["[]", '["show_bonus_offer"]', "{}", '{"a": 1}']),
)
_KEYS = st.sampled_from(
    [*SEED_REQUEST, "user_id", "context", "actions", "excluded_actions", "event_id",
     "slots", "explain", "defer_activation", "value", "slot", "other"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(sorted(_MODELS)),
    changes=st.lists(st.tuples(_KEYS, _JSON_VALUES), max_size=4),
    nested=st.booleans(),
)
def test_the_one_pass_validation_accepts_only_what_the_reference_accepts(
    kind: str, changes: list[tuple[str, str]], nested: bool
) -> None:
    """`BoundRoute.run` validates with ``model_validate_json`` first and, when it refuses,
    with json.loads + ``model_validate`` (which words the errors). Whatever the first
    accepts, the second must accept too, with the same values: duplicate keys included."""
    model = _MODELS[kind]
    valid: dict[str, Any] = {"value": 1.0} if kind == "reward" else dict(SEED_REQUEST)
    if kind == "recommend":
        valid["user_id"] = "u1"
    fields = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in valid.items()]
    fields += [f"{json.dumps(k)}: {v}" for k, v in changes]  # later keys repeat earlier ones
    body = "{" + ", ".join(fields) + "}"
    if kind == "rank" and nested:
        body = '{"context": ' + body + "}"
    raw = body.encode("utf-8", "surrogatepass")
    try:
        fast = model.model_validate_json(raw)
    except ValidationError:
        return  # refused: the reference path answers, as it always did
    reference = model.model_validate(json.loads(raw))
    assert fast.model_dump() == reference.model_dump()


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
