"""One contract for every event-log backend: SQLite on a real file, Redis on a real server.

Every test takes `open_log`, which opens (and, called again, reopens) one log of the
backend under test. The reward rules are checked against `banditrec.rewards` on random
sequences of decisions, rewards, activations and default sweeps, so both backends apply the
pure rules exactly. Tests of one backend's own behaviour live in test_store.py (SQLite) and
test_store_redis.py (Redis).
"""

from __future__ import annotations

import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from banditrec import rewards
from banditrec.store import (
    DecisionRecord,
    LearnKind,
    RewardOutcome,
    RewardRules,
    StoreError,
    UserHistory,
)
from banditrec.store.redis import RedisEventStore
from banditrec.store.sqlite import SQLiteEventStore
from redis_server import RedisServer

ACTIONS = ("a", "b", "c")
RULES = RewardRules(window_seconds=100.0, default_reward=0.0)
SUM_RULES = RewardRules(window_seconds=100.0, aggregation="sum", min_reward=-1.0, max_reward=1.0)
BACKENDS = ["sqlite", "redis"]

Opener = Callable[..., Any]


def decision(event_id: str, created_at: float = 1000.0, deferred: bool = False) -> DecisionRecord:
    return DecisionRecord(
        event_id=event_id,
        created_at=created_at,
        model_version="v@0",
        context={"country": "AT", "n": 3},
        x=np.array([1.0, 0.5, -2.0]),
        actions=ACTIONS,
        eligible=("a", "c"),
        action_index=2,
        probability=0.9,
        probabilities=np.array([0.1, 0.0, 0.9]),
        scores=np.array([0.3, 0.7, 0.5]),
        deferred=deferred,
    )


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server for the module; each test uses its own key prefix (its own log)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_log(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Opener]:
    """``open_log(encoding_hash="h1")`` opens this test's log; every store is closed after."""
    opened: list[Any] = []
    prefix = f"test-{uuid.uuid4().hex}"

    def open_(encoding_hash: str = "h1") -> Any:
        if backend == "sqlite":
            store: Any = SQLiteEventStore(tmp_path / "events.db", encoding_hash)
        else:
            server = request.getfixturevalue("shared_redis")
            store = RedisEventStore.from_url(server.url, encoding_hash, prefix=prefix)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_log: Opener) -> Any:
    return open_log()


def not_in_sqlite(backend: str, why: str) -> None:
    """Skip a capability SQLite does not have by design, saying why."""
    if backend == "sqlite":
        pytest.skip(f"Not in SQLite by design: {why}")


# -- decisions ------------------------------------------------------------------------


def test_decisions_are_read_back_bitwise(store: Any) -> None:
    awkward = DecisionRecord(
        event_id="é/1 ✓",
        created_at=1_700_000_000.123456789,
        model_version="base-2024@17",
        context={"country": "ÖS", "nested": {"list": [1, 2.5, None]}, "big": 2**53 + 1},
        x=np.array([0.1 + 0.2, -0.0, 5e-324, np.pi, -1e308]),
        actions=ACTIONS,
        eligible=("a",),
        action_index=0,
        probability=1 / 3,
        probabilities=np.array([1 / 3, 1 / 3, 1 / 3]),
        scores=np.array([np.nextafter(1.0, 2.0), 0.0, -7.25]),
        deferred=True,
    )
    (logged,) = store.log_decisions([awkward], RULES)
    assert logged is awkward
    for loaded in (store.get_decision("é/1 ✓"), next(iter(store.iter_decisions()))[0]):
        assert loaded is not None
        assert (loaded.event_id, loaded.model_version, loaded.context) == (
            awkward.event_id,
            awkward.model_version,
            awkward.context,
        )
        assert loaded.created_at.hex() == awkward.created_at.hex()
        assert loaded.probability.hex() == awkward.probability.hex()
        assert (loaded.actions, loaded.eligible, loaded.action_index) == (ACTIONS, ("a",), 0)
        assert loaded.deferred is True
        for name in ("x", "probabilities", "scores"):
            assert getattr(loaded, name).tobytes() == getattr(awkward, name).tobytes()
    assert store.get_decision("missing") is None


