"""The engine with a real event log: decide → log, reward → learn, replicas, recovery."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from banditrec.engine import Engine, UnknownActionError, prior_model
from banditrec.features import load_default_schema
from banditrec.learner import Learner, recover_model
from banditrec.sim import AppSimulator
from banditrec.snapshot_store import SnapshotDirectory
from banditrec.store import RewardOutcome, RewardRules
from banditrec.store.sqlite import SQLiteEventStore
from conftest import SEED_CONTEXT as CONTEXT

SCHEMA = load_default_schema()


class Clock:
    """A clock the test moves by hand, so reward windows need no sleeping."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_engine(
    tmp_path: Path, seed: int = 0, rules: RewardRules | None = None, clock: Clock | None = None
) -> Engine:
    store = SQLiteEventStore(tmp_path / "events.db", SCHEMA.encoding_hash)
    model = prior_model(SCHEMA)
    model.log_offset = store.epoch_offset(model.version)
    return Engine(model, np.random.default_rng(seed), store, rules, clock or Clock())


def contexts(n: int, seed: int) -> list[dict[str, object]]:
    columns = AppSimulator().sample_contexts(n, np.random.default_rng(seed))
    return [{f: columns[f][i].item() for f in SCHEMA.field_names} for i in range(n)]


def test_every_decision_is_in_the_log_when_rank_returns(tmp_path: Path) -> None:
    engine = open_engine(tmp_path)

    async def serve() -> list[str]:
        records = await asyncio.gather(*(engine.rank(c) for c in contexts(50, 1)))
        return [r.event_id for r in records]

    event_ids = asyncio.run(serve())
    assert engine.store is not None
    for event_id in event_ids:
        logged = engine.store.get_decision(event_id)
        assert logged is not None and 0 < logged.probability <= 1
    engine.close()


def test_a_reward_is_learned_at_once_by_the_receiving_engine(tmp_path: Path) -> None:
    engine = open_engine(tmp_path)

    async def loop() -> None:
        record = await engine.rank(CONTEXT)
        before = engine.policy.get_state()
        result = await engine.reward(record.event_id, 1.0)
        assert result.outcome is RewardOutcome.learned
        after = engine.policy.get_state()
        assert after["n_updates_"].sum() == before["n_updates_"].sum() + 1
        assert not np.array_equal(after["b_"], before["b_"])
        duplicate = await engine.reward(record.event_id, 1.0)
        assert duplicate.outcome is RewardOutcome.duplicate
        np.testing.assert_array_equal(engine.policy.get_state()["b_"], after["b_"])

    asyncio.run(loop())
    assert engine.model_version.endswith("@1")
    engine.close()


def test_replicas_on_one_log_hold_the_same_model(tmp_path: Path) -> None:
    first, second = open_engine(tmp_path, seed=1), open_engine(tmp_path, seed=2)
    rng = np.random.default_rng(3)

    async def traffic() -> None:
        for i, context in enumerate(contexts(400, 4)):
            engine = first if i % 2 else second
            record = await engine.rank(context)
            await engine.reward(record.event_id, float(rng.random() < 0.3))

    asyncio.run(traffic())
    first.catch_up()
    second.catch_up()
    assert first.applied_offset == second.applied_offset == 400
    for name in ("A_", "b_"):
        a, b = first.policy.get_state()[name], second.policy.get_state()[name]
        assert np.abs(a - b).max() <= 1e-9 * np.abs(a).max()
    first.close()
    second.close()


def test_unknown_actions_and_empty_eligibility_are_refused(tmp_path: Path) -> None:
    engine = open_engine(tmp_path)
    with pytest.raises(UnknownActionError, match="Unknown action 'teleport'"):
        engine.eligible_mask(["teleport"])
    mask = engine.eligible_mask(["invite_friend", "suggest_new_app"], ["invite_friend"])
    assert mask.tolist() == [False, False, True, False]
    record = engine.decide(CONTEXT, mask)
    assert record.action == "suggest_new_app" and record.probability == 1.0
    engine.close()


def test_default_rewards_after_the_window(tmp_path: Path) -> None:
    clock = Clock()
    rules = RewardRules(window_seconds=60.0, default_reward=0.0)
    engine = open_engine(tmp_path, rules=rules, clock=clock)

    async def run() -> None:
        record = await engine.rank(CONTEXT)
        clock.now += 59.0
        assert await engine.apply_default_rewards() == {}
        clock.now += 2.0
        assert await engine.apply_default_rewards() == {record.action: 1}
        late = await engine.reward(record.event_id, 1.0)
        assert late.outcome is RewardOutcome.late

    asyncio.run(run())
    assert engine.policy.n_updates_.sum() == 1  # the default, not the late reward
    np.testing.assert_array_equal(engine.policy.b_, 0.0)  # default reward 0
    engine.close()


def _drive(engine: Engine, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)

    async def run() -> None:
        for context in contexts(n, seed):
            record = await engine.rank(context)
            await engine.reward(record.event_id, float(rng.random() < 0.4))

    asyncio.run(run())


def test_recovery_from_a_snapshot_plus_the_tail_equals_a_full_replay(tmp_path: Path) -> None:
    engine = open_engine(tmp_path)
    assert engine.store is not None
    snapshots = SnapshotDirectory(tmp_path / "snapshots")
    learner = Learner(engine, engine.store, snapshots)  # type: ignore[arg-type]
    _drive(engine, 150, seed=5)
    learner.snapshot()
    _drive(engine, 150, seed=6)
    live = engine.policy.get_state()

    store = SQLiteEventStore(tmp_path / "events.db", SCHEMA.encoding_hash)
    model, origin = recover_model(prior_model(SCHEMA), store, snapshots)
    assert origin == "snapshot at offset 150"
    restarted = Engine(model, np.random.default_rng(0), store)
    assert restarted.catch_up() == 150

    scratch = Engine(prior_model(SCHEMA), np.random.default_rng(0), store)
    assert scratch.catch_up() == 300
    for name in ("A_", "b_"):
        expected = scratch.policy.get_state()[name]
        for got in (restarted.policy.get_state()[name], live[name]):
            assert np.abs(got - expected).max() <= 1e-9 * np.abs(expected).max()
    engine.close()


def test_a_corrupt_snapshot_is_skipped_for_the_previous_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = open_engine(tmp_path)
    assert engine.store is not None
    snapshots = SnapshotDirectory(tmp_path / "snapshots")
    learner = Learner(engine, engine.store, snapshots)  # type: ignore[arg-type]
    _drive(engine, 40, seed=7)
    learner.snapshot()
    _drive(engine, 40, seed=8)
    newest = Path(learner.snapshot())
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a full disk

    store = SQLiteEventStore(tmp_path / "events.db", SCHEMA.encoding_hash)
    model, origin = recover_model(prior_model(SCHEMA), store, snapshots)
    assert origin == "snapshot at offset 40"
    assert "Skipping an unusable snapshot" in caplog.text
    assert "model-000000000080.npz is corrupt or truncated" in caplog.text
    restarted = Engine(model, np.random.default_rng(0), store)
    restarted.catch_up()
    np.testing.assert_allclose(restarted.policy.b_, engine.policy.b_, rtol=1e-9, atol=1e-12)
    engine.close()
