"""The lifecycle's HTTP routes in process: every route, its errors, roles, and two apps on
one SQLite log that switch at the same learn event.

Every refused request is checked for its status, its code and message, and that nothing
was logged or switched (the learn stream's length is unchanged).
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from banditrec.api import create_app
from banditrec.api.lifecycle_routes import LIFECYCLE_ROUTES
from banditrec.config import Settings
from conftest import SEED_REQUEST, other_schema_toml
from serving import running_server

RULES: list[dict[str, Any]] = [
    {"if": {"segment": "high"}, "then": "deep_link_to_store"},
    {"else": "show_bonus_offer"},
]
CONTEXT = {k: v for k, v in SEED_REQUEST.items() if k != "user_id"}


@pytest.fixture(autouse=True)
def _scratch_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@contextmanager
def serve(**settings: Any) -> Iterator[TestClient]:
    app = create_app(Settings(seed=settings.pop("seed", 0), **settings))
    with TestClient(app) as client:
        yield client


def learn_events(client: TestClient) -> int:
    return int(client.app.state.engine.store.count("learn_events"))  # type: ignore[attr-defined]


def decisions(client: TestClient) -> int:
    return int(client.app.state.engine.store.count("decisions"))  # type: ignore[attr-defined]


def refused(response: Any, status: int, code: str, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code
    for word in words:
        assert word in body["message"] or any(word in d["message"] for d in body["detail"])
    return body


def model_file(client: TestClient) -> str:
    return base64.b64encode(client.get("/v1/admin/model").content).decode()


# -- status and apprentice mode ---------------------------------------------------------


def test_status_when_nothing_was_switched() -> None:
    with serve() as client:
        body = client.get("/v1/lifecycle").json()
    assert body["serving"] == "own" and body["live_version"] is None
    assert body["candidates"] == [] and body["switches"] == [] and body["guardrail"] is None
    assert body["apprentice"]["estimate"]["n_rounds"] == 0


def test_apprentice_serves_the_rule_then_the_baseline_sent() -> None:
    with serve(apprentice=True, baseline_rules=RULES, apprentice_explore=0.2) as client:
        low = client.post("/v1/rank", json={"context": {**CONTEXT, "segment": "low"}}).json()
        top = low["ranking"][0]
        assert top["action_id"] == "show_bonus_offer" and top["probability"] >= 0.8
        assert low["model_version"].endswith("+apprentice(0.2)")
        served = {r["action_id"]: r["probability"] for r in low["ranking"]}
        assert low["probability"] == served[low["action_id"]]  # the honest probability
        sent = client.post(
            "/v1/rank", json={"context": CONTEXT, "baseline_action": "invite_friend"}
        ).json()
        assert sent["ranking"][0]["action_id"] == "invite_friend"
        assert client.get("/v1/lifecycle").json()["serving"] == "apprentice"


def test_apprentice_refuses_requests_without_a_usable_baseline() -> None:
    with serve(apprentice=True) as client:
        before = decisions(client)
        refused(client.post("/v1/rank", json={"context": CONTEXT}), 422, "no_baseline",
                "send the action your app would take as baseline_action")  # fmt: skip
        refused(
            client.post("/v1/rank", json={"context": CONTEXT, "baseline_action": "nope"}),
            422, "unknown_action", "Unknown baseline_action 'nope'",
        )  # fmt: skip
        excluded = {"context": CONTEXT, "baseline_action": "invite_friend",
                    "excluded_actions": ["invite_friend"]}  # fmt: skip
        refused(client.post("/v1/rank", json=excluded), 422, "no_baseline", "excluded or disabled")
        refused(
            client.post("/v1/rank", json={"context": CONTEXT, "baseline_action": ""}),
            422, "validation_error", "baseline_action",
        )  # fmt: skip
        assert decisions(client) == before


def test_serve_mode_switches_through_the_log() -> None:
    with serve(apprentice=True, baseline_rules=RULES) as client:
        seq = learn_events(client)
        refused(client.post("/v1/admin/lifecycle/serve", json={"mode": "mine"}), 422,
                "validation_error", "mode")  # fmt: skip
        refused(client.post("/v1/admin/lifecycle/serve"), 422, "validation_error")
        assert learn_events(client) == seq
        switch = client.post("/v1/admin/lifecycle/serve", json={"mode": "own", "reason": "go"})
        assert switch.status_code == 200
        assert switch.json()["seq"] == seq + 1 and switch.json()["reason"] == "admin: go"
        rank = client.post("/v1/rank", json={"context": CONTEXT}).json()
        assert "+apprentice" not in rank["model_version"]
        body = client.get("/v1/lifecycle").json()
        assert body["serving"] == "own"
        assert [(s["kind"], s["target"]) for s in body["switches"]] == [("serve_mode", "own")]


# -- candidates and promotion -----------------------------------------------------------


def test_candidates_are_added_listed_refused_and_removed() -> None:
    with serve() as client:
        seq = learn_events(client)
        added = client.post(
            "/v1/admin/candidates",
            json={"name": "narrow", "policy": "linucb", "params": {"alpha": 0.1}},
        )
        assert added.status_code == 201
        (listed,) = client.get("/v1/admin/candidates").json()
        assert listed["name"] == "narrow" and listed["running"] and not listed["passes_gate"]
        refused(client.post("/v1/admin/candidates", json={"name": "narrow", "policy": "softmax"}),
                409, "candidate_exists", "'narrow'")  # fmt: skip
        refused(client.post("/v1/admin/candidates", json={"name": "x", "policy": "nope"}),
                422, "invalid_candidate", "Unknown policy 'nope'")  # fmt: skip
        refused(
            client.post("/v1/admin/candidates",
                        json={"name": "x", "policy": "linucb", "params": {"beta": 1}}),
            422, "invalid_candidate", "beta",
        )  # fmt: skip
        refused(client.post("/v1/admin/candidates", json={"name": "x"}), 422,
                "validation_error", "exactly one of policy or model_base64")  # fmt: skip
        refused(client.post("/v1/admin/candidates",
                            json={"name": "x", "model_base64": "not base64!"}),
                422, "validation_error", "base64")  # fmt: skip
        refused(client.post("/v1/admin/candidates", json={"name": "a/b", "policy": "linucb"}),
                422, "validation_error", "name")  # fmt: skip
        refused(client.post("/v1/admin/candidates/nope/remove"), 404, "not_found", "'nope'")
        assert client.post("/v1/admin/candidates/narrow/remove").json() == []
        assert learn_events(client) == seq


def test_a_candidate_from_a_model_file_runs_in_shadow() -> None:
    with serve() as client:
        data = model_file(client)
        added = client.post("/v1/admin/candidates", json={"name": "file", "model_base64": data})
        assert added.status_code == 201 and added.json()[0]["running"]
        bad = base64.b64encode(b"not a model").decode()
        refused(client.post("/v1/admin/candidates", json={"name": "bad", "model_base64": bad}),
                422, "invalid_model_file", "corrupt")  # fmt: skip


def test_promotion_needs_the_interval_or_force() -> None:
    with serve() as client:
        client.post("/v1/admin/candidates", json={"name": "greedy", "policy": "epsilon_greedy"})
        for _ in range(20):
            event = client.post("/v1/rank", json={"context": CONTEXT}).json()["event_id"]
            client.post(f"/v1/events/{event}/reward", json={"value": 1.0})
        seq = learn_events(client)
        refused(client.post("/v1/admin/candidates/nope/promote", json={}), 404, "not_found")
        refused(client.post("/v1/admin/candidates/greedy/promote", json={}), 409, "not_proven",
                "is not proven better than the live policy")  # fmt: skip
        refused(client.post("/v1/admin/candidates/greedy/promote", json={"force": "yes"}),
                422, "validation_error", "force")  # fmt: skip
        assert learn_events(client) == seq
        forced = client.post("/v1/admin/candidates/greedy/promote", json={"force": True})
        assert forced.status_code == 200, forced.text
        assert forced.json()["kind"] == "promote" and "(forced)" in forced.json()["reason"]
        assert client.get("/v1/model").json()["policy"] == "epsilon_greedy"
        versions = client.get("/v1/admin/models").json()
        assert [(v["id"], v["kind"], v["live"]) for v in versions] == [
            ("v1", "base", False), ("v2", "promotion", True),
        ]  # fmt: skip
        assert client.get("/v1/admin/candidates").json() == []
        status = client.get("/v1/lifecycle").json()
        assert status["live_version"] == "v2"


# -- versions, uploads, rollback --------------------------------------------------------


def test_upload_activate_and_roll_back(tmp_path: Path) -> None:
    with serve() as client:
        data = model_file(client)
        seq = learn_events(client)
        refused(client.post("/v1/admin/models", json={"model_base64": "%%", "label": "x"}),
                422, "validation_error", "base64")  # fmt: skip
        junk = base64.b64encode(b"PK\x03\x04 not really").decode()
        refused(client.post("/v1/admin/models", json={"model_base64": junk, "label": "x"}),
                422, "invalid_model_file")  # fmt: skip
        refused(client.post("/v1/admin/models", json={"model_base64": data}), 422,
                "validation_error", "label")  # fmt: skip
        refused(client.post("/v1/admin/models/v9/activate"), 404, "not_found", "'v9'")
        assert learn_events(client) == seq and client.get("/v1/admin/models").json() == []
        kept = client.post("/v1/admin/models", json={"model_base64": data, "label": "kept"})
        assert kept.status_code == 201 and kept.json()["switch"] is None
        served = client.post(
            "/v1/admin/models", json={"model_base64": data, "label": "served", "activate": True}
        ).json()
        assert served["switch"]["kind"] == "promote"
        live = served["switch"]["target"]
        versions = {v["id"]: v for v in client.get("/v1/admin/models").json()}
        assert versions[live]["live"] and versions[live]["label"] == "served"
        back = client.post("/v1/admin/models/v1/activate").json()
        assert back["kind"] == "rollback" and back["target"] == "v1"
        assert client.get("/v1/lifecycle").json()["live_version"] == "v1"


def test_a_model_of_another_schema_is_refused(tmp_path: Path) -> None:
    schema = other_schema_toml(tmp_path / "other.toml")
    with serve(schema_path=schema) as other:
        data = model_file(other)
    with serve(db_path=tmp_path / "mine.db") as client:
        refused(client.post("/v1/admin/models", json={"model_base64": data, "label": "x"}),
                422, "invalid_model_file", "schema")  # fmt: skip


def test_admin_routes_need_the_admin_role() -> None:
    keys = {"r-key": "reader", "w-key": "writer", "a-key": "admin"}
    with serve(api_keys=keys) as client:
        assert client.get("/v1/lifecycle", headers={"x-api-key": "r-key"}).status_code == 200
        assert client.get("/v1/lifecycle").status_code == 401
        for method, path in (
            ("get", "/v1/admin/candidates"), ("get", "/v1/admin/models"),
            ("post", "/v1/admin/models/v1/activate"),
            ("post", "/v1/admin/candidates/x/remove"),
        ):  # fmt: skip
            answer = getattr(client, method)(path, headers={"x-api-key": "w-key"})
            refused(answer, 403, "insufficient_role")
        ok = client.get("/v1/admin/models", headers={"x-api-key": "a-key"})
        assert ok.status_code == 200


# -- replicas ---------------------------------------------------------------------------


def test_two_apps_on_one_log_switch_at_the_same_event(tmp_path: Path) -> None:
    """A switch made through one app is applied by another app on the same SQLite log (its
    learner follows the log) at the same learn event: same version, same model."""
    settings = {"db_path": tmp_path / "shared.db", "poll_interval_seconds": 0.02}
    with serve(**settings) as a, serve(**settings, seed=1) as b:
        for client in (a, b, a, b):
            event = client.post("/v1/rank", json={"context": CONTEXT}).json()["event_id"]
            client.post(f"/v1/events/{event}/reward", json={"value": 1.0})
        a.post("/v1/admin/candidates", json={"name": "soft", "policy": "softmax"})
        switch = a.post("/v1/admin/candidates/soft/promote", json={"force": True}).json()
        deadline = time.monotonic() + 20.0
        while b.get("/v1/model").json()["log_offset"] < switch["seq"]:
            assert time.monotonic() < deadline, "the other app never reached the switch"
            time.sleep(0.02)
        model_a, model_b = a.get("/v1/model").json(), b.get("/v1/model").json()
        assert model_a["policy"] == model_b["policy"] == "softmax"
        assert model_a["n_updates_by_action"] == model_b["n_updates_by_action"]
        assert b.get("/v1/lifecycle").json()["live_version"] == switch["target"]
        file_a, file_b = (_model_file(c.get("/v1/admin/model").content) for c in (a, b))
        # Each app made its own prior when it started, a second apart at times: when it was
        # made (created_at) may differ; everything else is the same model, bit for bit.
        for metadata in (file_a["__metadata__"], file_b["__metadata__"]):
            del metadata["created_at"]
        assert file_a == file_b


def _model_file(content: bytes) -> dict[str, Any]:
    """A model file's members: the arrays as bytes, the metadata as a dict."""
    with np.load(io.BytesIO(content), allow_pickle=False) as archive:
        members: dict[str, Any] = {k: archive[k].tobytes() for k in archive.files}
        members["__metadata__"] = json.loads(str(archive["__metadata__"]))
    return members