def test_user_ids_are_logged(store: Any) -> None:
    store.log_decisions([DecisionRecord(**{**decision("e1").__dict__, "user_id": "u-7"})], RULES)
    store.log_decisions([decision("e2")], RULES)
    assert [(d.event_id, d.user_id) for d, _ in store.iter_decisions()] == [
        ("e1", "u-7"),
        ("e2", None),
    ]


def test_a_repeated_event_id_returns_the_first_decision(store: Any) -> None:
    first = decision("e1")
    store.log_decisions([first], RULES)
    other = DecisionRecord(**{**decision("e1", 2000.0).__dict__, "action_index": 0})
    again, new, twice = store.log_decisions([other, decision("e2"), decision("e2", 3.0)], RULES)
    assert (again.action_index, again.created_at) == (2, 1000.0)
    assert new.created_at == 1000.0 and twice.created_at == 1000.0
    assert [d.event_id for d, _ in store.iter_decisions()] == ["e1", "e2"]
    assert store.count("decisions") == 2


def test_decisions_are_iterated_in_log_order_with_their_totals(store: Any) -> None:
    ids = [f"e{i:03d}" for i in range(25)][::-1]  # log order is not the ids' order
    store.log_decisions([decision(i) for i in ids[:10]], RULES)
    store.log_decisions([decision(i) for i in ids[10:]], RULES)
    store.record_reward(ids[3], 0.25, 1001.0, RULES)
    seen = list(store.iter_decisions(batch_size=4))
    assert [d.event_id for d, _ in seen] == ids
    assert [total for _, total in seen] == [None] * 3 + [0.25] + [None] * 21


# -- rewards --------------------------------------------------------------------------


def test_first_reward_is_learned_then_duplicates_are_only_recorded(store: Any) -> None:
    store.log_decisions([decision("e1")], RULES)
    first = store.record_reward("e1", 0.7, now=1001.0, rules=RULES)
    assert (first.outcome, first.total, first.action) == (RewardOutcome.learned, 0.7, "c")
    second = store.record_reward("e1", 0.2, now=1002.0, rules=RULES)
    assert (second.outcome, second.total, second.value) == (RewardOutcome.duplicate, 0.7, 0.2)
    (event,) = store.learn_events_after(0)
    assert (event.seq, event.event_id, event.kind) == (1, "e1", LearnKind.reward)
    assert (event.action_index, event.reward, event.weight) == (2, 0.7, 1.0)
    assert event.x.tobytes() == decision("e1").x.tobytes()
    assert store.count("rewards") == 2
    assert [total for _, total in store.iter_decisions()] == [0.7]


def test_sum_corrects_the_clipped_total_and_learns_only_changes(store: Any) -> None:
    store.log_decisions([decision("e1")], SUM_RULES)
    results = [store.record_reward("e1", v, 1001.0 + i, SUM_RULES) for i, v in
               enumerate([1.5, 0.5, -0.25, 0.1 + 0.2])]  # fmt: skip
    assert [(r.outcome, r.total) for r in results] == [
        (RewardOutcome.learned, 1.0),  # clipped to max_reward
        (RewardOutcome.summed, 1.0),  # clipped away: nothing learned
        (RewardOutcome.summed, 0.75),
        (RewardOutcome.summed, 1.0),  # 0.75 + 0.30000000000000004 clipped
    ]
    events = store.learn_events_after(0)
    assert [(e.kind, e.reward) for e in events] == [
        (LearnKind.reward, 1.0),
        (LearnKind.correction, -0.25),
        (LearnKind.correction, 0.25),
    ]
    assert all(e.correction == (e.kind is LearnKind.correction) for e in events)
    assert store.count("rewards") == 4


