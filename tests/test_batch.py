"""Batches of decisions: the policy's batch distribution, `Engine.rank_batch`, and
``POST /v1/rank/batch`` over HTTP (every decision logged, in one group commit; bad input
refused whole, with nothing logged or learned)."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from banditrec.api import create_app
from banditrec.batch import BatchRequest, rank_batch_request_model, render_decisions
from banditrec.config import Settings
from banditrec.decisions import rank_body
from banditrec.engine import Engine, new_event_ids
from banditrec.exploration import (
    EpsilonGreedy,
    InverseGapWeighting,
    NoEligibleActionError,
    Softmax,
    sample_action,
    sample_actions,
)
from banditrec.features import FeatureSchema, SchemaError, load_default_schema
from banditrec.policies import POLICIES, LinUCB, Policy
from banditrec.sim import AppSimulator
from banditrec.store import DecisionRecord, RewardRules
from banditrec.store.decision_batch import DecisionBatch
from banditrec.store.redis import RedisEventStore
from banditrec.store.sqlite import SQLiteEventStore
from conftest import ACTIONS, SEED_CONTEXT
from redis_server import RedisServer

SCHEMA = load_default_schema()

JSON = {"content-type": "application/json"}


def _learned(policy: Policy, K: int, d: int, seed: int = 0) -> Policy:
    rng = np.random.default_rng(seed)
    policy.reset(K, d)
    policy.update_batch(rng.normal(size=(500, d)), rng.integers(0, K, 500), rng.random(500))
    return policy


@pytest.mark.parametrize(
    "policy",
    [
        LinUCB(exploration=EpsilonGreedy(0.05)),
        LinUCB(exploration=Softmax(0.2, epsilon=0.01)),
        LinUCB(exploration=InverseGapWeighting(50.0)),
        POLICIES["epsilon_greedy"](),
        POLICIES["squarecb"](),
        POLICIES["uniform"](),
        POLICIES["popular"](),
        POLICIES["hybrid_linucb"](),
        POLICIES["auto"](),
    ],
    ids=lambda p: f"{p.name}-{p.exploration.name}",
)
@pytest.mark.parametrize(("K", "d"), [(4, 21), (50, 50)])
def test_a_batch_serves_what_single_decisions_serve(policy: Policy, K: int, d: int) -> None:
    """Same scores (to rounding), the same probabilities and, with the same generator, the
    same actions as n calls of `distribution` + `sample_action`, with masked actions."""
    policy = _learned(policy, K, d)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, d))
    eligible = rng.random((300, K)) < 0.7
    eligible[np.arange(300), rng.integers(0, K, 300)] = True  # at least one per row
    scores, probabilities = policy.distribution_batch(X, eligible, None)
    served = sample_actions(probabilities, np.random.default_rng(7))
    one_by_one = np.random.default_rng(7)
    for i in range(300):
        s, p = policy.distribution(X[i], eligible[i], None)
        # To rounding: the batch kernel adds the same products in another order.
        scale = 1e-12 * max(1.0, float(np.abs(s.score).max()))
        np.testing.assert_allclose(scores.score[i], s.score, rtol=0, atol=scale)
        np.testing.assert_allclose(scores.mean[i], s.mean, rtol=0, atol=scale)
        np.testing.assert_allclose(scores.width[i], s.width, rtol=0, atol=scale)
        np.testing.assert_array_equal(probabilities[i], p)
        assert served[i] == sample_action(p, one_by_one)
    assert np.all(probabilities[~eligible] == 0.0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-12)


def test_a_batch_with_a_row_that_has_no_eligible_action_is_refused() -> None:
    policy = _learned(LinUCB(), 4, 5)
    eligible = np.ones((3, 4), dtype=bool)
    eligible[1] = False
    with pytest.raises(NoEligibleActionError, match="row 1"):
        policy.distribution_batch(np.ones((3, 5)), eligible)
    with pytest.raises(ValueError, match="eligible must have shape"):
        policy.distribution_batch(np.ones((3, 5)), np.ones((2, 4), dtype=bool))


# -- the engine -----------------------------------------------------------------------------


class CountingStore(SQLiteEventStore):
    """The real SQLite store, counting the calls that log decisions (and their sizes)."""

    def __init__(self, path: Path, encoding_hash: str) -> None:
        super().__init__(path, encoding_hash)
        self.calls: list[int] = []

    def log_decisions(
        self, records: Sequence[DecisionRecord], rules: RewardRules
    ) -> list[DecisionRecord]:
        self.calls.append(len(records))
        return super().log_decisions(records, rules)

    def log_decision_batch(self, batch: DecisionBatch, rules: RewardRules) -> None:
        self.calls.append(len(batch))
        super().log_decision_batch(batch, rules)


def _contexts(n: int, seed: int = 3) -> list[dict[str, Any]]:
    columns = AppSimulator().sample_contexts(n, np.random.default_rng(seed))
    del columns["user_id"]
    return [{k: v[i].item() for k, v in columns.items()} for i in range(n)]


@pytest.fixture
def app_client(model_file: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(model_path=model_file, db_path=tmp_path / "events.db", seed=0)
    with TestClient(create_app(settings)) as client:
        yield client


def test_rank_batch_logs_every_decision_in_one_commit_and_matches_single_decisions(
    app_client: TestClient, tmp_path: Path
) -> None:
    """Through HTTP: one decision per context, in order, each logged with what was answered;
    one `log_decisions` call; with the same seed, the same actions and probabilities as
    the contexts sent one by one to /v1/rank (and the same scores, to rounding)."""
    engine = app_client.app.state.engine  # type: ignore[attr-defined]
    store = CountingStore(engine.store.path, engine.schema.encoding_hash)
    engine.store, engine._log.store = store, store
    contexts = _contexts(200)
    response = app_client.post("/v1/rank/batch", json={"contexts": contexts})
    assert response.status_code == 200, response.text
    decisions = response.json()["decisions"]
    assert len(decisions) == 200 and store.calls == [200]
    assert len({d["event_id"] for d in decisions}) == 200
    for d, context in zip(decisions, contexts, strict=True):
        logged = store.get_decision(d["event_id"])
        assert logged is not None and logged.action == d["action_id"]
        assert logged.probability == d["probability"] and logged.context == context
        assert d["ranking"][0]["probability"] >= d["ranking"][-1]["probability"]
        assert {r["action_id"] for r in d["ranking"]} == set(ACTIONS)
    assert store.count("decisions") == 200
    metrics = app_client.get("/metrics").text
    served = {a: sum(d["action_id"] == a for d in decisions) for a in ACTIONS}
    for action, n in served.items():
        assert (
            f'banditrec_decisions_total{{action="{action}",loop="default"}} {float(n)}' in metrics
        )
    # The same contexts, one by one, from a fresh app with the same seed.
    settings = app_client.app.state.settings  # type: ignore[attr-defined]
    again = settings.model_copy(update={"db_path": tmp_path / "single.db"})
    with TestClient(create_app(again)) as single:
        for d, context in zip(decisions, contexts, strict=True):
            one = single.post("/v1/rank", json={"context": context}).json()
            assert (one["action_id"], one["probability"]) == (d["action_id"], d["probability"])
            pairs = [(r["action_id"], r["probability"]) for r in one["ranking"]]
            assert pairs == [(r["action_id"], r["probability"]) for r in d["ranking"]]
            for r, b in zip(one["ranking"], d["ranking"], strict=True):
                assert r["score"] == pytest.approx(b["score"], rel=1e-12, abs=1e-12)


def test_a_batch_decision_takes_rewards_like_any_other(app_client: TestClient) -> None:
    decisions = app_client.post(
        "/v1/rank/batch", json={"contexts": _contexts(3), "user_ids": ["a", None, "c"]}
    ).json()["decisions"]
    engine = app_client.app.state.engine  # type: ignore[attr-defined]
    before = int(engine.policy.n_updates_.sum())
    for d in decisions:
        r = app_client.post(f"/v1/events/{d['event_id']}/reward", json={"value": 1.0})
        assert r.status_code == 200 and r.json()["learned"] is True
    assert int(engine.policy.n_updates_.sum()) == before + 3
    assert engine.store.get_decision(decisions[0]["event_id"]).user_id == "a"
    assert engine.store.get_decision(decisions[1]["event_id"]).user_id is None


def test_excluded_actions_hold_for_every_context(app_client: TestClient) -> None:
    body = {"contexts": _contexts(50), "excluded_actions": ["invite_friend", "suggest_new_app"]}
    decisions = app_client.post("/v1/rank/batch", json=body).json()["decisions"]
    for d in decisions:
        assert d["action_id"] in ("show_bonus_offer", "deep_link_to_store")
        zero = {r["action_id"] for r in d["ranking"] if r["probability"] == 0.0}
        assert zero == {"invite_friend", "suggest_new_app"}


def test_batch_bodies_equal_single_bodies_ties_included() -> None:
    """`render_decisions` writes what `rank_body` gives, sorted alike: probability, then
    score, then position."""
    engine = Engine.from_prior(load_default_schema(), rng=np.random.default_rng(0))
    batch = engine.decide_batch(_contexts(40))  # the prior: every score ties
    rng = np.random.default_rng(1)
    # And some with ties in probability only, or none.
    batch.probabilities[20:] = rng.choice([0.1, 0.2, 0.4], size=(20, 4))
    batch.scores[20:] = rng.choice([0.0, 1.0], size=(20, 4))
    bodies = [rank_body(r) for r in batch.records()]
    assert render_decisions(batch) == orjson.dumps(bodies)  # the very bytes


# -- bad input: status, message, nothing logged or learned ----------------------------------


def _nothing_changes(client: TestClient) -> tuple[int, dict[str, np.ndarray]]:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    return engine.store.count("decisions"), engine.policy.get_state()


def _assert_unchanged(client: TestClient, before: tuple[int, dict[str, np.ndarray]]) -> None:
    count, state = _nothing_changes(client)
    assert count == before[0]
    for name, value in before[1].items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)


@pytest.mark.parametrize(
    ("body", "status", "error", "words"),
    [
        ({"contexts": []}, 422, "validation_error", "contexts: List should have at least 1"),
        (
            {"contexts": [SEED_CONTEXT] * 1001},
            422,
            "validation_error",
            "at most 1000 contexts (setting max_batch_size), this one has 1001",
        ),
        (
            {"contexts": [SEED_CONTEXT, {**SEED_CONTEXT, "n_sessions": -1}]},
            422,
            "validation_error",
            "contexts.1.n_sessions",
        ),
        (
            {"contexts": [SEED_CONTEXT] * 2, "user_ids": ["a"]},
            422,
            "validation_error",
            "user_ids has 1 entries for 2 contexts",
        ),
        ({"contexts": [SEED_CONTEXT], "context": {}}, 422, "validation_error", "context"),
        (
            {"contexts": [SEED_CONTEXT], "actions": ["nope"]},
            422,
            "unknown_action",
            "nope",
        ),
        (
            {"contexts": [SEED_CONTEXT], "excluded_actions": list(ACTIONS)},
            422,
            "no_eligible_action",
            "No eligible action",
        ),
    ],
    ids=["empty", "too-many", "bad-field", "lengths", "unknown-key", "unknown-action", "none"],
)
def test_a_bad_batch_is_refused_whole(
    app_client: TestClient, body: dict[str, Any], status: int, error: str, words: str
) -> None:
    app_client.post("/v1/rank/batch", json={"contexts": _contexts(2)})  # something logged
    before = _nothing_changes(app_client)
    response = app_client.post("/v1/rank/batch", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert words in response.json()["message"], response.json()
    _assert_unchanged(app_client, before)


def test_a_batch_body_over_its_own_limit_is_413(model_file: Path, tmp_path: Path) -> None:
    settings = Settings(
        model_path=model_file, db_path=tmp_path / "e.db", seed=0, max_batch_body_bytes=4096
    )
    with TestClient(create_app(settings)) as client:
        before = _nothing_changes(client)
        response = client.post("/v1/rank/batch", json={"contexts": [SEED_CONTEXT] * 100})
        assert response.status_code == 413
        assert response.json()["message"] == "The request body is larger than 4096 bytes."
        _assert_unchanged(client, before)
        # The other routes keep the general limit; a batch within its own is served.
        assert client.post("/v1/rank/batch", json={"contexts": [SEED_CONTEXT] * 5}).is_success


def test_the_batch_route_is_documented(app_client: TestClient) -> None:
    spec = app_client.get("/openapi.json").json()
    operation = spec["paths"]["/v1/rank/batch"]["post"]
    assert {"200", "413", "422"} <= set(operation["responses"])
    assert "RankBatchRequest" in spec["components"]["schemas"]


# -- the fast validator: accepts only what the request model accepts, and gives the same ----

_MODEL = rank_batch_request_model(load_default_schema(), 1000)

#: Values a client might send for a field: right ones and every kind of wrong one.
_VALUES = st.sampled_from(
    [
        0, 1, 5, 10, 1_000_000, 1_000_001, -1, 2**63, 10**30, True, False, None, 1.0, 1.5,
        -0.0, 180.0, 1e308, "", "US", "zz", "x" * 128, "x" * 129, "ios", [], {}, "10",
    ]
)  # fmt: skip


@st.composite
def _bodies(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 4))
    contexts: list[Any] = []
    for _ in range(n):
        context: Any = dict(SEED_CONTEXT)
        for name in draw(st.lists(st.sampled_from(sorted(SEED_CONTEXT)), max_size=2)):
            if draw(st.booleans()):
                context[name] = draw(_VALUES)
            else:
                context.pop(name, None)
        if draw(st.booleans()):
            context["extra"] = draw(_VALUES)
        contexts.append(context if draw(st.integers(0, 20)) else draw(_VALUES))
    body: dict[str, Any] = {"contexts": contexts}
    if draw(st.booleans()):
        body["user_ids"] = draw(st.lists(st.sampled_from(["u1", None, "", 3]), max_size=5))
    if draw(st.booleans()):
        body["excluded_actions"] = draw(st.lists(st.sampled_from([*ACTIONS, ""]), max_size=2))
    if draw(st.integers(0, 10)) == 0:
        body["unknown"] = 1
    return body


@given(_bodies())
@settings(max_examples=400, deadline=None)
def test_the_fast_validator_accepts_only_what_the_model_accepts_and_gives_the_same(
    body: dict[str, Any],
) -> None:
    raw = json.dumps(body).encode()
    fast = _MODEL.validate_fast(raw)  # type: ignore[attr-defined]
    try:
        exact = BatchRequest.from_model(_MODEL.model_validate(json.loads(raw)), SCHEMA)
    except ValidationError:
        assert fast is None, body
        return
    if fast is None:  # declined: the route validates with the model, which accepts it
        return
    # The very values, types included (180 is logged as 180.0 by both). Key order is not
    # part of a context (the model lists fields in schema order, the fast path as sent; the
    # log compares contexts as dicts), so keys are sorted on both sides.
    sort = orjson.OPT_SORT_KEYS
    assert orjson.dumps(fast.contexts, option=sort) == orjson.dumps(exact.contexts, option=sort)
    assert orjson.dumps(fast.columns) == orjson.dumps(exact.columns)
    assert (fast.actions, fast.excluded_actions, fast.user_ids, fast.baseline_actions) == (
        exact.actions, exact.excluded_actions, exact.user_ids, exact.baseline_actions,
    )  # fmt: skip


def test_the_fast_validator_takes_the_common_bodies() -> None:
    """What a client usually sends is not declined (else the fast path would be dead)."""
    contexts = _contexts(50)
    for extra in ({}, {"user_ids": ["u"] * 50}, {"excluded_actions": ["invite_friend"]}):
        raw = orjson.dumps({"contexts": contexts, **extra})
        accepted = _MODEL.validate_fast(raw)  # type: ignore[attr-defined]
        assert accepted is not None and accepted.contexts == contexts
    with_ints = [{**c, "avg_session_length": 180} for c in contexts]
    accepted = _MODEL.validate_fast(orjson.dumps({"contexts": with_ints}))  # type: ignore[attr-defined]
    assert accepted is not None
    assert {type(c["avg_session_length"]) for c in accepted.contexts} == {float}


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (True, "Input should be a valid integer"),
        (1.5, "Input should be a valid integer"),
        (10**30, "less than or equal to 1000000"),
        ("10", "Input should be a valid integer"),
        (None, "Input should be a valid integer"),
    ],
    ids=["bool", "float", "huge", "string", "null"],
)
def test_a_bad_item_is_422_naming_its_index_and_field(
    app_client: TestClient, value: Any, words: str
) -> None:
    """Through HTTP: the error names ``contexts.<i>.<field>``, in the request model's words
    (the fast path declines and leaves the wording to the model), and nothing is logged."""
    app_client.post("/v1/rank/batch", json={"contexts": _contexts(2)})
    before = _nothing_changes(app_client)
    contexts = _contexts(5)
    contexts[3]["n_sessions"] = value
    response = app_client.post("/v1/rank/batch", json={"contexts": contexts})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "validation_error"
    assert [d["field"] for d in body["detail"]] == ["contexts.3.n_sessions"]
    assert words in body["detail"][0]["message"], body
    _assert_unchanged(app_client, before)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"contexts": [{"country": "AT"}]}', "contexts.0.device"),
        (b'{"contexts": [1]}', "contexts.0"),
        (b'{"contexts": [{"country": "' + b"x" * 129 + b'"}]}', "contexts.0.country"),
        (b'{"contexts": [{"avg_session_length": NaN}]}', "contexts.0.avg_session_length"),
    ],
    ids=["missing", "not-an-object", "too-long", "nan"],
)
def test_bad_items_in_other_shapes_name_the_field(
    app_client: TestClient, raw: bytes, field: str
) -> None:
    before = _nothing_changes(app_client)
    response = app_client.post("/v1/rank/batch", content=raw, headers=JSON)
    assert response.status_code == 422, response.text
    assert field in [d["field"] for d in response.json()["detail"]], response.json()
    _assert_unchanged(app_client, before)


def test_batch_event_ids_are_new_uuid7_hex_unique_and_sorted() -> None:
    ids = new_event_ids(10_000)
    assert len(set(ids)) == 10_000 and ids == sorted(ids)
    for event_id in ids[:100]:
        parsed = uuid.UUID(hex=event_id)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert abs(int(event_id[:12], 16) / 1000 - time.time()) < 60  # milliseconds now
    # 74 random bits each: across two batches of the same millisecond, no id repeats.
    assert not set(ids) & set(new_event_ids(10_000))


def test_a_batch_whose_event_id_was_logged_is_logged_not_at_all(tmp_path: Path) -> None:
    """The store's batch insert is one transaction: a repeated id fails it whole."""
    engine = Engine.from_prior(load_default_schema(), rng=np.random.default_rng(0))
    store = SQLiteEventStore(tmp_path / "e.db", engine.schema.encoding_hash)
    try:
        first = engine.decide_batch(_contexts(3))
        store.log_decision_batch(first, RewardRules())
        again = engine.decide_batch(_contexts(3))
        again.event_ids[2] = first.event_ids[0]
        with pytest.raises(sqlite3.IntegrityError):
            store.log_decision_batch(again, RewardRules())
        assert store.count("decisions") == 3
        for record in first.records():
            logged = store.get_decision(record.event_id)
            assert logged is not None and logged.action == record.action
            np.testing.assert_array_equal(logged.x, record.x)
            np.testing.assert_array_equal(logged.probabilities, record.probabilities)
            assert logged.probability == record.probability and logged.context == record.context
    finally:
        store.close()