def test_metrics_show_the_lifecycle() -> None:
    with serve(apprentice=True, baseline_rules=RULES, lifecycle_check_every=1) as client:
        for _ in range(30):
            event = client.post("/v1/rank", json={"context": CONTEXT}).json()["event_id"]
            client.post(f"/v1/events/{event}/reward", json={"value": 1.0})
        # The background step scores the rounds; the status computes the estimates.
        deadline = time.monotonic() + 20.0
        while client.get("/v1/lifecycle").json()["apprentice"]["estimate"]["n_rounds"] < 30:
            assert time.monotonic() < deadline, "the lifecycle never scored the rounds"
            time.sleep(0.02)
        text = client.get("/metrics").text
    assert 'banditrec_lifecycle_apprentice{loop="default"} 1.0' in text
    for bound in ("value", "low", "high"):
        assert (
            f'banditrec_lifecycle_lift{{bound="{bound}",loop="default",policy="apprentice"}}'
            in text
        )


# -- real server processes --------------------------------------------------------------


def test_two_workers_switch_together_and_a_restart_keeps_the_switch(tmp_path: Path) -> None:
    """`banditrec serve --workers 2` in apprentice mode: an admin switch to the own choices
    and an upload, made through one worker, are applied by both (each answers from the same
    learn event on); after a crash (SIGKILL) the restarted server, configured as before for
    apprentice mode, serves what the log decided."""
    settings = {"apprentice": "true", "baseline_rules": json.dumps(RULES), "seed": "3"}

    def every_worker(url: str, path: str, pids: int = 2) -> dict[int, dict[str, Any]]:
        seen: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + 60
        while len(seen) < pids:
            assert time.monotonic() < deadline, f"not every worker answered: {seen}"
            model = httpx.get(f"{url}/v1/model", headers={"Connection": "close"}).json()
            seen[model["pid"]] = httpx.get(f"{url}{path}", headers={"Connection": "close"}).json()
        return seen

    with running_server(tmp_path, "--workers", "2", **settings) as server:
        with httpx.Client(base_url=server.url) as http:
            rank = http.post("/v1/rank", json={"context": CONTEXT}).json()
            assert rank["model_version"].endswith("+apprentice(0.1)")
            data = base64.b64encode(http.get("/v1/admin/model").content).decode()
            serve = http.post("/v1/admin/lifecycle/serve", json={"mode": "own"}).json()
            upload = http.post(
                "/v1/admin/models", json={"model_base64": data, "label": "l", "activate": True}
            ).json()
        seq = upload["switch"]["seq"]
        assert seq == serve["seq"] + 1
        deadline = time.monotonic() + 30
        while True:  # each worker applies the entries when its learner reaches them
            states = every_worker(server.url, "/v1/lifecycle")
            if all(s["live_version"] == upload["switch"]["target"] for s in states.values()):
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.05)
        assert {s["serving"] for s in states.values()} == {"own"}
        server.kill()
    with running_server(tmp_path, **settings) as again:
        status = httpx.get(f"{again.url}/v1/lifecycle").json()
        assert status["serving"] == "own" and status["live_version"] == upload["switch"]["target"]
        rank = httpx.post(f"{again.url}/v1/rank", json={"context": CONTEXT}).json()
        assert "+apprentice" not in rank["model_version"]
        kinds = [(s["kind"], s["seq"]) for s in status["switches"]]
        assert kinds == [("serve_mode", seq - 1), ("promote", seq)]