def test_unknown_late_and_inactive_rewards_are_recorded_not_learned(store: Any) -> None:
    store.log_decisions([decision("e1"), decision("d1", deferred=True)], RULES)
    unknown = store.record_reward("nope", 1.0, 1001.0, RULES)
    assert (unknown.outcome, unknown.total, unknown.action) == (RewardOutcome.unknown, None, None)
    late = store.record_reward("e1", 1.0, 1100.5, RULES)  # the window closed at 1100
    assert (late.outcome, late.total, late.action) == (RewardOutcome.late, None, "c")
    inactive = store.record_reward("d1", 1.0, 1001.0, RULES)
    assert (inactive.outcome, inactive.total) == (RewardOutcome.not_activated, None)
    assert store.learn_events_after(0) == []
    assert store.count("rewards") == 3
    assert store.count("learn_events") == 0
    # A reward exactly at the deadline is still in the window.
    assert store.record_reward("e1", 1.0, 1100.0, RULES).outcome is RewardOutcome.learned


def test_rewards_posted_together_are_joined_in_order(store: Any) -> None:
    store.log_decisions([decision("e1"), decision("e2")], SUM_RULES)
    results = store.record_rewards(
        [("e1", 0.5, 1001.0), ("e2", 2.0, 1001.0), ("e1", 0.25, 1002.0), ("e9", 1.0, 1002.0)],
        SUM_RULES,
    )
    assert [(r.event_id, r.outcome, r.total) for r in results] == [
        ("e1", RewardOutcome.learned, 0.5),
        ("e2", RewardOutcome.learned, 1.0),
        ("e1", RewardOutcome.summed, 0.75),
        ("e9", RewardOutcome.unknown, None),
    ]
    assert [e.seq for e in store.learn_events_after(0)] == [1, 2, 3]


def test_deferred_decisions_learn_only_after_activation(store: Any) -> None:
    store.log_decisions([decision("d1", deferred=True)], RULES)
    assert store.activate("missing", 2000.0, RULES) is None
    assert store.pending_backlog(1e12) == 0  # no window yet: never waits for a default
    assert store.apply_default_rewards(1e12, RULES) == {}  # inactive: no window, no default
    assert store.activate("d1", 2000.0, RULES) is True
    assert store.activate("d1", 2001.0, RULES) is False
    loaded = store.get_decision("d1")
    assert loaded is not None and loaded.deferred is False
    # The window runs from the activation: 2000 + 100.
    assert store.record_reward("d1", 0.5, 2100.0, RULES).outcome is RewardOutcome.learned
    assert store.record_reward("d1", 0.5, 2100.5, RULES).outcome is RewardOutcome.late
    assert [e.event_id for e in store.learn_events_after(0)] == ["d1"]


def test_default_rewards_once_per_closed_window(store: Any) -> None:
    rules = RewardRules(window_seconds=100.0, default_reward=-0.5)
    store.log_decisions([decision("e1"), decision("e2", 1010.0), decision("e3", 1050.0)], rules)
    store.record_reward("e3", 1.0, 1051.0, rules)
    assert store.pending_backlog(1100.0) == 0  # e1's deadline, not past it
    assert store.pending_backlog(1111.0) == 2
    assert store.apply_default_rewards(1100.0, rules) == {}
    assert store.apply_default_rewards(1111.0, rules, limit=1) == {"c": 1}  # the oldest
    assert store.pending_backlog(1111.0) == 1
    assert store.apply_default_rewards(1111.0, rules) == {"c": 1}
    assert store.pending_backlog(1e12) == 0
    assert store.apply_default_rewards(1e12, rules) == {}
    events = store.learn_events_after(0)
    assert [(e.event_id, e.kind, e.reward) for e in events] == [
        ("e3", LearnKind.reward, 1.0),
        ("e1", LearnKind.default, -0.5),
        ("e2", LearnKind.default, -0.5),
    ]
    assert events[1].x.tobytes() == decision("e1").x.tobytes()
    late = store.record_reward("e1", 1.0, 1099.0, rules)  # defaulted: late even in time
    assert (late.outcome, late.total) == (RewardOutcome.late, -0.5)
    assert dict((d.event_id, t) for d, t in store.iter_decisions()) == {
        "e1": -0.5,
        "e2": -0.5,
        "e3": 1.0,
    }