def test_redis_logs_a_batch_as_its_records(redis_server: RedisServer) -> None:
    engine = Engine.from_prior(load_default_schema(), rng=np.random.default_rng(0))
    store = RedisEventStore.from_url(redis_server.url, engine.schema.encoding_hash)
    try:
        batch = engine.decide_batch(_contexts(5), user_ids=["a", None, "b", None, None])
        store.log_decision_batch(batch, RewardRules())
        for record in batch.records():
            logged = store.get_decision(record.event_id)
            assert logged is not None
            assert (logged.action, logged.probability, logged.user_id) == (
                record.action, record.probability, record.user_id,
            )  # fmt: skip
            np.testing.assert_array_equal(logged.scores, record.scores)
    finally:
        store.close()


@given(
    st.lists(
        st.sampled_from(["US", "AT", "JP", "XX", "", "us", 1, None, 2.5, ("US",), "ios"]),
        min_size=1, max_size=30,
    ),
    st.lists(st.sampled_from(["ios", "android", "web", "tv", ["ios"]]), min_size=30, max_size=30),
)  # fmt: skip
@settings(max_examples=200, deadline=None)
def test_the_batch_encoder_on_lists_gives_the_single_encoders_bits(
    countries: list[Any], devices: list[Any]
) -> None:
    """`vectorize_many` of list columns (what a batch request gives it) equals `vectorize`
    row by row, bit for bit, unknown, unhashable and non-string values included."""
    contexts = [
        {**SEED_CONTEXT, "country": country, "device": device}
        for country, device in zip(countries, devices, strict=False)
    ]
    columns = {name: [c[name] for c in contexts] for name in SCHEMA.field_names}
    X = SCHEMA.vectorize_many(columns)
    for row, context in zip(X, contexts, strict=True):
        assert row.tobytes() == SCHEMA.vectorize(context).tobytes()


