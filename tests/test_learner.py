"""The learner on real files: recovery that refuses foreign snapshots, the default-reward
sweep, the snapshot lease, leftovers of crashed writes, and failures reported, not flooded."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from banditrec.engine import Engine, prior_model
from banditrec.features import load_default_schema
from banditrec.learner import Learner, recover_model
from banditrec.metrics import Metrics, metrics_response
from banditrec.sim import AppSimulator
from banditrec.snapshot import load_model, save_model
from banditrec.snapshot_store import SnapshotDirectory
from banditrec.store import RewardRules
from banditrec.store.sqlite import SQLiteEventStore

SCHEMA = load_default_schema()


class Clock:
    """A clock the test moves by hand, so reward windows need no sleeping."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def contexts(n: int, seed: int) -> list[dict[str, object]]:
    columns = AppSimulator().sample_contexts(n, np.random.default_rng(seed))
    return [{f: columns[f][i].item() for f in SCHEMA.field_names} for i in range(n)]


def start(
    tmp_path: Path,
    rules: RewardRules | None = None,
    clock: Clock | None = None,
    snapshot_dir: str = "snapshots",
    **kwargs: object,
) -> Learner:
    """What a server does at start-up: open the log, recover, replay the tail."""
    store = SQLiteEventStore(tmp_path / "events.db", SCHEMA.encoding_hash)
    snapshots = SnapshotDirectory(tmp_path / snapshot_dir)
    model, _ = recover_model(prior_model(SCHEMA), store, snapshots)
    engine = Engine(model, np.random.default_rng(0), store, rules, clock or Clock())
    engine.catch_up()
    return Learner(engine, store, snapshots, **kwargs)  # type: ignore[arg-type]


def stop(learner: Learner) -> None:
    learner.engine.close()
    learner.store.close()  # type: ignore[attr-defined]


def drive(engine: Engine, n: int, seed: int) -> list[str]:
    """Rank `n` contexts and reward each; return the rewards' outcomes."""
    rng = np.random.default_rng(seed)

    async def run() -> list[str]:
        outcomes = []
        for context in contexts(n, seed):
            record = await engine.rank(context)
            result = await engine.reward(record.event_id, float(rng.random() < 0.4))
            outcomes.append(result.outcome.value)
        return outcomes

    return asyncio.run(run())


def replay_of(db_path: Path) -> dict[str, np.ndarray]:
    """The prior plus every learn event of the log, applied from scratch."""
    store = SQLiteEventStore(db_path, SCHEMA.encoding_hash)
    engine = Engine(prior_model(SCHEMA), np.random.default_rng(0), store)
    engine.catch_up()
    state = engine.policy.get_state()
    engine.close()
    store.close()
    return state


def assert_model_is_the_replay(engine: Engine, db_path: Path) -> None:
    expected = replay_of(db_path)
    live = engine.policy.get_state()
    np.testing.assert_array_equal(live["n_updates_"], expected["n_updates_"])
    for name in ("A_", "b_"):
        assert np.abs(live[name] - expected[name]).max() <= 1e-9 * np.abs(expected[name]).max()


def remove_log(tmp_path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"events.db{suffix}").unlink(missing_ok=True)


