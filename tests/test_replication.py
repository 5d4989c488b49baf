"""`LogFollower` on a real redis-server: every replica decodes and applies every learn event
exactly once, in stream order, including the events of the rewards it wrote itself.

A replica that writes a reward used to read its learn event twice: once on the event loop
right after the commit (``XRANGE``), once more from the follower's blocking ``XREAD``. Now
the follower is the only reader while it runs, and the reward waits for it. The decodes are
counted per event by wrapping the two store calls that decode (every event they decode is
in what they return), and the applies by recording the policy's updates.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

import numpy as np

from banditrec.engine import Engine, prior_model
from banditrec.features import FeatureSchema, load_default_schema
from banditrec.replication import LogFollower
from banditrec.sim import AppSimulator
from banditrec.store import LearnEvent, LearnKind, RewardOutcome, RewardRules
from banditrec.store.redis import RedisEventStore
from redis_server import RedisServer

SCHEMA: FeatureSchema = load_default_schema()
RULES = RewardRules(window_seconds=3600.0)
N_DECISIONS = 40


class Replica:
    """An engine on its own connection to the shared log, with counters of its decodes
    (seq → how many times this replica decoded it) and of its applied updates."""

    def __init__(self, url: str, seed: int) -> None:
        self.store = RedisEventStore.from_url(url, SCHEMA.encoding_hash)
        self.engine = Engine(prior_model(SCHEMA), np.random.default_rng(seed), self.store, RULES)
        self.decoded: collections.Counter[int] = collections.Counter()
        self.updates: list[tuple[bytes, int, float]] = []
        self._count(self.store, "learn_events_after")
        self._count(self.store, "wait_learn_events")
        update = self.engine.policy.update

        def counted_update(x: Any, action: int, reward: float, weight: float = 1.0) -> None:
            self.updates.append((np.asarray(x).tobytes(), int(action), float(reward)))
            update(x, action, reward, weight)

        self.engine.policy.update = counted_update  # type: ignore[method-assign]
        self.follower = LogFollower(self.engine, self.store, block_seconds=1.0)

    def _count(self, store: RedisEventStore, name: str) -> None:
        read: Callable[..., list[LearnEvent]] = getattr(store, name)

        def counted(*args: Any, **kwargs: Any) -> list[LearnEvent]:
            events = read(*args, **kwargs)
            self.decoded.update(event.seq for event in events)
            return events

        setattr(store, name, counted)

    def close(self) -> None:
        self.engine.close()
        self.store.close()


def contexts(n: int, seed: int) -> list[dict[str, object]]:
    columns = AppSimulator().sample_contexts(n, np.random.default_rng(seed))
    return [{f: columns[f][i].item() for f in SCHEMA.field_names} for i in range(n)]


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_each_replica_decodes_and_applies_each_learn_event_once(
    redis_server: RedisServer,
) -> None:
    a, b = Replica(redis_server.url, 1), Replica(redis_server.url, 2)
    rng = np.random.default_rng(0)
    seen: list[tuple[int, int]] = []  # (seq, applied offset when the reward returned)

    async def reward(replica: Replica, event_id: str, value: float) -> RewardOutcome:
        result = await replica.engine.reward(event_id, value)
        if result.seq is not None:
            seen.append((result.seq, replica.engine.applied_offset))
        return result.outcome

    async def scenario() -> list[RewardOutcome]:
        tasks = [asyncio.create_task(r.follower.run()) for r in (a, b)]
        try:
            await until(lambda: a.engine.wait_applied is not None)
            await until(lambda: b.engine.wait_applied is not None)
            records = [
                await (a if i % 2 else b).engine.rank(context)
                for i, context in enumerate(contexts(N_DECISIONS, 0))
            ]
            # Concurrent rewards on both replicas, in groups; every event rewarded twice
            # (the second one a duplicate: no learn event), the second on the other replica.
            posts = []
            for i, record in enumerate(records):
                value = float(rng.random() < 0.5)
                first, second = (a, b) if i % 3 else (b, a)
                posts.append(reward(first, record.event_id, value))
                posts.append(reward(second, record.event_id, 1.0 - value))
            outcomes = list(await asyncio.gather(*posts))
            last = a.store.last_offset()
            await until(lambda: a.engine.applied_offset == b.engine.applied_offset == last)
            return outcomes
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        outcomes = asyncio.run(scenario())
        stream = a.store.learn_events_after(0)  # counted too: read after the check below
    finally:
        a.close()
        b.close()

    rewards = [e for e in stream if e.kind is LearnKind.reward]
    assert len(rewards) == len(stream) == N_DECISIONS
    assert sorted(outcomes).count(RewardOutcome.learned) == N_DECISIONS
    assert sorted(outcomes).count(RewardOutcome.duplicate) == N_DECISIONS
    seqs = [e.seq for e in stream]
    # Each replica decoded each event once: the one pass above added one more to a's.
    assert b.decoded == collections.Counter(seqs)
    assert a.decoded == collections.Counter(seqs * 2)
    # Each applied each event once, in stream order...
    expected = [(e.x.tobytes(), e.action_index, e.reward) for e in rewards]
    assert a.updates == expected
    assert b.updates == expected
    # ...and a reward returned only once its own replica had applied it.
    assert len(seen) == N_DECISIONS
    assert all(applied >= seq for seq, applied in seen)
    # Both hold the model of a replay of the log, bit for bit.
    replay = Engine(prior_model(SCHEMA), np.random.default_rng(0))
    replay.apply(stream)
    for name, value in replay.policy.get_state().items():
        np.testing.assert_array_equal(a.engine.policy.get_state()[name], value)
        np.testing.assert_array_equal(b.engine.policy.get_state()[name], value)


def test_a_reward_without_a_running_follower_reads_the_stream_itself(
    redis_server: RedisServer,
) -> None:
    replica = Replica(redis_server.url, 3)

    async def scenario() -> tuple[int | None, int]:
        task = asyncio.create_task(replica.follower.run())
        await until(lambda: replica.engine.wait_applied is not None)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert replica.engine.wait_applied is None  # a stopped follower unhooks itself
        record = await replica.engine.rank(contexts(1, 5)[0])
        result = await replica.engine.reward(record.event_id, 1.0)
        return result.seq, replica.engine.applied_offset

    try:
        seq, applied = asyncio.run(scenario())
    finally:
        replica.close()
    # (The stopped follower's thread may still decode the event in its last blocking read,
    # and drop it: decodes are not counted here.)
    assert seq == 1 and applied == 1
    assert len(replica.updates) == 1
