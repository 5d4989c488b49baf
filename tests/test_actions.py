"""Actions at run time: add, disable, enable without a restart; through the log."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from banditrec.api import create_app
from banditrec.engine import Engine, prior_model
from banditrec.features import FeatureSchema, load_default_schema
from banditrec.snapshot import load_model, save_model
from banditrec.store import LearnKind
from banditrec.store.sqlite import SQLiteEventStore
from test_api_loop import CONTEXT, engine_of, settings

ADMIN = {"admin-key-01234567890": "admin", "writer-key-0123456789": "writer"}
AS_ADMIN = {"Authorization": "Bearer admin-key-01234567890"}


def served_actions(client: TestClient, n: int, **body: Any) -> set[str]:
    return {
        client.post("/v1/rank", json={"context": CONTEXT, **body}).json()["action_id"]
        for _ in range(n)
    }


def test_add_serve_reward_disable_enable(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path))) as client:
        old = client.post("/v1/rank", json={"context": CONTEXT}).json()

        added = client.post("/v1/admin/actions", json={"action_id": "spin_the_wheel"})
        assert added.status_code == 201
        assert added.json()[-1] == {"action_id": "spin_the_wheel", "enabled": True, "n_updates": 0}
        assert client.get("/health").json()["n_actions"] == 5

        new = client.post(
            "/v1/rank", json={"context": CONTEXT, "actions": ["spin_the_wheel"]}
        ).json()
        assert (new["action_id"], new["probability"]) == ("spin_the_wheel", 1.0)
        reward = client.post(f"/v1/events/{new['event_id']}/reward", json={"value": 1.0})
        assert reward.json()["status"] == "learned"
        counts = {a["action_id"]: a["n_updates"] for a in client.get("/v1/actions").json()}
        assert counts["spin_the_wheel"] == 1

        disabled = client.post("/v1/admin/actions/spin_the_wheel/disable")
        assert disabled.status_code == 200 and disabled.json()[-1]["enabled"] is False
        assert "spin_the_wheel" not in served_actions(client, 200)
        ranking = client.post("/v1/rank", json={"context": CONTEXT}).json()["ranking"]
        assert {r["action_id"]: r["probability"] for r in ranking}["spin_the_wheel"] == 0.0
        only_disabled = client.post(
            "/v1/rank", json={"context": CONTEXT, "actions": ["spin_the_wheel"]}
        )
        assert only_disabled.status_code == 422
        assert "No eligible action" in only_disabled.json()["message"]

        client.post("/v1/admin/actions/spin_the_wheel/enable")
        assert "spin_the_wheel" in served_actions(client, 400)

        # A decision logged before the change keeps its own action list and probabilities.
        before = engine_of(client).store.get_decision(old["event_id"])  # type: ignore[union-attr]
        assert before is not None and len(before.actions) == 4
        assert before.probabilities.sum() == 1.0


def test_bad_action_changes_are_refused_and_change_nothing(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path))) as client:
        offset = engine_of(client).applied_offset
        exists = client.post("/v1/admin/actions", json={"action_id": "invite_friend"})
        assert exists.status_code == 409
        assert exists.json()["message"] == "The action 'invite_friend' exists already."
        unknown = client.post("/v1/admin/actions/teleport/disable")
        assert unknown.status_code == 404 and "Unknown action 'teleport'" in unknown.text
        bad_name = client.post("/v1/admin/actions", json={"action_id": "two words"})
        assert bad_name.status_code == 422
        assert bad_name.json()["detail"][0]["field"] == "action_id"
        assert client.post("/v1/admin/actions/invite_friend/explode").status_code == 422
        assert engine_of(client).applied_offset == offset
        assert len(engine_of(client).actions) == 4


def test_action_routes_need_the_admin_role(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path, api_keys=ADMIN))) as client:
        as_writer = {"Authorization": "Bearer writer-key-0123456789"}
        body = {"action_id": "new_one"}
        assert client.post("/v1/admin/actions", json=body, headers=as_writer).status_code == 403
        assert client.post("/v1/admin/actions", json=body, headers=AS_ADMIN).status_code == 201
        assert client.get("/v1/actions", headers=as_writer).status_code == 200


def test_changes_survive_a_restart_from_the_log_and_from_a_snapshot(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path))) as client:
        client.post("/v1/admin/actions", json={"action_id": "spin_the_wheel"})
        client.post("/v1/admin/actions/invite_friend/disable")
    with TestClient(create_app(settings(tmp_path))) as client:  # replayed from the log
        listed = {a["action_id"]: a["enabled"] for a in client.get("/v1/actions").json()}
        assert listed["spin_the_wheel"] is True and listed["invite_friend"] is False
        client.post("/v1/admin/snapshot")
        client.post("/v1/admin/actions", json={"action_id": "after_snapshot"})
    with TestClient(create_app(settings(tmp_path))) as client:  # snapshot + tail
        names = [a["action_id"] for a in client.get("/v1/actions").json()]
        assert names[-2:] == ["spin_the_wheel", "after_snapshot"]
        assert engine_of(client).disabled == frozenset({"invite_friend"})
        assert engine_of(client).policy.n_actions_ == 6


def test_replicas_agree_on_actions_added_concurrently(tmp_path: Path) -> None:
    schema = load_default_schema()

    def open_engine() -> Engine:
        store = SQLiteEventStore(tmp_path / "events.db", schema.encoding_hash)
        return Engine(prior_model(schema), np.random.default_rng(0), store)

    first, second = open_engine(), open_engine()

    async def race() -> None:
        # Both add the same name before seeing each other's event: two add events in the log.
        await first.change_action(LearnKind.add_action, "bonus_x2")
        await second.change_action(LearnKind.add_action, "bonus_x2")
        await second.change_action(LearnKind.add_action, "quiz")

    asyncio.run(race())
    first.catch_up()
    assert first.actions == second.actions == (*schema.actions, "bonus_x2", "quiz")
    assert first.policy.n_actions_ == second.policy.n_actions_ == 6


def test_a_model_file_with_added_actions_loads_and_the_schema_may_grow(tmp_path: Path) -> None:
    schema = load_default_schema()
    engine = Engine(prior_model(schema), np.random.default_rng(0))
    model = engine.snapshot_model()
    model.policy.add_action()
    model.actions = (*schema.actions, "spin_the_wheel")
    save_model(model, tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz", schema)
    assert loaded.actions == model.actions and loaded.policy.n_actions_ == 5

    grown = load_default_schema().to_dict()
    grown["actions"] = [*schema.actions, "spin_the_wheel", "daily_quest"]
    bigger = load_model(tmp_path / "m.npz", FeatureSchema.from_dict(grown))
    assert bigger.actions[-1] == "daily_quest" and bigger.policy.n_actions_ == 6
