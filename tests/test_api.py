"""The HTTP service in process: the seed's contract, determinism, and every kind of bad input.

Every rejected request is checked three ways: the status code, a message that names the field
and the reason, and that nothing was learned (the policy's arrays, its update counts, its
scores and the model file on disk are all exactly as before).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from banditrec.api import create_app
from banditrec.config import Settings
from banditrec.features import OTHER, load_default_schema
from banditrec.sim import AppSimulator
from banditrec.snapshot import ModelFileError, read_metadata
from conftest import ACTIONS, SEED_REQUEST, other_schema_toml

EPSILON = 0.01  # the default ε-greedy floor of a model trained with `LinUCB()`
LIMIT = 64 * 1024
JSON = {"content-type": "application/json"}


@dataclass
class Served:
    client: TestClient
    app: FastAPI
    model_path: Path


@pytest.fixture(autouse=True)
def _scratch_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in tmp_path, so any path the app resolves against the cwd stays in the sandbox."""
    monkeypatch.chdir(tmp_path)


@contextmanager
def serve(model_path: Path, **settings: Any) -> Iterator[Served]:
    app = create_app(Settings(model_path=model_path, seed=settings.pop("seed", 0), **settings))
    with TestClient(app) as client:  # the context manager runs the lifespan (loads the model)
        yield Served(client, app, model_path)


@pytest.fixture
def served(model_file: Path) -> Iterator[Served]:
    with serve(model_file) as s:
        yield s


@contextmanager
def learns_nothing(s: Served) -> Iterator[None]:
    """Assert the block leaves the served model and the model file exactly as they were."""
    engine = s.app.state.engine
    policy = engine.policy
    state = policy.get_state()
    n_updates = policy.n_updates_.copy()
    x = engine.schema.vectorize(SEED_REQUEST)
    scores = policy.score(x).score.copy()
    version = engine.model.version
    on_disk = s.model_path.read_bytes() if s.model_path.exists() else None
    yield
    assert s.app.state.engine is engine and engine.policy is policy
    after = policy.get_state()
    assert after.keys() == state.keys()
    for name, value in state.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    np.testing.assert_array_equal(policy.n_updates_, n_updates)
    np.testing.assert_array_equal(policy.score(x).score, scores)
    assert engine.model.version == version
    assert (s.model_path.read_bytes() if s.model_path.exists() else None) == on_disk


def post_raw(s: Served, text: str | bytes, headers: dict[str, str] | None = None) -> Any:
    return s.client.post(
        "/recommend_action", content=text, headers=JSON if headers is None else headers
    )


def assert_validation_error(response: Any, field: str, reason: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "validation_error"
    fields = [d["field"] for d in body["detail"]]
    assert field in fields, body
    message = next(d["message"] for d in body["detail"] if d["field"] == field)
    assert field in message and reason.lower() in message.lower(), message
    assert field in body["message"] and reason.lower() in body["message"].lower()


# -- the seed's contract --------------------------------------------------------------------


def test_health_reports_the_loaded_model(served: Served) -> None:
    response = served.client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body | {"status": "ok", "model_loaded": True, "n_actions": 4, "alpha": 1.0} == body
    assert body["model_version"].startswith(read_metadata(served.model_path)["version"])
    assert body["schema_hash"] == load_default_schema().hash


def test_recommend_action_answers_the_seed_request_with_its_contract(served: Served) -> None:
    response = served.client.post("/recommend_action", json=SEED_REQUEST)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {
        "user_id", "recommended_action", "ucb_score", "scores", "alpha",
        "event_id", "probability", "probabilities", "model_version",
    }  # fmt: skip
    assert body["user_id"] == "u123"
    assert body["recommended_action"] in ACTIONS
    assert list(body["scores"]) == list(ACTIONS)
    assert body["ucb_score"] == body["scores"][body["recommended_action"]]
    assert body["alpha"] == 1.0
    assert re.fullmatch(r"[0-9a-f]{32}", body["event_id"])
    probabilities = body["probabilities"]
    assert list(probabilities) == list(ACTIONS)
    assert body["probability"] == probabilities[body["recommended_action"]]
    assert 0 < body["probability"] <= 1
    assert math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-12)
    assert min(probabilities.values()) >= EPSILON / 4 - 1e-12
    assert body["model_version"] == served.client.get("/health").json()["model_version"]

    # The answer is the loaded model's: its scores for this context, and its ε-greedy
    # distribution over them (best action 1 - ε + ε/4, every other ε/4).
    policy = served.app.state.engine.policy
    x = load_default_schema().vectorize(SEED_REQUEST)
    expected = policy.score(x).score
    # Served by the fused ε-greedy kernel, `score` by the split one: equal to rounding
    # (fast-math; see the hot-path tests in tests/test_policies.py), not bit for bit.
    np.testing.assert_allclose(list(body["scores"].values()), expected, rtol=1e-13, atol=1e-15)
    best = ACTIONS[int(np.argmax(expected))]
    assert probabilities[best] == pytest.approx(1 - EPSILON + EPSILON / 4)

    again = served.client.post("/recommend_action", json=SEED_REQUEST).json()
    assert again["event_id"] != body["event_id"]


