"""Real server processes: a crash loses nothing acknowledged; workers learn as one."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from banditrec.engine import Engine, prior_model
from banditrec.features import load_default_schema
from banditrec.sim import AppSimulator
from banditrec.snapshot_store import SnapshotDirectory
from banditrec.store.sqlite import SQLiteEventStore
from serving import fetch_live_model, running_server

SCHEMA = load_default_schema()


def contexts(n: int, seed: int) -> list[dict[str, object]]:
    columns = AppSimulator().sample_contexts(n, np.random.default_rng(seed))
    return [{f: columns[f][i].item() for f in SCHEMA.field_names} for i in range(n)]


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def model_rebuilt_from_the_log(db_path: Path) -> dict[str, np.ndarray]:
    """The prior plus every learn event in the log, applied from scratch."""
    store = SQLiteEventStore(db_path, SCHEMA.encoding_hash)
    engine = Engine(prior_model(SCHEMA), np.random.default_rng(0), store)
    engine.catch_up()
    state = engine.policy.get_state()
    engine.close()
    store.close()
    return state


async def drive_until_killed(
    url: str, n_acked_before_kill: int, kill: object
) -> tuple[set[str], dict[str, float]]:
    """8 concurrent clients rank and reward; SIGKILL the server mid-traffic.

    Returns the decisions and the rewards that got a 2xx answer.
    """
    acked_decisions: set[str] = set()
    acked_rewards: dict[str, float] = {}
    pool = contexts(2000, 11)
    stop = asyncio.Event()

    async def client(worker: int) -> None:
        rng = np.random.default_rng(worker)
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            i = worker
            while not stop.is_set():
                try:
                    response = await http.post("/v1/rank", json={"context": pool[i % len(pool)]})
                    if response.status_code == 200:
                        event_id = response.json()["event_id"]
                        acked_decisions.add(event_id)
                        if rng.random() < 0.7:
                            value = float(rng.random() < 0.3)
                            reward = await http.post(
                                f"/v1/events/{event_id}/reward", json={"value": value}
                            )
                            if reward.status_code == 200:
                                acked_rewards[event_id] = value
                except httpx.TransportError:
                    return  # the server is gone
                i += 8
                if len(acked_decisions) + len(acked_rewards) >= n_acked_before_kill:
                    stop.set()

    tasks = [asyncio.create_task(client(w)) for w in range(8)]
    await stop.wait()
    kill()  # type: ignore[operator]  # while the other clients' requests are in flight
    await asyncio.gather(*tasks)
    return acked_decisions, acked_rewards


def test_sigkill_mid_traffic_loses_nothing_acknowledged(tmp_path: Path) -> None:
    with running_server(tmp_path, snapshot_every_events="100", seed="1") as server:
        decisions, rewards = asyncio.run(drive_until_killed(server.url, 1500, server.kill))
        assert server.process.poll() is not None

    assert len(decisions) > 500 and len(rewards) > 300
    db = sqlite3.connect(tmp_path / "events.db")
    logged = {row[0] for row in db.execute("SELECT event_id FROM decisions")}
    assert decisions <= logged
    learned = dict(db.execute("SELECT event_id, reward FROM learn_events WHERE kind = 'reward'"))
    assert all(learned.get(event_id) == value for event_id, value in rewards.items())
    last_seq = db.execute("SELECT max(seq) FROM learn_events").fetchone()[0]
    db.close()
    # Snapshots were taken while the traffic ran (and may be older than the log's end).
    assert SnapshotDirectory(tmp_path / "snapshots").paths()

    with running_server(tmp_path, seed="1") as restarted:
        model = httpx.get(f"{restarted.url}/v1/model").json()
        live = fetch_live_model(restarted.url)
    expected = model_rebuilt_from_the_log(tmp_path / "events.db")
    assert model["log_offset"] == last_seq
    for name in ("A_", "b_"):
        assert relative_difference(live[name], expected[name]) < 1e-9, name
    np.testing.assert_array_equal(live["n_updates_"], expected["n_updates_"])


def worker_states(url: str, pids: set[int], offset: int, timeout: float = 60.0) -> dict[int, dict]:
    """/v1/model of every worker in `pids` once it reached `offset`.

    Each request goes on a fresh connection; the kernel decides which worker accepts it, and
    it may favour one for a while, so we ask until every worker has answered.
    """
    seen: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    while set(seen) != pids or min(s["log_offset"] for s in seen.values()) < offset:
        assert time.monotonic() < deadline, f"not every worker reached {offset}: {seen}"
        body = httpx.get(f"{url}/v1/model", headers={"Connection": "close"}).json()
        seen[body["pid"]] = body
    return seen


@pytest.mark.serial
def test_two_workers_learn_from_each_others_rewards(tmp_path: Path) -> None:
    with running_server(tmp_path, "--workers", "2", seed="3") as server:
        pids: set[int] = set()
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:
            pids.add(
                httpx.get(f"{server.url}/v1/model", headers={"Connection": "close"}).json()["pid"]
            )
        assert len(pids) == 2, "both workers must answer"

        pool = contexts(300, 12)
        rng = np.random.default_rng(4)
        with httpx.Client(base_url=server.url) as http:
            for k, context in enumerate(pool, start=1):
                event_id = http.post("/v1/rank", json={"context": context}).json()["event_id"]
                value = float(rng.random() < 0.4)
                assert http.post(f"/v1/events/{event_id}/reward", json={"value": value}).is_success
                if k % 100 == 0:
                    # Within 1 s of the reward, every worker has applied it: each reports
                    # when it reached the offset (same machine, same clock).
                    posted_at = time.time()
                    for state in worker_states(server.url, pids, k).values():
                        assert state["log_offset"] == k  # no traffic meanwhile
                        assert state["applied_at"] - posted_at < 1.0, state
        time.sleep(0.5)  # traffic stopped: every worker catches up
        states = [fetch_live_model(server.url, pid) for pid in sorted(pids)]

    expected = model_rebuilt_from_the_log(tmp_path / "events.db")
    for state in states:
        for name in ("A_", "b_"):
            assert relative_difference(state[name], expected[name]) < 1e-9, name
        assert state["n_updates_"].sum() == 300


# -- the reliability soak: default rewards keep up with full decision traffic -------------

_RANK_SCRIPT = """
wrk.method = "POST"
wrk.path = "/v1/rank"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '%s'
"""


def backlog_of(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "banditrec_default_reward_backlog":
                return float(sample.value)
    raise AssertionError("/metrics has no banditrec_default_reward_backlog")


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
@pytest.mark.serial
def test_soak_the_default_reward_backlog_stays_flat_at_full_decision_rate(
    tmp_path: Path,
) -> None:
    # Decisions as fast as the server serves them (wrk, 16 connections), none rewarded, a
    # 1 s window: every decision needs its default reward 1 s later. The old sweep defaulted
    # at most 1,000 per second, so its backlog grew by (rate - 1,000) every second.
    script = tmp_path / "rank.lua"
    script.write_text(_RANK_SCRIPT % json.dumps({"context": contexts(1, 21)[0]}))
    seconds = 8
    with running_server(tmp_path, reward_window_seconds="1", seed="2") as server:
        wrk = subprocess.Popen(
            ["wrk", "-t1", "-c16", f"-d{seconds}s", "-s", str(script), server.url],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        samples: list[tuple[float, float]] = []
        started = time.monotonic()
        while wrk.poll() is None:
            samples.append((time.monotonic() - started, backlog_of(server.url)))
            time.sleep(0.25)
        assert wrk.returncode == 0, wrk.stdout.read() if wrk.stdout else ""
        decisions = int(sqlite3.connect(tmp_path / "events.db").execute(
            "SELECT count(*) FROM decisions").fetchone()[0])  # fmt: skip
        # Traffic stopped: the last windows close within 1 s and are swept.
        wait_for(lambda: backlog_of(server.url) == 0)
    rate = decisions / seconds
    assert rate > 2_000, f"{rate:.0f} decisions/s is too slow to tell a capped sweep apart"
    late = [backlog for at, backlog in samples if at > seconds / 2]
    # A sweep every second defaults all that is due: the backlog stays about one second of
    # decisions (1.3 s at most here, at 5,200/s). A sweep capped at 1,000/s let it grow to
    # over 6 s of decisions by the end (38,000 at 6,200/s).
    assert max(late) < 3.0 * rate, (rate, samples)
    db = sqlite3.connect(tmp_path / "events.db")
    states = dict(db.execute("SELECT state, count(*) FROM decisions GROUP BY state").fetchall())
    defaults = db.execute("SELECT count(*) FROM learn_events WHERE kind = 'default'").fetchone()
    db.close()
    assert states == {"defaulted": decisions} and defaults[0] == decisions


# -- a restored log, and the snapshot lease across restarts -------------------------------


def test_a_log_restored_from_an_older_copy_learns_every_new_reward(tmp_path: Path) -> None:
    with running_server(tmp_path, seed="4") as server, httpx.Client(base_url=server.url) as http:
        post_rewards(http, contexts(100, 22), seed=5)
        backup = sqlite3.connect(tmp_path / "backup.db")
        live = sqlite3.connect(tmp_path / "events.db")
        live.backup(backup)  # the operator's backup, at offset 100
        live.close()
        backup.close()
        post_rewards(http, contexts(200, 23), seed=6)
        snapshot = http.post("/v1/admin/snapshot").json()
        assert snapshot["log_offset"] == 300
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"events.db{suffix}").unlink(missing_ok=True)
    shutil.copyfile(tmp_path / "backup.db", tmp_path / "events.db")  # restored

    with running_server(tmp_path, seed="4") as server, httpx.Client(base_url=server.url) as http:
        outcomes = post_rewards(http, contexts(250, 24), seed=7)
        assert outcomes == ["learned"] * 250
        model = http.get("/v1/model").json()
        live_model = fetch_live_model(server.url)
        log = server.log()
    assert "model-000000000300.npz is at offset 300, past the end of this log (100)" in log
    assert model["log_offset"] == 350 and model["n_updates"] == 350  # none skipped
    expected = model_rebuilt_from_the_log(tmp_path / "events.db")
    for name in ("A_", "b_"):
        assert relative_difference(live_model[name], expected[name]) < 1e-9, name
    np.testing.assert_array_equal(live_model["n_updates_"], expected["n_updates_"])


@pytest.mark.serial
def test_a_stopped_server_releases_the_snapshot_lease(tmp_path: Path) -> None:
    settings = {"seed": "6", "snapshot_every_events": "20"}
    with running_server(tmp_path, **settings) as server, httpx.Client(base_url=server.url) as http:
        post_rewards(http, contexts(30, 25), seed=8)
        wait_for(lambda: bool(snapshot_offsets(tmp_path)))
        assert lease_rows(tmp_path) == 1
    # SIGTERM: shut down cleanly, lease given up (it lived 900 s before, 10 s now).
    assert lease_rows(tmp_path) == 0
    with running_server(tmp_path, **settings) as server, httpx.Client(base_url=server.url) as http:
        post_rewards(http, contexts(30, 26), seed=9)
        # At once, not when a lease left by the stopped server expires.
        wait_for(lambda: max(snapshot_offsets(tmp_path)) >= 50, seconds=5.0)


def post_rewards(http: httpx.Client, pool: list[dict[str, object]], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    outcomes = []
    for context in pool:
        event_id = http.post("/v1/rank", json={"context": context}).json()["event_id"]
        answer = http.post(
            f"/v1/events/{event_id}/reward", json={"value": float(rng.random() < 0.4)}
        )
        outcomes.append(answer.json()["status"])
    return outcomes


def snapshot_offsets(tmp_path: Path) -> list[int]:
    return [int(p.stem.split("-")[1]) for p in SnapshotDirectory(tmp_path / "snapshots").paths()]


def lease_rows(tmp_path: Path) -> int:
    db = sqlite3.connect(tmp_path / "events.db")
    n = int(db.execute("SELECT count(*) FROM leases").fetchone()[0])
    db.close()
    return n


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not true within {seconds} s"
        time.sleep(0.05)


@pytest.mark.serial
def test_a_killed_servers_lease_lapses_within_its_lifetime(tmp_path: Path) -> None:
    ttl = 4.0  # renewed every second: a loaded machine does not let it lapse by itself
    with running_server(tmp_path, seed="7", snapshot_lease_seconds=str(ttl)) as server:
        wait_for(lambda: lease_rows(tmp_path) == 1)
        server.kill()  # SIGKILL: no shutdown code runs, the lease stays behind
        killed_at = time.monotonic()
    assert lease_rows(tmp_path) == 1
    store = SQLiteEventStore(tmp_path / "events.db", SCHEMA.encoding_hash)
    try:
        assert not store.acquire_lease("snapshot", "next", time.time(), ttl)
        wait_for(lambda: store.acquire_lease("snapshot", "next", time.time(), ttl))
        # Renewed every ttl / 4 while it lived, it lapses at most `ttl` after the kill; the
        # margin only absorbs polling on a loaded machine.
        assert time.monotonic() - killed_at <= ttl + 1.5
    finally:
        store.close()
