"""Named loops through the HTTP API: each loop learns from its own log only, keys stay in
their loop, definitions come from the admin API and from a loops file, and survive a
restart (real `banditrec serve` processes, real SQLite files, a real redis-server)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from banditrec import api
from banditrec.api import create_app
from banditrec.client import Client, Forbidden
from banditrec.config import Settings
from banditrec.engine import Engine, prior_model
from banditrec.loops import LoopRecord, LoopSpec, loop_settings
from banditrec.store import EventStore
from banditrec.store.factory import open_store
from redis_server import RedisServer
from serving import running_server
from test_api_loop import CONTEXT
from test_api_startup import start_and_fail

ADMIN = "admin-key-0123456789abcdef"
ONBOARDING_WRITER = "onboarding-writer-0123456789"
ONBOARDING_READER = "onboarding-reader-0123456789"
STORE_WRITER = "store-writer-0123456789abcdef"
SERVER_KEYS = json.dumps({ADMIN: "admin"})

#: Two loops that share nothing: other fields, other actions, other policies.
ONBOARDING: dict[str, Any] = {
    "schema": {
        "actions": ["tour", "video", "skip"],
        "fields": [
            {"name": "age", "kind": "integer", "min": 0, "max": 120},
            {"name": "plan", "kind": "categorical", "values": ["free", "pro"]},
        ],
    },
    "settings": {"policy": "linucb", "alpha": 0.5, "seed": 11},
    "api_keys": {ONBOARDING_WRITER: "writer", ONBOARDING_READER: "reader"},
}
STORE: dict[str, Any] = {
    "schema": {
        "actions": ["discount", "bundle"],
        "fields": [
            {"name": "country", "kind": "categorical", "values": ["US", "DE"]},
            {"name": "spend", "kind": "real", "min": 0, "max": 1000, "transform": "log1p"},
        ],
    },
    "settings": {"policy": "linucb", "ridge": 2.0, "seed": 12},
    "api_keys": {STORE_WRITER: "writer"},
}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def onboarding_context(rng: np.random.Generator) -> dict[str, Any]:
    return {"age": int(rng.integers(0, 121)), "plan": str(rng.choice(["free", "pro"]))}


def store_context(rng: np.random.Generator) -> dict[str, Any]:
    return {"country": str(rng.choice(["US", "DE"])), "spend": float(rng.uniform(0, 1000))}


def write_loops_file(path: Path, name: str, definition: dict[str, Any]) -> Path:
    """A loops file holding `definition` (TOML, its schema in a file of its own)."""
    schema_file = path.parent / f"{name}-schema.json"
    schema_file.write_text(json.dumps(definition["schema"]))
    # TOML's inline tables read as JSON objects; JSON strings are valid TOML strings.
    lines = [f"[loops.{name}]", f"schema_path = {json.dumps(schema_file.name)}"]
    lines.append("[loops." + name + ".settings]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in definition["settings"].items()]
    lines.append("[loops." + name + ".api_keys]")
    lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in definition["api_keys"].items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def drive(http: httpx.Client, prefix: str, key: str, make_context: Any, n: int, seed: int) -> int:
    """`n` decisions on the loop under `prefix`, each rewarded; the number learned."""
    rng = np.random.default_rng(seed)
    learned = 0
    for _ in range(n):
        answer = http.post(f"{prefix}/rank", json={"context": make_context(rng)}, headers=auth(key))
        assert answer.status_code == 200, answer.text
        value = float(rng.random() < 0.3)
        reward = http.post(
            f"{prefix}/events/{answer.json()['event_id']}/reward",
            json={"value": value},
            headers=auth(key),
        )
        assert reward.status_code == 200, reward.text
        learned += reward.json()["learned"]
    return learned


def live_model(http: httpx.Client, prefix: str) -> dict[str, np.ndarray]:
    response = http.get(f"{prefix}/admin/model", headers=auth(ADMIN))
    assert response.status_code == 200, response.text
    with np.load(io.BytesIO(response.content), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def open_loop_log(name: str, definition: dict[str, Any], base: Settings) -> EventStore:
    """The loop's own partition of the event log, as the server opens it."""
    record = LoopRecord.from_spec(name, LoopSpec.model_validate(definition), 0.0)
    settings = loop_settings(base, record)
    return open_store(
        base.store_url,
        db_path=settings.db_path,
        encoding_hash=settings.feature_schema.encoding_hash,
        prefix=settings.store_prefix,
    )


