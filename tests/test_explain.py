"""Explanations: each feature's part of an action's mean, its width, and why it was served.

For the linear policies the contributions ``θ_k[j]·x[j]`` must add up to the mean the policy
scores with (to rounding: the kernel sums in its own order), and the width must be the one
the policy's score uses. Through ``POST /v1/rank`` with ``"explain": true``: every action
gets a reason that matches its probability and the request's exclusions and the admin's
switches; a bad ``explain`` is a 422 naming it, and nothing is logged or learned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from banditrec.api import create_app
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