def test_the_batch_encoder_refuses_an_unknown_value_in_reject_mode_as_the_single_one() -> None:
    data = SCHEMA.to_dict()
    data["fields"][0]["on_unknown"] = "reject"
    strict = FeatureSchema.from_dict(data)
    contexts = [dict(SEED_CONTEXT), {**SEED_CONTEXT, "country": "XX"}]
    with pytest.raises(SchemaError) as single:
        strict.vectorize(contexts[1])
    with pytest.raises(SchemaError) as batch:
        strict.vectorize_many({n: [c[n] for c in contexts] for n in strict.field_names})
    assert str(batch.value) == str(single.value) == "country: unknown value 'XX'."


def test_the_fastapi_path_answers_a_batch_as_the_hot_path(model_file: Path, tmp_path: Path) -> None:
    """The batch's pre-rendered answer goes out alike through FastAPI's route (its
    response class) and through the hot path: the same decisions with the same seed."""
    contexts = _contexts(30)
    answers = []
    for hot in (True, False):
        settings = Settings(model_path=model_file, db_path=tmp_path / f"{hot}.db", seed=0)
        with TestClient(create_app(settings, hot_path=hot)) as client:
            response = client.post("/v1/rank/batch", json={"contexts": contexts})
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "application/json"
            answers.append(response.json()["decisions"])
    for d in answers:
        for decision in d:
            del decision["event_id"]
    assert answers[0] == answers[1]
