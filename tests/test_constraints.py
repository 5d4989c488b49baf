"""Eligibility rules (`banditrec.constraints`): configuration, masking before the probabilities
(single and batch decisions, over HTTP), the fallback action, and off-policy evaluation on
constrained logs against the simulator's known truth."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from banditrec.api import create_app
from banditrec.config import Settings
from banditrec.constraints import constraints_from_config
from banditrec.engine import Engine, prior_model
from banditrec.exploration import EpsilonGreedy, NoEligibleActionError
from banditrec.features import load_default_schema
from banditrec.ope import IPS
from banditrec.policies import LinUCB
from banditrec.sim import AppSimulator
from banditrec.store import DecisionRecord
from banditrec.store.redis import RedisEventStore
from banditrec.store.sqlite import SQLiteEventStore
from conftest import ACTIONS, SEED_CONTEXT
from redis_server import RedisServer
from serving import running_server

SCHEMA = load_default_schema()
CLOSE = {"Connection": "close"}  # each request on a new connection: spread over the workers

#: Invites only on Android; store links only in rich markets or for engaged high-value users.
RULES: dict[str, Any] = {
    "eligibility": {
        "invite_friend": {"device": "android"},
        "deep_link_to_store": [
            {"country": ["US", "GB", "DE", "AT", "JP"]},
            {"segment": "high", "n_sessions": {"ge": 1.0}},
        ],
    }
}


def _contexts(n: int, seed: int) -> list[dict[str, Any]]:
    columns = AppSimulator().sample_contexts(n, np.random.default_rng(seed))
    del columns["user_id"]
    return [{k: v[i].item() for k, v in columns.items()} for i in range(n)]


def _allowed(context: dict[str, Any]) -> set[str]:
    """The rules of `RULES`, written out by hand."""
    allowed = {"show_bonus_offer", "suggest_new_app"}
    if context["device"] == "android":
        allowed.add("invite_friend")
    rich = context["country"] in ("US", "GB", "DE", "AT", "JP")
    engaged = (
        context["segment"] == "high"
        and SCHEMA.vectorize(context)[SCHEMA.feature_names().index("n_sessions")] >= 1.0
    )
    if rich or engaged:
        allowed.add("deep_link_to_store")
    return allowed


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"eligibility": {"nope": {"device": "ios"}}}, "constraints.eligibility.nope: unknown"),
        (
            {"eligibility": {"invite_friend": {"colour": "red"}}},
            "constraints.eligibility.invite_friend: Condition on unknown feature 'colour'",
        ),
        (
            {"eligibility": {"invite_friend": {"device": "phone"}}},
            "constraints.eligibility.invite_friend: Condition on 'device': ['device=phone']",
        ),
        ({"eligibility": {"invite_friend": []}}, "must be a non-empty condition object"),
        ({"fallback_action": "nope"}, "constraints.fallback_action 'nope' is not an action"),
        ({"capz": []}, "constraints: unknown keys ['capz']"),
        ({"caps": [{"max": 2}]}, "constraints.caps[0] needs max and window_seconds"),
        (
            {"caps": [{"max": -1, "window_seconds": 5}]},
            "constraints.caps[0].max must be ≥ 0",
        ),
        (
            {"cooldowns": [{"action": "nope", "after_serve_seconds": 5}]},
            "constraints.cooldowns[0].action 'nope' is unknown",
        ),
        ({"cooldowns": [{"after_serve": 5}]}, "constraints.cooldowns[0] must be an object"),
    ],
)
def test_a_bad_configuration_is_refused_naming_what_is_wrong(
    config: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValueError) as info:
        constraints_from_config(config, SCHEMA, ACTIONS)
    assert words in str(info.value)


def test_an_empty_configuration_constrains_nothing() -> None:
    assert constraints_from_config({}, SCHEMA, ACTIONS) is None


def test_the_server_refuses_to_start_with_bad_constraints(model_file: Path, tmp_path: Path) -> None:
    settings = Settings(
        model_path=model_file, db_path=tmp_path / "e.db", constraints={"fallback_action": "x"}
    )
    with (
        pytest.raises(ValueError, match="fallback_action 'x' is not an action"),
        TestClient(create_app(settings)),
    ):
        pass


# -- serving ----------------------------------------------------------------------------------


@pytest.fixture
def client(model_file: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(model_path=model_file, db_path=tmp_path / "e.db", seed=0, constraints=RULES)
    with TestClient(create_app(settings)) as c:
        yield c


def _check(decision: dict[str, Any], context: dict[str, Any], client: TestClient) -> None:
    allowed = _allowed(context)
    assert decision["action_id"] in allowed
    probabilities = {r["action_id"]: r["probability"] for r in decision["ranking"]}
    assert {a for a, p in probabilities.items() if p > 0} == allowed
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-12)
    # Logged as served: the probability after masking, and what could be served.
    logged = client.app.state.engine.store.get_decision(decision["event_id"])  # type: ignore[attr-defined]
    assert logged.probability == decision["probability"]
    assert set(logged.eligible) == allowed
    assert logged.probabilities.tolist() == [probabilities[a] for a in logged.actions]


def test_rank_serves_only_what_the_rules_allow(client: TestClient) -> None:
    contexts = _contexts(60, seed=5)
    assert len({frozenset(_allowed(c)) for c in contexts}) >= 3  # the rules do bite
    for context in contexts:
        response = client.post("/v1/rank", json={"context": context})
        assert response.status_code == 200, response.text
        _check(response.json(), context, client)


def test_batches_apply_the_rules_per_context(client: TestClient) -> None:
    contexts = _contexts(200, seed=6)
    response = client.post("/v1/rank/batch", json={"contexts": contexts})
    assert response.status_code == 200, response.text
    for decision, context in zip(response.json()["decisions"], contexts, strict=True):
        _check(decision, context, client)


def test_the_rules_and_the_request_exclusions_add_up(client: TestClient) -> None:
    ios = {**SEED_CONTEXT, "device": "ios", "country": "BR", "segment": "low"}
    body = {"context": ios, "excluded_actions": ["show_bonus_offer"]}
    decision = client.post("/v1/rank", json=body).json()
    assert decision["action_id"] == "suggest_new_app" and decision["probability"] == 1.0


def _nothing_logged(client: TestClient) -> int:
    return int(client.app.state.engine.store.count("decisions"))  # type: ignore[attr-defined]


def test_every_action_masked_without_a_fallback_is_422(client: TestClient) -> None:
    ios = {**SEED_CONTEXT, "device": "ios", "country": "BR", "segment": "low"}
    before = _nothing_logged(client)
    body = {"context": ios, "actions": ["invite_friend", "deep_link_to_store"]}
    response = client.post("/v1/rank", json=body)
    assert response.status_code == 422
    assert response.json()["error"] == "no_eligible_action"
    assert "eligibility rules allow none of the actions" in response.json()["message"]
    assert "no fallback_action is configured" in response.json()["message"]
    batch_body = {"contexts": [SEED_CONTEXT, ios], "actions": body["actions"]}
    batch = client.post("/v1/rank/batch", json=batch_body)
    assert batch.status_code == 422 and batch.json()["error"] == "no_eligible_action"
    assert _nothing_logged(client) == before


def test_every_action_masked_gets_the_fallback_with_probability_one(
    model_file: Path, tmp_path: Path
) -> None:
    rules = {
        "eligibility": {a: {"device": "android"} for a in ACTIONS if a != "suggest_new_app"}
        | {"suggest_new_app": {"segment": "high"}},
        "fallback_action": "show_bonus_offer",
    }
    settings = Settings(model_path=model_file, db_path=tmp_path / "e.db", seed=0, constraints=rules)
    ios_low = {**SEED_CONTEXT, "device": "ios", "segment": "low"}
    with TestClient(create_app(settings)) as c:
        decision = c.post("/v1/rank", json={"context": ios_low}).json()
        assert (decision["action_id"], decision["probability"]) == ("show_bonus_offer", 1.0)
        logged = c.app.state.engine.store.get_decision(decision["event_id"])  # type: ignore[attr-defined]
        assert logged.eligible == ("show_bonus_offer",) and logged.probability == 1.0
        # Excluded by the request, the fallback cannot be served either: 422, nothing logged.
        before = _nothing_logged(c)
        body = {"context": ios_low, "excluded_actions": ["show_bonus_offer"]}
        response = c.post("/v1/rank", json=body)
        assert response.status_code == 422
        assert (
            "fallback action 'show_bonus_offer' is excluded or disabled"
            in (response.json()["message"])
        )
        assert _nothing_logged(c) == before
        # Where the rules allow something, the fallback is not forced.
        high = {**SEED_CONTEXT, "device": "ios", "segment": "high"}
        assert c.post("/v1/rank", json={"context": high}).json()["action_id"] == "suggest_new_app"


# -- off-policy evaluation on constrained logs -------------------------------------------------


def test_ips_on_constrained_logs_is_unbiased_against_the_known_truth() -> None:
    """Log 40,000 decisions of a learned LinUCB under the rules (probabilities after
    masking), with Bernoulli rewards from the simulator's true means; IPS of the oracle that
    respects the same rules must land on its true value (computed from the true means)."""
    sim = AppSimulator()
    rng = np.random.default_rng(11)
    policy = LinUCB(exploration=EpsilonGreedy(0.2))
    engine = Engine.from_prior(SCHEMA, rng=np.random.default_rng(12), policy=policy)
    engine.constraints = constraints_from_config(RULES, SCHEMA, ACTIONS)
    warm = sim.simulate_logged(3_000, np.random.default_rng(13))
    X_warm = SCHEMA.vectorize_many(warm)
    warm_actions = np.array([ACTIONS.index(str(a)) for a in warm["action"]])
    engine.policy.update_batch(X_warm, warm_actions, np.asarray(warm["reward"], dtype=float))

    n = 40_000
    columns = sim.sample_contexts(n, rng)
    mu = sim.expected_rewards(columns)
    contexts = [{k: v[i].item() for k, v in columns.items() if k != "user_id"} for i in range(n)]
    records = []
    for start in range(0, n, 1000):
        records += engine.decide_batch(contexts[start : start + 1000]).records()
    action = np.array([r.action_index for r in records])
    propensity = np.array([r.probability for r in records])
    reward = (rng.random(n) < mu[np.arange(n), action]).astype(float)

    allowed = engine.constraints.mask_batch(np.stack([r.x for r in records]), len(ACTIONS))
    assert all(
        set(r.eligible) == {ACTIONS[k] for k in np.flatnonzero(row)}
        for r, row in zip(records[:500], allowed[:500], strict=True)
    )
    oracle = np.where(allowed, mu, -np.inf).argmax(axis=1)
    truth = float(mu[np.arange(n), oracle].mean())
    target = np.zeros((n, len(ACTIONS)))
    target[np.arange(n), oracle] = 1.0
    estimate = IPS(n_bootstrap=200).estimate(
        reward=reward, action=action, propensity=propensity, action_dist=target, rng=0
    )
    terms = IPS().round_rewards(
        reward=reward, action=action, propensity=propensity, action_dist=target
    )
    se = float(terms.std() / np.sqrt(n))
    assert abs(estimate.value - truth) < 4 * se, (estimate.value, truth, se)
    # The masking matters: propensities taken as if the rules did not exist (what a
    # constraint applied after choosing would log) move the estimate away from the truth.
    unmasked = np.array(
        [
            engine.policy.distribution(r.x, np.ones(len(ACTIONS), dtype=bool))[1][r.action_index]
            for r in records
        ]
    )
    wrong = IPS(n_bootstrap=200).estimate(
        reward=reward, action=action, propensity=unmasked, action_dist=target, rng=0
    )
    assert abs(wrong.value - truth) > 10 * se, (wrong.value, truth, se)


# -- per-user caps and cooldowns --------------------------------------------------------------


def _app(model_file: Path, db: Path, constraints: dict[str, Any]) -> TestClient:
    settings = Settings(model_path=model_file, db_path=db, seed=0, constraints=constraints)
    return TestClient(create_app(settings))


def _rank(c: TestClient, user: str, **body: Any) -> Any:
    return c.post("/v1/rank", json={"context": SEED_CONTEXT, "user_id": user, **body})


def test_a_cap_holds_per_user_and_across_a_restart(model_file: Path, tmp_path: Path) -> None:
    caps = {"caps": [{"action": "show_bonus_offer", "max": 2, "window_seconds": 3600}]}
    two = {"actions": ["show_bonus_offer", "invite_friend"]}
    served: list[str] = []
    with _app(model_file, tmp_path / "e.db", caps) as c:
        for _ in range(25):
            answer = _rank(c, "u1", **two).json()
            served.append(answer["action_id"])
            if served.count("show_bonus_offer") == 2:
                break
        assert served.count("show_bonus_offer") == 2  # ε = 0.01 floor: reached quickly?
    with _app(model_file, tmp_path / "e.db", caps) as c:  # the history is in the log
        for _ in range(10):
            answer = _rank(c, "u1", **two).json()
            assert answer["action_id"] == "invite_friend" and answer["probability"] == 1.0
            ranking = {r["action_id"]: r["probability"] for r in answer["ranking"]}
            assert ranking["show_bonus_offer"] == 0.0
        assert _rank(c, "u2", **two).json()["ranking"][0]["probability"] < 1.0  # others free
        only_capped = _rank(c, "u1", actions=["show_bonus_offer"])
        assert only_capped.status_code == 422
        assert only_capped.json()["error"] == "no_eligible_action"
        assert "capped or cooling down for user 'u1'" in only_capped.json()["message"]
        # Decisions without a user id are not capped.
        anonymous = c.post(
            "/v1/rank", json={"context": SEED_CONTEXT, "actions": ["show_bonus_offer"]}
        )
        assert anonymous.json()["action_id"] == "show_bonus_offer"


def test_a_cooldown_after_serving_rests_each_action(model_file: Path, tmp_path: Path) -> None:
    rules = {"cooldowns": [{"after_serve_seconds": 3600}]}
    with _app(model_file, tmp_path / "e.db", rules) as c:
        served = [_rank(c, "u1").json()["action_id"] for _ in range(4)]
        assert sorted(served) == sorted(ACTIONS)  # each once, then rested
        before = c.app.state.engine.store.count("decisions")  # type: ignore[attr-defined]
        response = _rank(c, "u1")
        assert response.status_code == 422
        assert "capped or cooling down" in response.json()["message"]
        assert c.app.state.engine.store.count("decisions") == before  # type: ignore[attr-defined]


def test_a_negative_reward_starts_a_cooldown(model_file: Path, tmp_path: Path) -> None:
    rules = {"cooldowns": [{"action": "invite_friend", "after_negative_seconds": 3600}]}
    two = {"actions": ["invite_friend", "suggest_new_app"]}
    with _app(model_file, tmp_path / "e.db", rules) as c:
        for user, value in (("u1", 0.0), ("u2", 1.0)):
            for _ in range(400):  # until invite_friend is served to this user
                answer = _rank(c, user, **two).json()
                if answer["action_id"] == "invite_friend":
                    break
            else:
                pytest.fail("invite_friend was never served")
            reward = c.post(f"/v1/events/{answer['event_id']}/reward", json={"value": value})
            assert reward.status_code == 200 and reward.json()["learned"]
        after_negative = _rank(c, "u1", **two).json()
        assert after_negative["action_id"] == "suggest_new_app"
        assert after_negative["probability"] == 1.0
        after_positive = {
            r["action_id"]: r["probability"] for r in _rank(c, "u2", **two).json()["ranking"]
        }
        assert after_positive["invite_friend"] > 0.0


def _batch(c: TestClient, users: list[str | None], **body: Any) -> Any:
    contexts = [SEED_CONTEXT] * len(users)
    return c.post("/v1/rank/batch", json={"contexts": contexts, "user_ids": users, **body})


def _serves(c: TestClient, user: str) -> list[str]:
    store = c.app.state.engine.store  # type: ignore[attr-defined]
    return sorted(a for a, _ in store.user_history(user, since=0.0).serves)


def test_a_batch_caps_a_user_named_twice_as_two_requests_would(
    model_file: Path, tmp_path: Path
) -> None:
    """Each action at most once per user: a batch naming u1 four times serves u1 each
    action once, every later decision masked by the earlier ones (probability 0 for what
    was served, after masking); u2 and anonymous decisions are free. A fifth u1 is 422
    naming the user and the context, and nothing of that batch is logged or claimed."""
    caps = {"caps": [{"max": 1, "window_seconds": 3600}]}
    with _app(model_file, tmp_path / "e.db", caps) as c:
        response = _batch(c, ["u1", "u2", "u1", None, "u1", "u1"])
        assert response.status_code == 200, response.text
        decisions = response.json()["decisions"]
        mine = [decisions[i] for i in (0, 2, 4, 5)]
        assert sorted(d["action_id"] for d in mine) == sorted(ACTIONS)
        for k, d in enumerate(mine):
            ranking = {r["action_id"]: r["probability"] for r in d["ranking"]}
            for earlier in mine[:k]:
                assert ranking[earlier["action_id"]] == 0.0
            assert sum(ranking.values()) == pytest.approx(1.0, abs=1e-12)
            assert d["probability"] == ranking[d["action_id"]] > 0.0
        assert mine[-1]["probability"] == 1.0  # one action was left
        assert _serves(c, "u1") == sorted(ACTIONS)
        assert _serves(c, "u2") == [decisions[1]["action_id"]]
        store = c.app.state.engine.store  # type: ignore[attr-defined]
        for d in decisions:
            logged = store.get_decision(d["event_id"])
            assert logged is not None and logged.probability == d["probability"]
        assert [store.get_decision(d["event_id"]).user_id for d in decisions] == [
            "u1", "u2", "u1", None, "u1", "u1",
        ]  # fmt: skip
        before = store.count("decisions")
        refused = _batch(c, ["u3", "u1"])
        assert refused.status_code == 422
        assert refused.json()["error"] == "no_eligible_action"
        assert refused.json()["message"] == (
            "Every action this request allows is capped or cooling down for user 'u1' "
            "(contexts.1; the configured caps and cooldowns)."
        )
        assert store.count("decisions") == before
        assert _serves(c, "u3") == []  # nothing claimed for the others either
        # A single request sees what the batch served.
        assert _rank(c, "u1").status_code == 422
        assert _rank(c, "u2").json()["action_id"] != decisions[1]["action_id"]


def test_a_batch_follows_a_cooldown_after_a_negative_reward(
    model_file: Path, tmp_path: Path
) -> None:
    rules = {"cooldowns": [{"action": "invite_friend", "after_negative_seconds": 3600}]}
    two = {"actions": ["invite_friend", "suggest_new_app"]}
    with _app(model_file, tmp_path / "e.db", rules) as c:
        for _ in range(400):  # until invite_friend is served to u1
            answer = _batch(c, ["u1"], **two).json()["decisions"][0]
            if answer["action_id"] == "invite_friend":
                break
        else:
            pytest.fail("invite_friend was never served")
        reward = c.post(f"/v1/events/{answer['event_id']}/reward", json={"value": 0.0})
        assert reward.status_code == 200 and reward.json()["learned"]
        after = _batch(c, ["u1", "u2", "u1"], **two).json()["decisions"]
        for d in (after[0], after[2]):
            assert (d["action_id"], d["probability"]) == ("suggest_new_app", 1.0)
        assert {r["action_id"]: r["probability"] for r in after[1]["ranking"]}[
            "invite_friend"
        ] > 0.0


def test_a_cap_holds_under_concurrent_requests_across_two_workers(tmp_path: Path) -> None:
    """Two `banditrec serve` worker processes on one SQLite log; 48 concurrent requests for
    one user, each on its own connection (the kernel spreads them over the workers): no
    action is served more than the cap, in the answers and in the log."""
    caps = {"caps": [{"max": 3, "window_seconds": 3600}]}
    with running_server(tmp_path, "--workers", "2", constraints=json.dumps(caps)) as server:
        pids = {
            httpx.get(f"{server.url}/v1/model", headers={"Connection": "close"}).json()["pid"]
            for _ in range(40)
        }
        assert len(pids) == 2

        def rank(_: int) -> httpx.Response:
            body = {"context": SEED_CONTEXT, "user_id": "u1"}
            return httpx.post(
                f"{server.url}/v1/rank", json=body, headers={"Connection": "close"}, timeout=30
            )

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(rank, range(48)))
        statuses = {a.status_code for a in answers}
        assert statuses <= {200, 422, 503}, [a.text for a in answers]
        served = [a.json()["action_id"] for a in answers if a.status_code == 200]
        assert all(served.count(a) <= 3 for a in ACTIONS), served
        assert len(served) >= 4  # the race did serve; not everything was refused
        with sqlite3.connect(tmp_path / "events.db") as db:
            logged = db.execute(
                "SELECT action, count(*) FROM decisions WHERE user_id = 'u1' GROUP BY action"
            ).fetchall()
        assert sorted(served) == sorted(a for a, n in logged for _ in range(n))
        assert all(n <= 3 for _, n in logged)


def test_a_cap_holds_for_batches_and_single_requests_across_two_workers(
    tmp_path: Path,
) -> None:
    """Two worker processes on one SQLite log; 32 concurrent requests, each on its own
    connection: batches naming u1 twice (and u2), and single requests for u1. No action is
    served to u1 more than the cap, in the answers, in the log and in u1's history."""
    caps = {"caps": [{"max": 2, "window_seconds": 3600}]}
    with running_server(tmp_path, "--workers", "2", constraints=json.dumps(caps)) as server:

        def post(i: int) -> list[tuple[str | None, str]]:
            """(user, action) of each decision served by request `i`."""
            if i % 2:
                body = {"context": SEED_CONTEXT, "user_id": "u1"}
                a = httpx.post(f"{server.url}/v1/rank", json=body, timeout=60, headers=CLOSE)
                assert a.status_code in (200, 422, 503), a.text
                return [("u1", a.json()["action_id"])] if a.status_code == 200 else []
            users = ["u1", "u2", "u1"]
            body = {"contexts": [SEED_CONTEXT] * 3, "user_ids": users}
            a = httpx.post(f"{server.url}/v1/rank/batch", json=body, timeout=60, headers=CLOSE)
            assert a.status_code in (200, 422, 503), a.text
            if a.status_code != 200:
                return []
            return list(zip(users, [d["action_id"] for d in a.json()["decisions"]], strict=True))

        with ThreadPoolExecutor(max_workers=16) as pool:
            served = [pair for pairs in pool.map(post, range(32)) for pair in pairs]
    to_u1 = [a for u, a in served if u == "u1"]
    assert all(to_u1.count(a) <= 2 for a in ACTIONS), to_u1
    assert len(to_u1) >= 4  # the race did serve; not everything was refused
    with sqlite3.connect(tmp_path / "events.db") as db:
        logged = [a for (a,) in db.execute("SELECT action FROM decisions WHERE user_id = 'u1'")]
        history = [a for (a,) in db.execute("SELECT action FROM user_events WHERE user_id = 'u1'")]
    assert sorted(logged) == sorted(to_u1) == sorted(history)


