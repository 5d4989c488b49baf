"""The Redis event log's own promises, on a real redis-server: atomic joins under races between
replicas, strict durability across ``kill -9``, pushed learn events, clear unavailability.

The behaviour every backend shares is in test_store_contract.py.
"""

from __future__ import annotations

import multiprocessing
import random
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from banditrec import rewards
from banditrec.store import (
    DecisionRecord,
    LearnKind,
    RewardOutcome,
    RewardRules,
    StoreError,
    StoreUnavailableError,
)
from banditrec.store import redis as redis_store
from banditrec.store.redis import RedisEventStore
from redis_server import RedisServer, free_port

RULES = RewardRules(window_seconds=1000.0)
N_EVENTS, N_PROCESSES, N_THREADS = 40, 3, 2


def decision(event_id: str, created_at: float = 1000.0) -> DecisionRecord:
    return DecisionRecord(
        event_id=event_id,
        created_at=created_at,
        model_version="v@0",
        context={"n": 1},
        x=np.array([1.0, -0.5]),
        actions=("a", "b"),
        eligible=("a", "b"),
        action_index=1,
        probability=0.75,
        probabilities=np.array([0.25, 0.75]),
        scores=np.array([0.1, 0.2]),
    )


def _post_rewards(url: str, prefix: str, rules: RewardRules, worker: int, start: Any) -> None:
    """One replica: threads with their own connections post a reward for every event."""

    def post(thread: int) -> None:
        store = RedisEventStore.from_url(url, "h", prefix=prefix)
        order = list(range(N_EVENTS))
        random.Random(worker * 10 + thread).shuffle(order)
        value = 0.125 * (1 + worker * N_THREADS + thread)
        for i in order:
            store.record_reward(f"e{i}", value, 1001.0, rules)
        store.close()

    start.wait(60)  # every replica starts posting at once
    threads = [threading.Thread(target=post, args=(t,)) for t in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def race(server: RedisServer, rules: RewardRules) -> tuple[RedisEventStore, list[tuple[str, str]]]:
    """Several processes post rewards for the same events at once; returns the log and its
    rewards stream as (event id, outcome), in the order Redis applied them."""
    prefix = uuid.uuid4().hex
    store = RedisEventStore.from_url(server.url, "h", prefix=prefix)
    store.log_decisions([decision(f"e{i}") for i in range(N_EVENTS)], rules)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(N_PROCESSES)
    workers = [
        context.Process(target=_post_rewards, args=(server.url, prefix, rules, w, start))
        for w in range(N_PROCESSES)
    ]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
        assert p.exitcode == 0
    client = redis.Redis(port=server.port)
    stream = [
        (f[b"e"].decode(), f[b"o"].decode(), float(f[b"v"]))
        for _, f in client.xrange(f"{prefix}:rewards")
    ]
    client.close()
    assert len(stream) == N_EVENTS * N_PROCESSES * N_THREADS  # every reward recorded
    return store, stream  # type: ignore[return-value]


def test_racing_replicas_learn_each_reward_once_under_earliest(
    redis_server: RedisServer,
) -> None:
    store, stream = race(redis_server, RULES)
    events = store.learn_events_after(0)
    assert sorted(e.event_id for e in events) == sorted(f"e{i}" for i in range(N_EVENTS))
    assert all(e.kind is LearnKind.reward for e in events)
    first = {}
    for event_id, outcome, value in stream:  # the first one Redis applied won
        first.setdefault(event_id, value)
        assert outcome == ("learned" if first[event_id] == value else "duplicate")
    assert {e.event_id: e.reward for e in events} == first
    assert {d.event_id: t for d, t in store.iter_decisions()} == first
    store.close()


def test_racing_replicas_sum_every_reward_exactly(redis_server: RedisServer) -> None:
    rules = RewardRules(window_seconds=1000.0, aggregation="sum", max_reward=2.0)
    store, stream = race(redis_server, rules)
    # Replaying the rewards in the order Redis applied them gives the same totals, bitwise.
    model: dict[str, tuple[Any, float | None]] = {}
    for event_id, outcome, value in stream:
        state, total = model.get(event_id, ("pending", None))
        join = rewards.join_reward(state, 2000.0, total, value, 1001.0, rules)
        assert join.outcome.value == outcome
        model[event_id] = (join.state, join.total)
    totals = {d.event_id: t for d, t in store.iter_decisions()}
    assert totals == {event_id: total for event_id, (_, total) in model.items()}
    # 0.125 + 0.25 + ... + 0.75 = 2.625, clipped to 2.0 whatever the order.
    assert set(totals.values()) == {2.0}
    learned: dict[str, float] = {}
    for e in store.learn_events_after(0):
        learned[e.event_id] = learned.get(e.event_id, 0.0) + e.reward
    assert learned == pytest.approx(totals, abs=1e-12)
    store.close()


def everything_in(store: RedisEventStore) -> tuple[Any, ...]:
    return (
        store.log_id(),
        [(e.seq, e.event_id, e.kind, e.reward, e.x.tobytes()) for e in store.learn_events_after(0)],
        [(d.event_id, d.x.tobytes(), t) for d, t in store.iter_decisions()],
        store.count("rewards"),
        store.snapshots(),
    )


def test_acknowledged_writes_survive_kill_9_of_redis(redis_server: RedisServer) -> None:
    store = RedisEventStore.from_url(redis_server.url, "h", prefix="durable")
    store.log_decisions([decision(f"e{i}") for i in range(50)], RULES)
    for i in range(0, 50, 2):
        store.record_reward(f"e{i}", i / 50, 1001.0, RULES)
    store.append_action_change(LearnKind.add_action, "c", 1002.0)
    assert store.activate("e1", 1003.0, RULES) is False
    store.put_snapshot(26, b"model bytes")
    assert store.acquire_lease("snapshot", "replica-1", 1003.0, 600.0)
    before = everything_in(store)
    redis_server.kill()  # SIGKILL right after the last acknowledged write
    redis_server.start()  # on the same directory and port
    for reopened in (RedisEventStore.from_url(redis_server.url, "h", prefix="durable"), store):
        after = everything_in(reopened)
        assert after == before
        assert not reopened.acquire_lease("snapshot", "replica-2", 1004.0, 600.0)
    assert len(before[1]) == 26 and before[3] == 25
    store.close()


def wait_into(store: RedisEventStore, offset: int, got: list[Any]) -> None:
    got.extend(store.wait_learn_events(offset, 10.0))


@pytest.mark.serial
def test_a_waiting_replica_hears_of_another_ones_reward_at_once(
    redis_server: RedisServer,
) -> None:
    waiter = RedisEventStore.from_url(redis_server.url, "h", prefix="push")
    poster = RedisEventStore.from_url(redis_server.url, "h", prefix="push")
    poster.log_decisions([decision(f"e{i}") for i in range(10)], RULES)
    delays = []
    for i in range(10):
        got: list[Any] = []
        thread = threading.Thread(target=wait_into, args=(waiter, i, got))
        thread.start()
        time.sleep(0.05)  # the waiter is blocked in XREAD by now
        posted = time.perf_counter()
        poster.record_reward(f"e{i}", 1.0, 1001.0, RULES)
        thread.join(10.0)
        delays.append(time.perf_counter() - posted)
        assert [e.seq for e in got] == [i + 1]
    # Pushed, not polled: well under the 100 ms promise (a generous bound that cannot flake).
    assert statistics.median(delays) < 1.0
    waiter.close()
    poster.close()


@pytest.mark.serial
def test_an_unreachable_redis_raises_store_unavailable_with_a_sentence(
    redis_server: RedisServer,
) -> None:
    port = free_port()  # nothing listens there
    message = r"^The Redis event log at redis://127\.0\.0\.1:\d+/0 .* cannot be used now \(.+\); "
    with pytest.raises(StoreUnavailableError, match=message + "nothing can be logged"):
        RedisEventStore.from_url(f"redis://127.0.0.1:{port}/0", "h", timeout_seconds=1.0)
    store = RedisEventStore.from_url(redis_server.url, "h", prefix="gone", timeout_seconds=1.0)
    store.log_decisions([decision("e1")], RULES)
    redis_server.kill()
    for call in (
        lambda: store.log_decisions([decision("e2")], RULES),
        lambda: store.record_reward("e1", 1.0, 1001.0, RULES),
        lambda: store.apply_default_rewards(5000.0, RULES),
        lambda: list(store.iter_decisions()),
        lambda: store.wait_learn_events(0, 0.5),
        lambda: store.acquire_lease("l", "o", 0.0, 1.0),
    ):
        with pytest.raises(StoreUnavailableError, match="cannot be used now"):
            call()
    assert issubclass(StoreUnavailableError, StoreError)
    redis_server.start()
    # Right after a failure, calls fail at once (no second of reconnection retries each);
    # once that pause is over the same store recovers by itself.
    with pytest.raises(StoreUnavailableError, match="cannot be used now"):
        store.record_reward("e1", 1.0, 1001.0, RULES)
    time.sleep(redis_store._DOWN_SECONDS)
    assert store.record_reward("e1", 1.0, 1001.0, RULES).outcome is RewardOutcome.learned
    store.close()


def test_a_retried_reward_is_applied_once(redis_server: RedisServer) -> None:
    # A call whose reply was lost is retried by redis-py with the same token.
    rules = RewardRules(window_seconds=1000.0, aggregation="sum", max_reward=5.0)
    store = RedisEventStore.from_url(redis_server.url, "h", prefix="retry")
    store.log_decisions([decision("e1")], rules)
    args = ("e1", "1.0", "1001.0", "sum", "0.0", "5.0", "token-1")
    # (outcome, total, action, seq of the learn event): the retry gets the first reply.
    assert store._run("RECORD_REWARD", *args) == [b"learned", b"1", b"b", 1]
    assert store._run("RECORD_REWARD", *args) == [b"learned", b"1", b"b", 1]
    summed = store.record_reward("e1", 1.0, 1002.0, rules)
    assert (summed.total, summed.seq) == (2.0, 2)
    assert [e.reward for e in store.learn_events_after(0)] == [1.0, 1.0]
    store.close()


def test_logs_under_other_prefixes_are_separate(redis_server: RedisServer) -> None:
    one = RedisEventStore.from_url(redis_server.url, "h1", prefix="one")
    two = RedisEventStore.from_url(redis_server.url, "h2", prefix="two")
    one.log_decisions([decision("e1")], RULES)
    assert two.get_decision("e1") is None and one.log_id() != two.log_id()
    with pytest.raises(StoreError, match="belongs to schema h1"):
        RedisEventStore.from_url(redis_server.url, "h2", prefix="one")
    one.close()
    two.close()


def test_the_server_fixture_runs_the_strict_persistence(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    config: Any = client.config_get("append*")
    assert (config["appendonly"], config["appendfsync"]) == ("yes", "always")
    client.close()
    assert Path(redis_server.directory).is_dir()