def test_without_a_model_file_the_server_starts_from_the_prior(tmp_path: Path) -> None:
    absent = tmp_path / "absent.npz"
    with serve(absent) as s:
        health = s.client.get("/health")
        assert health.status_code == 200
        body = health.json()
        assert body | {"status": "ok", "model_loaded": False, "n_actions": 4, "alpha": 1.0} == body
        response = s.client.post("/recommend_action", json=SEED_REQUEST)
        assert response.status_code == 200, response.text
        decision = response.json()
        # Nothing learned yet: every action ties, so the tie is split evenly and said so.
        assert len(set(decision["scores"].values())) == 1
        assert decision["probabilities"] == dict.fromkeys(ACTIONS, 0.25)
        assert decision["probability"] == 0.25
    assert not absent.exists()  # serving never writes a model file


def test_openapi_docs_list_both_routes(served: Served) -> None:
    docs = served.client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    spec = served.client.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert "get" in paths["/health"]
    assert "post" in paths["/recommend_action"]
    schemas = spec.json()["components"]["schemas"]
    assert set(schemas["RecommendRequest"]["required"]) == set(SEED_REQUEST)


# -- determinism ----------------------------------------------------------------------------


def _contexts(n: int) -> list[dict[str, Any]]:
    columns = AppSimulator().sample_contexts(n, np.random.default_rng(7))
    return [{k: v[i].item() for k, v in columns.items()} for i in range(n)]


def _served_actions(model_path: Path, seed: int, contexts: list[dict[str, Any]]) -> list[str]:
    with serve(model_path, seed=seed) as s:
        responses = [s.client.post("/recommend_action", json=c) for c in contexts]
    assert all(r.status_code == 200 for r in responses)
    return [r.json()["recommended_action"] for r in responses]


def test_same_seed_gives_the_same_sequence_of_actions(model_file: Path) -> None:
    contexts = _contexts(200)
    first = _served_actions(model_file, 0, contexts)
    assert _served_actions(model_file, 0, contexts) == first
    # The seed matters: with ε = 0.01 about 1 decision in 70 differs between two seeds.
    assert _served_actions(model_file, 1, contexts) != first
    assert len(set(first)) > 1


# -- bad input: 422 naming the field and the reason, nothing learned -------------------------


@pytest.mark.parametrize("field", list(SEED_REQUEST))
def test_missing_field_is_422_naming_it(served: Served, field: str) -> None:
    body = {k: v for k, v in SEED_REQUEST.items() if k != field}
    with learns_nothing(served):
        response = served.client.post("/recommend_action", json=body)
    assert_validation_error(response, field, "Field required")


BAD_VALUES = [
    # wrong type
    ("n_sessions", "10", "valid integer"),
    ("n_sessions", True, "valid integer"),
    ("recent_engagement", False, "valid integer"),
    ("days_since_install", 5.5, "valid integer"),
    ("n_sessions", None, "valid integer"),
    ("avg_session_length", "180.0", "valid number"),
    ("avg_session_length", True, "valid number"),
    ("country", 5, "valid string"),
    ("device", ["ios"], "valid string"),
    ("user_id", 123, "valid string"),
    ("segment", {"name": "high"}, "valid string"),
    # negative counts and lengths
    ("n_sessions", -1, "greater than or equal to 0"),
    ("days_since_install", -5, "greater than or equal to 0"),
    ("recent_engagement", -1, "greater than or equal to 0"),
    ("avg_session_length", -0.5, "greater than or equal to 0"),
    # beyond the schema's sane bounds
    ("n_sessions", 10**9, "less than or equal to 1000000"),
    ("recent_engagement", 10**30, "less than or equal to 1000000"),
    ("days_since_install", 36_501, "less than or equal to 36500"),
    ("avg_session_length", 1e9, "less than or equal to 86400"),
    # empty and oversized strings
    ("user_id", "", "at least 1 character"),
    ("country", "", "at least 1 character"),
    ("device", "", "at least 1 character"),
    ("segment", "", "at least 1 character"),
    ("user_id", "u" * 129, "at most 128 characters"),
]


