"""Real server processes: a crash loses nothing acknowledged; workers learn as one."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import httpx
import numpy as np

from banditrec.engine import Engine, prior_model
from banditrec.features import load_default_schema
from banditrec.learner import SnapshotDirectory
from banditrec.sim import AppSimulator
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
