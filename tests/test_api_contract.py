"""The HTTP contract: one error body for every status, documented where it is returned;
OpenAPI security only with keys; /docs offline; unknown keys; body-less POSTs."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from banditrec.api import create_app
from banditrec.errors import error_answer
from banditrec.schemas import ErrorResponse
from banditrec.store import StoreUnavailableError
from test_api_loop import CONTEXT, engine_of, settings

ADMIN_KEY = "admin-key-01234567890"
KEYS = {ADMIN_KEY: "admin", "reader-key-0123456789": "reader"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(tmp_path)), raise_server_exceptions=False) as c:
        yield c


def assert_error(response: Any, status: int, code: str, message: str) -> dict[str, Any]:
    """`response` is `status` with the one error body, its code and (part of) its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    ErrorResponse.model_validate(body)  # exactly the documented shape
    assert set(body) == {"error", "message", "detail"}
    assert body["error"] == code and re.fullmatch(r"[a-z]+(_[a-z]+)*", code)
    assert message in body["message"], body["message"]
    return body


# -- every status, one body ---------------------------------------------------------------


def test_400_for_a_body_that_is_not_json(client: TestClient) -> None:
    response = client.post(
        "/v1/rank", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_json", "The request body is not valid JSON: Expecting")


def test_401_and_403_for_keys(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path, api_keys=KEYS))) as client:
        assert_error(client.get("/v1/model"), 401, "missing_api_key", "needs an API key")
        bad = client.get("/v1/model", headers={"X-API-Key": "nope"})
        assert_error(bad, 401, "invalid_api_key", "The API key is not valid.")
        low = client.post("/v1/admin/snapshot", headers={"X-API-Key": "reader-key-0123456789"})
        assert_error(low, 403, "insufficient_role", "needs the 'admin' role")


def test_404_for_unknown_routes_events_and_actions(client: TestClient) -> None:
    assert_error(client.get("/v2/nothing"), 404, "not_found", "No route matches this path")
    unknown = client.post("/v1/events/missing-1/reward", json={"value": 1.0})
    assert_error(unknown, 404, "event_not_found", "No decision has the event id 'missing-1'.")
    action = client.post("/v1/admin/actions/teleport/disable")
    assert_error(action, 404, "action_not_found", "Unknown action 'teleport'")


def test_405_names_the_allowed_methods(client: TestClient) -> None:
    response = client.delete("/v1/rank")
    assert_error(response, 405, "method_not_allowed", "it accepts POST.")
    assert response.headers["allow"] == "POST"


def test_409_and_410_for_rejected_rewards_and_actions(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path, reward_window_seconds=0.001))) as client:
        exists = client.post("/v1/admin/actions", json={"action_id": "invite_friend"})
        assert_error(exists, 409, "action_exists", "The action 'invite_friend' exists already.")
        deferred = client.post("/v1/rank", json={"context": CONTEXT, "defer_activation": True})
        early = client.post(f"/v1/events/{deferred.json()['event_id']}/reward", json={"value": 1})
        assert_error(early, 409, "event_not_activated", "activate it first")
        event_id = client.post("/v1/rank", json={"context": CONTEXT}).json()["event_id"]
        time.sleep(0.01)  # ten windows
        late = client.post(f"/v1/events/{event_id}/reward", json={"value": 1.0})
        assert_error(late, 410, "reward_window_closed", "has closed")


def test_413_and_415_from_the_guard(client: TestClient) -> None:
    big = client.post("/v1/rank", content=b"[" + b"1," * 40_000 + b"1]", headers=_JSON)
    assert_error(big, 413, "payload_too_large", "larger than 65536 bytes")
    text = client.post("/v1/rank", content=b"context=1", headers={"content-type": "text/plain"})
    assert_error(text, 415, "unsupported_media_type", "Content-Type: application/json")
    bare = client.post("/v1/rank", content=b'{"context": {}}', headers={"content-type": ""})
    assert_error(bare, 415, "unsupported_media_type", "must be JSON")


def test_422_names_each_field(client: TestClient) -> None:
    response = client.post("/v1/rank", json={"context": {**CONTEXT, "n_sessions": -1}})
    body = assert_error(response, 422, "validation_error", "context.n_sessions: Input should be")
    assert body["detail"][0]["field"] == "context.n_sessions"
    unknown = client.post("/v1/rank", json={"context": CONTEXT, "actions": ["teleport"]})
    assert_error(unknown, 422, "unknown_action", "Unknown action 'teleport'")


def test_500_is_json_and_keeps_the_traceback_out(tmp_path: Path) -> None:
    # A real failure: the snapshot directory's parent is a file, so no snapshot can be written.
    (tmp_path / "file").write_text("not a directory")
    app = create_app(settings(tmp_path, snapshot_dir=tmp_path / "file" / "snapshots"))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/v1/admin/snapshot")
    body = assert_error(response, 500, "internal_error", "failed to answer this request")
    assert "Traceback" not in response.text and "file" not in body["message"]


def test_503_when_the_event_log_is_unreachable() -> None:
    status, body, headers = error_answer(StoreUnavailableError("Redis at host:6379 is down."))
    assert (status, body, headers) == (
        503,
        {"error": "store_unavailable", "message": "Redis at host:6379 is down.", "detail": []},
        {},
    )


