"""Eligibility rules (`banditrec.constraints`): configuration, masking before the probabilities
(single and batch decisions, over HTTP), the fallback action, and off-policy evaluation on
constrained logs against the simulator's known truth."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from banditrec.api import create_app
from banditrec.config import Settings
from banditrec.constraints import constraints_from_config
from banditrec.engine import Engine
from banditrec.exploration import EpsilonGreedy
from banditrec.features import load_default_schema
from banditrec.ope import IPS
from banditrec.policies import LinUCB
from banditrec.sim import AppSimulator
from conftest import ACTIONS, SEED_CONTEXT

SCHEMA = load_default_schema()

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
        ({"caps": []}, "constraints: unknown keys ['caps']"),
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
        records += engine.decide_batch(contexts[start : start + 1000])
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
