"""The scale-out event log: one Redis server shared by every replica.

The learn stream is a Redis Stream whose entry ids are the learn event seqs (``<seq>-0``), so
`learn_events_after` is one ``XRANGE`` and `wait_learn_events` one blocking ``XREAD``: a
replica hears of a reward posted to another one the moment it is appended (push, not
polling). Each join, activation, default sweep and batch of decisions is one Lua script
(`banditrec.store.redis_scripts`), which Redis runs atomically with respect to every other
client: two replicas posting rewards for the same event at once cannot both learn it, and
a sum never loses an addend, without any lease. The rules the scripts apply are those of
`banditrec.rewards`.

Durability follows Redis's persistence settings (``redis.conf``); a write is acknowledged
when Redis has applied it:

- ``appendonly yes`` + ``appendfsync always``: Redis fsyncs the append-only file before it
  replies, so every acknowledged decision and reward survives a crash of Redis (``kill -9``),
  of the machine and a power loss. Each write then waits for one fsync.
- ``appendonly yes`` + ``appendfsync everysec`` (Redis's default for AOF): the file is
  written before the reply but fsynced once a second, so a power loss or a kernel crash can
  lose about the last second of acknowledged writes. A ``kill -9`` of Redis usually loses
  nothing (the kernel has the data), except while a slow fsync makes Redis postpone its
  writes: then up to about 2 s.
- ``appendonly no`` (RDB snapshots only, or no persistence): everything since the last
  snapshot is lost when Redis stops. Not suitable for the event log.

Replicas of Redis (``replicaof``) are asynchronous: a failover can lose the writes the new
primary had not received yet (``WAIT`` would bound that; not used here).

When Redis cannot be reached, every method raises `StoreUnavailableError` (the API answers
503 and refuses to serve decisions it cannot log). Calls are retried a few times within
about a second on a broken connection (e.g. after Redis restarted); the reward and
action-change scripts carry a token, so a call whose reply was lost is not applied twice.
"""

from __future__ import annotations

import functools
import math
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, ParamSpec, TypeVar

import numpy as np
import orjson
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from banditrec import rewards
from banditrec.store import (
    RETIRABLE_STATES,
    DecisionRecord,
    LearnEvent,
    LearnKind,
    RetirableDecision,
    RewardOutcome,
    RewardResult,
    RewardRules,
    StoredReward,
    StoreError,
    StoreUnavailableError,
    UserHistory,
)
from banditrec.store import redis_scripts as lua
from banditrec.store.decision_batch import DecisionBatch

