"""Retention and privacy end to end: the job, a crash half-way, the lease, HTTP, the CLI, a soak.

Real SQLite files, a real redis-server on a free port, real Parquet files; the job runs on
a real `Engine` whose clock the test sets, so which decisions are old is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from banditrec import evaluation as ev
from banditrec.api import create_app
from banditrec.archive import Archive, ArchiveWriter
from banditrec.cli import app as cli_app
from banditrec.config import Settings
from banditrec.engine import Engine, prior_model
from banditrec.features import load_default_schema
from banditrec.learner import Learner, recover_model
from banditrec.retention import Retention, RetentionRun
from banditrec.snapshot_store import snapshot_store_for
from banditrec.store import RewardRules
from banditrec.store.redis import RedisEventStore
from banditrec.store.sqlite import SQLiteEventStore
from conftest import SEED_CONTEXT, SEED_REQUEST
from redis_server import RedisServer

SCHEMA = load_default_schema()
RULES = RewardRules(window_seconds=10.0, default_reward=0.0)


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "sqlite":
        opened: Any = SQLiteEventStore(tmp_path / "events.db", SCHEMA.encoding_hash)
    else:
        server = request.getfixturevalue("shared_redis")
        opened = RedisEventStore.from_url(server.url, SCHEMA.encoding_hash, prefix=uuid.uuid4().hex)
    yield opened
    opened.close()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def engine_on(store: Any, clock: Clock) -> Engine:
    return Engine(prior_model(SCHEMA), np.random.default_rng(0), store, RULES, clock=clock)


def retention_of(store: Any, tmp_path: Path, seconds: float = 50.0) -> Retention:
    snapshots = snapshot_store_for(store, tmp_path / "snapshots")
    return Retention(store, snapshots, SCHEMA, tmp_path / "archive", seconds, batch=2)


async def a_day_of_decisions(engine: Engine, clock: Clock) -> dict[str, Any]:
    """Decisions in every state at 1000-1195 s; the clock ends at 1200 (retention: 1150)."""
    clock.now = 1000.0
    made = {
        name: await engine.rank(
            SEED_CONTEXT, deferred=name in ("inactive", "late_active"), user_id=f"user-{name}"
        )
        for name in ("rewarded", "defaulted", "inactive", "late_active")
    }
    clock.now = 1001.0
    await engine.reward(made["rewarded"].event_id, 1.0)  # learn event 1, at 1001
    clock.now = 1180.0
    made["young"] = await engine.rank(SEED_CONTEXT, deferred=True)  # young: stays
    clock.now = 1195.0
    await engine.activate(made["late_active"].event_id)  # old but pending until 1205: stays
    await engine.reward("no-such-event", 0.5)  # a reward received at 1195: stays
    clock.now = 1200.0
    assert await engine.apply_default_rewards() == {made["defaulted"].action: 1}  # event 2
    return made


def test_the_job_archives_old_closed_decisions_then_removes_them(
    store: Any, tmp_path: Path
) -> None:
    clock = Clock(1000.0)
    engine = engine_on(store, clock)
    retention = retention_of(store, tmp_path)

    async def scenario() -> tuple[dict[str, Any], RetentionRun | None, RetentionRun | None]:
        made = await a_day_of_decisions(engine, clock)
        Learner(engine, store, retention.snapshots).snapshot()  # at offset 2
        return made, await retention.run(engine, "me"), await retention.run(engine, "me")

    made, first, again = asyncio.run(scenario())
    assert first == RetentionRun(decisions=3, rewards=1, learn_events=1)
    assert again == RetentionRun(0, 0, 0)
    assert [d.event_id for d, _ in store.iter_decisions()] == [
        made["late_active"].event_id,
        made["young"].event_id,
    ]
    archive = Archive(tmp_path / "archive", SCHEMA.encoding_hash)
    rows = {row.record.event_id: row for row in archive.iter_decision_rows()}
    assert {name: (rows[made[name].event_id].state, rows[made[name].event_id].reward_total)
            for name in ("rewarded", "defaulted", "inactive")} == {
        "rewarded": ("rewarded", 1.0), "defaulted": ("defaulted", 0.0),
        "inactive": ("inactive", None)}  # fmt: skip
    for name in ("rewarded", "defaulted", "inactive"):
        got, logged = rows[made[name].event_id].record, made[name]
        assert got.user_id == f"user-{name}" and got.context == logged.context
        assert got.x.tobytes() == logged.x.tobytes()
        assert got.probabilities.tobytes() == logged.probabilities.tobytes()
    assert [(r.event_id, r.value, r.outcome) for r in archive.iter_rewards()] == [
        (made["rewarded"].event_id, 1.0, "learned")
    ]
    assert store.count("rewards") == 1  # the unknown reward at 1195 is young
    assert [e.seq for e in store.learn_events_after(0)] == [2]  # the snapshot's own stays
    # Recovery after trimming: the snapshot and the tail give the live model, bit for bit.
    recovered, origin = recover_model(prior_model(SCHEMA), store, retention.snapshots)
    assert origin == "snapshot at offset 2"
    replayed = Engine(recovered, np.random.default_rng(0), store, RULES)
    replayed.catch_up()
    for name, value in engine.policy.get_state().items():
        assert np.asarray(replayed.policy.get_state()[name]).tobytes() == (
            np.asarray(value).tobytes()
        ), name
    engine.close()
    replayed.close()


def test_without_a_snapshot_no_learn_event_is_trimmed(store: Any, tmp_path: Path) -> None:
    clock = Clock(1000.0)
    engine = engine_on(store, clock)
    retention = retention_of(store, tmp_path)

    async def scenario() -> RetentionRun | None:
        await a_day_of_decisions(engine, clock)
        return await retention.run(engine, "me")

    assert asyncio.run(scenario()) == RetentionRun(3, 1, 0)  # recovery needs them all
    assert [e.seq for e in store.learn_events_after(0)] == [1, 2]
    engine.close()


def test_a_crash_between_writing_and_deleting_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    store = SQLiteEventStore(tmp_path / "events.db", SCHEMA.encoding_hash)
    clock = Clock(1000.0)
    engine = engine_on(store, clock)
    retention = retention_of(store, tmp_path)

    async def day() -> None:
        for name in range(40):  # more rewarded decisions, so the evaluation has rounds
            clock.now = 900.0 + name
            record = await engine.rank(SEED_CONTEXT)
            await engine.reward(record.event_id, float(name % 2))
        await a_day_of_decisions(engine, clock)

    async def crash_then_run_again() -> RetentionRun | None:
        # The first batch is written, then the process "dies" before deleting it ...
        rows = store.retirable_decisions(1150.0, 1200.0, 2)
        ArchiveWriter(tmp_path / "archive", SCHEMA.encoding_hash).write_decisions(
            (r.record, r.reward_total, r.state, None) for r in rows
        )
        # ... and the next run does the whole job again.
        return await retention.run(engine, "me")

    asyncio.run(day())
    whole = ev.load_event_log(store, SCHEMA)
    done = asyncio.run(crash_then_run_again())
    assert done is not None and done.decisions == 43
    archive = Archive(tmp_path / "archive", SCHEMA.encoding_hash)
    assert archive.count_decisions() == 45  # two rows twice ...
    assert len({r.event_id for r, _ in archive.iter_decisions()}) == 43  # ... read once
    after = ev.load_event_log(store, SCHEMA, archive=tmp_path / "archive")
    assert after.n_rounds == whole.n_rounds == 42
    assert after.reward.tobytes() == whole.reward.tobytes()
    engine.close()
    store.close()


def test_a_decision_activated_while_it_is_archived_is_read_in_its_final_state(
    store: Any, tmp_path: Path
) -> None:
    clock = Clock(1000.0)
    engine = engine_on(store, clock)
    retention = retention_of(store, tmp_path)

    async def scenario() -> RetentionRun | None:
        deferred = await engine.rank(SEED_CONTEXT, deferred=True)
        clock.now = 1200.0
        # Retention reads and archives the never-activated decision ...
        rows = store.retirable_decisions(1150.0, 1200.0, 10)
        assert [(r.record.event_id, r.state) for r in rows] == [(deferred.event_id, "inactive")]
        ArchiveWriter(tmp_path / "archive", SCHEMA.encoding_hash).write_decisions(
            (r.record, r.reward_total, r.state, None) for r in rows
        )
        # ... the client activates it at that instant, so the removal leaves it live ...
        assert await engine.activate(deferred.event_id) is True
        assert store.delete_decisions([(deferred.event_id, "inactive")]) == 0
        clock.now = 1201.0
        assert (await engine.reward(deferred.event_id, 1.0)).total == 1.0
        clock.now = 1300.0  # ... and the next run archives it again, rewarded.
        return await retention.run(engine, "me")

    assert asyncio.run(scenario()) == RetentionRun(1, 1, 0)
    archive = Archive(tmp_path / "archive", SCHEMA.encoding_hash)
    assert archive.count_decisions() == 2
    assert [(r.state, r.reward_total) for r in archive.iter_decision_rows()] == [("rewarded", 1.0)]
    engine.close()


def test_another_holder_of_the_lease_does_the_work(store: Any, tmp_path: Path) -> None:
    clock = Clock(1000.0)
    engine = engine_on(store, clock)
    retention = retention_of(store, tmp_path)
    assert store.acquire_lease("retention", "another-process", time.time(), 30.0)

    async def scenario() -> RetentionRun | None:
        await a_day_of_decisions(engine, clock)
        return await retention.run(engine, "me")

    assert asyncio.run(scenario()) is None
    assert store.count("decisions") == 5 and not (tmp_path / "archive").exists()
    engine.close()


# -- privacy: DELETE /v1/admin/users/{user_id} and `banditrec forget-user` ------------------


def wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_user_is_forgotten_in_the_live_log_and_the_archive_over_http(tmp_path: Path) -> None:
    settings = Settings(
        model_path=tmp_path / "none.npz", db_path=tmp_path / "events.db", seed=0,
        archive_dir=tmp_path / "archive", retention_seconds=1.0, retention_every_seconds=0.1,
        reward_window_seconds=0.2, snapshot_dir=tmp_path / "snapshots",
    )  # fmt: skip
    app = create_app(settings)
    with TestClient(app) as client:
        store = app.state.learner.store

        def decide(user_id: str, rank: bool) -> str:
            if rank:
                answer = client.post("/v1/rank", json={"context": SEED_CONTEXT, "user_id": user_id})
            else:
                answer = client.post("/recommend_action", json={**SEED_REQUEST, "user_id": user_id})
            assert answer.status_code == 200, answer.text
            return str(answer.json()["event_id"])

        first = [decide("u1", False), decide("u1", False), decide("u1", True), decide("u2", True)]
        assert client.post(f"/v1/events/{first[0]}/reward", json={"value": 1.0}).status_code == 200
        assert [d.user_id for d, _ in store.iter_decisions()] == ["u1", "u1", "u1", "u2"]
        wait_for(lambda: store.count("decisions") == 0)  # all four archived by retention
        live = [decide("u1", True), decide("u1", False)]
        forgotten = client.delete("/v1/admin/users/u1")
        assert forgotten.status_code == 200, forgotten.text
        assert forgotten.json() == {"user_id": "u1", "live": 2, "archive": 3}
        archive = Archive(tmp_path / "archive", SCHEMA.encoding_hash)
        assert [(r.record.event_id, r.user_id) for r in archive.iter_decision_rows()] == [
            (first[3], "u2")
        ]
        assert first[0] not in {r.event_id for r in archive.iter_rewards()}
        assert all(store.get_decision(event_id) is None for event_id in live)
        # A reward for a forgotten decision finds nothing.
        late = client.post(f"/v1/events/{live[0]}/reward", json={"value": 1.0})
        assert late.status_code == 404 and late.json()["error"] == "event_not_found"
        again = client.delete("/v1/admin/users/u1")
        assert again.json() == {"user_id": "u1", "live": 0, "archive": 0}
        too_long = client.delete("/v1/admin/users/" + "u" * 129)
        assert too_long.status_code == 422
        assert too_long.json()["detail"][0]["field"] == "user_id"
        assert "at most 128 characters" in too_long.json()["detail"][0]["message"]
        assert archive.count_decisions() == 1  # nothing else was removed


def test_the_cli_exports_evaluates_and_forgets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("BANDITREC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BANDITREC_DB_PATH", str(tmp_path / "events.db"))
    monkeypatch.setenv("BANDITREC_ARCHIVE_DIR", str(tmp_path / "archive"))
    store = SQLiteEventStore(tmp_path / "events.db", SCHEMA.encoding_hash)
    clock = Clock(1000.0)
    engine = engine_on(store, clock)
    retention = retention_of(store, tmp_path)

    async def day() -> None:
        for i in range(60):  # rewarded decisions at 900-959 s, users u0-u2
            clock.now = 900.0 + i
            record = await engine.rank(SEED_CONTEXT, user_id=f"u{i % 3}")
            await engine.reward(record.event_id, float(i % 2))
        await a_day_of_decisions(engine, clock)
        await retention.run(engine, "me")  # the 1.5 hours before 1150 s go to the archive

    asyncio.run(day())
    engine.close()
    store.close()
    runner = CliRunner()
    iso = "1970-01-01T00:15:30"  # 930 s
    out = runner.invoke(cli_app, ["export", "--out", "out", "--since", iso, "--archive", "archive"])
    assert out.exit_code == 0, out.output
    exported = Archive(tmp_path / "out", SCHEMA.encoding_hash)
    times = sorted(r.created_at for r, _ in exported.iter_decisions())
    assert len(times) == 30 + 5 and times[0] == 930.0  # 930-959 archived, 5 at 1000+ of both
    assert "Exported 35 decisions" in " ".join(out.output.split())

    until = runner.invoke(cli_app, ["export", "--out", "early", "--until", "1970-01-01T00:15:10Z"])
    assert until.exit_code == 0, until.output  # the live log alone holds none of those
    assert "Exported 0 decisions" in " ".join(until.output.split())
    bad = runner.invoke(cli_app, ["export", "--out", "x", "--since", "yesterday"])
    assert bad.exit_code == 1
    assert "--since 'yesterday' is not an ISO 8601 time" in " ".join(bad.output.split())

    report = runner.invoke(
        cli_app, ["evaluate", "--archive", "archive", "--candidate", "uniform",
                  "--n-bootstrap", "20", "--split", "0.5", "--out", "report"],
    )  # fmt: skip
    assert report.exit_code == 0, report.output
    source = json.loads((tmp_path / "report" / "report.json").read_text())["source"]
    assert source["archive"] == "archive"  # read beside the live log
    assert source["path"].endswith("events.db")

    forgot = runner.invoke(cli_app, ["forget-user", "u1"])
    assert forgot.exit_code == 0, forgot.output
    assert "Removed 0 decisions of user 'u1' from the live log" in " ".join(forgot.output.split())
    assert "and 20 from the archive" in " ".join(forgot.output.split())
    archive = Archive(tmp_path / "archive", SCHEMA.encoding_hash)
    assert "u1" not in {r.user_id for r in archive.iter_decision_rows()}
    missing = runner.invoke(cli_app, ["forget-user", "u1", "--log", "nowhere.db"])
    assert missing.exit_code == 1
    assert "The event log nowhere.db does not exist." in " ".join(missing.output.split())


# -- soak: steady traffic, retention on, the live log stays the same size ---------------------

SOAK_SECONDS = 13.0
SOAK_RULES = RewardRules(window_seconds=1.0, default_reward=0.0)


def live_bytes(store: Any, redis_client: Any) -> tuple[int, int]:
    """SQLite: the database file's size, and its WAL's. Redis: the server's ``used_memory``
    (and 0). The archive is not counted: holding what leaves the live log is its point."""
    if redis_client is not None:
        return int(redis_client.info("memory")["used_memory"]), 0
    path = store.path
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size, wal.stat().st_size if wal.exists() else 0


@pytest.mark.serial
def test_soak_the_live_log_stays_flat_with_retention(store: Any, tmp_path: Path) -> None:
    """300 decisions a second for 13 s, every other one rewarded; retention 2 s, window 1 s.

    From the 5-7 s window to the 11-13 s window, the SQLite file (or Redis's memory) grows
    by less than a third of what the decisions made in between take in it (without
    retention they would all stay: 100 %), and the live decisions stay bounded. SQLite's
    WAL is a file that checkpoints rewind and writers reuse from its start: its size is
    set by how many commits come between two checkpoints, not by what the log holds, so it
    is checked against its own bound (the writer's safety-net checkpoint at 40 MiB)."""
    redis_client = getattr(store, "_redis", None)
    if redis_client is not None:
        redis_client.execute_command("MEMORY", "PURGE")
    engine = Engine(prior_model(SCHEMA), np.random.default_rng(0), store, SOAK_RULES)
    snapshots = snapshot_store_for(store, tmp_path / "snapshots")
    retention = Retention(
        store, snapshots, SCHEMA, tmp_path / "archive", 2.0, every_seconds=0.5, batch=500
    )
    learner = Learner(
        engine, store, snapshots, default_sweep_interval=0.25, snapshot_every_seconds=0.5,
        retention=retention,
    )  # fmt: skip
    # (time, bytes, live decisions, decisions made, WAL bytes)
    samples: list[tuple[float, int, int, int, int]] = []

    async def traffic() -> int:
        store.start()
        running = asyncio.create_task(learner.run())
        made, start = 0, time.monotonic()
        baseline = live_bytes(store, redis_client)[0]
        next_sample = 0.0
        while (elapsed := time.monotonic() - start) < SOAK_SECONDS:
            records = await asyncio.gather(*(engine.rank(SEED_CONTEXT) for _ in range(10)))
            await asyncio.gather(*(engine.reward(r.event_id, 1.0) for r in records[::2]))
            made += len(records)
            if elapsed >= next_sample:
                size, wal = live_bytes(store, redis_client)
                samples.append((elapsed, size, store.count("decisions"), made, wal))
                next_sample += 0.25
            await asyncio.sleep(max(0.0, made / 300.0 - (time.monotonic() - start)))
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        return baseline

    baseline = asyncio.run(traffic())
    engine.close()
    mid = [s for s in samples if 5.0 <= s[0] < 7.0]
    end = [s for s in samples if s[0] >= 11.0]
    assert mid and end, samples
    made_between = end[-1][3] - mid[0][3]
    rate = samples[-1][3] / samples[-1][0]
    assert rate > 100, f"only {rate:.0f} decisions/s: the soak did not load the log"
    # What one live decision takes (bytes), measured at the middle, with its share of the
    # learn events, rewards and snapshots around it.
    per_decision = (max(s[1] for s in mid) - baseline) / max(s[2] for s in mid)
    growth = max(s[1] for s in end) - max(s[1] for s in mid)
    assert growth < made_between * per_decision / 3, (growth, made_between, per_decision)
    # Live decisions: about rate × (retention + window + sweep and job intervals), never all.
    assert max(s[2] for s in end) < min(rate * 6.0, samples[-1][3] / 3)
    archived = Archive(tmp_path / "archive", SCHEMA.encoding_hash).count_decisions()
    assert archived + store.count("decisions") >= samples[-1][3]  # none lost
    assert store.count("learn_events") < samples[-1][3] / 2  # trimmed behind the snapshots
    assert max(s[4] for s in samples) < 40 * 2**20