def copy_log(source: Path, target: Path) -> None:
    """A consistent copy of a live log (SQLite's backup API), as an operator's backup."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    src.backup(dst)
    src.close()
    dst.close()


# -- item: a snapshot that does not belong to the log --------------------------------------


def test_a_snapshot_of_a_deleted_log_is_refused_and_every_new_reward_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    learner = start(tmp_path)
    drive(learner.engine, 200, seed=1)
    old_log_id = learner.store.log_id()
    assert Path(learner.snapshot()).name == "model-000000000200.npz"
    stop(learner)
    remove_log(tmp_path)  # the log is reset: a new, empty one

    with caplog.at_level(logging.ERROR, logger="banditrec.learner"):
        restarted = start(tmp_path)
    assert restarted.engine.applied_offset == 0 and restarted.engine.policy.n_updates_.sum() == 0
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f"model-000000000200.npz belongs to another log (log id {old_log_id})" in error.message
    assert "rebuilt from the base model" in error.message and "whole epoch" in error.message
    assert (tmp_path / "snapshots" / "rejected-model-000000000200.npz").exists()

    assert drive(restarted.engine, 120, seed=2) == ["learned"] * 120
    assert restarted.engine.applied_offset == 120
    assert restarted.engine.policy.n_updates_.sum() == 120  # none of them skipped
    assert_model_is_the_replay(restarted.engine, tmp_path / "events.db")
    stop(restarted)


def test_a_log_restored_from_an_older_copy_is_not_summarised_by_a_later_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    learner = start(tmp_path)
    drive(learner.engine, 60, seed=3)
    learner.snapshot()  # model-60: a prefix of the copy below, so still good
    drive(learner.engine, 40, seed=4)
    copy_log(tmp_path / "events.db", tmp_path / "backup.db")  # at offset 100
    drive(learner.engine, 100, seed=5)
    learner.snapshot()  # model-200: past the end of the copy
    stop(learner)
    remove_log(tmp_path)
    shutil.copyfile(tmp_path / "backup.db", tmp_path / "events.db")

    with caplog.at_level(logging.ERROR, logger="banditrec.learner"):
        restarted = start(tmp_path)
    assert "model-000000000200.npz is at offset 200, past the end of this log (100)" in caplog.text
    assert "rebuilt from snapshot model-000000000060.npz of this log" in caplog.text
    assert restarted.engine.applied_offset == 100
    assert drive(restarted.engine, 150, seed=6) == ["learned"] * 150  # seqs 101..250
    assert restarted.engine.applied_offset == 250
    assert_model_is_the_replay(restarted.engine, tmp_path / "events.db")
    restarted.snapshot()
    stop(restarted)

    # Restarted again: the log has grown past 200, and this log's own snapshot is used.
    caplog.clear()
    again = start(tmp_path)
    assert again.engine.applied_offset == 250
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert_model_is_the_replay(again.engine, tmp_path / "events.db")
    stop(again)


def test_a_snapshot_of_the_same_log_id_but_another_history_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The snapshot of the first history could not be set aside (say, a read-only directory
    # at the time), and the restored log grew past its offset with other events: the same
    # log id, an offset inside the log, but not the events it applied.
    learner = start(tmp_path)
    drive(learner.engine, 30, seed=7)
    copy_log(tmp_path / "events.db", tmp_path / "backup.db")
    drive(learner.engine, 30, seed=8)
    foreign = Path(learner.snapshot())  # model-60
    stop(learner)
    remove_log(tmp_path)
    shutil.copyfile(tmp_path / "backup.db", tmp_path / "events.db")
    grown = start(tmp_path / "elsewhere")  # no snapshots there; the same events.db below
    stop(grown)
    store = SQLiteEventStore(tmp_path / "events.db", SCHEMA.encoding_hash)
    engine = Engine(prior_model(SCHEMA), np.random.default_rng(0), store, clock=Clock())
    drive(engine, 50, seed=9)  # seqs 31..80: seq 60 is another event now
    engine.close()
    store.close()
    assert foreign.exists()

    with caplog.at_level(logging.ERROR, logger="banditrec.learner"):
        restarted = start(tmp_path)
    assert "did not apply this log's learn event 60" in caplog.text
    assert restarted.engine.applied_offset == 80
    assert_model_is_the_replay(restarted.engine, tmp_path / "events.db")
    stop(restarted)


def test_a_snapshot_without_a_log_identity_is_rebuilt_from_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    learner = start(tmp_path)
    drive(learner.engine, 40, seed=10)
    path = learner.snapshot()
    legacy = load_model(path, SCHEMA)
    legacy.log_id = legacy.log_tip = None  # as written before snapshots recorded their log
    save_model(legacy, path)
    stop(learner)

    with caplog.at_level(logging.WARNING, logger="banditrec.learner"):
        restarted = start(tmp_path)
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING  # an upgrade, not a lost log
    assert "records no log identity" in record.message
    assert "written before snapshots recorded their log" in record.message
    assert restarted.engine.applied_offset == 40
    assert_model_is_the_replay(restarted.engine, tmp_path / "events.db")
    stop(restarted)


# -- the default-reward sweep ----------------------------------------------------------------


def test_one_sweep_defaults_the_whole_backlog_in_batches_between_decisions(
    tmp_path: Path,
) -> None:
    clock = Clock()
    rules = RewardRules(window_seconds=1.0, default_reward=0.0)
    metrics = Metrics(SCHEMA.actions)
    learner = start(tmp_path, rules, clock, default_batch=2000, metrics=metrics)
    engine = learner.engine
    pool = contexts(500, 11)
    n = 25_000  # 25 s of 1,000 decisions per second: the old sweep's cap per second

    async def run() -> list[str]:
        for _ in range(n // 500):
            await asyncio.gather(*(engine.rank(context) for context in pool))
            clock.now += 0.5
        clock.now += 2.0
        assert learner.store.pending_backlog(clock.now) == n
        assert value(metrics, "banditrec_default_reward_backlog", loop="default") == n
        order: list[str] = []

        async def sweep() -> None:
            assert await learner.apply_default_rewards() == n
            order.append("sweep")

        async def decide() -> None:
            await asyncio.sleep(0)  # once the sweep's first batch is under way
            await engine.rank(pool[0])
            order.append("decision")

        await asyncio.gather(sweep(), decide())
        return order

    # The decision made during the sweep waits for one batch, not for all 13.
    assert asyncio.run(run()) == ["decision", "sweep"]
    assert learner.store.pending_backlog(clock.now) == 0
    assert value(metrics, "banditrec_default_reward_backlog", loop="default") == 0
    assert engine.policy.n_updates_.sum() == n
    assert (
        sum(
            value(metrics, "banditrec_default_rewards_total", action=a, loop="default") or 0
            for a in SCHEMA.actions
        )
        == n
    )
    assert_model_is_the_replay(engine, tmp_path / "events.db")
    stop(learner)


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    text = bytes(metrics_response(metrics).body).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


# -- the snapshot lease ---------------------------------------------------------------------


@pytest.mark.serial
def test_the_lease_is_released_when_the_learner_stops(tmp_path: Path) -> None:
    learner = start(tmp_path, lease_seconds=900.0)

    async def run_a_while() -> None:
        task = asyncio.create_task(learner.run())
        await asyncio.sleep(0.3)
        assert learner.holds_lease
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run_a_while())
    other = SQLiteEventStore(tmp_path / "events.db", SCHEMA.encoding_hash)
    # Taken at once by the next process, not 900 s later.
    assert other.acquire_lease("snapshot", "restarted", time.time(), 900.0)
    other.close()
    stop(learner)


@pytest.mark.serial
def test_the_holder_renews_its_short_lease_while_it_runs(tmp_path: Path) -> None:
    learner = start(tmp_path, lease_seconds=0.4)

    async def run_a_while() -> list[tuple[str, float]]:
        task = asyncio.create_task(learner.run())
        seen = []
        for _ in range(12):  # 1.2 s: three lifetimes of the lease
            await asyncio.sleep(0.1)
            seen.append(_lease(tmp_path))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    seen = asyncio.run(run_a_while())
    assert {owner for owner, _ in seen} == {learner.owner}
    expiries = [expires_at for _, expires_at in seen]
    assert expiries == sorted(expiries) and expiries[-1] - expiries[0] > 0.8  # renewed
    stop(learner)


_HOLDER = """
import asyncio, sys
import numpy as np
from banditrec.engine import Engine, prior_model
from banditrec.features import load_default_schema
from banditrec.learner import Learner
from banditrec.snapshot_store import SnapshotDirectory
from banditrec.store.sqlite import SQLiteEventStore