# -- the learn stream, epochs, leases, identity ------------------------------------------


def test_action_changes_are_ordered_with_rewards_in_the_stream(store: Any) -> None:
    store.log_decisions([decision("e1"), decision("e2")], RULES)
    store.record_reward("e1", 1.0, 1001.0, RULES)
    assert store.append_action_change(LearnKind.add_action, "d", 1002.0) == 2
    store.record_reward("e2", 1.0, 1003.0, RULES)
    assert store.append_action_change(LearnKind.disable_action, "a", 1004.0) == 4
    events = store.learn_events_after(0)
    assert [(e.seq, e.kind, e.event_id) for e in events] == [
        (1, LearnKind.reward, "e1"),
        (2, LearnKind.add_action, "d"),
        (3, LearnKind.reward, "e2"),
        (4, LearnKind.disable_action, "a"),
    ]
    change = events[1]
    assert (change.action_index, change.x.size, change.reward, change.weight) == (-1, 0, 0, 0)


def test_learn_stream_offsets_are_ordered_and_paged(store: Any) -> None:
    assert store.last_offset() == 0 and store.learn_events_after(0) == []
    store.log_decisions([decision(f"e{i}") for i in range(7)], RULES)
    for i in range(7):
        store.record_reward(f"e{i}", i / 10, 1001.0, RULES)
    assert store.last_offset() == 7
    pages, offset = [], 0
    while page := store.learn_events_after(offset, limit=3):
        pages.append([e.seq for e in page])
        offset = page[-1].seq
    assert pages == [[1, 2, 3], [4, 5, 6], [7]]
    assert [e.reward for e in store.learn_events_after(4)] == [0.4, 0.5, 0.6]


def test_epochs_start_where_the_log_ends(store: Any) -> None:
    assert store.epoch_offset("base-1") == 0
    store.log_decisions([decision("e1")], RULES)
    store.record_reward("e1", 1.0, 1001.0, RULES)
    assert store.epoch_offset("base-1") == 0  # registered on first sight, never moved
    assert store.epoch_offset("base-2") == 1


def test_leases_have_one_holder_until_they_expire_or_are_released(store: Any) -> None:
    assert store.acquire_lease("defaults", "A", now=0.0, ttl_seconds=10.0)
    assert not store.acquire_lease("defaults", "B", now=5.0, ttl_seconds=10.0)
    assert store.acquire_lease("defaults", "A", now=8.0, ttl_seconds=10.0)  # renewed to 18
    assert not store.acquire_lease("defaults", "B", now=15.0, ttl_seconds=10.0)
    assert store.acquire_lease("defaults", "B", now=18.5, ttl_seconds=10.0)  # A's expired
    assert not store.acquire_lease("defaults", "A", now=19.0, ttl_seconds=10.0)
    assert store.acquire_lease("other", "A", now=19.0, ttl_seconds=10.0)  # leases are separate
    store.release_lease("defaults", "A")  # not A's: nothing happens
    assert not store.acquire_lease("defaults", "A", now=20.0, ttl_seconds=10.0)
    store.release_lease("defaults", "B")
    assert store.acquire_lease("defaults", "A", now=20.0, ttl_seconds=10.0)


def test_the_log_keeps_its_identity_and_its_schema(open_log: Opener) -> None:
    first = open_log()
    first.log_decisions([decision("e1")], RULES)
    identity = first.log_id()
    assert len(identity) >= 16
    again = open_log()
    assert again.log_id() == identity
    assert again.get_decision("e1") is not None
    with pytest.raises(StoreError, match=r"belongs to schema h1…, not to the configured schema h2"):
        open_log("h2")
    assert open_log().log_id() == identity  # the refusal changed nothing