# -- OpenAPI: every error documented where returned, security only with keys --------------

_JSON = {"content-type": "application/json"}
_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_openapi_documents_the_one_error_body_where_it_is_returned(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in str(spec) and "ValidationError" not in spec["components"]
    statuses = {}
    for path, method, operation in _operations(spec):
        errors = {s: r for s, r in operation["responses"].items() if int(s) >= 400}
        for status, response in errors.items():
            schema = response["content"]["application/json"]["schema"]
            assert schema == _ERROR_REF, (path, method, status)
        statuses[(method, path)] = set(errors)
    assert statuses[("post", "/v1/rank")] == {"400", "413", "415", "422", "500", "503"}
    assert statuses[("post", "/v1/events/{event_id}/reward")] == {
        "400", "404", "409", "410", "413", "415", "422", "500", "503",
    }  # fmt: skip
    assert statuses[("post", "/v1/admin/snapshot")] == {"413", "415", "500"}
    assert statuses[("get", "/health")] == {"500"}
    refs = set(re.findall(r"#/components/schemas/(\w+)", str(spec)))
    assert refs <= set(spec["components"]["schemas"])  # every model it names is in it
    assert {"RankRequest", "RecommendRequest", "RewardRequest", "Context"} <= refs
    reward = spec["paths"]["/v1/events/{event_id}/reward"]["post"]
    assert reward["parameters"][0]["schema"]["pattern"] == "^[A-Za-z0-9._:-]{1,128}$"
    body = reward["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert spec["components"]["schemas"][body.rsplit("/", 1)[1]]["required"] == ["value"]


def test_open_mode_declares_no_security(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "securitySchemes" not in spec["components"]
    assert all("security" not in op for _, _, op in _operations(spec))
    assert all("401" not in op["responses"] for _, _, op in _operations(spec))


def test_with_keys_both_headers_are_declared_on_protected_routes(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path, api_keys=KEYS))) as client:
        spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["BearerAuth"] | {"type": "http", "scheme": "bearer"} == schemes["BearerAuth"]
    assert (
        schemes["ApiKeyHeader"] | {"type": "apiKey", "in": "header", "name": "X-API-Key"}
        == (schemes["ApiKeyHeader"])
    )
    rank = spec["paths"]["/v1/rank"]["post"]
    assert rank["security"] == [{"BearerAuth": []}, {"ApiKeyHeader": []}]
    assert {"401", "403"} <= set(rank["responses"])
    assert "security" not in spec["paths"]["/health"]["get"]


# -- /docs without internet ---------------------------------------------------------------


def test_docs_load_only_local_assets(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html.text)
        assert urls, html.text
        for url in urls:
            assert url.startswith("/"), f"{page} loads {url}"
            assert client.get(url).status_code == 200, url
    assert "swagger-ui-bundle.js" in client.get("/docs").text


# -- unknown keys: ignored in a context, refused in a /v1 envelope ------------------------


def test_unknown_context_keys_are_ignored(client: TestClient) -> None:
    rank = client.post("/v1/rank", json={"context": {**CONTEXT, "app_version": "2.1"}})
    assert rank.status_code == 200
    flat = client.post("/recommend_action", json={**CONTEXT, "user_id": "u1", "locale": "de"})
    assert flat.status_code == 200
    logged = engine_of(client).store.get_decision(rank.json()["event_id"])  # type: ignore[union-attr]
    assert logged is not None and "app_version" not in logged.context


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/rank", {"context": CONTEXT, "exluded_actions": ["invite_friend"]}, "exluded_actions"),
        ("/v1/events/e1/reward", {"value": 1.0, "comment": "great"}, "comment"),
        ("/v1/admin/actions", {"action_id": "x1", "enabled": True}, "enabled"),
    ],
)
def test_unknown_envelope_keys_are_422(
    client: TestClient, path: str, body: dict[str, Any], field: str
) -> None:
    response = client.post(path, json=body)
    detail = assert_error(response, 422, "validation_error", "Extra inputs are not permitted")
    assert detail["detail"][0]["field"] == field
    db = sqlite3.connect(engine_of(client).store.path)  # type: ignore[union-attr]
    counts = [
        db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("decisions", "rewards")
    ]
    assert counts == [0, 0] and len(engine_of(client).actions) == 4


# -- body-less POSTs ----------------------------------------------------------------------


def test_body_less_posts_need_no_content_type(client: TestClient) -> None:
    event_id = client.post("/v1/rank", json={"context": CONTEXT, "defer_activation": True}).json()[
        "event_id"
    ]
    no_type: dict[str, str] = {}
    for path in (
        f"/v1/events/{event_id}/activate",
        "/v1/admin/actions/invite_friend/disable",
        "/v1/admin/actions/invite_friend/enable",
        "/v1/admin/snapshot",
    ):
        response = client.post(path, headers=no_type)
        assert "content-type" not in response.request.headers
        assert response.status_code == 200, (path, response.text)
        # ... and with an empty body of any type, as some clients send.
        typed = client.post(path, content=b"", headers={"content-type": "text/plain"})
        assert typed.status_code == 200, (path, typed.text)