def test_ips_on_logs_with_caps_and_cooldowns_is_unbiased(tmp_path: Path) -> None:
    """Serve 6,000 rounds of 150 simulated users through the engine and a real SQLite log,
    in simulated time, under caps (2 serves of an action per user in 300 s) and a cooldown
    after a negative reward (60 s); rewards are drawn from the simulator's true means and
    posted. The evaluated policy takes, at each logged round, the truly best action among
    those the caps left (the logged eligible set): IPS with the logged probabilities lands
    on its true value; probabilities taken before the caps' masking do not."""
    sim = AppSimulator()
    rng = np.random.default_rng(21)
    now = [1_000.0]
    store = SQLiteEventStore(tmp_path / "caps.db", SCHEMA.encoding_hash)
    warm_policy = LinUCB(exploration=EpsilonGreedy(0.2)).reset(len(ACTIONS), SCHEMA.n_features)
    warm = sim.simulate_logged(3_000, np.random.default_rng(22))
    warm_actions = np.array([ACTIONS.index(str(a)) for a in warm["action"]])
    warm_policy.update_batch(
        SCHEMA.vectorize_many(warm), warm_actions, np.asarray(warm["reward"], dtype=float)
    )
    model = prior_model(SCHEMA, LinUCB(exploration=EpsilonGreedy(0.2)))
    model.policy.set_state(warm_policy.get_state())
    engine = Engine(model, np.random.default_rng(23), store, clock=lambda: now[0])
    caps = {
        "caps": [{"max": 2, "window_seconds": 300}],
        "cooldowns": [{"after_negative_seconds": 60}],
    }
    engine.constraints = constraints_from_config(caps, SCHEMA, ACTIONS)
    n = 6_000
    columns = sim.sample_contexts(n, rng)
    mu = sim.expected_rewards(columns)
    users = rng.integers(0, 150, size=n)

    async def serve() -> list[tuple[int, DecisionRecord, float]]:
        served = []
        for i in range(n):
            now[0] += 1.0
            context = {k: v[i].item() for k, v in columns.items() if k != "user_id"}
            try:
                record = await engine.rank(context, user_id=f"u{users[i]}")
            except NoEligibleActionError:  # everything capped for this user now
                continue
            reward = float(rng.random() < mu[i, record.action_index])
            await engine.reward(record.event_id, reward)
            served.append((i, record, reward))
        return served

    try:
        served = asyncio.run(serve())
    finally:
        engine.close()
        store.close()
    kept = [i for i, _, _ in served]
    logged = [r for _, r, _ in served]
    reward = np.array([v for _, _, v in served])
    assert len(kept) > n * 0.8
    capped = sum(len(r.eligible) < len(ACTIONS) for r in logged)
    assert capped > len(logged) * 0.3  # the caps and cooldowns shape the logs
    action = np.array([r.action_index for r in logged])
    propensity = np.array([r.probability for r in logged])
    rows = np.array(kept)
    allowed = np.array([[a in r.eligible for a in ACTIONS] for r in logged])
    oracle = np.where(allowed, mu[rows], -np.inf).argmax(axis=1)
    truth = float(mu[rows, oracle].mean())
    target = np.zeros((len(logged), len(ACTIONS)))
    target[np.arange(len(logged)), oracle] = 1.0
    terms = IPS().round_rewards(
        reward=reward, action=action, propensity=propensity, action_dist=target
    )
    se = float(terms.std() / np.sqrt(len(terms)))
    assert abs(float(terms.mean()) - truth) < 4 * se, (terms.mean(), truth, se)
    # The logged scores are those of the decision's moment: the rule on all four actions.
    rule, everything = EpsilonGreedy(0.2), np.ones(len(ACTIONS), dtype=bool)
    unmasked = np.array([rule.probabilities(r.scores, everything)[r.action_index] for r in logged])
    wrong = IPS().round_rewards(
        reward=reward, action=action, propensity=unmasked, action_dist=target
    )
    assert abs(float(wrong.mean()) - truth) > 8 * se, (wrong.mean(), truth, se)