@pytest.mark.parametrize(("field", "value", "reason"), BAD_VALUES)
def test_bad_value_is_422_naming_field_and_reason(
    served: Served, field: str, value: Any, reason: str
) -> None:
    with learns_nothing(served):
        response = served.client.post("/recommend_action", json={**SEED_REQUEST, field: value})
    assert_validation_error(response, field, reason)


@pytest.mark.parametrize(
    ("field", "literal", "reason"),
    [
        ("avg_session_length", "NaN", "finite number"),
        ("avg_session_length", "Infinity", "finite number"),
        ("avg_session_length", "-Infinity", "finite number"),
        ("n_sessions", "NaN", "valid integer"),
        ("recent_engagement", "Infinity", "valid integer"),
    ],
)
def test_nan_and_infinity_literals_are_422(
    served: Served, field: str, literal: str, reason: str
) -> None:
    # Raw JSON text: Python's json module accepts these non-standard literals, so the
    # request model itself has to refuse them.
    fields = [f'"{k}": {literal if k == field else json.dumps(v)}' for k, v in SEED_REQUEST.items()]
    text = "{" + ", ".join(fields) + "}"
    assert literal in text
    with learns_nothing(served):
        response = post_raw(served, text)
    assert_validation_error(response, field, reason)


def test_every_bad_field_is_reported_at_once(served: Served) -> None:
    body = {**SEED_REQUEST, "n_sessions": -1, "country": ""}
    del body["device"]
    with learns_nothing(served):
        response = served.client.post("/recommend_action", json=body)
    assert response.status_code == 422
    assert {d["field"] for d in response.json()["detail"]} == {"n_sessions", "country", "device"}


COUNT_BOUNDS = {
    "n_sessions": 1_000_000,
    "days_since_install": 36_500,
    "recent_engagement": 1_000_000,
}


def test_any_count_outside_its_range_is_422(served: Served) -> None:
    @hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        field=st.sampled_from(sorted(COUNT_BOUNDS)),
        data=st.data(),
    )
    def check(field: str, data: st.DataObject) -> None:
        high = COUNT_BOUNDS[field]
        value = data.draw(st.integers(max_value=-1) | st.integers(min_value=high + 1))
        with learns_nothing(served):
            response = served.client.post("/recommend_action", json={**SEED_REQUEST, field: value})
        reason = "greater than or equal to 0" if value < 0 else f"less than or equal to {high}"
        assert_validation_error(response, field, reason)

    check()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "Field required"),
        ("[1, 2]", "valid dictionary"),
        ("null", "valid dictionary"),
    ],
)
def test_a_body_that_is_not_an_object_is_422_naming_body(
    served: Served, text: str, reason: str
) -> None:
    with learns_nothing(served):
        response = post_raw(served, text)
    assert_validation_error(response, "body", reason)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"{bad json", "Expecting property name enclosed in double quotes at line 1, column 2"),
        (
            b'{"user_id": "u123", "country": "AT",',
            "Expecting property name enclosed in double quotes at line 1, column 37",
        ),
        ('{"user_id": "\u00e9"}'.encode("latin-1"), "it is not UTF-8 text"),
    ],
)
def test_a_body_that_is_not_json_is_400(served: Served, text: bytes, reason: str) -> None:
    with learns_nothing(served):
        response = post_raw(served, text)
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_json",
        "message": f"The request body is not valid JSON: {reason}.",
        "detail": [],
    }