# -- retention and privacy ----------------------------------------------------------------


def of_user(event_id: str, user_id: str | None, created_at: float = 1000.0, **kw: Any) -> Any:
    return DecisionRecord(**{**decision(event_id, created_at, **kw).__dict__, "user_id": user_id})


def test_only_old_decisions_whose_window_is_over_are_retirable(store: Any) -> None:
    store.log_decisions(
        [of_user("pending", "u1"), of_user("rewarded", "u2"),
         decision("deferred", deferred=True), of_user("young", "u1", created_at=2000.0)],
        RULES,
    )  # fmt: skip
    store.record_reward("rewarded", 0.75, 1001.0, RULES)
    # The reward window (100 s) of "rewarded" is still open at 1050: a sum could change it.
    early = store.retirable_decisions(before=1500.0, now=1050.0, limit=10)
    assert [(d.record.event_id, d.state) for d in early] == [("deferred", "inactive")]
    assert store.apply_default_rewards(1150.0, RULES) == {"c": 1}  # "pending" defaulted
    due = store.retirable_decisions(before=1500.0, now=1150.0, limit=10)
    assert [(d.record.event_id, d.state, d.reward_total, d.record.user_id) for d in due] == [
        ("pending", "defaulted", 0.0, "u1"),
        ("rewarded", "rewarded", 0.75, "u2"),
        ("deferred", "inactive", None, None),
    ]  # "young" was made after `before`: it stays whatever its state
    assert due[1].record.x.tobytes() == decision("x").x.tobytes()
    assert [d.record.event_id for d in store.retirable_decisions(1500.0, 1150.0, 2)] == [
        "pending",
        "rewarded",
    ]


def test_decisions_are_deleted_only_in_the_state_they_were_read_in(store: Any) -> None:
    store.log_decisions([decision("a"), decision("b", deferred=True), decision("c")], RULES)
    store.record_reward("a", 1.0, 1001.0, RULES)
    due = store.retirable_decisions(before=1500.0, now=1200.0, limit=10)
    assert [(d.record.event_id, d.state) for d in due] == [("a", "rewarded"), ("b", "inactive")]
    assert store.activate("b", 1201.0, RULES) is True  # activated between read and delete
    assert store.delete_decisions([(d.record.event_id, d.state) for d in due]) == 1
    assert store.get_decision("a") is None
    assert [d.event_id for d, _ in store.iter_decisions()] == ["b", "c"]
    assert store.count("decisions") == 2
    assert store.record_reward("a", 1.0, 1202.0, RULES).outcome is RewardOutcome.unknown
    assert store.record_reward("b", 0.5, 1202.0, RULES).outcome is RewardOutcome.learned
    assert store.delete_decisions([]) == 0


def test_old_rewards_are_read_in_order_and_deleted(store: Any) -> None:
    store.log_decisions([decision("a"), decision("b")], RULES)
    for event_id, value, now in [("a", 1.0, 1001.0), ("zz", 0.5, 1002.0), ("a", 0.25, 1003.0),
                                 ("b", 0.5, 1600.0)]:  # fmt: skip
        store.record_reward(event_id, value, now, RULES)
    old = store.retirable_rewards(before=1500.0, limit=10)
    assert [(r.event_id, r.received_at, r.value, r.outcome) for r in old] == [
        ("a", 1001.0, 1.0, "learned"),
        ("zz", 1002.0, 0.5, "unknown"),
        ("a", 1003.0, 0.25, "duplicate"),
    ]
    assert len(store.retirable_rewards(before=1500.0, limit=2)) == 2
    assert store.delete_rewards([r.key for r in old]) == 3
    assert store.count("rewards") == 1
    assert store.retirable_rewards(before=1500.0) == []
    assert [r.event_id for r in store.retirable_rewards(before=1e12)] == ["b"]


