"""Explanations: each feature's part of an action's mean, its width, and why it was served.

For the linear policies the contributions ``θ_k[j]·x[j]`` must add up to the mean the policy
scores with (to rounding: the kernel sums in its own order), and the width must be the one
the policy's score uses. Through ``POST /v1/rank`` with ``"explain": true``: every action
gets a reason that matches its probability and the request's exclusions and the admin's
switches; a bad ``explain`` is a 422 naming it, and nothing is logged or learned. An action
the constraints kept out says which rule did (an eligibility rule, a cap with its serves and
window, a cooldown with its end), not "excluded", which is the request's own doing.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from banditrec.api import create_app
from banditrec.caps import frequency_rules_from_config
from banditrec.config import Settings
from banditrec.decisions import explain_ranking, rank_body
from banditrec.engine import Engine
from banditrec.exploration import EpsilonGreedy
from banditrec.features import load_default_schema
from banditrec.policies import (
    POLICIES,
    HybridLinUCB,
    LinearThompsonSampling,
    LinUCB,
    MostPopular,
    Policy,
    RidgeEpsilonGreedy,
    RidgeSoftmax,
    SquareCB,
    UniformRandom,
)
from banditrec.policies.rules import FixedRule
from banditrec.store import UserHistory
from conftest import ACTIONS, SEED_CONTEXT

K, D = 4, 6

LINEAR: dict[str, Callable[[], Policy]] = {
    "linucb": lambda: LinUCB(alpha=0.7),
    "epsilon_greedy": RidgeEpsilonGreedy,
    "softmax": RidgeSoftmax,
    "squarecb": SquareCB,
    "thompson": lambda: LinearThompsonSampling(v=0.3),
    "hybrid": lambda: HybridLinUCB(alpha=0.5),
    "linucb-gamma": lambda: LinUCB(gamma=0.99),
    "auto": lambda: POLICIES["auto"](),  # the self-tuning default: its served member's α
}

NOT_LINEAR: dict[str, Callable[[], Policy]] = {
    "uniform": UniformRandom,
    "popular": MostPopular,
    "fixed_rule": lambda: FixedRule([{"if": {"x0": {"gt": 0.0}}, "then": 1}, {"else": 2}]),
}


def trained(make: Callable[[], Policy], seed: int = 0) -> tuple[Policy, np.ndarray]:
    """A policy after 300 rounds of a linear problem, and a fresh context."""
    rng = np.random.default_rng(seed)
    policy = make().reset(K, D)
    truth = rng.normal(size=(K, D))
    X = rng.normal(size=(300, D))
    actions = rng.integers(0, K, 300)
    rewards = np.einsum("nd,nd->n", X, truth[actions]) + rng.normal(scale=0.1, size=300)
    for x, a, r in zip(X, actions, rewards, strict=True):
        policy.update(x, int(a), float(r))
    return policy, rng.normal(size=D)


@pytest.mark.parametrize("name", LINEAR)
def test_contributions_add_up_to_the_scored_mean(name: str) -> None:
    policy, x = trained(LINEAR[name])
    explanation = policy.explain(x)
    scores = policy.score(x)
    assert explanation.contributions is not None
    assert explanation.contributions.shape == (K, D)
    # The mean is the one the policy scores with (same kernel), bit for bit.
    assert np.array_equal(explanation.mean, scores.mean)
    for k in range(K):
        parts = explanation.contributions[k]
        total = math.fsum(parts.tolist())
        scale = math.fsum(np.abs(parts).tolist()) + abs(explanation.mean[k])
        assert abs(total - explanation.mean[k]) <= 1e-12 * scale, (k, total, explanation.mean)
    # Not trivially zero: the problem has signal in every action.
    assert np.all(np.abs(explanation.contributions).sum(axis=1) > 0.1)


def test_linear_contributions_are_theta_times_x() -> None:
    policy, x = trained(LINEAR["linucb"])
    assert isinstance(policy, LinUCB)
    A_inv = np.linalg.inv(policy.A_)
    theta = np.einsum("kij,kj->ki", A_inv, policy.b_)
    np.testing.assert_allclose(policy.explain(x).contributions, theta * x, rtol=1e-9, atol=1e-12)


def test_hybrid_contributions_join_shared_and_own_coefficients() -> None:
    policy, x = trained(LINEAR["hybrid"])
    assert isinstance(policy, HybridLinUCB)
    expected = (policy.beta_ + policy.theta_) * x
    np.testing.assert_allclose(policy.explain(x).contributions, expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("name", "scale"), [("linucb", 0.7), ("thompson", 0.3), ("epsilon_greedy", 1.0)]
)
def test_width_is_the_policy_uncertainty(name: str, scale: float) -> None:
    policy, x = trained(LINEAR[name])
    assert isinstance(policy, LinUCB | LinearThompsonSampling | RidgeEpsilonGreedy)
    quadratic = np.einsum("i,kij,j->k", x, np.linalg.inv(policy.A_), x)
    np.testing.assert_allclose(policy.explain(x).width, scale * np.sqrt(quadratic), rtol=1e-9)
    if name != "epsilon_greedy":  # its score has no width; its explanation has α = 1's
        np.testing.assert_array_equal(policy.explain(x).width, policy.score(x).width)


@pytest.mark.parametrize("name", ["linucb", "thompson", "hybrid", "auto"])
def test_width_is_the_one_the_score_adds(name: str) -> None:
    policy, x = trained(LINEAR[name])
    np.testing.assert_array_equal(policy.explain(x).width, policy.score(x).width)


@pytest.mark.parametrize("name", NOT_LINEAR)
def test_policies_that_are_not_linear_fall_back_to_their_scores(name: str) -> None:
    policy, x = trained(NOT_LINEAR[name])
    explanation = policy.explain(x)
    assert explanation.contributions is None
    scores = policy.score(x)
    np.testing.assert_array_equal(explanation.mean, scores.mean)
    np.testing.assert_array_equal(explanation.width, scores.width)


def test_explain_changes_nothing() -> None:
    policy, x = trained(LINEAR["linucb"])
    before = policy.get_state()
    policy.explain(x)
    for name, value in policy.get_state().items():
        np.testing.assert_array_equal(value, before[name])


# -- through the API ---------------------------------------------------------------------


@pytest.fixture(params=[True, False], ids=["hot-path", "fastapi"])
def app(request: pytest.FixtureRequest, model_file: Path, tmp_path: Path) -> Iterator[FastAPI]:
    settings = Settings(model_path=model_file, db_path=tmp_path / "events.db", seed=0)
    yield create_app(settings, hot_path=request.param)


def rank(client: TestClient, **body: object) -> dict[str, object]:
    response = client.post("/v1/rank", json={"context": SEED_CONTEXT, **body})
    assert response.status_code == 200, response.text
    answer: dict[str, object] = response.json()
    return answer


def test_rank_explains_every_action(app: FastAPI) -> None:
    with TestClient(app) as client:
        client.post("/v1/admin/actions/invite_friend/disable")
        answer = rank(client, explain=True, excluded_actions=["suggest_new_app"])
        engine = app.state.engine
        names = engine.schema.feature_names()
        ranking = answer["ranking"]
        assert isinstance(ranking, list)
        reasons = {entry["action_id"]: entry["reason"] for entry in ranking}
        assert reasons["invite_friend"] == "disabled"
        assert reasons["suggest_new_app"] == "excluded"
        eligible = [e for e in ranking if e["reason"] not in ("disabled", "excluded")]
        best = max(e["score"] for e in eligible)
        for entry in ranking:
            assert list(entry["contributions"]) == names
            total = math.fsum(entry["contributions"].values())
            assert total == pytest.approx(entry["mean"], rel=1e-12, abs=1e-12)
            assert entry["width"] >= 0
            if entry["reason"] in ("disabled", "excluded"):
                assert entry["probability"] == 0.0
            elif entry["score"] == best:
                assert entry["reason"] == "best"
            else:
                assert entry["reason"] == "explored" and entry["probability"] > 0
            # LinUCB's score is its mean plus its width.
            assert entry["score"] == pytest.approx(entry["mean"] + entry["width"], rel=1e-12)
        assert [e["reason"] for e in eligible].count("best") == 1
        assert answer["explanation_version"] == answer["model_version"]


def test_rank_without_explain_is_unchanged(app: FastAPI) -> None:
    with TestClient(app) as client:
        answer = rank(client)
        assert "explanation_version" not in answer
        ranking = answer["ranking"]
        assert isinstance(ranking, list)
        assert all(set(entry) == {"action_id", "probability", "score"} for entry in ranking)


def test_replayed_decision_is_explained_from_its_log(app: FastAPI) -> None:
    with TestClient(app) as client:
        first = rank(client, event_id="e-1", excluded_actions=["deep_link_to_store"])
        again = rank(client, event_id="e-1", explain=True)
        assert again["replayed"] is True
        ranking = again["ranking"]
        assert isinstance(ranking, list)
        reasons = {entry["action_id"]: entry["reason"] for entry in ranking}
        # Excluded in the logged decision, which is what is returned and explained.
        assert reasons["deep_link_to_store"] == "excluded"
        assert again["action_id"] == first["action_id"]


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_bad_explain_is_refused_and_nothing_is_logged(app: FastAPI, value: object) -> None:
    with TestClient(app) as client:
        engine = app.state.engine
        version = engine.model_version
        response = client.post("/v1/rank", json={"context": SEED_CONTEXT, "explain": value})
        assert response.status_code == 422
        body = response.json()
        assert body["error"] == "validation_error"
        assert [d["field"] for d in body["detail"]] == ["explain"]
        assert "boolean" in body["detail"][0]["message"]
        assert engine.store.count("decisions") == 0
        assert engine.model_version == version
        assert len(ACTIONS) == len(engine.actions)


def test_an_eligible_action_the_rule_never_serves_is_capped() -> None:
    # ε = 0: LinUCB serves its argmax only; every other eligible action has probability 0.
    schema = load_default_schema()
    policy = LinUCB(exploration=EpsilonGreedy(epsilon=0.0))
    engine = Engine.from_prior(schema, np.random.default_rng(0), policy)
    x = schema.vectorize(SEED_CONTEXT)
    for _ in range(20):
        engine.policy.update(x, 2, 1.0)  # suggest_new_app is clearly the best here
    record = engine.decide(SEED_CONTEXT, engine.eligible_mask(excluded=["invite_friend"]))
    content = rank_body(record)
    explain_ranking(content, record, engine)
    ranking = content["ranking"]
    reasons = {entry["action_id"]: entry["reason"] for entry in ranking}
    assert reasons == {
        "suggest_new_app": "best",
        "invite_friend": "excluded",
        "show_bonus_offer": "capped",
        "deep_link_to_store": "capped",
    }
    assert record.action == "suggest_new_app" and record.probability == 1.0
    assert content["explanation_version"] == record.model_version


def test_the_apps_choice_is_the_baseline_in_apprentice_mode(
    model_file: Path, tmp_path: Path
) -> None:
    settings = Settings(
        model_path=model_file, db_path=tmp_path / "events.db", seed=0, apprentice=True,
        auto_graduate=False,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        answer = rank(client, explain=True, baseline_action="invite_friend")
    ranking = answer["ranking"]
    assert isinstance(ranking, list)
    by_action = {entry["action_id"]: entry for entry in ranking}
    assert by_action["invite_friend"]["reason"] == "baseline"
    assert by_action["invite_friend"]["probability"] > 0.5
    others = [e["reason"] for a, e in by_action.items() if a != "invite_friend"]
    assert set(others) <= {"best", "explored"} and all(
        by_action[a]["probability"] > 0 for a in by_action
    )


# -- why an action could not be served: the request, an admin, rules, caps, cooldowns ----------

CONSTRAINTS = {
    "eligibility": {"invite_friend": {"device": "android"}},
    "caps": [{"action": "show_bonus_offer", "max": 1, "window_seconds": 3600}],
    "cooldowns": [
        {"action": "deep_link_to_store", "after_serve_seconds": 600, "after_negative_seconds": 900}
    ],
}


@pytest.fixture(params=[True, False], ids=["hot-path", "fastapi"])
def constrained(
    request: pytest.FixtureRequest, model_file: Path, tmp_path: Path
) -> Iterator[tuple[TestClient, Path]]:
    db = tmp_path / "events.db"
    settings = Settings(model_path=model_file, db_path=db, seed=0, constraints=CONSTRAINTS)
    with TestClient(create_app(settings, hot_path=request.param)) as client:
        yield client, db


def logged_at(db: Path, event_id: object) -> float:
    with sqlite3.connect(db) as connection:
        (created_at,) = connection.execute(
            "SELECT created_at FROM decisions WHERE event_id = ?", (event_id,)
        ).fetchone()
    return float(created_at)


def test_explain_names_the_rule_that_kept_each_action_out(
    constrained: tuple[TestClient, Path],
) -> None:
    client, db = constrained
    user = {"user_id": "u-7"}
    bonus = rank(client, actions=["show_bonus_offer"], **user)  # the cap's one serve
    link = rank(client, actions=["deep_link_to_store"], **user)  # starts the cooldown
    assert (bonus["action_id"], link["action_id"]) == ("show_bonus_offer", "deep_link_to_store")
    negative = client.post(f"/v1/events/{link['event_id']}/reward", json={"value": 0.0})
    assert negative.status_code == 200, negative.text  # and a negative reward: a second one
    answer = rank(client, explain=True, event_id="why-1", **user)
    assert answer["action_id"] == "suggest_new_app" and answer["probability"] == 1.0
    ranking = answer["ranking"]
    assert isinstance(ranking, list)
    by_action = {entry["action_id"]: entry for entry in ranking}
    assert by_action["suggest_new_app"]["reason"] == "best"
    assert "unavailable" not in by_action["suggest_new_app"]

    ineligible = by_action["invite_friend"]
    assert (ineligible["reason"], ineligible["probability"]) == ("ineligible", 0.0)
    assert ineligible["unavailable"] == [
        {
            "cause": "eligibility",
            "rule": "constraints.eligibility.invite_friend",
            "message": "Ineligible by rule constraints.eligibility.invite_friend: "
            '{"device": "android"} does not hold for this context.',
            "condition": {"device": "android"},
        }
    ]

    capped = by_action["show_bonus_offer"]
    assert (capped["reason"], capped["probability"]) == ("frequency_capped", 0.0)
    (cap,) = capped["unavailable"]
    served_at = logged_at(db, bonus["event_id"])
    assert {k: v for k, v in cap.items() if k != "message"} == {
        "cause": "cap",
        "rule": "constraints.caps[0]",
        "serves": 1,
        "max_serves": 1,
        "window_seconds": 3600.0,
        "until": served_at + 3600,
    }
    assert cap["message"].startswith(
        "Capped by rule constraints.caps[0]: 1 serves to this user in the last 3600 s, "
        "at most 1; free again at "
    )

    cooling = by_action["deep_link_to_store"]
    assert (cooling["reason"], cooling["probability"]) == ("cooling_down", 0.0)
    after_serve, after_negative = cooling["unavailable"]
    assert after_serve["rule"] == after_negative["rule"] == "constraints.cooldowns[0]"
    assert (after_serve["after"], after_serve["until"]) == (
        "serve",
        logged_at(db, link["event_id"]) + 600,
    )
    assert after_negative["after"] == "negative"
    assert after_negative["until"] > logged_at(db, link["event_id"]) + 900
    assert after_serve["message"].startswith(
        "Cooling down by rule constraints.cooldowns[0] until "
    ) and after_serve["message"].endswith("after a serve to this user.")

    # The same decision replayed is explained as it was made: the history before it.
    again = rank(client, explain=True, event_id="why-1", **user)
    assert again["replayed"] is True
    assert again["ranking"] == ranking


def test_every_cause_is_listed_the_most_direct_first(
    constrained: tuple[TestClient, Path],
) -> None:
    client, db = constrained
    rank(client, actions=["show_bonus_offer"], user_id="u-8")
    disabled = client.post("/v1/admin/actions/invite_friend/disable")
    assert disabled.status_code == 200, disabled.text
    answer = rank(client, explain=True, excluded_actions=["show_bonus_offer"], user_id="u-8")
    ranking = answer["ranking"]
    assert isinstance(ranking, list)
    causes = {e["action_id"]: [c["cause"] for c in e.get("unavailable", [])] for e in ranking}
    reasons = {e["action_id"]: e["reason"] for e in ranking}
    assert causes["show_bonus_offer"] == ["request", "cap"]
    assert reasons["show_bonus_offer"] == "excluded"
    assert causes["invite_friend"] == ["disabled", "eligibility"]
    assert reasons["invite_friend"] == "disabled"
    # Without a user, caps do not apply: only what the request and the rules did.
    answer = rank(client, explain=True, excluded_actions=["deep_link_to_store"])
    ranking = answer["ranking"]
    assert isinstance(ranking, list)
    causes = {e["action_id"]: [c["cause"] for c in e.get("unavailable", [])] for e in ranking}
    assert causes == {
        "show_bonus_offer": [],
        "invite_friend": ["disabled", "eligibility"],
        "suggest_new_app": [],
        "deep_link_to_store": ["request"],
    }
    with sqlite3.connect(db) as connection:  # explaining logged nothing more
        (n_decisions,) = connection.execute("SELECT COUNT(*) FROM decisions").fetchone()
    assert n_decisions == 3


@given(
    serves=st.lists(
        st.tuples(st.sampled_from(ACTIONS), st.floats(0.0, 100.0, allow_nan=False)), max_size=12
    ),
    negatives=st.lists(
        st.tuples(st.sampled_from(ACTIONS), st.floats(0.0, 100.0, allow_nan=False)), max_size=4
    ),
    now=st.floats(50.0, 150.0, allow_nan=False),
    max_serves=st.integers(0, 3),
)
def test_the_caps_named_are_exactly_those_that_mask(
    serves: list[tuple[str, float]],
    negatives: list[tuple[str, float]],
    now: float,
    max_serves: int,
) -> None:
    config = {
        "caps": [
            {"action": "show_bonus_offer", "max": max_serves, "window_seconds": 30},
            {"max": 2, "window_seconds": 60},
        ],
        "cooldowns": [{"after_serve_seconds": 5, "after_negative_seconds": 20}],
    }
    rules = frequency_rules_from_config(config, ACTIONS)
    assert rules is not None
    history = UserHistory(0, tuple(sorted(serves, key=lambda s: s[1])), tuple(negatives))
    held = rules.held(history, now, ACTIONS)
    mask = rules.mask(history, now, ACTIONS)
    assert set(held) == {k for k in range(len(ACTIONS)) if not mask[k]}
    for k, reasons in held.items():
        for h in reasons:
            if h.kind == "cap":
                assert h.cap is not None and h.serves is not None
                assert h.serves >= h.cap.max_serves
                # Just after `until` the cap lets the action go (a serve left the window);
                # just before, it holds it. (At `until` itself rounding decides.)
                if h.until is not None:
                    step = 1e-9 * max(1.0, abs(h.until))
                    later = rules.held(history, h.until + step, ACTIONS).get(k, [])
                    assert all(o.rule != h.rule for o in later)
                    if h.until - step > now:
                        sooner = rules.held(history, h.until - step, ACTIONS).get(k, [])
                        assert any(o.rule == h.rule for o in sooner)
            else:
                assert h.until is not None and h.until > now
