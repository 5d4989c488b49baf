"""Slates over HTTP: ``"slots": k`` on ``POST /v1/rank`` (k distinct actions, each slot a
logged decision with its propensity given the slots above), rewards and learning per slot,
and what slates refuse (status, message, nothing logged or learned)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from banditrec.api import create_app
from banditrec.config import Settings
from banditrec.engine import Engine, prior_model
from banditrec.exploration import EpsilonGreedy
from banditrec.features import load_default_schema
from banditrec.ope import IPS
from banditrec.policies import LinUCB
from banditrec.sim import AppSimulator
from conftest import ACTIONS, SEED_CONTEXT


@pytest.fixture
def client(model_file: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(model_path=model_file, db_path=tmp_path / "e.db", seed=0)
    with TestClient(create_app(settings)) as c:
        yield c


def _engine(c: TestClient) -> Any:
    return c.app.state.engine  # type: ignore[attr-defined]


def test_a_slate_has_k_distinct_actions_each_logged_with_its_propensity(
    client: TestClient,
) -> None:
    body = {"context": SEED_CONTEXT, "slots": 3, "event_id": "home-1"}
    response = client.post("/v1/rank", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    slots = answer["slots"]
    assert [s["slot"] for s in slots] == [0, 1, 2]
    assert len({s["action_id"] for s in slots}) == 3
    assert [s["event_id"] for s in slots] == ["home-1", "home-1:1", "home-1:2"]
    assert (slots[0]["action_id"], slots[0]["probability"]) == (
        answer["action_id"],
        answer["probability"],
    )
    engine = _engine(client)
    above: set[str] = set()
    for s in slots:
        logged = engine.store.get_decision(s["event_id"])
        assert logged.action == s["action_id"] and logged.probability == s["probability"]
        # What was left for this slot, and the distribution over it (the policy's, now).
        assert set(logged.eligible) == set(ACTIONS) - above
        mask = np.array([a not in above for a in ACTIONS])
        _, p = engine.policy.distribution(logged.x, mask)
        assert p[ACTIONS.index(s["action_id"])] == pytest.approx(s["probability"], abs=1e-12)
        above.add(s["action_id"])


def test_slot_probabilities_match_their_frequencies(client: TestClient) -> None:
    """Over 400 slates, how often each action fills slot 1 after a given slot 0 matches the
    logged conditional probability (loose bounds: ε-greedy makes them 0.99 or 0.005)."""
    seen: dict[tuple[str, str], list[float]] = {}
    for i in range(400):
        slots = client.post(
            "/v1/rank", json={"context": SEED_CONTEXT, "slots": 2, "event_id": f"s{i}"}
        ).json()["slots"]
        seen.setdefault((slots[0]["action_id"], slots[1]["action_id"]), []).append(
            slots[1]["probability"]
        )
    top = max(seen, key=lambda pair: len(seen[pair]))
    count = sum(len(v) for (first, _), v in seen.items() if first == top[0])
    assert len(seen[top]) / count == pytest.approx(seen[top][0], abs=0.05)


def test_rewards_per_slot_are_learned_for_that_slot(client: TestClient) -> None:
    engine = _engine(client)
    answer = client.post(
        "/v1/rank", json={"context": SEED_CONTEXT, "slots": 3, "event_id": "page-7"}
    ).json()
    before = engine.policy.n_updates_.copy()
    third = answer["slots"][2]["action_id"]
    reward = client.post("/v1/events/page-7/reward", json={"value": 1.0, "slot": 2})
    assert reward.status_code == 200, reward.text
    assert reward.json()["event_id"] == "page-7:2" and reward.json()["learned"]
    learned = engine.policy.n_updates_ - before
    assert learned.tolist() == [int(a == third) for a in ACTIONS]
    # The slot's own event id works too; a slot reward is idempotent like any other.
    again = client.post("/v1/events/page-7:2/reward", json={"value": 1.0})
    assert again.json()["duplicate"] is True
    first = client.post("/v1/events/page-7/reward", json={"value": 0.5})
    assert first.json()["event_id"] == "page-7" and first.json()["learned"]


def test_a_reward_for_a_slot_the_slate_does_not_have_is_404(client: TestClient) -> None:
    client.post("/v1/rank", json={"context": SEED_CONTEXT, "slots": 2, "event_id": "p"})
    response = client.post("/v1/events/p/reward", json={"value": 1.0, "slot": 5})
    assert response.status_code == 404
    assert response.json()["error"] == "event_not_found" and "p:5" in response.json()["message"]


@pytest.mark.parametrize(
    ("body", "status", "error", "words"),
    [
        ({"slots": 5}, 422, "no_eligible_action", "asks for 5 slots, but only 4 distinct"),
        (
            {"slots": 3, "excluded_actions": ["invite_friend", "suggest_new_app"]},
            422,
            "no_eligible_action",
            "asks for 3 slots, but only 2 distinct",
        ),
        ({"slots": 0}, 422, "validation_error", "slots"),
        ({"slots": "2"}, 422, "validation_error", "slots"),
        (
            {"slots": 2, "baseline_action": "invite_friend"},
            422,
            "validation_error",
            "not served in apprentice mode",
        ),
    ],
    ids=["too-many", "too-many-left", "zero", "string", "baseline"],
)
def test_a_slate_that_cannot_be_served_is_refused_whole(
    client: TestClient, body: dict[str, Any], status: int, error: str, words: str
) -> None:
    engine = _engine(client)
    before = engine.store.count("decisions"), engine.policy.n_updates_.copy()
    response = client.post("/v1/rank", json={"context": SEED_CONTEXT, **body})
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert words in response.json()["message"]
    assert engine.store.count("decisions") == before[0]
    assert engine.policy.n_updates_.tolist() == before[1].tolist()


def test_one_slot_is_a_single_decision_and_a_repeated_slate_is_replayed(
    client: TestClient,
) -> None:
    one = client.post("/v1/rank", json={"context": SEED_CONTEXT, "slots": 1}).json()
    assert one["slots"] == [
        {
            "slot": 0,
            "action_id": one["action_id"],
            "probability": one["probability"],
            "event_id": one["event_id"],
        }
    ]
    body = {"context": SEED_CONTEXT, "slots": 3, "event_id": "again"}
    first = client.post("/v1/rank", json=body).json()
    second = client.post("/v1/rank", json=body).json()
    assert second["replayed"] is True and second["slots"] == first["slots"]
    plain = client.post("/v1/rank", json={"context": SEED_CONTEXT}).json()
    assert "slots" not in plain  # only slates answer slots


def test_per_slot_ips_on_slate_logs_lands_on_the_truth() -> None:
    """20,000 two-slot slates of a learned LinUCB (ε = 0.2) on the simulator, with
    position-aware rewards (slot 1 is seen 60 % as often as slot 0). The evaluated policy
    fills slot 0 with the truly best action and slot 1 with the best of the rest (given the
    logged slot 0); IPS per slot with the logged propensities lands on each slot's true
    value."""
    schema, sim = load_default_schema(), AppSimulator()
    warm_policy = LinUCB(exploration=EpsilonGreedy(0.2)).reset(len(ACTIONS), schema.n_features)
    warm = sim.simulate_logged(3_000, np.random.default_rng(31))
    warm_actions = np.array([ACTIONS.index(str(a)) for a in warm["action"]])
    warm_policy.update_batch(
        schema.vectorize_many(warm), warm_actions, np.asarray(warm["reward"], dtype=float)
    )
    model = prior_model(schema, LinUCB(exploration=EpsilonGreedy(0.2)))
    model.policy.set_state(warm_policy.get_state())
    engine = Engine(model, np.random.default_rng(32))  # no log: deciding only
    n, seen = 20_000, (1.0, 0.6)
    rng = np.random.default_rng(33)
    columns = sim.sample_contexts(n, rng)
    mu = sim.expected_rewards(columns)

    async def slates() -> list[list[Any]]:
        out = []
        for i in range(n):
            context = {k: v[i].item() for k, v in columns.items() if k != "user_id"}
            out.append(await engine.rank_slate(context, 2))
        return out

    logged = asyncio.run(slates())
    for slot in (0, 1):
        action = np.array([s[slot].action_index for s in logged])
        propensity = np.array([s[slot].probability for s in logged])
        reward = (rng.random(n) < seen[slot] * mu[np.arange(n), action]).astype(float)
        best = mu.copy()
        if slot == 1:  # the best of what the logged slot 0 left
            best[np.arange(n), [s[0].action_index for s in logged]] = -np.inf
        target_action = best.argmax(axis=1)
        truth = float(seen[slot] * mu[np.arange(n), target_action].mean())
        target = np.zeros((n, len(ACTIONS)))
        target[np.arange(n), target_action] = 1.0
        terms = IPS().round_rewards(
            reward=reward, action=action, propensity=propensity, action_dist=target
        )
        se = float(terms.std() / np.sqrt(n))
        assert abs(float(terms.mean()) - truth) < 4 * se, (slot, terms.mean(), truth, se)