def test_a_cap_holds_across_two_replicas_on_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Two `banditrec serve` replicas sharing a Redis event log, 48 concurrent requests for
    one user spread over both: no action is served more than the cap."""
    caps = json.dumps({"caps": [{"max": 2, "window_seconds": 3600}]})
    settings = {"store_url": redis_server.url, "constraints": caps}
    (tmp_path / "r1").mkdir()
    (tmp_path / "r2").mkdir()
    with (
        running_server(tmp_path / "r1", **settings) as one,
        running_server(tmp_path / "r2", **settings) as two,
    ):

        def rank(i: int) -> httpx.Response:
            url = (one, two)[i % 2].url
            body = {"context": SEED_CONTEXT, "user_id": "u1"}
            return httpx.post(f"{url}/v1/rank", json=body, timeout=30)

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(rank, range(48)))
    assert {a.status_code for a in answers} <= {200, 422, 503}, [a.text for a in answers]
    served = [a.json()["action_id"] for a in answers if a.status_code == 200]
    assert all(served.count(a) <= 2 for a in ACTIONS), served
    assert len(served) >= 4
    store = RedisEventStore.from_url(redis_server.url, SCHEMA.encoding_hash)
    try:
        logged = [d.action for d, _ in store.iter_decisions() if d.user_id == "u1"]
        history = store.user_history("u1", since=0.0)
    finally:
        store.close()
    assert sorted(logged) == sorted(served)
    assert sorted(a for a, _ in history.serves) == sorted(served)


class _RacedStore(SQLiteEventStore):
    """The real SQLite store, and another worker (a second store on the same file) that
    serves `action` to the same user just before this one's first claim: the claim is
    refused, as when two workers decide for one user at once."""

    def __init__(self, path: Path, action: str) -> None:
        super().__init__(path, SCHEMA.encoding_hash)
        self.other = SQLiteEventStore(path, SCHEMA.encoding_hash)
        self.action = action
        self.claims: list[bool] = []

    def claim_serve(
        self, user_id: str, action: str, at: float, version: int, keep_after: float
    ) -> bool:
        if not self.claims:
            current = self.other.user_history(user_id, keep_after).version
            assert self.other.claim_serve(user_id, self.action, at, current, keep_after)
        self.claims.append(super().claim_serve(user_id, action, at, version, keep_after))
        return self.claims[-1]


def test_a_batch_decides_again_when_another_worker_served_the_user_meanwhile(
    tmp_path: Path,
) -> None:
    caps = {"caps": [{"max": 1, "window_seconds": 3600}]}
    store = _RacedStore(tmp_path / "e.db", "show_bonus_offer")
    engine = Engine(prior_model(SCHEMA), np.random.default_rng(3), store=store)
    engine.constraints = constraints_from_config(caps, SCHEMA, ACTIONS)
    rules = engine.constraints.frequency
    assert rules is not None
    try:
        records = asyncio.run(
            engine.rank_batch_capped(rules, [SEED_CONTEXT] * 3, ["u1", "u2", "u1"])
        )
        history = store.user_history("u1", since=0.0)
        logged = store.count("decisions")
    finally:
        engine.close()
        store.other.close()
        store.close()
    assert False in store.claims  # the race happened, and was lost once
    mine = [records[0].action, records[2].action]
    # The other worker's serve counts: u1 got each action at most once in all.
    assert sorted(a for a, _ in history.serves) == sorted([*mine, "show_bonus_offer"])
    assert len(set(mine)) == 2 and "show_bonus_offer" not in mine
    for record in (records[0], records[2]):  # masked before the probabilities
        k = ACTIONS.index("show_bonus_offer")
        assert record.probabilities[k] == 0.0 and "show_bonus_offer" not in record.eligible
    assert [r.user_id for r in records] == ["u1", "u2", "u1"]
    assert logged == 3