def test_learn_events_are_trimmed_from_the_oldest_and_offsets_stay(store: Any) -> None:
    ids = [f"e{i}" for i in range(1, 6)]
    store.log_decisions([decision(i) for i in ids], RULES)
    for i, event_id in enumerate(ids, start=1):
        store.record_reward(event_id, 1.0, 1000.0 + i, RULES)  # seq i at 1000 + i
    assert store.trim_learn_events(3, before=1004.0) == 3
    assert [e.seq for e in store.learn_events_after(0)] == [4, 5]
    assert store.trim_learn_events(5, before=1005.0) == 1  # seq 5 is not old enough
    assert store.trim_learn_events(5, before=1e12, limit=1) == 1
    assert store.learn_events_after(0) == [] and store.count("learn_events") == 0
    assert store.last_offset() == 5  # never reused, even with every event trimmed
    assert store.epoch_offset("new-base") == 5
    assert store.append_action_change(LearnKind.add_action, "d", 1010.0) == 6
    assert store.trim_learn_events(0, before=1e12) == 0


def test_forgetting_a_user_removes_their_decisions_and_rewards(store: Any) -> None:
    store.log_decisions(
        [of_user("e1", "u1"), of_user("e2", "u1"), of_user("e3", "u2"), decision("e4")], RULES
    )
    store.record_reward("e1", 1.0, 1001.0, RULES)
    store.record_reward("e3", 0.5, 1001.0, RULES)
    store.record_reward("e1", 0.25, 1002.0, RULES)
    assert sorted(store.forget_user("u1")) == ["e1", "e2"]
    assert [d.event_id for d, _ in store.iter_decisions()] == ["e3", "e4"]
    assert [r.event_id for r in store.retirable_rewards(before=1e12)] == ["e3"]
    assert store.pending_backlog(1e12) == 1  # e4 only: e2's default reward is not due
    assert store.apply_default_rewards(1e12, RULES) == {"c": 1}
    assert store.forget_user("u1") == [] and store.forget_user("nobody") == []


# -- a user's serves and negative rewards (frequency caps and cooldowns) ------------------


def test_a_serve_is_claimed_only_from_the_version_read(store: Any) -> None:
    assert store.user_history("u1", since=0.0) == UserHistory(0)
    assert store.claim_serve("u1", "a", 1000.0, version=0, keep_after=0.0)
    assert not store.claim_serve("u1", "b", 1001.0, version=0, keep_after=0.0)  # stale
    history = store.user_history("u1", since=0.0)
    assert history == UserHistory(1, (("a", 1000.0),))
    assert store.claim_serve("u1", "b", 1001.5, version=1, keep_after=0.0)
    assert store.user_history("u1", since=1001.0).serves == (("b", 1001.5),)
    assert store.user_history("u2", since=0.0) == UserHistory(0)  # users are apart


def test_a_negative_reward_moves_the_version_and_old_entries_are_dropped(store: Any) -> None:
    assert store.claim_serve("u1", "a", 1000.0, version=0, keep_after=0.0)
    store.record_negative("u1", "a", 1010.0, keep_after=0.0)
    history = store.user_history("u1", since=0.0)
    assert history.version == 2 and history.negatives == (("a", 1010.0),)
    assert not store.claim_serve("u1", "c", 1011.0, version=1, keep_after=0.0)
    assert store.claim_serve("u1", "c", 1020.0, version=2, keep_after=1005.0)
    assert store.user_history("u1", since=0.0) == UserHistory(3, (("c", 1020.0),), (("a", 1010.0),))