schema = load_default_schema()
store = SQLiteEventStore(sys.argv[1], schema.encoding_hash)
engine = Engine(prior_model(schema), np.random.default_rng(0), store)
learner = Learner(engine, store, SnapshotDirectory(sys.argv[2]), owner="holder",
                  lease_seconds=float(sys.argv[3]))
asyncio.run(learner.run())
"""


@pytest.mark.serial
def test_a_killed_holder_is_replaced_within_the_lease_time(tmp_path: Path) -> None:
    ttl = 4.0  # renewed every second: a loaded machine does not let it lapse by itself
    SQLiteEventStore(tmp_path / "events.db", SCHEMA.encoding_hash).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path / "events.db"), str(tmp_path / "s"), str(ttl)]
    )
    store = SQLiteEventStore(tmp_path / "events.db", SCHEMA.encoding_hash)
    try:
        deadline = time.monotonic() + 60  # the holder imports numba: give it time
        while _lease_owner(tmp_path) != "holder":
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(ttl)  # it renews its lease meanwhile
        assert not store.acquire_lease("snapshot", "next", time.time(), ttl)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        killed_at = time.monotonic()
        while not store.acquire_lease("snapshot", "next", time.time(), ttl):
            time.sleep(0.05)
        # Renewed every ttl / 4 while it lived, it lapses at most `ttl` after the kill; the
        # margin only absorbs polling on a loaded machine.
        assert time.monotonic() - killed_at <= ttl + 1.5
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        store.close()


def _lease(tmp_path: Path) -> tuple[str, float]:
    db = sqlite3.connect(tmp_path / "events.db")
    row = db.execute("SELECT owner, expires_at FROM leases WHERE name = 'snapshot'").fetchone()
    db.close()
    return ("", 0.0) if row is None else (str(row[0]), float(row[1]))


def _lease_owner(tmp_path: Path) -> str:
    return _lease(tmp_path)[0]


# -- leftovers of interrupted snapshot writes -------------------------------------------------


def test_start_up_removes_the_temporary_files_of_dead_writers(tmp_path: Path) -> None:
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    dead = multiprocessing.get_context("spawn").Process(target=int)
    dead.start()
    dead.join()
    assert dead.pid is not None
    leftovers = [
        snapshots / f".model-000000000010.npz.{dead.pid}.ab12cd.tmp",  # its writer is gone
        snapshots / ".model-000000000020.npz.x9y8z7.tmp",  # written before names had a pid
    ]
    in_progress = snapshots / f".model-000000000030.npz.{os.getppid()}.qw34er.tmp"
    unrelated = snapshots / "notes.tmp"
    for path in (*leftovers, in_progress, unrelated):
        path.write_bytes(b"half a model")

    learner = start(tmp_path)
    assert not any(path.exists() for path in leftovers)
    assert in_progress.exists() and unrelated.exists()  # a live writer's; not ours at all
    stop(learner)


def test_a_crashed_snapshot_write_leaves_a_file_named_after_its_writer(tmp_path: Path) -> None:
    learner = start(tmp_path)
    drive(learner.engine, 5, seed=12)
    code = textwrap.dedent(
        f"""
        import os, banditrec.snapshot as s
        real = os.replace
        def crash(*args): os.kill(os.getpid(), 9)  # between the write and the rename
        s.os.replace = crash
        from banditrec.features import load_default_schema
        model = s.load_model({str(learner.snapshot())!r}, load_default_schema())
        s.save_model(model, {str(tmp_path / "snapshots" / "model-000000000099.npz")!r})
        """
    )
    crashed = subprocess.Popen([sys.executable, "-c", code])
    assert crashed.wait(timeout=120) == -signal.SIGKILL
    names = [p.name for p in (tmp_path / "snapshots").iterdir() if p.name.endswith(".tmp")]
    (name,) = names
    assert name.startswith(f".model-000000000099.npz.{crashed.pid}.")
    stop(learner)
    start_again = start(tmp_path)
    assert not [p for p in (tmp_path / "snapshots").iterdir() if p.name.endswith(".tmp")]
    stop(start_again)


# -- failures: backoff, one traceback, a fault to report --------------------------------------


@pytest.mark.serial
def test_failing_snapshots_back_off_log_once_and_report_a_fault(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics(SCHEMA.actions)
    (tmp_path / "not-a-directory").write_text("a file where the snapshots should go")
    learner = start(
        tmp_path,
        snapshot_dir="not-a-directory",
        snapshot_every_events=1,
        metrics=metrics,
        max_backoff=0.4,
    )
    drive(learner.engine, 3, seed=13)

    async def run_for(seconds: float) -> None:
        task = asyncio.create_task(learner.run())
        await asyncio.sleep(seconds)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.INFO, logger="banditrec.learner"):
        asyncio.run(run_for(2.0))
    fault = learner.fault
    assert fault is not None and fault.startswith(
        f"Writing a snapshot to {tmp_path / 'not-a-directory'} failed"
    )
    assert "FileExistsError" in fault
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len([r for r in errors if r.exc_info]) == 1  # one traceback
    assert len(errors) == 1  # the same failure again is not logged again
    # At 50 ms per try there would have been 40; backing off to 0.4 s allows about 8.
    tries = value(metrics, "banditrec_learner_faults_total", loop="default")
    assert tries is not None and 3 <= tries <= 10
    assert value(metrics, "banditrec_learner_fault", loop="default") == 1.0
    assert learner.engine.applied_offset == 3  # learning went on meanwhile

    learner.snapshots.directory.unlink()  # the operator fixes it
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="banditrec.learner"):
        asyncio.run(run_for(1.5))
    assert learner.fault is None
    assert value(metrics, "banditrec_learner_fault", loop="default") == 0.0
    assert (tmp_path / "not-a-directory" / "model-000000000003.npz").exists()
    assert "works again after" in caplog.text
    stop(learner)


@pytest.mark.serial
def test_a_failing_step_backs_off_and_reports_a_fault(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    learner = start(tmp_path, max_backoff=0.4)
    learner.store.close()  # type: ignore[attr-defined]  # every read and write now fails

    async def run_for(seconds: float) -> None:
        task = asyncio.create_task(learner.run())
        await asyncio.sleep(seconds)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="banditrec.learner"):
        asyncio.run(run_for(1.5))
    assert learner.fault is not None
    assert learner.fault.startswith("The learner step failed")
    assert "ProgrammingError" in learner.fault
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1
    learner.engine.close()