__all__ = ["RedisEventStore"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: Redis errors that mean "not now" rather than "wrong": the caller may retry later.
_UNAVAILABLE_REPLIES = ("MISCONF", "OOM", "LOADING", "MASTERDOWN", "NOREPLICAS", "BUSY")
_SNAPSHOTS_KEPT = 3
#: After a failure, calls fail at once for this long (then one probes the server again).
_DOWN_SECONDS = 0.5
#: Stream entries read per step while looking for what retention or a privacy request removes.
_SCAN_ENTRIES = 1000


def _available(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """Turn Redis connection failures into `StoreUnavailableError` with a full sentence."""

    @functools.wraps(method)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        store = args[0]
        assert isinstance(store, RedisEventStore)
        # Once Redis is known to be down, fail at once for a moment instead of spending
        # redis-py's reconnection retries (about a second) on every call: decisions waiting
        # behind one another on the writer thread would otherwise time out at the client
        # instead of getting their 503. One call per `_DOWN_SECONDS` still probes.
        down = store._down
        if down is not None and time.monotonic() < down[0]:
            raise _unavailable(store, down[1])
        try:
            result = method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError) as exc:
            store._down = (time.monotonic() + _DOWN_SECONDS, exc)
            raise _unavailable(store, exc) from exc
        except redis.ResponseError as exc:
            if str(exc).startswith(_UNAVAILABLE_REPLIES):
                store._down = (time.monotonic() + _DOWN_SECONDS, exc)
                raise _unavailable(store, exc) from exc
            raise
        store._down = None
        return result

    return call


def _unavailable(store: Any, exc: Exception) -> StoreUnavailableError:
    return StoreUnavailableError(
        f"The Redis event log at {store.where} cannot be used now ({exc}); nothing can be "
        "logged or learned until it is reachable again."
    )


class RedisEventStore:
    """The event log in one Redis server, shared by replicas on any number of hosts.

    Parameters
    ----------
    client
        A redis-py client with ``decode_responses=False`` (vectors are bytes).
    encoding_hash
        `FeatureSchema.encoding_hash` of the schema; a log belongs to one encoding, and
        opening it with another is refused with `StoreError`.
    prefix
        Every key of this log starts with ``prefix + ":"``; several logs can share a server.

    Use `from_url` to connect from a ``redis://host:port/db`` URL.
    """

    def __init__(self, client: redis.Redis, encoding_hash: str, prefix: str = "banditrec") -> None:
        self._redis = client
        self._prefix = prefix + ":"
        #: (until when, why) while Redis is known to be unreachable; see `_available`.
        self._down: tuple[float, Exception] | None = None
        kwargs = client.connection_pool.connection_kwargs
        self.where = f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/" + (
            f"{kwargs.get('db', 0)} (keys {self._prefix}*)"
        )
        self._scripts = {
            name: client.register_script(getattr(lua, name))
            for name in lua.__all__  # registered once, sent by SHA, reloaded after a restart
        }
        stored_hash, log_id = self._run("OPEN", encoding_hash, uuid.uuid4().hex)
        if stored_hash.decode() != encoding_hash:
            raise StoreError(
                f"The event log {self.where} belongs to schema {stored_hash.decode()[:12]}…, "
                f"not to the configured schema {encoding_hash[:12]}…; use another prefix or "
                "database."
            )
        self._log_id: str = log_id.decode()

    @classmethod
    def from_url(
        cls,
        url: str,
        encoding_hash: str,
        prefix: str = "banditrec",
        timeout_seconds: float = 5.0,
    ) -> RedisEventStore:
        """Connect to ``redis://[user:password@]host:port/db`` (or ``rediss://`` for TLS).

        `timeout_seconds` bounds connecting and every reply, so an unreachable or hung server
        turns into `StoreUnavailableError` instead of a request that never ends.
        """
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            # A connection broken by a Redis restart is reopened; about 1 s in all.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            health_check_interval=30,
        )
        try:
            return cls(client, encoding_hash, prefix)
        except StoreError:
            client.close()
            raise

    @_available
    def _run(self, name: str, *args: Any, client: Any = None) -> Any:
        return self._scripts[name](args=[self._prefix, *args], client=client)

    def _key(self, name: str) -> str:
        return self._prefix + name

    @property
    def timeout_seconds(self) -> float:
        timeout = self._redis.connection_pool.connection_kwargs.get("socket_timeout")
        return float(timeout) if timeout else float("inf")

    def log_id(self) -> str:
        """The random identity this log was created with (the same for every replica)."""
        return self._log_id

    def start(self) -> None:
        """Nothing to start: Redis does its own upkeep (AOF rewrites, expiry)."""

    def close(self) -> None:
        self._redis.close()

    # -- decisions ---------------------------------------------------------------------

    @_available
    def log_decision_batch(self, batch: DecisionBatch, rules: RewardRules) -> None:
        # One script call for the whole batch, as `log_decisions`; its ids are new.
        self.log_decisions(batch.records(), rules)

    def log_decisions(
        self, records: Sequence[DecisionRecord], rules: RewardRules
    ) -> list[DecisionRecord]:
        if not records:
            return []
        args: list[Any] = []
        for r in records:
            state, deadline = rewards.initial_state(r.deferred, r.created_at, rules)
            args += [
                r.event_id,
                repr(float(r.created_at)),
                r.model_version,
                orjson.dumps(r.context),
                _f64(r.x),
                orjson.dumps(r.actions),
                orjson.dumps(r.eligible),
                r.action_index,
                r.action,
                repr(float(r.probability)),
                _f64(r.probabilities),
                _f64(r.scores),
                r.user_id or "",
                state,
                "" if deadline is None else repr(deadline),
            ]
        inserted = self._run("LOG_DECISIONS", *args)
        results = list(records)
        for i, new in enumerate(inserted):
            if not new:  # logged before (a client repeated the id): the first one stands
                existing = self.get_decision(records[i].event_id)
                assert existing is not None
                results[i] = existing
        return results

    @_available
    def get_decision(self, event_id: str) -> DecisionRecord | None:
        row: Any = self._redis.hmget(self._key("d:" + event_id), lua.DECISION_FIELDS)
        return None if row[0] is None else _decision(event_id, row)

    def iter_decisions(self, batch_size: int = 10_000) -> Iterator[tuple[DecisionRecord, Any]]:
        """Every decision in log order with its learned reward total (None if none yet)."""
        start = "-"
        while True:
            batch = self._decision_batch(start, batch_size)
            if not batch:
                return
            yield from batch[1]
            start = batch[0]

    @_available
    def _decision_batch(
        self, start: str, count: int
    ) -> tuple[str, list[tuple[DecisionRecord, float | None]]] | None:
        # redis-py types replies loosely (bytes | str | None ...): these are bytes.
        entries: Any = self._redis.xrange(self._key("decisions"), start, "+", count)
        if not entries:
            return None
        ids = [fields[b"e"].decode() for _, fields in entries]
        pipe = self._redis.pipeline(transaction=False)
        for event_id in ids:
            pipe.hmget(self._key("d:" + event_id), [*lua.DECISION_FIELDS, "tot"])
        out = []
        for event_id, row in zip(ids, pipe.execute(), strict=True):
            if row[0] is not None:  # removed since (retention)
                out.append((_decision(event_id, row[:-1]), _float_or_none(row[-1])))
        last, _ = entries[-1]
        return "(" + last.decode(), out

    # -- rewards -----------------------------------------------------------------------

    def record_reward(
        self, event_id: str, value: float, now: float, rules: RewardRules
    ) -> RewardResult:
        return self.record_rewards([(event_id, value, now)], rules)[0]

    def record_rewards(
        self, posted: Sequence[tuple[str, float, float]], rules: RewardRules
    ) -> list[RewardResult]:
        """`record_reward` for each (event id, value, time), in order, in one script.

        The group is one atomic script (``RECORD_REWARDS``): one call to Redis, and its
        learn events are appended together, so the replicas' blocking reads of the stream
        wake once for the group. Each reward keeps its own replay token.
        """
        if not posted:
            return []
        args: list[Any] = [
            rules.aggregation, repr(float(rules.min_reward)), repr(float(rules.max_reward))
        ]  # fmt: skip
        for event_id, value, now in posted:
            args += [event_id, repr(float(value)), repr(float(now)), uuid.uuid4().hex]
        flat = self._run("RECORD_REWARDS", *args)
        results = []
        for i, (event_id, value, _) in enumerate(posted):
            outcome, total, action, seq = flat[4 * i : 4 * i + 4]
            results.append(
                RewardResult(
                    event_id,
                    RewardOutcome(outcome.decode()),
                    value,
                    _float_or_none(total),
                    action.decode() or None,
                    seq if isinstance(seq, int) else None,  # an integer reply; '' for none
                )
            )
        return results

    def activate(self, event_id: str, now: float, rules: RewardRules) -> bool | None:
        deadline = rewards.activate("inactive", now, rules).deadline
        done = self._run("ACTIVATE", event_id, repr(deadline))
        return None if done < 0 else bool(done)

    def apply_default_rewards(
        self, now: float, rules: RewardRules, limit: int = 1000
    ) -> dict[str, int]:
        actions = self._run("DEFAULTS", repr(float(now)), repr(float(rules.default_reward)), limit)
        by_action: dict[str, int] = {}
        for action in actions:
            by_action[action.decode()] = by_action.get(action.decode(), 0) + 1
        return by_action

    @_available
    def pending_backlog(self, now: float) -> int:
        """Decisions whose window closed before `now` that still wait for a default reward."""
        return int(self._redis.zcount(self._key("pending"), "-inf", f"({float(now)!r}"))

    # -- the learn stream --------------------------------------------------------------

    @_available
    def learn_events_after(self, offset: int, limit: int = 10_000) -> list[LearnEvent]:
        entries: Any = self._redis.xrange(self._key("learn"), f"{offset + 1}-0", "+", limit)
        return [_learn_event(entry_id, fields) for entry_id, fields in entries]

    @_available
    def wait_learn_events(
        self, offset: int, timeout_seconds: float, limit: int = 10_000
    ) -> list[LearnEvent]:
        """Learn events with ``seq > offset``; blocks up to `timeout_seconds` until one comes.

        Returns as soon as any event is appended by any client (a blocking ``XREAD``); an
        empty list after the timeout. The wait is cut to stay within the socket timeout.
        """
        block_ms = int(min(timeout_seconds, self.timeout_seconds * 0.8) * 1000)
        if block_ms <= 0:
            return self.learn_events_after(offset, limit)
        reply: Any = self._redis.xread({self._key("learn"): f"{offset}-0"}, limit, block_ms)
        if not reply:
            return []
        ((_, entries),) = reply
        return [_learn_event(entry_id, fields) for entry_id, fields in entries]

    def append_action_change(self, kind: LearnKind, action: str, now: float) -> int:
        # As in SQLite, the index of an added action is decided when replicas apply it.
        return int(self._run("ACTION_CHANGE", kind.value, action, repr(now), uuid.uuid4().hex))

    @_available
    def last_offset(self) -> int:
        return int(self._redis.get(self._key("seq")) or 0)

    def epoch_offset(self, base_version: str) -> int:
        """The log offset a base model starts from, registered on first sight."""
        return int(self._run("EPOCH", base_version))

    # -- leases, snapshots, counts -----------------------------------------------------

    def acquire_lease(self, name: str, owner: str, now: float, ttl_seconds: float) -> bool:
        """Hold the lease `name` for `ttl_seconds` if it is free, expired or already ours.

        Expiry is judged on the callers' clock (``now``), as in SQLite; Redis also drops the
        key after `ttl_seconds` of its own clock, so an abandoned lease leaves no key.
        """
        ttl_ms = max(1, int(np.ceil(ttl_seconds * 1000)))
        return bool(
            self._run("LEASE", name, owner, repr(float(now)), repr(now + ttl_seconds), ttl_ms)
        )

    def release_lease(self, name: str, owner: str) -> None:
        """Free the lease `name` if `owner` holds it."""
        self._run("RELEASE", name, owner)

    def put_snapshot(self, offset: int, data: bytes) -> None:
        """Share a model snapshot taken at log `offset`; the newest three are kept."""
        self._run("PUT_SNAPSHOT", offset, data, _SNAPSHOTS_KEPT)

    def snapshots(self) -> list[tuple[int, bytes]]:
        """The shared snapshots as (offset, data), newest first."""
        flat = self._run("SNAPSHOTS")
        return [(int(flat[i]), bytes(flat[i + 1])) for i in range(0, len(flat), 2)]

    # -- retention and privacy ---------------------------------------------------------

    @_available
    def retirable_decisions(
        self, before: float, now: float, limit: int = 1000
    ) -> list[RetirableDecision]:
        """Decisions retention may remove (see `EventStore.retirable_decisions`).

        Read from the oldest entry of the decisions stream; the scan stops at the first
        decision made at or after `before` or after ``20 * limit`` entries.
        """
        found: list[RetirableDecision] = []
        start, scanned = "-", 0
        fields = [*lua.DECISION_FIELDS, "tot"]
        while len(found) < limit and scanned < 20 * limit:
            entries: Any = self._redis.xrange(self._key("decisions"), start, "+", _SCAN_ENTRIES)
            if not entries:
                return found
            ids = [entry[b"e"].decode() for _, entry in entries]
            pipe = self._redis.pipeline(transaction=False)
            for event_id in ids:
                pipe.hmget(self._key("d:" + event_id), fields)
            for event_id, row in zip(ids, pipe.execute(), strict=True):
                if row[0] is None:  # removed meanwhile
                    continue
                if float(row[0]) >= before:
                    return found
                state, deadline = row[12].decode(), row[13]
                if state in RETIRABLE_STATES and not (
                    state == "rewarded" and float(deadline) >= now
                ):
                    record = _decision(event_id, row[:-1])
                    found.append(RetirableDecision(record, _float_or_none(row[-1]), state))
                    if len(found) == limit:
                        return found
            start = "(" + entries[-1][0].decode()
            scanned += len(entries)
        return found

    def delete_decisions(self, decisions: Sequence[tuple[str, str]]) -> int:
        if not decisions:
            return 0
        return int(self._run("DELETE_DECISIONS", *[v for pair in decisions for v in pair]))

    @_available
    def retirable_rewards(self, before: float, limit: int = 1000) -> list[StoredReward]:
        entries: Any = self._redis.xrange(self._key("rewards"), "-", "+", limit)
        found = []
        for entry_id, fields in entries:
            received_at = float(fields[b"t"])
            if received_at >= before:  # received in about stream order: the rest is newer
                break
            found.append(
                StoredReward(
                    entry_id.decode(),
                    fields[b"e"].decode(),
                    received_at,
                    float(fields[b"v"]),
                    fields[b"o"].decode(),
                )
            )
        return found

    @_available
    def delete_rewards(self, keys: Sequence[Any]) -> int:
        if not keys:
            return 0
        return int(self._redis.xdel(self._key("rewards"), *keys))

    @_available
    def trim_learn_events(self, up_to_offset: int, before: float, limit: int = 10_000) -> int:
        """Trim the oldest learn events (``XTRIM MINID``); see `EventStore.trim_learn_events`.

        The stream is cut before the first event that must stay, so only a prefix is
        removed: replicas reading the stream see no hole.
        """
        if up_to_offset <= 0:
            return 0
        entries: Any = self._redis.xrange(self._key("learn"), "-", f"{up_to_offset}-0", limit)
        keep_from = None
        for entry_id, fields in entries:
            if float(fields[b"t"]) >= before:
                keep_from = entry_id.decode()
                break
        if keep_from is None:
            if not entries:
                return 0
            last = int(entries[-1][0].split(b"-", 1)[0])
            keep_from = f"{last + 1}-0"
        return int(self._redis.xtrim(self._key("learn"), minid=keep_from, approximate=False))

    @_available
    @_available
    def user_history(self, user_id: str, since: float) -> UserHistory:
        pipe = self._redis.pipeline(transaction=True)  # MULTI: both read at one moment
        pipe.get(self._key(f"u:{user_id}:v"))
        pipe.zrangebyscore(self._key(f"u:{user_id}:e"), repr(float(since)), "+inf")
        version, members = pipe.execute()
        serves: list[tuple[str, float]] = []
        negatives: list[tuple[str, float]] = []
        for member in members:
            kind, rest = member.decode().split("|", 1)
            action, at, _ = rest.rsplit("|", 2)
            (serves if kind == "serve" else negatives).append((action, float(at)))
        return UserHistory(int(version or 0), tuple(serves), tuple(negatives))

    def claim_serve(
        self, user_id: str, action: str, at: float, version: int, keep_after: float
    ) -> bool:
        return self._user_event(user_id, "serve", action, at, str(version), keep_after)

    def record_negative(self, user_id: str, action: str, at: float, keep_after: float) -> None:
        self._user_event(user_id, "negative", action, at, "", keep_after)

    def _user_event(
        self, user_id: str, kind: str, action: str, at: float, version: str, keep_after: float
    ) -> bool:
        # The user's keys expire once nothing in them can matter any more.
        ttl = max(1, math.ceil(at - keep_after) + 1)
        nonce = uuid.uuid4().hex[:12]
        args = (user_id, kind, action, repr(float(at)), version, repr(float(keep_after)), ttl)
        return bool(self._run("USER_EVENT", *args, nonce))

    def forget_user(self, user_id: str) -> list[str]:
        """Remove the user's decisions and their rewards (see `EventStore.forget_user`).

        A scan of the decisions stream finds them (user ids are not indexed, so logging a
        decision writes no index); each is removed by a script that checks its user id
        again, then the rewards stream is scanned for their rewards.
        """
        self._redis.delete(self._key(f"u:{user_id}:v"), self._key(f"u:{user_id}:e"))  # caps
        ids = self._decisions_of(user_id)
        if not ids:
            return []
        for i in range(0, len(ids), _SCAN_ENTRIES):
            self.delete_decisions(
                [(event_id, "u:" + user_id) for event_id in ids[i : i + _SCAN_ENTRIES]]
            )
        wanted = set(ids)
        start = "-"
        while True:
            entries: Any = self._redis.xrange(self._key("rewards"), start, "+", _SCAN_ENTRIES)
            if not entries:
                return ids
            theirs = [entry_id for entry_id, f in entries if f[b"e"].decode() in wanted]
            if theirs:
                self._redis.xdel(self._key("rewards"), *theirs)
            start = "(" + entries[-1][0].decode()

    def _decisions_of(self, user_id: str) -> list[str]:
        """The event ids of `user_id`'s decisions (a scan of the decisions stream)."""
        found: list[str] = []
        start = "-"
        while True:
            entries: Any = self._redis.xrange(self._key("decisions"), start, "+", _SCAN_ENTRIES)
            if not entries:
                return found
            ids = [fields[b"e"].decode() for _, fields in entries]
            pipe = self._redis.pipeline(transaction=False)
            for event_id in ids:
                pipe.hget(self._key("d:" + event_id), "u")
            for event_id, owner in zip(ids, pipe.execute(), strict=True):
                if owner is not None and owner.decode() == user_id:
                    found.append(event_id)
            start = "(" + entries[-1][0].decode()

    @_available
    def count(self, table: Literal["decisions", "rewards", "learn_events"]) -> int:
        key = {"decisions": "decisions", "rewards": "rewards", "learn_events": "learn"}[table]
        return int(self._redis.xlen(self._key(key)))


