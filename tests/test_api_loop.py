"""The v1 loop over HTTP (in process, real SQLite): rank, reward, activate, keys, metrics."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from banditrec.api import create_app
from banditrec.config import Settings
from banditrec.engine import Engine
from conftest import SEED_CONTEXT as CONTEXT

ACTIONS = ["show_bonus_offer", "invite_friend", "suggest_new_app", "deep_link_to_store"]


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model_path": tmp_path / "none.npz",
        "db_path": tmp_path / "events.db",
        "snapshot_dir": tmp_path / "snapshots",
        "seed": 0,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(tmp_path))) as c:
        yield c


def engine_of(client: TestClient) -> Engine:
    engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
    return engine


@contextmanager
def model_changes(client: TestClient, expected: bool) -> Iterator[None]:
    """Assert that the block did (or did not) change the served model."""
    before = engine_of(client).policy.get_state()
    yield
    after = engine_of(client).policy.get_state()
    changed = any(not np.array_equal(before[k], after[k]) for k in before)
    assert changed is expected, "the model changed" if changed else "the model did not change"


def rank(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/rank", json={"context": CONTEXT, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_rank_returns_a_full_ranking_and_logs_the_decision(client: TestClient) -> None:
    body = rank(client, excluded_actions=["invite_friend"])
    ranking = {r["action_id"]: r for r in body["ranking"]}
    assert set(ranking) == set(ACTIONS)
    assert ranking["invite_friend"]["probability"] == 0.0
    assert sum(r["probability"] for r in body["ranking"]) == pytest.approx(1.0)
    assert body["probability"] == ranking[body["action_id"]]["probability"] > 0
    probabilities = [r["probability"] for r in body["ranking"]]
    assert probabilities == sorted(probabilities, reverse=True)
    logged = engine_of(client).store.get_decision(body["event_id"])  # type: ignore[union-attr]
    assert logged is not None and logged.action == body["action_id"]
    assert logged.eligible == ("show_bonus_offer", "suggest_new_app", "deep_link_to_store")


def test_rank_with_a_subset_and_a_repeated_client_event_id(client: TestClient) -> None:
    first = rank(client, actions=["suggest_new_app"], event_id="order-42")
    assert first["action_id"] == "suggest_new_app" and first["probability"] == 1.0
    assert first["replayed"] is False and first["context_mismatch"] is False
    again = client.post("/v1/rank", json={"context": CONTEXT, "event_id": "order-42"}).json()
    # Idempotent: the decision logged the first time, flagged as such.
    assert again == first | {"replayed": True}
    other = {**CONTEXT, "n_sessions": 99}
    mismatch = client.post("/v1/rank", json={"context": other, "event_id": "order-42"}).json()
    assert mismatch == first | {"replayed": True, "context_mismatch": True}
    assert engine_of(client).store.count("decisions") == 1  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"actions": ["teleport"]}, "", "Unknown action 'teleport'"),
        ({"excluded_actions": ACTIONS}, "", "No eligible action"),
        ({"event_id": "has space"}, "event_id", "should match pattern"),
        ({"context": {**CONTEXT, "n_sessions": -3}}, "context.n_sessions", "greater than"),
        ({"context": {}}, "context.country", "Field required"),
        ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
    ],
)
def test_bad_rank_requests_are_422_and_log_nothing(
    client: TestClient, body: dict[str, Any], field: str, message: str
) -> None:
    with model_changes(client, expected=False):
        response = client.post("/v1/rank", json={"context": CONTEXT, **body})
    assert response.status_code == 422
    assert message in response.json()["message"]
    if field:
        assert response.json()["detail"][0]["field"] == field
    assert engine_of(client).store.count("decisions") == 0  # type: ignore[union-attr]


def test_reward_statuses_and_what_they_teach(client: TestClient) -> None:
    event_id = rank(client)["event_id"]
    with model_changes(client, expected=True):
        first = client.post(f"/v1/events/{event_id}/reward", json={"value": 1.0})
    assert first.status_code == 200
    assert first.json() | {"status": "learned", "learned": True, "duplicate": False} == first.json()

    with model_changes(client, expected=False):
        again = client.post(f"/v1/events/{event_id}/reward", json={"value": 0.0})
    assert again.status_code == 200
    assert again.json()["duplicate"] is True and again.json()["learned"] is False

    with model_changes(client, expected=False):
        unknown = client.post("/v1/events/no-such-event/reward", json={"value": 1.0})
    assert unknown.status_code == 404
    assert unknown.json()["message"] == "No decision has the event id 'no-such-event'."

    for bad, reason in [
        (1.5, "less than or equal to 1"),
        (-0.1, "greater than or equal to 0"),
        ("NaN", "finite number"),
        ("1", "valid number"),
    ]:
        content = f'{{"value": {bad}}}' if bad != "1" else '{"value": "1"}'
        with model_changes(client, expected=False):
            response = client.post(
                f"/v1/events/{event_id}/reward",
                content=content,
                headers={"content-type": "application/json"},
            )
        assert response.status_code == 422, bad
        assert response.json()["detail"][0]["field"] == "value"
        assert reason in response.json()["message"]

    db = sqlite3.connect(engine_of(client).store.path)  # type: ignore[union-attr]
    outcomes = [row[0] for row in db.execute("SELECT outcome FROM rewards ORDER BY seq")]
    assert outcomes == ["learned", "duplicate", "unknown"]  # 422s are not recorded


def test_a_late_reward_is_410_recorded_and_not_learned(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path, reward_window_seconds=0.001))) as client:
        event_id = rank(client)["event_id"]
        time.sleep(0.01)
        with model_changes(client, expected=False):
            response = client.post(f"/v1/events/{event_id}/reward", json={"value": 1.0})
        assert response.status_code == 410
        assert "reward window" in response.json()["message"]
        assert engine_of(client).store.count("rewards") == 1  # type: ignore[union-attr]


def test_sum_aggregation_learns_the_clipped_total(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path, reward_aggregation="sum"))) as client:
        event_id = rank(client)["event_id"]
        client.post(f"/v1/events/{event_id}/reward", json={"value": 0.5})
        with model_changes(client, expected=True):
            second = client.post(f"/v1/events/{event_id}/reward", json={"value": 0.75}).json()
        assert (second["status"], second["total"], second["learned"]) == ("summed", 1.0, True)
        policy = engine_of(client).policy
        assert policy.n_updates_.sum() == 1  # one observation, its reward corrected
        x = engine_of(client).store.get_decision(event_id).x  # type: ignore[union-attr]
        action = ACTIONS.index(rank(client, event_id=event_id)["action_id"])
        np.testing.assert_allclose(policy.get_state()["b_"][action], 1.0 * x)


def test_deferred_events_are_learned_only_after_activation(client: TestClient) -> None:
    body = rank(client, defer_activation=True)
    assert body["deferred"] is True
    event_id = body["event_id"]
    with model_changes(client, expected=False):
        early = client.post(f"/v1/events/{event_id}/reward", json={"value": 1.0})
    assert early.status_code == 409 and "activate it first" in early.json()["message"]
    assert client.post(f"/v1/events/{event_id}/activate").json() == {
        "event_id": event_id,
        "activated": True,
    }
    assert client.post(f"/v1/events/{event_id}/activate").json()["activated"] is False
    assert client.post("/v1/events/unknown/activate").status_code == 404
    with model_changes(client, expected=True):
        assert client.post(f"/v1/events/{event_id}/reward", json={"value": 1.0}).is_success


def test_model_route_reports_version_updates_offset_and_schema(client: TestClient) -> None:
    event_id = rank(client)["event_id"]
    client.post(f"/v1/events/{event_id}/reward", json={"value": 1.0})
    body = client.get("/v1/model").json()
    assert body["n_updates"] == 1 and body["log_offset"] == 1
    assert body["version"].endswith("@1")
    assert body["schema_hash"] == engine_of(client).schema.hash
    # The policy served from the prior (the default) with its own parameters, as configured.
    policy = engine_of(client).policy
    assert body["policy"] == policy.name and body["policy_params"] == policy.get_params()


KEYS = {
    "reader-key-0123456789": "reader",
    "writer-key-0123456789": "writer",
    "admin-key-01234567890": "admin",
}


@pytest.mark.parametrize(
    ("method", "path", "needs"),
    [
        ("post", "/v1/rank", "writer"),
        ("post", "/recommend_action", "writer"),
        ("post", "/v1/events/e/reward", "writer"),
        ("post", "/v1/events/e/activate", "writer"),
        ("get", "/v1/model", "reader"),
        ("get", "/v1/admin/model", "admin"),
        ("post", "/v1/admin/snapshot", "admin"),
    ],
)
def test_api_keys_and_roles(tmp_path: Path, method: str, path: str, needs: str) -> None:
    order = ["reader", "writer", "admin"]
    with TestClient(create_app(settings(tmp_path, api_keys=KEYS))) as client:
        missing = client.request(method, path, json={})
        assert missing.status_code == 401
        assert "needs an API key" in missing.json()["message"]
        wrong = client.request(method, path, json={}, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401 and wrong.json()["message"] == "The API key is not valid."
        for key, role in KEYS.items():
            response = client.request(
                method, path, json={}, headers={"Authorization": f"Bearer {key}"}
            )
            if order.index(role) < order.index(needs):
                assert response.status_code == 403
                assert f"needs the '{needs}' role" in response.json()["message"]
            else:
                assert response.status_code not in (401, 403)
        assert client.get("/health").status_code == 200  # public
        assert client.get("/metrics").status_code == 200  # public


def test_metrics_count_decisions_rewards_and_latency(client: TestClient) -> None:
    event_id = rank(client)["event_id"]
    client.post(f"/v1/events/{event_id}/reward", json={"value": 1.0})
    client.post(f"/v1/events/{event_id}/reward", json={"value": 1.0})
    client.post("/v1/events/nope/reward", json={"value": 1.0})
    text = client.get("/metrics").text
    action = engine_of(client).store.get_decision(event_id).action  # type: ignore[union-attr]
    assert f'banditrec_decisions_total{{action="{action}",loop="default"}} 1.0' in text
    assert (
        f'banditrec_rewards_total{{action="{action}",loop="default",outcome="learned"}} 1.0' in text
    )
    assert (
        f'banditrec_rewards_total{{action="{action}",loop="default",outcome="duplicate"}} 1.0'
        in text
    )
    assert 'banditrec_rewards_total{action="",loop="default",outcome="unknown"} 1.0' in text
    assert 'banditrec_reward_joins_total{loop="default"} 2.0' in text
    assert 'route="/v1/rank"' in text and "banditrec_http_request_duration_seconds" in text
    assert 'banditrec_model_updates{loop="default"} 1.0' in text


# -- event ids: the same rules on rank and reward -------------------------------------------


def _rows(client: TestClient, table: str) -> int:
    db = sqlite3.connect(engine_of(client).store.path)  # type: ignore[union-attr]
    try:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        db.close()


@pytest.mark.parametrize(
    ("event_id", "message"),
    [
        ("e" * 60_000, "String should match pattern '^[A-Za-z0-9._:-]{1,128}$'"),
        ("e" * 129, "String should match pattern"),
        ("has space", "String should match pattern"),
        ("...", "an id made only of dots cannot be used in a URL"),
    ],
)
def test_a_bad_reward_event_id_is_422_and_records_nothing(
    client: TestClient, event_id: str, message: str
) -> None:
    rank(client)
    with model_changes(client, expected=False):
        response = client.post(f"/v1/events/{event_id}/reward", json={"value": 1.0})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "validation_error" and body["detail"][0]["field"] == "event_id"
    assert body["message"].startswith("event_id: ") and message in body["message"]
    assert event_id not in response.text or len(event_id) < 10  # a long id is not echoed
    assert _rows(client, "rewards") == 0 and _rows(client, "learn_events") == 0
    activate = client.post(f"/v1/events/{event_id}/activate")
    assert activate.status_code == 422 and message in activate.json()["message"]


@pytest.mark.parametrize("event_id", [".", "..", "...", "e" * 129])
def test_rank_refuses_ids_that_cannot_be_rewarded(client: TestClient, event_id: str) -> None:
    response = client.post("/v1/rank", json={"context": CONTEXT, "event_id": event_id})
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "event_id"
    assert _rows(client, "decisions") == 0


def test_ids_with_dots_and_letters_are_fine(client: TestClient) -> None:
    event_id = rank(client, event_id="v1.2..order")["event_id"]
    reward = client.post(f"/v1/events/{event_id}/reward", json={"value": 1.0})
    assert reward.status_code == 200 and reward.json()["learned"] is True