def test_claims_from_many_threads_record_one_serve_per_version(store: Any) -> None:
    """Eight threads race from the same version, 20 times: exactly one wins each time."""
    for round_ in range(20):
        version = store.user_history("u1", since=0.0).version
        wins: list[bool] = []

        def claim(k: int, at: float, version: int, wins: list[bool]) -> None:
            wins.append(store.claim_serve("u1", f"a{k}", at, version, 0.0))

        threads = [
            threading.Thread(target=claim, args=(k, 1000.0 + round_, version, wins))
            for k in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(wins) == 1
    assert len(store.user_history("u1", since=0.0).serves) == 20


def test_forgetting_a_user_removes_their_serves(store: Any) -> None:
    assert store.claim_serve("u1", "a", 1000.0, version=0, keep_after=0.0)
    store.record_negative("u1", "a", 1001.0, keep_after=0.0)
    store.forget_user("u1")
    assert store.user_history("u1", since=0.0) == UserHistory(0)


# -- shared snapshots and pushed learn events (Redis only) ---------------------------------


def test_snapshots_are_shared_newest_first(open_log: Opener, backend: str) -> None:
    not_in_sqlite(backend, "one host's workers share snapshot files (SnapshotDirectory).")
    store = open_log()
    assert store.snapshots() == []
    for offset in (5, 12, 9, 30):
        store.put_snapshot(offset, f"model@{offset}".encode() + bytes(range(256)))
    late = open_log()  # another replica, starting late
    assert [(o, d[:9]) for o, d in late.snapshots()] == [
        (30, b"model@30\x00"),
        (12, b"model@12\x00"),
        (9, b"model@9\x00\x01"),
    ]
    assert late.snapshots()[0][1][-256:] == bytes(range(256))


def test_waiting_for_learn_events(open_log: Opener, backend: str) -> None:
    not_in_sqlite(backend, "one host's workers poll the file; there is no server to push.")
    store, other = open_log(), open_log()
    store.log_decisions([decision("e1"), decision("e2")], RULES)
    assert store.wait_learn_events(0, timeout_seconds=0.05) == []  # nothing: times out
    store.record_reward("e1", 1.0, 1001.0, RULES)
    assert [e.seq for e in store.wait_learn_events(0, timeout_seconds=5.0)] == [1]
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.extend(store.wait_learn_events(1, 10.0)))
    waiter.start()
    other.record_reward("e2", 0.5, 1002.0, RULES)  # another replica's reward wakes it
    waiter.join(10.0)
    assert [(e.seq, e.event_id, e.reward) for e in got] == [(2, "e2", 0.5)]


# -- the rules: every backend applies banditrec.rewards exactly ---------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("reward"), st.integers(0, 4), st.floats(-2.0, 2.0), st.integers(0, 3)),
        st.tuples(st.just("activate"), st.integers(0, 4), st.just(0.0), st.integers(0, 3)),
        st.tuples(st.just("sweep"), st.just(0), st.just(0.0), st.integers(0, 3)),
    ),
    max_size=25,
)


# Cases the random draw might miss (CI draws a fixed set): clipping at both ends with sums and
# corrections, late rewards, rewards before and after activation, sweeps.
SUM_CASE = [("reward", 0, 2.0, 0), ("reward", 0, -2.0, 1), ("reward", 0, -0.75, 0),
            ("reward", 1, 0.5, 0), ("reward", 1, 1.25, 1), ("reward", 2, 0.5, 3),
            ("sweep", 0, 0.0, 1), ("reward", 3, 1.0, 0), ("sweep", 0, 0.0, 3)]  # fmt: skip
EARLIEST_CASE = [("reward", 0, 1.0, 0), ("activate", 0, 0.0, 1), ("reward", 0, 1.75, 1),
                 ("reward", 0, 0.5, 0), ("activate", 0, 0.0, 0), ("activate", 2, 0.0, 1),
                 ("sweep", 0, 0.0, 3), ("reward", 1, -1.5, 0), ("sweep", 0, 0.0, 3),
                 ("reward", 2, 1.0, 0)]  # fmt: skip