def _f64(a: Any) -> bytes:
    return np.ascontiguousarray(a, dtype=np.float64).tobytes()


def _float_or_none(value: bytes | None) -> float | None:
    return float(value) if value else None


def _decision(event_id: str, row: Sequence[Any]) -> DecisionRecord:
    created, version, context, x, actions, eligible, index, _action, p, ps, scores, user = row[:12]
    return DecisionRecord(
        event_id=event_id,
        created_at=float(created),
        model_version=version.decode(),
        context=orjson.loads(context),
        x=np.frombuffer(x, dtype=np.float64),
        actions=tuple(orjson.loads(actions)),
        eligible=tuple(orjson.loads(eligible)),
        action_index=int(index),
        probability=float(p),
        probabilities=np.frombuffer(ps, dtype=np.float64),
        scores=np.frombuffer(scores, dtype=np.float64),
        deferred=row[12] == b"inactive",
        user_id=user.decode() or None,
    )


def _learn_event(entry_id: bytes, fields: dict[bytes, bytes]) -> LearnEvent:
    return LearnEvent(
        seq=int(entry_id.split(b"-", 1)[0]),
        event_id=fields[b"e"].decode(),
        action_index=int(fields[b"a"]),
        x=np.frombuffer(fields[b"x"], dtype=np.float64),
        reward=float(fields[b"r"]),
        weight=float(fields[b"w"]),
        kind=LearnKind(fields[b"k"].decode()),
        propensity=float(fields[b"p"]) if fields.get(b"p") else None,  # older entries: none
    )