# -- unknown categories: the explicit "other" bucket -------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"), [("country", "ZZ"), ("device", "smart-fridge"), ("segment", "whale")]
)
def test_unknown_category_is_served_from_the_other_bucket(
    served: Served, field: str, value: str
) -> None:
    body = {**SEED_REQUEST, field: value}
    with learns_nothing(served):
        response = served.client.post("/recommend_action", json=body)
    assert response.status_code == 200, response.text
    schema = served.app.state.engine.schema
    names = schema.feature_names()
    x = schema.vectorize(body)
    assert x[names.index(f"{field}={OTHER}")] == 1.0
    assert sum(x[i] for i, n in enumerate(names) if n.startswith(f"{field}=")) == 1.0
    # ... and the served scores are the model's scores for that vector.
    served_scores = np.array(list(response.json()["scores"].values()))
    model_scores = served.app.state.engine.policy.score(x).score  # split kernel: to rounding
    np.testing.assert_allclose(served_scores, model_scores, rtol=1e-13, atol=1e-15)


def test_unknown_category_is_422_when_the_schema_says_reject(tmp_path: Path) -> None:
    schema_path = other_schema_toml(tmp_path / "reject.toml", country={"on_unknown": "reject"})
    with serve(tmp_path / "absent.npz", schema_path=schema_path) as s, learns_nothing(s):
        response = s.client.post("/recommend_action", json={**SEED_REQUEST, "country": "ZZ"})
        assert response.status_code == 422, response.text
        assert "country" in response.json()["message"]
        assert "unknown value 'ZZ'" in response.json()["message"]
        ok = s.client.post("/recommend_action", json=SEED_REQUEST)
        assert ok.status_code == 200


# -- body size and content type ---------------------------------------------------------------


def _padded(size: int) -> bytes:
    """The seed request padded (with an ignored extra field) to exactly `size` bytes."""
    empty = json.dumps({**SEED_REQUEST, "pad": ""}).encode()
    text = json.dumps({**SEED_REQUEST, "pad": "x" * (size - len(empty))}).encode()
    assert len(text) == size
    return text


def test_body_at_the_limit_is_accepted(served: Served) -> None:
    response = post_raw(served, _padded(LIMIT))
    assert response.status_code == 200, response.text


def test_body_over_64_kib_with_content_length_is_413(served: Served) -> None:
    with learns_nothing(served):
        response = post_raw(served, _padded(LIMIT + 1))
    assert response.request.headers["content-length"] == str(LIMIT + 1)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert "65536 bytes" in response.json()["message"]


def _chunks(data: bytes, size: int = 4096) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_small_streamed_body_is_served(served: Served) -> None:
    response = post_raw(served, _chunks(json.dumps(SEED_REQUEST).encode(), 16))
    assert "content-length" not in response.request.headers
    assert response.status_code == 200, response.text


def test_body_over_64_kib_streamed_without_content_length_is_413(served: Served) -> None:
    with learns_nothing(served):
        response = post_raw(served, _chunks(_padded(4 * LIMIT)))
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "payload_too_large"


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},
        {"content-type": "application/xml"},
        {},
    ],
    ids=["text", "form", "xml", "none"],
)
def test_non_json_content_type_is_415(served: Served, headers: dict[str, str]) -> None:
    with learns_nothing(served):
        response = post_raw(served, json.dumps(SEED_REQUEST), headers=headers)
    assert response.status_code == 415
    body = response.json()
    assert body["error"] == "unsupported_media_type"
    assert "Content-Type: application/json" in body["message"]


def test_json_with_charset_is_accepted(served: Served) -> None:
    headers = {"content-type": "application/json; charset=utf-8"}
    response = post_raw(served, json.dumps(SEED_REQUEST), headers=headers)
    assert response.status_code == 200, response.text


# -- model files the server refuses ---------------------------------------------------------


def test_server_refuses_a_model_trained_under_another_schema(
    model_file: Path, tmp_path: Path
) -> None:
    other = other_schema_toml(tmp_path / "other.toml")
    app = create_app(Settings(model_path=model_file, schema_path=other, seed=0))
    with pytest.raises(ModelFileError, match="trained with schema"), TestClient(app):
        pass


def test_server_refuses_a_corrupt_model_file(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    path.write_bytes(b"PK\x03\x04 definitely not a model")
    app = create_app(Settings(model_path=path, seed=0))
    with pytest.raises(ModelFileError, match="corrupt or truncated"), TestClient(app):
        pass
