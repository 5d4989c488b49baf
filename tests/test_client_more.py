"""The typed client's batches, slates and lifecycle calls, against a real `banditrec serve`.

As tests/test_client.py: a real server and a real TCP proxy (`FaultyProxy`) that loses
replies after the server acted, or answers 502/503 itself; nothing is mocked. Each refusal
is checked for its class, its code and message, and that nothing was logged or switched.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator

import pytest

from banditrec.client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    Decision,
    NotFound,
    SlotDecision,
    Unavailable,
    ValidationFailed,
)
from conftest import ACTIONS, SEED_CONTEXT
from serving import free_port, running_server
from test_client import FaultyProxy, Served, fast

MAX_BATCH = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """No keys, aggregation earliest, batches of at most three contexts."""
    root = tmp_path_factory.mktemp("more")
    with running_server(root, seed="0", max_batch_size=str(MAX_BATCH)) as served:
        yield Served(served, root / "events.db")


def logged(served: Served) -> int:
    """Every decision in the log (a batch's event ids are the server's)."""
    with sqlite3.connect(served.db) as db:
        return int(db.execute("SELECT count(*) FROM decisions").fetchone()[0])


def switches(served: Served) -> int:
    with sqlite3.connect(served.db) as db:
        return int(db.execute("SELECT count(*) FROM learn_events").fetchone()[0])


# ------------------------------------------------------------------------------ batches


def test_rank_batch_decides_once_per_context_in_order(server: Served) -> None:
    contexts = [SEED_CONTEXT, {**SEED_CONTEXT, "segment": "low"}, SEED_CONTEXT]
    with Client(server.url, trust_env=False) as client:
        before = logged(server)
        decisions = client.rank_batch(
            contexts, user_ids=["u1", None, "u3"], excluded_actions=["invite_friend"]
        )
        assert len(decisions) == 3 and all(isinstance(d, Decision) for d in decisions)
        assert len({d.event_id for d in decisions}) == 3
        assert logged(server) == before + 3
        for decision in decisions:
            assert server.decisions(decision.event_id) == 1
            assert decision.action_id != "invite_friend" and decision.attempts == 1
            assert decision.probabilities["invite_friend"] == 0.0
            assert set(decision.probabilities) == set(ACTIONS)
            assert not decision.replayed and decision.slots == ()
        assert client.reward(decisions[1].event_id, 1.0).status == "learned"

        only = client.rank_batch([SEED_CONTEXT], actions=["suggest_new_app"])
        assert [d.action_id for d in only] == ["suggest_new_app"]


def test_a_refused_batch_logs_nothing(server: Served) -> None:
    with Client(server.url, trust_env=False) as client:
        before = logged(server)
        with pytest.raises(ValidationFailed) as bad:
            client.rank_batch([SEED_CONTEXT, {**SEED_CONTEXT, "device": ""}])
        assert [d.field for d in bad.value.detail] == ["contexts.1.device"]
        with pytest.raises(ValidationFailed) as many:
            client.rank_batch([SEED_CONTEXT] * (MAX_BATCH + 1))
        assert f"at most {MAX_BATCH} contexts" in many.value.detail[0].message
        with pytest.raises(ValidationFailed) as uneven:
            client.rank_batch([SEED_CONTEXT] * 2, user_ids=["u1"])
        assert "user_ids has 1 entries for 2 contexts" in uneven.value.detail[0].message
        with pytest.raises(ValidationFailed) as unknown:
            client.rank_batch([SEED_CONTEXT], actions=["no_such_action"])
        assert "no_such_action" in unknown.value.message + str(unknown.value.detail)
        assert logged(server) == before


def test_a_batch_is_not_retried_after_a_lost_reply(server: Served) -> None:
    with FaultyProxy(server.url) as proxy, fast(proxy.url) as client:
        before = logged(server)
        proxy.drop = 1  # the server logs the batch; its reply never reaches the client
        with pytest.raises(ConnectionFailed) as caught:
            client.rank_batch([SEED_CONTEXT, SEED_CONTEXT])
        assert (caught.value.attempts, proxy.requests) == (1, 1)
        assert "may have reached the server" in caught.value.message
        assert logged(server) == before + 2  # logged once: a retry would have made it 4
        proxy.replace = [503]
        with pytest.raises(Unavailable):
            client.rank_batch([SEED_CONTEXT])
        assert proxy.requests == 2 and logged(server) == before + 3


def test_a_batch_is_retried_while_surely_unsent() -> None:
    with (
        fast(f"http://127.0.0.1:{free_port()}", retries=2) as client,
        pytest.raises(ConnectionFailed) as caught,
    ):
        client.rank_batch([SEED_CONTEXT])
    assert (caught.value.code, caught.value.attempts) == ("connection_failed", 3)
    assert "ConnectError" in caught.value.message
    assert "may have reached" not in caught.value.message


# ------------------------------------------------------------------------------- slates


def test_a_slate_exposes_its_slots_and_each_slot_is_rewarded(server: Served) -> None:
    with Client(server.url, trust_env=False) as client:
        decision = client.rank(SEED_CONTEXT, slots=3)
        assert len(decision.slots) == 3 and all(isinstance(s, SlotDecision) for s in decision.slots)
        first = decision.slots[0]
        assert (first.slot, first.action_id, first.event_id) == (
            0,
            decision.action_id,
            decision.event_id,
        )
        assert first.probability == pytest.approx(decision.probability)
        assert [s.event_id for s in decision.slots[1:]] == [
            f"{decision.event_id}:1",
            f"{decision.event_id}:2",
        ]
        assert len({s.action_id for s in decision.slots}) == 3
        assert all(0.0 < s.probability <= 1.0 for s in decision.slots)
        for entry in decision.slots:
            assert server.decisions(entry.event_id) == 1

        receipt = client.reward(decision.event_id, 1.0, slot=2)
        assert (receipt.event_id, receipt.status) == (f"{decision.event_id}:2", "learned")
        assert client.reward(decision.event_id, 1.0, slot=2).status == "duplicate"
        assert client.reward(decision.event_id, 0.0).event_id == decision.event_id
        assert server.rewards(f"{decision.event_id}:1") == []

        before = logged(server)
        with pytest.raises(ValidationFailed) as bad:
            client.rank(SEED_CONTEXT, slots=0)
        assert [d.field for d in bad.value.detail] == ["slots"]
        with pytest.raises(ValidationFailed) as bad_slot:
            client.reward(decision.event_id, 1.0, slot=-1)
        assert [d.field for d in bad_slot.value.detail] == ["slot"]
        assert logged(server) == before
        assert server.rewards(f"{decision.event_id}:1") == []


def test_a_lost_slate_reply_is_retried_and_logged_once(server: Served) -> None:
    with FaultyProxy(server.url) as proxy, fast(proxy.url) as client:
        proxy.drop = 1
        decision = client.rank(SEED_CONTEXT, slots=2)
        assert (decision.attempts, decision.replayed, proxy.requests) == (2, True, 2)
        assert server.decisions(decision.event_id) == 1
        assert server.decisions(f"{decision.event_id}:1") == 1
        proxy.drop = 1
        receipt = client.reward(decision.event_id, 1.0, slot=1)
        assert (receipt.status, receipt.recovered, receipt.attempts) == ("learned", True, 2)
        assert server.rewards(f"{decision.event_id}:1") == [(1.0, "learned"), (1.0, "duplicate")]


# ---------------------------------------------------------------------------- lifecycle


def test_lifecycle_candidates_models_and_serving_mode(server: Served) -> None:
    with Client(server.url, trust_env=False) as client:
        status = client.lifecycle_status()
        assert status["serving"] == "own" and status["candidates"] == []

        seq = switches(server)
        added = client.add_candidate("narrow", policy="linucb", params={"alpha": 0.1})
        assert [c["name"] for c in added] == ["narrow"]
        assert [c["name"] for c in client.candidates()] == ["narrow"]
        with pytest.raises(Conflict) as exists:
            client.add_candidate("narrow", policy="softmax")
        assert (exists.value.code, exists.value.status) == ("candidate_exists", 409)
        assert "'narrow'" in exists.value.message
        with pytest.raises(ValidationFailed) as neither:
            client.add_candidate("x")
        assert "exactly one of policy or model_base64" in str(neither.value.detail)
        with pytest.raises(Conflict) as unproven:
            client.promote_candidate("narrow")
        assert unproven.value.code == "not_proven"
        with pytest.raises(NotFound):
            client.promote_candidate("nope")
        assert switches(server) == seq
        assert client.remove_candidate("narrow") == []
        with pytest.raises(NotFound) as gone:
            client.remove_candidate("narrow")
        assert "'narrow'" in gone.value.message

        model = client.export_model()
        filed = client.add_candidate("file", model=model)
        assert [c["name"] for c in filed] == ["file"]
        client.remove_candidate("file")

        assert client.models() == []
        with pytest.raises(NotFound) as unknown:
            client.activate_model("v9")
        assert "'v9'" in unknown.value.message
        kept = client.upload_model(model, "kept")
        assert kept["switch"] is None and kept["version"]["label"] == "kept"
        served = client.upload_model(model, "served", activate=True)
        assert served["switch"]["kind"] == "promote"
        versions = {v["id"]: v for v in client.models()}
        assert versions[served["switch"]["target"]]["live"]
        back = client.activate_model(kept["version"]["id"])
        assert (back["kind"], back["target"]) == ("rollback", kept["version"]["id"])
        assert client.lifecycle_status()["live_version"] == kept["version"]["id"]

        assert client.serve_mode("apprentice", "try the rule")["kind"] == "serve_mode"
        assert client.lifecycle_status()["serving"] == "apprentice"
        client.serve_mode("own")
        assert client.lifecycle_status()["serving"] == "own"


def test_lifecycle_writes_are_not_retried_and_reads_are(server: Served) -> None:
    with Client(server.url, trust_env=False) as direct:
        model = direct.export_model()
        n_versions = len(direct.models())
    with FaultyProxy(server.url) as proxy, fast(proxy.url) as client:
        proxy.drop = 1  # the server keeps the version; its reply is lost
        with pytest.raises(ConnectionFailed) as caught:
            client.upload_model(model, "lost")
        assert (caught.value.attempts, proxy.requests) == (1, 1)
        proxy.drop = 1  # a read is retried
        versions = client.models()
        assert proxy.requests == 3
        assert [v["label"] for v in versions[n_versions:]] == ["lost"]  # kept once
        proxy.replace = [502]
        with pytest.raises(Unavailable):
            client.serve_mode("own")
        assert proxy.requests == 4


def test_async_client_batches_slates_and_lifecycle(server: Served) -> None:
    async def main() -> None:
        async with AsyncClient(server.url, backoff=0.01, trust_env=False) as client:
            decisions = await client.rank_batch([SEED_CONTEXT, SEED_CONTEXT])
            assert len({d.event_id for d in decisions}) == 2
            slate = await client.rank(SEED_CONTEXT, slots=2)
            assert [s.slot for s in slate.slots] == [0, 1]
            receipt = await client.reward(slate.event_id, 1.0, slot=1)
            assert receipt.event_id == f"{slate.event_id}:1"

            assert (await client.lifecycle_status())["serving"] in ("own", "apprentice")
            added = await client.add_candidate("async_soft", policy="softmax")
            assert "async_soft" in [c["name"] for c in added]
            assert "async_soft" in [c["name"] for c in await client.candidates()]
            with pytest.raises(Conflict):
                await client.promote_candidate("async_soft")
            await client.remove_candidate("async_soft")
            kept = await client.upload_model(await client.export_model(), "async")
            assert kept["version"]["id"] in [v["id"] for v in await client.models()]
            switch = await client.activate_model(kept["version"]["id"])
            assert switch["kind"] == "rollback"
            assert (await client.serve_mode("own"))["kind"] == "serve_mode"

    asyncio.run(main())