# -- the documented answers -------------------------------------------------------------------


def test_every_route_documents_a_2xx_body_and_its_errors() -> None:
    with serve(api_keys={"a-key": "admin"}) as client:
        spec = client.app.openapi()  # type: ignore[attr-defined]
    documented = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            answers = {s: r for s, r in operation["responses"].items() if s.startswith("2")}
            assert answers, f"{where} documents no successful answer"
            for status, answer in answers.items():
                schemas = [c.get("schema") for c in answer.get("content", {}).values()]
                assert any(schemas), f"{where} {status}: no schema for its body"
            for status, answer in operation["responses"].items():
                if not status.startswith("2"):  # every error: the one error body
                    (content,) = answer["content"].values()
                    assert content["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
            documented += 1
    lifecycle = {f"{r.method} {r.path}" for r in LIFECYCLE_ROUTES}
    listed = {f"{m.upper()} {p}" for p, ops in spec["paths"].items() for m in ops}
    assert lifecycle <= listed and documented >= len(lifecycle)


def test_the_lifecycle_answers_are_what_the_models_say() -> None:
    """Every lifecycle route answers, over a real SQLite file, bodies that validate
    against its response model (which forbids undocumented keys), estimates included."""
    models = {(r.method, r.path): TypeAdapter(r.response_model) for r in LIFECYCLE_ROUTES}
    checked: set[tuple[str, str]] = set()

    def check(response: Any, method: str, route: str) -> Any:
        assert 200 <= response.status_code < 300, response.text
        body = response.json()
        models[(method, route)].validate_python(body)
        checked.add((method, route))
        return body

    settings = {"apprentice": True, "baseline_rules": RULES, "auto_graduate": False}
    with serve(**settings) as client:
        candidates = "/v1/admin/candidates"
        check(client.post(candidates, json={"name": "greedy", "policy": "epsilon_greedy"}),
              "POST", candidates)  # fmt: skip
        for i in range(30):
            context = {**CONTEXT, "segment": "high" if i % 2 else "low"}
            event = client.post("/v1/rank", json={"context": context}).json()["event_id"]
            client.post(f"/v1/events/{event}/reward", json={"value": float(i % 3 == 0)})
        status = check(client.get("/v1/lifecycle"), "GET", "/v1/lifecycle")
        assert status["serving"] == "apprentice" and status["candidates"][0]["running"]
        listed = check(client.get(candidates), "GET", candidates)
        assert listed[0]["name"] == "greedy"
        switch = check(
            client.post("/v1/admin/lifecycle/serve", json={"mode": "own"}),
            "POST", "/v1/admin/lifecycle/serve",
        )  # fmt: skip
        assert switch["kind"] == "serve_mode" and switch["target"] == "own"
        route = "/v1/admin/candidates/{name}/promote"
        promoted = check(client.post("/v1/admin/candidates/greedy/promote", json={"force": True}),
                         "POST", route)  # fmt: skip
        assert promoted["kind"] == "promote"
        for _ in range(10):  # rounds for the guardrail, which follows the version before
            event = client.post("/v1/rank", json={"context": CONTEXT}).json()["event_id"]
            client.post(f"/v1/events/{event}/reward", json={"value": 1.0})
        status = check(client.get("/v1/lifecycle"), "GET", "/v1/lifecycle")
        assert [s["kind"] for s in status["switches"]] == ["serve_mode", "promote"]
        uploaded = check(
            client.post("/v1/admin/models", json={"model_base64": model_file(client),
                                                  "label": "again", "activate": True}),
            "POST", "/v1/admin/models",
        )  # fmt: skip
        assert uploaded["version"]["kind"] == "upload" and uploaded["switch"]["kind"] == "promote"
        versions = check(client.get("/v1/admin/models"), "GET", "/v1/admin/models")
        assert [v["live"] for v in versions].count(True) == 1
        back = check(client.post("/v1/admin/models/v1/activate"),
                     "POST", "/v1/admin/models/{version_id}/activate")  # fmt: skip
        assert back["kind"] == "rollback"
        check(client.post(candidates, json={"name": "soft", "policy": "softmax"}),
              "POST", candidates)  # fmt: skip
        removed = check(client.post("/v1/admin/candidates/soft/remove"),
                        "POST", "/v1/admin/candidates/{name}/remove")  # fmt: skip
        assert removed == []
    assert checked == set(models)  # every lifecycle route was answered and checked