def replay(name: str, definition: dict[str, Any], base: Settings) -> dict[str, np.ndarray]:
    """The loop's prior plus every learn event of its own log partition, from scratch."""
    record = LoopRecord.from_spec(name, LoopSpec.model_validate(definition), 0.0)
    settings = loop_settings(base, record)
    schema = settings.feature_schema
    store = open_loop_log(name, definition, base)
    engine = Engine(prior_model(schema, settings.build_policy()), np.random.default_rng(0), store)
    engine.catch_up()
    state = engine.policy.get_state()
    engine.close()
    store.close()
    return state


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def assert_same_model(live: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    # The live model applied the same learn events one by one as they came; the replay
    # applies them again: the same operations, so they agree far below 1e-9 relative.
    for name in ("A_", "b_"):
        assert live[name].shape == expected[name].shape, name
        assert relative_difference(live[name], expected[name]) < 1e-9, name
    assert live["n_updates_"].tolist() == expected["n_updates_"].tolist()


# -- two loops learn independently, and survive a restart ----------------------------------


def test_two_loops_with_different_schemas_learn_independently(tmp_path: Path) -> None:
    loops_file = write_loops_file(tmp_path / "loops.toml", "store", STORE)
    env = {"api_keys": SERVER_KEYS, "loops_file": str(loops_file), "seed": "3"}
    base = Settings(db_path=tmp_path / "events.db", snapshot_dir=tmp_path / "snapshots")
    with running_server(tmp_path, **env) as server, httpx.Client(base_url=server.url) as http:
        created = http.put("/v1/loops/onboarding", json=ONBOARDING, headers=auth(ADMIN))
        assert created.status_code == 201, created.text
        assert created.json()["actions"] == ["tour", "video", "skip"]
        listed = http.get("/v1/loops", headers=auth(ADMIN)).json()
        assert [loop["name"] for loop in listed] == ["default", "onboarding", "store"]
        assert listed[2]["actions"] == ["discount", "bundle"]  # from the loops file

        store_before = live_model(http, "/v1/loops/store")
        n_onboarding = drive(
            http, "/v1/loops/onboarding", ONBOARDING_WRITER, onboarding_context, 80, 1
        )
        # Rewards in one loop never move another loop's model, nor the default one's.
        assert live_model(http, "/v1/loops/store")["A_"].tobytes() == store_before["A_"].tobytes()
        assert http.get("/v1/model", headers=auth(ADMIN)).json()["n_updates"] == 0
        n_store = drive(http, "/v1/loops/store", STORE_WRITER, store_context, 50, 2)
        assert n_onboarding == 80 and n_store == 50

        onboarding = http.get("/v1/loops/onboarding/model", headers=auth(ONBOARDING_READER))
        assert onboarding.json()["n_updates"] == 80, onboarding.text
        assert onboarding.json()["policy_params"]["alpha"] == 0.5
        store = http.get("/v1/loops/store/model", headers=auth(STORE_WRITER)).json()
        assert store["n_updates"] == 50 and store["policy_params"]["ridge"] == 2.0
        # Each model is a replay of its own partition of the log, and of nothing else.
        live = {name: live_model(http, f"/v1/loops/{name}") for name in ("onboarding", "store")}
        metrics = http.get("/metrics").text
    assert_same_model(live["onboarding"], replay("onboarding", ONBOARDING, base))
    assert_same_model(live["store"], replay("store", STORE, base))
    assert (tmp_path / "loops" / "onboarding" / "events.db").exists()
    assert 'banditrec_reward_joins_total{loop="onboarding"} 80.0' in metrics
    assert 'banditrec_reward_joins_total{loop="store"} 50.0' in metrics
    assert 'banditrec_reward_joins_total{loop="default"} 0.0' in metrics
    assert 'banditrec_model_updates{loop="onboarding"} 80.0' in metrics
    assert 'banditrec_decisions_total{action="bundle",loop="store"}' in metrics

    # A restart keeps both loops (the catalog, the file) and what each one learned.
    with running_server(tmp_path, **env) as server, httpx.Client(base_url=server.url) as http:
        listed = http.get("/v1/loops", headers=auth(ADMIN)).json()
        assert [loop["name"] for loop in listed] == ["default", "onboarding", "store"]
        for name in ("onboarding", "store"):
            assert_same_model(live_model(http, f"/v1/loops/{name}"), live[name])
        # And goes on learning where it stopped.
        assert drive(http, "/v1/loops/store", STORE_WRITER, store_context, 5, 3) == 5
        assert http.get("/v1/loops/store/model", headers=auth(ADMIN)).json()["n_updates"] == 55


def test_a_loop_created_through_one_worker_is_served_by_every_worker(tmp_path: Path) -> None:
    with running_server(tmp_path, "--workers", "2", seed="5") as server:
        created = httpx.put(f"{server.url}/v1/loops/store", json=STORE, timeout=30)
        assert created.status_code == 201, created.text
        pids: set[int] = set()
        for _ in range(400):  # each request on a new connection: any worker may answer
            answer = httpx.get(
                f"{server.url}/v1/loops/store/model",
                headers={"Connection": "close", **auth(STORE_WRITER)},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            pids.add(answer.json()["pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2, "both workers must serve the loop"
        # Rewards posted to either worker are learned by both (each follows the loop's log).
        rng = np.random.default_rng(9)
        for _ in range(40):
            with httpx.Client(base_url=server.url, headers={"Connection": "close"}) as http:
                assert (
                    drive(
                        http,
                        "/v1/loops/store",
                        STORE_WRITER,
                        store_context,
                        1,
                        int(rng.integers(1 << 30)),
                    )
                    == 1
                )
        seen: dict[int, int] = {}
        deadline = time.monotonic() + 60
        while len(seen) < 2 or set(seen.values()) != {40}:
            assert time.monotonic() < deadline, f"the workers did not all learn 40: {seen}"
            model = httpx.get(
                f"{server.url}/v1/loops/store/model",
                headers={"Connection": "close", **auth(STORE_WRITER)},
                timeout=30,
            ).json()
            seen[model["pid"]] = model["n_updates"]
        # Redefined through one worker (a new key), the other reopens it too: soon 40
        # requests in a row, on any worker, take the new key and refuse the old one.
        new_key = "store-new-writer-0123456789"
        redefined = with_changes(STORE, api_keys={new_key: "writer"})
        assert httpx.put(f"{server.url}/v1/loops/store", json=redefined, timeout=30).is_success
        deadline, in_a_row = time.monotonic() + 60, 0
        while in_a_row < 40:
            assert time.monotonic() < deadline, "a worker still has the old definition"
            statuses = [
                httpx.get(
                    f"{server.url}/v1/loops/store/model",
                    headers={"Connection": "close", **auth(key)},
                    timeout=30,
                ).status_code
                for key in (new_key, STORE_WRITER)
            ]
            in_a_row = in_a_row + 1 if statuses == [200, 401] else 0
        model = httpx.get(f"{server.url}/v1/loops/store/model", headers=auth(new_key)).json()
        assert model["n_updates"] == 40  # its log, replayed
        # Deleted through one worker, it stops on the other too (its watcher reads the
        # catalog every second): soon 40 requests in a row, on any worker, find no loop.
        assert httpx.delete(f"{server.url}/v1/loops/store", timeout=30).is_success
        deadline, in_a_row = time.monotonic() + 60, 0
        while in_a_row < 40:
            assert time.monotonic() < deadline, "a worker still serves the deleted loop"
            answer = httpx.get(
                f"{server.url}/v1/loops/store/model",
                headers={"Connection": "close", **auth(STORE_WRITER)},
                timeout=30,
            )
            in_a_row = in_a_row + 1 if answer.status_code in (401, 404) else 0


# -- keys stay in their loop -----------------------------------------------------------------


def test_a_key_scoped_to_one_loop_cannot_touch_another(tmp_path: Path) -> None:
    server_running = running_server(tmp_path, api_keys=SERVER_KEYS, seed="4")
    with server_running as server, httpx.Client(base_url=server.url) as http:
        for name, definition in (("onboarding", ONBOARDING), ("store", STORE)):
            response = http.put(f"/v1/loops/{name}", json=definition, headers=auth(ADMIN))
            assert response.status_code == 201, response.text
        rng = np.random.default_rng(0)
        decision = http.post(
            "/v1/loops/store/rank",
            json={"context": store_context(rng)},
            headers=auth(STORE_WRITER),
        ).json()
        scope_message = (
            "This API key belongs to the loop 'onboarding'; it can call only that loop's "
            "routes (/v1/loops/onboarding/...), not this one of the loop '{}'."
        )
        attempts = [
            ("POST", "/v1/loops/store/rank", {"context": store_context(rng)}, "store"),
            (
                "POST",
                f"/v1/loops/store/events/{decision['event_id']}/reward",
                {"value": 1.0},
                "store",
            ),
            ("POST", "/v1/loops/store/admin/actions", {"action_id": "gift"}, "store"),
            ("GET", "/v1/loops/store", None, "store"),
            ("POST", "/v1/rank", {"context": {"country": "US"}}, "default"),
            ("PUT", "/v1/loops/other", STORE, "default"),
        ]
        for method, path, body, loop in attempts:
            response = http.request(method, path, json=body, headers=auth(ONBOARDING_WRITER))
            assert response.status_code == 403, (path, response.text)
            assert response.json()["error"] == "loop_not_allowed"
            assert response.json()["message"] == scope_message.format(loop)
        # A loop's own reader may read it, not rank in it; its writer may rank.
        reader = http.post(
            "/v1/loops/onboarding/rank",
            json={"context": onboarding_context(rng)},
            headers=auth(ONBOARDING_READER),
        )
        assert reader.status_code == 403
        assert reader.json()["message"] == (
            "This route needs the 'writer' role; the API key has the 'reader' role."
        )
        assert http.get("/v1/loops/onboarding", headers=auth(ONBOARDING_READER)).is_success
        # No key, or an unknown one: 401 on a loop as anywhere.
        assert http.post("/v1/loops/store/rank", json={}).status_code == 401
        unknown = http.post("/v1/loops/nope/rank", json={}, headers=auth("x" * 20))
        assert unknown.status_code == 401 and unknown.json()["error"] == "invalid_api_key"
        # Nothing reached the store loop but its one decision: no reward, no action.
        store = http.get("/v1/loops/store/model", headers=auth(ADMIN)).json()
        assert store["n_updates"] == 0
        actions = http.get("/v1/loops/store/actions", headers=auth(ADMIN)).json()
        assert [a["action_id"] for a in actions] == ["discount", "bundle"]
        assert [loop["name"] for loop in http.get("/v1/loops", headers=auth(ADMIN)).json()] == [
            "default",
            "onboarding",
            "store",
        ]
        # The Python client on a named loop: the same calls, on the loop's routes.
        with Client(server.url, ONBOARDING_WRITER, loop="onboarding") as onboarding:
            decision = onboarding.rank(onboarding_context(rng))
            assert decision.action_id in ("tour", "video", "skip")
            assert onboarding.reward(decision.event_id, 1.0).learned
            assert onboarding.model().n_updates == 1
        with (
            Client(server.url, ONBOARDING_WRITER, loop="store") as elsewhere,
            pytest.raises(Forbidden) as refused,
        ):
            elsewhere.rank(store_context(rng))
        assert refused.value.code == "loop_not_allowed"
    log = open_loop_log("store", STORE, Settings(db_path=tmp_path / "events.db"))
    try:
        assert log.count("decisions") == 1 and log.count("rewards") == 0
    finally:
        log.close()


# -- bad definitions and bad requests: a clear answer, nothing created ------------------------


@pytest.fixture
def client(tmp_path: Path) -> Any:
    settings = Settings(
        db_path=tmp_path / "events.db",
        snapshot_dir=tmp_path / "snapshots",
        model_path=tmp_path / "none.npz",
        seed=1,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def with_changes(definition: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**json.loads(json.dumps(definition)), **changes}


BAD_DEFINITIONS = [
    (
        "onboarding",
        with_changes(ONBOARDING, schema={"actions": [], "fields": []}),
        422,
        "invalid_loop",
        "Loop 'onboarding': the schema is not valid: The schema needs at least one action and "
        "action names must be unique.",
    ),
    (
        "onboarding",
        with_changes(ONBOARDING, settings={"policy": "telepathy"}),
        422,
        "invalid_loop",
        "Loop 'onboarding': the settings are not valid: settings: Unknown policy 'telepathy'; "
        "known: linucb, hybrid_linucb, thompson, epsilon_greedy, softmax, squarecb, uniform, "
        "popular, fixed_rule, auto.",
    ),
    (
        "onboarding",
        with_changes(ONBOARDING, settings={"port": 80}),
        422,
        "invalid_loop",
        "Loop 'onboarding': 'port' cannot be set per loop; a loop sets ",
    ),
    (
        "onboarding",
        with_changes(
            ONBOARDING, settings={"constraints": {"eligibility": {"discount": {"age": 3}}}}
        ),
        422,
        "invalid_loop",
        "Loop 'onboarding': constraints.eligibility.discount: unknown action; known: "
        "['tour', 'video', 'skip'].",
    ),
    (
        "default",
        ONBOARDING,
        422,
        "invalid_loop",
        "The loop name 'default' is the server's own loop (/v1/rank); choose another.",
    ),
    (
        "On-Boarding",
        ONBOARDING,
        422,
        "validation_error",
        "loop: The loop name 'On-Boarding' is not valid: use 1 to 63 lower-case letters, "
        "digits, '-' and '_', starting with a letter or digit.",
    ),
    (
        "onboarding",
        with_changes(ONBOARDING, api_keys={"short key ": "writer"}),
        422,
        "validation_error",
        "api_keys: Value error, API keys must be non-empty strings without surrounding whitespace.",
    ),
]


@pytest.mark.parametrize(("name", "definition", "status", "error", "message"), BAD_DEFINITIONS)
def test_a_bad_definition_is_refused_and_creates_nothing(
    client: TestClient,
    tmp_path: Path,
    name: str,
    definition: dict[str, Any],
    status: int,
    error: str,
    message: str,
) -> None:
    response = client.put(f"/v1/loops/{name}", json=definition)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert response.json()["message"].startswith(message)
    assert [loop["name"] for loop in client.get("/v1/loops").json()] == ["default"]
    assert not (tmp_path / "loops").exists()
    unknown = client.post("/v1/loops/onboarding/rank", json={"context": {"age": 3}})
    assert unknown.status_code == 404


def test_a_loop_keeps_its_schema_and_takes_new_settings_and_keys(client: TestClient) -> None:
    assert client.put("/v1/loops/onboarding", json=ONBOARDING).status_code == 201
    again = client.put("/v1/loops/onboarding", json=ONBOARDING)
    assert again.status_code == 200  # the same definition: nothing changes
    other = client.put("/v1/loops/onboarding", json=STORE)
    assert other.status_code == 409
    assert other.json() == {
        "error": "loop_exists",
        "message": "The loop 'onboarding' exists with another schema; a loop's schema cannot "
        "change (its log is written under it): choose another name, or delete the loop and "
        "remove its files first.",
        "detail": [],
    }
    served = client.get("/v1/loops/onboarding", headers=auth(ONBOARDING_READER)).json()
    assert served["actions"] == ["tour", "video", "skip"]
    assert drive(client, "/v1/loops/onboarding", ONBOARDING_WRITER, onboarding_context, 3, 4) == 3
    # New settings and keys for the same schema: reopened with them, its log replayed.
    new_key = "onboarding-new-writer-0123456789"
    changed = with_changes(
        ONBOARDING, settings={"policy": "linucb", "alpha": 2.0}, api_keys={new_key: "writer"}
    )
    replaced = client.put("/v1/loops/onboarding", json=changed)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["settings"] == {"policy": "linucb", "alpha": 2.0}
    model = client.get("/v1/loops/onboarding/model", headers=auth(new_key)).json()
    assert model["n_updates"] == 3 and model["policy_params"]["alpha"] == 2.0
    old_key = client.get("/v1/loops/onboarding/model", headers=auth(ONBOARDING_WRITER))
    assert old_key.status_code == 401
    assert drive(client, "/v1/loops/onboarding", new_key, onboarding_context, 2, 5) == 2


def test_unknown_loops_and_contexts_of_another_schema(client: TestClient, tmp_path: Path) -> None:
    missing = client.post("/v1/loops/store/rank", json={"context": {"country": "US"}})
    assert missing.status_code == 404
    assert missing.json()["error"] == "loop_not_found"
    assert missing.json()["message"] == (
        "No loop is named 'store'; GET /v1/loops lists the loops, and an admin creates one "
        "with PUT /v1/loops/store."
    )
    assert client.put("/v1/loops/store", json=STORE).status_code == 201
    # The default loop's context is not the store loop's: 422 naming the field.
    wrong = client.post(
        "/v1/loops/store/rank",
        json={"context": {"country": "US", "spend": 5000}},
        headers=auth(STORE_WRITER),
    )
    assert wrong.status_code == 422, wrong.text
    assert "context.spend" in wrong.json()["message"]
    right = client.post(
        "/v1/loops/store/rank",
        json={"context": {"country": "US", "spend": 50}},
        headers=auth(STORE_WRITER),
    )
    assert right.status_code == 200 and right.json()["action_id"] in ("discount", "bundle")
    # /v1/loops/default is the default loop itself.
    default = client.post("/v1/loops/default/rank", json={"context": CONTEXT})
    assert default.status_code == 200, default.text
    assert default.json()["action_id"] in [a["action_id"] for a in client.get("/v1/actions").json()]
    assert client.get("/v1/model").json()["n_updates"] == 0
    log = open_loop_log("store", STORE, Settings(db_path=tmp_path / "events.db"))
    try:
        assert log.count("decisions") == 1
    finally:
        log.close()


def test_deleting_a_loop_stops_it_and_keeps_its_log(client: TestClient, tmp_path: Path) -> None:
    assert client.put("/v1/loops/store", json=STORE).status_code == 201
    assert drive(client, "/v1/loops/store", STORE_WRITER, store_context, 3, 1) == 3
    assert client.delete("/v1/loops/store").json() == {"name": "store", "deleted": True}
    gone = client.post("/v1/loops/store/rank", json={"context": {"country": "US", "spend": 1}})
    assert gone.status_code == 404 and gone.json()["error"] == "loop_not_found"
    assert client.delete("/v1/loops/store").status_code == 404
    assert (tmp_path / "loops" / "store" / "events.db").exists()
    # Its log stayed: another schema cannot take the name; the same one learns on.
    other = client.put("/v1/loops/store", json=ONBOARDING)
    assert other.status_code == 422 and other.json()["error"] == "invalid_loop"
    assert other.json()["message"].startswith(
        "Loop 'store' cannot open: The event log " + str(tmp_path / "loops" / "store")
    )
    assert [loop["name"] for loop in client.get("/v1/loops").json()] == ["default"]
    assert client.put("/v1/loops/store", json=STORE).status_code == 201
    model = client.get("/v1/loops/store/model", headers=auth(STORE_WRITER)).json()
    assert model["n_updates"] == 3


def test_a_bad_loops_file_stops_the_server_with_one_line(tmp_path: Path) -> None:
    loops_file = write_loops_file(
        tmp_path / "loops.toml", "store", with_changes(STORE, settings={"policy": "telepathy"})
    )
    output = start_and_fail(tmp_path, BANDITREC_LOOPS_FILE=str(loops_file))
    assert (
        "Cannot start banditrec (LoopError): Loop 'store': the settings are not valid: "
        "settings: Unknown policy 'telepathy'"
    ) in output


# -- Redis: one server, a key prefix per loop --------------------------------------------------


def test_loops_on_redis_keep_their_logs_under_their_own_prefix(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    settings = Settings(
        store_url=redis_server.url,
        snapshot_dir=tmp_path / "snapshots",
        model_path=tmp_path / "none.npz",
        seed=1,
        api_keys={ADMIN: "admin"},
    )
    with TestClient(create_app(settings)) as http:
        for name, definition in (("onboarding", ONBOARDING), ("store", STORE)):
            created = http.put(f"/v1/loops/{name}", json=definition, headers=auth(ADMIN))
            assert created.status_code == 201, created.text
        drive(http, "/v1/loops/onboarding", ONBOARDING_WRITER, onboarding_context, 30, 1)
        drive(http, "/v1/loops/store", STORE_WRITER, store_context, 20, 2)
        live = {name: live_model(http, f"/v1/loops/{name}") for name in ("onboarding", "store")}
        assert http.get("/v1/model", headers=auth(ADMIN)).json()["n_updates"] == 0
    base = Settings(store_url=redis_server.url)
    assert_same_model(live["onboarding"], replay("onboarding", ONBOARDING, base))
    assert_same_model(live["store"], replay("store", STORE, base))
    client = redis.Redis.from_url(redis_server.url)
    assert client.xlen("banditrec:loop:onboarding:learn") == 30
    assert client.xlen("banditrec:loop:store:learn") == 20
    assert client.exists("banditrec:learn") == 0 or client.xlen("banditrec:learn") == 0
    assert set(map(bytes.decode, client.hkeys("banditrec:loops"))) == {"onboarding", "store"}
    client.close()


# -- the hot path answers loop routes as FastAPI does ----------------------------------------


def test_loop_routes_answer_alike_on_the_hot_path_and_through_fastapi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hot_answers: list[str] = []
    original = api.HotRoutes.__call__

    async def spy(self: api.HotRoutes, scope: Any, *args: Any) -> bool:
        answered = await original(self, scope, *args)
        if answered:
            hot_answers.append(scope["path"])
        return answered

    monkeypatch.setattr(api.HotRoutes, "__call__", spy)
    answers: list[list[tuple[int, Any]]] = []
    for hot in (True, False):
        directory = tmp_path / ("hot" if hot else "fastapi")
        settings = Settings(
            db_path=directory / "events.db",
            snapshot_dir=directory / "snapshots",
            model_path=directory / "none.npz",
            seed=1,
            api_keys={ADMIN: "admin"},
        )
        seen: list[tuple[int, Any]] = []
        with TestClient(create_app(settings, hot_path=hot)) as http:
            assert http.put("/v1/loops/store", json=STORE, headers=auth(ADMIN)).status_code == 201
            rng = np.random.default_rng(7)
            requests: list[tuple[str, Any, str]] = [
                ("/v1/loops/store/rank", {"context": store_context(rng)}, STORE_WRITER),
                ("/v1/loops/store/rank", {"context": {"country": "US"}}, STORE_WRITER),
                ("/v1/loops/store/rank", {"context": {"country": "US", "spend": -1}}, STORE_WRITER),
                ("/v1/loops/nope/rank", {"context": {}}, STORE_WRITER),
                ("/v1/loops/No/rank", {"context": {}}, STORE_WRITER),
                ("/v1/loops/store/rank", {"context": {}}, ONBOARDING_WRITER),
                ("/v1/loops/store/events/nope/reward", {"value": 1.0}, STORE_WRITER),
                (
                    "/v1/loops/store/rank/batch",
                    {"contexts": [store_context(rng)] * 3},
                    STORE_WRITER,
                ),
            ]
            for path, body, key in requests:
                response = http.post(path, json=body, headers=auth(key))
                content = response.json()
                for decision in content.get("decisions", [content]):
                    decision.pop("event_id", None)  # random per decision
                seen.append((response.status_code, content))
            decision = http.post(
                "/v1/loops/store/rank", json={"context": store_context(rng)}, headers=auth(ADMIN)
            ).json()
            reward = http.post(
                f"/v1/loops/store/events/{decision['event_id']}/reward",
                json={"value": 1.0},
                headers=auth(STORE_WRITER),
            )
            seen.append((reward.status_code, {**reward.json(), "event_id": None}))
        answers.append(seen)
    assert answers[0] == answers[1]
    # Every decision and reward request of the served app took the hot path.
    assert len(hot_answers) == 10 and all(p.startswith("/v1/loops/") for p in hot_answers)
    assert [status for status, _ in answers[0]] == [200, 422, 422, 403, 422, 401, 404, 200, 200]


def test_a_loops_batch_has_the_batch_body_limit(client: TestClient) -> None:
    assert client.put("/v1/loops/store", json=STORE).status_code == 201
    rng = np.random.default_rng(3)
    # Unknown context keys are ignored: padding makes the body larger than 64 KiB.
    contexts = [{**store_context(rng), "note": "x" * 80} for _ in range(1000)]
    body = {"contexts": contexts}
    assert len(json.dumps(body)) > 64 * 1024
    answer = client.post("/v1/loops/store/rank/batch", json=body, headers=auth(STORE_WRITER))
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["decisions"]) == 1000
    # The other routes keep the general limit.
    too_large = client.post(
        "/v1/loops/store/rank", json={"context": contexts[0], "pad": "x" * 70_000}
    )
    assert too_large.status_code == 413
    assert too_large.json()["message"] == "The request body is larger than 65536 bytes."


def test_the_loops_file_wins_at_start_up_and_the_log_is_replayed(tmp_path: Path) -> None:
    loops_file = tmp_path / "loops.toml"
    settings = Settings(
        db_path=tmp_path / "events.db",
        snapshot_dir=tmp_path / "snapshots",
        model_path=tmp_path / "none.npz",
        loops_file=loops_file,
    )
    write_loops_file(loops_file, "store", STORE)
    with TestClient(create_app(settings)) as http:
        assert drive(http, "/v1/loops/store", STORE_WRITER, store_context, 4, 1) == 4
        # Redefined through the API: it serves with the new settings...
        through_api = with_changes(STORE, settings={"policy": "linucb", "ridge": 5.0})
        assert http.put("/v1/loops/store", json=through_api).status_code == 200
        model = http.get("/v1/loops/store/model", headers=auth(STORE_WRITER)).json()
        assert model["policy_params"]["ridge"] == 5.0 and model["n_updates"] == 4
    # ...until a start-up reads the file, which the operator has edited meanwhile.
    changed = with_changes(STORE, settings={"policy": "linucb", "ridge": 3.0})
    write_loops_file(loops_file, "store", changed)
    with TestClient(create_app(settings)) as http:
        store = http.get("/v1/loops/store", headers=auth(STORE_WRITER)).json()
        assert store["settings"] == {"policy": "linucb", "ridge": 3.0}
        assert store["n_updates"] == 4  # its log, replayed under the new settings
        model = http.get("/v1/loops/store/model", headers=auth(STORE_WRITER)).json()
        assert model["policy_params"]["ridge"] == 3.0


def test_a_loops_admin_routes_act_on_that_loop_only(client: TestClient) -> None:
    loop_admin_key = "store-admin-0123456789abcdef"
    definition = with_changes(STORE, api_keys={STORE_WRITER: "writer", loop_admin_key: "admin"})
    assert client.put("/v1/loops/store", json=definition).status_code == 201
    candidates, admin = "/v1/loops/store/admin/candidates", auth(loop_admin_key)
    # The loop's writer is not its admin.
    refused = client.get(candidates, headers=auth(STORE_WRITER))
    assert refused.status_code == 403 and refused.json()["error"] == "insufficient_role"
    # GET and POST of one path are two routes: the list, then adding a shadow candidate.
    assert client.get(candidates, headers=admin).json() == []
    added = client.post(candidates, json={"name": "eg", "policy": "epsilon_greedy"}, headers=admin)
    assert added.status_code == 201, added.text
    assert [c["name"] for c in client.get(candidates, headers=admin).json()] == ["eg"]
    assert client.get("/v1/admin/candidates").json() == []  # the default loop has none
    gift = client.post("/v1/loops/store/admin/actions", json={"action_id": "gift"}, headers=admin)
    assert [a["action_id"] for a in gift.json()] == ["discount", "bundle", "gift"]
    assert "gift" not in [a["action_id"] for a in client.get("/v1/actions").json()]


def test_forgetting_a_user_on_the_default_route_forgets_them_in_every_loop(
    client: TestClient, tmp_path: Path
) -> None:
    store_admin = auth("store-admin-0123456789abcdef")
    keys = {STORE_WRITER: "writer", "store-admin-0123456789abcdef": "admin"}
    assert client.put("/v1/loops/store", json=with_changes(STORE, api_keys=keys)).is_success
    rng = np.random.default_rng(5)
    for user_id in ("u1", "u2"):
        body = {"context": store_context(rng), "user_id": user_id}
        assert client.post("/v1/loops/store/rank", json=body, headers=auth(STORE_WRITER)).is_success
        assert client.post("/v1/rank", json={"context": CONTEXT, "user_id": user_id}).is_success
    # A loop's own route forgets in that loop only.
    only_store = client.delete("/v1/loops/store/admin/users/u2", headers=store_admin).json()
    assert only_store == {"user_id": "u2", "live": 1, "archive": 0}
    # The server's route: everywhere, the counts added up.
    everywhere = client.delete("/v1/admin/users/u1").json()
    assert everywhere == {"user_id": "u1", "live": 2, "archive": 0}
    log = open_loop_log(
        "store", with_changes(STORE, api_keys=keys), Settings(db_path=tmp_path / "events.db")
    )
    try:
        assert [record.user_id for record, _ in log.iter_decisions()] == []
    finally:
        log.close()
    assert client.delete("/v1/admin/users/u2").json()["live"] == 1  # the default loop's