@example(ops=SUM_CASE, deferred=[False] * 5, aggregation="sum")
@example(ops=EARLIEST_CASE, deferred=[True, False, True, False, False], aggregation="earliest")
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    ops=operations,
    deferred=st.lists(st.booleans(), min_size=5, max_size=5),
    aggregation=st.sampled_from(["earliest", "sum"]),
)
def test_backends_apply_the_pure_reward_rules(
    backend: str,
    request: pytest.FixtureRequest,
    ops: list[tuple[str, int, float, int]],
    deferred: list[bool],
    aggregation: Any,
) -> None:
    rules = RewardRules(window_seconds=10.0, default_reward=0.125, aggregation=aggregation,
                        min_reward=-1.0, max_reward=1.5)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if backend == "sqlite":
            store: Any = SQLiteEventStore(Path(tmp) / "events.db", "h")
        else:
            server = request.getfixturevalue("shared_redis")
            store = RedisEventStore.from_url(server.url, "h", prefix=uuid.uuid4().hex)
        try:
            check_against_the_rules(store, rules, ops, deferred)
        finally:
            store.close()


def check_against_the_rules(
    store: Any, rules: RewardRules, ops: list[tuple[str, int, float, int]], deferred: list[bool]
) -> None:
    """Drive `store` and a model made of `banditrec.rewards` alone; they must agree."""
    ids = [f"e{i}" for i in range(5)]
    pairs = list(zip(ids, deferred, strict=True))
    store.log_decisions([decision(i, 0.0, d) for i, d in pairs], rules)
    model = {i: (*rewards.initial_state(d, 0.0, rules), None) for i, d in pairs}
    expected: list[tuple[str, LearnKind, float]] = []
    now = 0.0
    for op, index, value, step in ops:
        now += 3.0 * step  # time goes on: windows close
        event_id = ids[index]
        state, deadline, total = model[event_id]
        if op == "reward":
            join = rewards.join_reward(state, deadline, total, value, now, rules)
            got = store.record_reward(event_id, value, now, rules)
            assert (got.outcome, got.total) == (join.outcome, join.total)
            if join.learn is not None:
                model[event_id] = (join.state, deadline, join.total)
                expected.append((event_id, join.learn.kind, join.learn.reward))
        elif op == "activate":
            activation = rewards.activate(state, now, rules)
            assert store.activate(event_id, now, rules) is activation.activated
            if activation.activated:
                model[event_id] = (activation.state, activation.deadline, total)
        else:
            closed = []
            for i in sorted(ids, key=lambda i: (model[i][1] or 0.0, i)):
                outcome = rewards.default_reward(*model[i][:2], now, rules)
                if outcome is not None:
                    assert outcome.learn is not None
                    closed.append((i, outcome.learn.kind, outcome.learn.reward))
                    model[i] = (outcome.state, model[i][1], outcome.total)
            by_action = store.apply_default_rewards(now, rules)
            assert by_action == ({"c": len(closed)} if closed else {})
            got_defaults = store.learn_events_after(len(expected))
            # Decisions whose windows closed together may be defaulted in either order.
            assert sorted((e.event_id, e.kind, e.reward) for e in got_defaults) == sorted(closed)
            expected += [(e.event_id, e.kind, e.reward) for e in got_defaults]
    assert [(e.event_id, e.kind, e.reward) for e in store.learn_events_after(0)] == expected
    assert {d.event_id: t for d, t in store.iter_decisions()} == {i: model[i][2] for i in ids}


def test_learn_events_carry_the_logged_propensity(store: Any) -> None:
    """Off-policy estimates of shadows need each learned round's logged probability: rewards,
    corrections and default rewards carry their decision's; other entries none."""
    rules = SUM_RULES
    store.log_decisions([decision("r"), decision("d")], rules)
    store.record_reward("r", 0.5, 1001.0, rules)
    store.record_reward("r", 0.25, 1002.0, rules)  # a correction under "sum"
    store.apply_default_rewards(1200.0, rules)
    seq = store.append_action_change(LearnKind.promote, "v1", 1300.0)
    events = store.learn_events_after(0)
    assert [(e.kind, e.event_id, e.propensity) for e in events] == [
        (LearnKind.reward, "r", 0.9),
        (LearnKind.correction, "r", 0.9),
        (LearnKind.default, "d", 0.9),
        (LearnKind.promote, "v1", None),
    ]
    assert events[-1].seq == seq
