"""Several hosts for real, on one machine: Redis, three replicas and HAProxy, under load.

Everything is real: a `redis-server` with its append-only file, three `banditrec serve`
processes on their own ports and snapshot directories, and HAProxy in front (`Cluster`).
Traffic goes through HAProxy from several threads; replicas and Redis are killed with
SIGKILL in the middle of it. After each phase the event log is read directly from Redis and
checked against every answer the clients received: no acknowledged decision or reward is
lost, nothing is learned twice, and every replica holds the model that replaying the log
gives, bit for bit (same machine, same CPU).

The three tests share one cluster (starting one costs seconds) and run in file order; each
leaves every process running and healthy.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import banditrec.cluster
from banditrec.cluster import Cluster
from banditrec.engine import Engine
from banditrec.features import load_default_schema
from banditrec.snapshot import load_model
from banditrec.store import LearnEvent, LearnKind
from banditrec.store.redis import RedisEventStore
from conftest import SEED_CONTEXT
from serving import clean_env, free_port

# Serial: a failed request must have been sent within 1 s of its replica's kill (a wall-clock
# bound), and the three tests share one cluster, so they run together in one process.
pytestmark = [pytest.mark.timeout(300), pytest.mark.serial]

N_THREADS = 6
SCHEMA = load_default_schema()


@pytest.fixture(scope="module")
def model_path(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cluster-model") / "model.npz"
    shutil.copyfile(trained[1], path)
    return path


@pytest.fixture(scope="module")
def cluster(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # No BANDITREC_* setting of the developer's shell reaches the replicas. Its ports come
    # from this test process's own block (see tests/ports.py), not from the kernel's
    # ephemeral range: Redis is killed and restarted on its port, which a client's source
    # port or another test worker's server could otherwise take in between.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(banditrec.cluster, "free_port", free_port)
        with Cluster(tmp_path_factory.mktemp("cluster"), model_path, env=clean_env()) as running:
            yield running


@pytest.fixture(scope="module")
def history() -> list[Answer]:
    """Every answer of the tests so far: the last test checks that the log still holds all
    that was acknowledged, after Redis was killed."""
    return []


@pytest.fixture(scope="module")
def log(cluster: Cluster) -> Iterator[RedisEventStore]:
    store = RedisEventStore.from_url(cluster.redis_url, SCHEMA.encoding_hash)
    yield store
    store.close()


# -- traffic -----------------------------------------------------------------------------


@dataclass
class Answer:
    """One request and what the client got: status 0 means no HTTP answer at all."""

    kind: str  # "rank" or "reward"
    event_id: str
    status: int
    body: Any
    sent_at: float  # time.monotonic() when the request was sent


@dataclass
class Load:
    """Decisions (and rewards for half of them) from `N_THREADS` threads through `url`.

    Every answer is kept, so the log can be checked against what clients were told.
    """

    url: str
    prefix: str
    per_thread: int
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _errors: list[BaseException] = field(default_factory=list)

    def __enter__(self) -> Load:
        for t in range(N_THREADS):
            thread = threading.Thread(target=self._run, args=(t,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish(stop=True)

    def finish(self, stop: bool = False) -> None:
        """Wait for every thread (after stopping them early if `stop`)."""
        if stop:
            self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
            assert not thread.is_alive(), "A load thread hung."
        if self._errors:
            raise self._errors[0]

    def wait_for(self, n_decisions: int, since: float = 0.0) -> None:
        """Return once `n_decisions` decisions sent after `since` (a `time.monotonic()`)
        were answered, whatever the answer."""
        deadline = time.monotonic() + 60
        while sum(a.kind == "rank" and a.sent_at > since for a in self.snapshot()) < n_decisions:
            assert time.monotonic() < deadline, "The load made no progress."
            time.sleep(0.01)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def _run(self, t: int) -> None:
        try:
            self._send(t)
        except BaseException as exc:  # the test fails with it, not a warning
            self._errors.append(exc)

    def _send(self, t: int) -> None:
        rng = np.random.default_rng([t, ord(self.prefix[0])])  # other contexts each phase
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for i in range(self.per_thread):
                if self._stop.is_set():
                    return
                event_id = f"{self.prefix}-{t}-{i}"
                body = {"context": _context(rng), "event_id": event_id}
                answer = self._post(client, "rank", event_id, "/v1/rank", body)
                if answer.status != 200:
                    time.sleep(0.02)  # a client backs off before its next decision
                if answer.status == 200 and i % 2 == 0:
                    value = float(rng.random() < 0.3)
                    path = f"/v1/events/{event_id}/reward"
                    self._post(client, "reward", event_id, path, {"value": value})

    def _post(self, client: httpx.Client, kind: str, event_id: str, path: str, body: Any) -> Answer:
        sent_at = time.monotonic()
        try:
            response = client.post(path, json=body)
            try:
                content: Any = response.json()
            except ValueError:  # HAProxy's own error pages are HTML
                content = response.text
            answer = Answer(kind, event_id, response.status_code, content, sent_at)
        except httpx.TransportError as exc:
            answer = Answer(kind, event_id, 0, repr(exc), sent_at)
        with self._lock:
            self.answers.append(answer)
        return answer


def _context(rng: np.random.Generator) -> dict[str, Any]:
    """The seed's context with every field drawn, so that the models learn something."""
    context = dict(SEED_CONTEXT)
    context["country"] = str(rng.choice(["US", "GB", "DE", "AT", "FR", "BR", "IN", "JP"]))
    context["device"] = str(rng.choice(["ios", "android", "web"]))
    context["segment"] = str(rng.choice(["low", "mid", "high"]))
    context["n_sessions"] = int(rng.integers(0, 200))
    context["days_since_install"] = int(rng.integers(0, 400))
    context["recent_engagement"] = int(rng.integers(0, 100))
    context["avg_session_length"] = round(float(rng.uniform(0, 900)), 1)
    return context


# -- checks --------------------------------------------------------------------------------


def assert_nothing_lost(log: RedisEventStore, answers: list[Answer]) -> None:
    """Every decision answered 200 is in the log as served; every reward answered "learned"
    has exactly one learn event; no decision is learned from twice."""
    for a in answers:
        if a.kind == "rank" and a.status == 200:
            logged = log.get_decision(a.event_id)
            assert logged is not None, f"Decision {a.event_id} was answered 200, is not logged."
            served = (a.body["action_id"], a.body["probability"])
            assert (logged.action, logged.probability) == served
    learned = Counter(
        e.event_id for e in _learn_events(log) if e.kind in (LearnKind.reward, LearnKind.default)
    )
    twice = {event_id: n for event_id, n in learned.items() if n > 1}
    assert not twice, f"Decisions learned more than once: {twice}."
    for a in answers:
        if a.kind == "reward" and a.status == 200 and a.body["status"] == "learned":
            assert learned[a.event_id] == 1, f"Reward {a.event_id} answered learned is not learned."


def _learn_events(log: RedisEventStore) -> list[LearnEvent]:
    events: list[LearnEvent] = []
    while batch := log.learn_events_after(events[-1].seq if events else 0):
        events.extend(batch)
    return events


def replayed_model(log: RedisEventStore, model_path: Path) -> dict[str, np.ndarray]:
    """The base model plus every learn event after its epoch, applied in log order, as the
    arrays of a model file (what a replica's /v1/admin/model holds)."""
    base = load_model(model_path, SCHEMA)
    base.log_offset = log.epoch_offset(base.version)
    engine = Engine(base, np.random.default_rng(0))
    engine.apply([e for e in _learn_events(log) if e.seq > base.log_offset])
    state = engine.policy.get_state()
    return {name: state[name] for name in state if name != "shape_"}


def replica_models(cluster: Cluster, log: RedisEventStore) -> list[dict[str, np.ndarray]]:
    """Each replica's live model arrays, once every replica has applied the whole log."""
    end = log.last_offset()
    deadline = time.monotonic() + 10  # far above the push latency: a margin, not a target
    for url in cluster.replica_urls:
        while httpx.get(f"{url}/v1/model", timeout=5).json()["log_offset"] < end:
            assert time.monotonic() < deadline, f"{url} did not reach log offset {end}."
            time.sleep(0.02)
    models = []
    for url in cluster.replica_urls:
        response = httpx.get(f"{url}/v1/admin/model", timeout=10)
        response.raise_for_status()
        with np.load(io.BytesIO(response.content), allow_pickle=False) as npz:
            models.append({n: npz[n] for n in npz.files if not n.startswith("_")})
    return models


def assert_models_equal_replay(cluster: Cluster, log: RedisEventStore, model_path: Path) -> None:
    expected = replayed_model(log, model_path)
    for i, model in enumerate(replica_models(cluster, log)):
        assert sorted(model) == sorted(expected), f"Replica {i} holds other arrays."
        for name, array in expected.items():
            assert np.array_equal(model[name], array), f"Replica {i}: {name} != the replay."


def statuses(answers: list[Answer], kind: str) -> Counter[int]:
    return Counter(a.status for a in answers if a.kind == kind)


# -- the tests -----------------------------------------------------------------------------


def test_replicas_converge_to_one_model(
    cluster: Cluster, log: RedisEventStore, model_path: Path, history: list[Answer]
) -> None:
    with Load(cluster.url, "a", per_thread=100) as load:
        load.finish()
    answers = load.snapshot()
    history += answers
    failed = [a for a in answers if a.status != 200]
    assert not failed, failed[:5]
    assert statuses(answers, "rank")[200] == N_THREADS * 100
    # HAProxy spreads requests round-robin: six in a row reach the three replicas.
    pids = {httpx.get(f"{cluster.url}/v1/model", timeout=5).json()["pid"] for _ in range(6)}
    assert len(pids) == 3
    assert_nothing_lost(log, answers)
    assert_models_equal_replay(cluster, log, model_path)


def test_kill_one_replica_mid_load(
    cluster: Cluster, log: RedisEventStore, model_path: Path, history: list[Answer]
) -> None:
    with Load(cluster.url, "b", per_thread=120) as load:
        load.wait_for(200)
        killed_at = time.monotonic()
        cluster.kill_replica(1)
        load.wait_for(500)  # the two others carry the load alone
        cluster.start_replica(1)  # back in rotation, having caught up from the log
        load.finish()
    answers = load.snapshot()
    history += answers
    failed = [a for a in answers if a.status != 200]
    # Only requests sent to the killed replica fail: those in flight on it (at most one per
    # client thread), and those HAProxy sent over a kept-alive connection to it in the few
    # milliseconds before it saw the connection close. HAProxy answers 502, or closes the
    # client's connection without an answer (0) as the replica's own close would have; it
    # never re-sends them to another replica. A request that only tried to connect to the
    # dead replica is sent to another one, so nothing fails after that.
    assert len(failed) <= 2 * N_THREADS, failed
    assert {a.status for a in failed} <= {0, 502}, failed
    assert all(a.sent_at < killed_at + 1.0 for a in failed), failed
    assert statuses(answers, "rank")[200] >= N_THREADS * 120 - 2 * N_THREADS
    assert_nothing_lost(log, answers)
    assert_models_equal_replay(cluster, log, model_path)


def test_kill_redis_mid_load(
    cluster: Cluster, log: RedisEventStore, model_path: Path, history: list[Answer]
) -> None:
    with Load(cluster.url, "c", per_thread=1000) as load:
        load.wait_for(200)
        cluster.kill_redis()
        before = len(load.snapshot())
        # Decisions through HAProxy keep being answered: refused, until Redis is back.
        _wait(lambda: sum(a.status == 503 for a in load.snapshot()[before:]) >= N_THREADS)
        # Directly at each replica (all at once): a clear 503 for a decision, and /health
        # says degraded.
        with ThreadPoolExecutor(len(cluster.replica_urls)) as pool:
            for error, health in pool.map(_refused_directly, cluster.replica_urls):
                assert error["error"] == "store_unavailable" and error["detail"] == []
                assert error["message"].endswith(".")
                assert health["status"] == "degraded" and health["faults"]
        outage = load.snapshot()[before:]
        cluster.start_redis()  # same port, same append-only file
        cluster.wait_healthy(timeout=30)  # the replicas recover by themselves
        recovered = time.monotonic()
        load.wait_for(200, since=recovered)
        load.finish(stop=True)
    answers = load.snapshot()
    history += answers
    # Through HAProxy during the outage: refused decisions and rewards are 503s (the
    # replica's store_unavailable, or HAProxy's own if it took every replica out).
    refused = [a for a in outage if a.status != 200]
    assert {a.status for a in refused} == {503}, refused[:5]
    for a in refused:
        if isinstance(a.body, dict):
            assert a.body["error"] == "store_unavailable", a
    # Once recovered, every request is served again.
    after = [a for a in answers if a.sent_at > recovered]
    assert after and all(a.status == 200 for a in after), [a for a in after if a.status != 200]
    assert log.get_decision("c-direct") is None
    # Nothing acknowledged in any test was lost with Redis's process (AOF, fsync always).
    assert_nothing_lost(log, history)
    assert_models_equal_replay(cluster, log, model_path)


def _refused_directly(url: str) -> tuple[Any, Any]:
    """A decision sent to the replica at `url` (it must be refused: 503) and its /health."""
    body = {"context": SEED_CONTEXT, "event_id": "c-direct"}
    response = httpx.post(f"{url}/v1/rank", json=body, timeout=30)
    assert response.status_code == 503, response.text
    return response.json(), httpx.get(f"{url}/health", timeout=30).json()


def _wait(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "Timed out."
        time.sleep(0.01)


def test_the_cluster_command_runs_until_ctrl_c(tmp_path: Path) -> None:
    """``python -m banditrec.cluster``: ready, serving through HAProxy, and Ctrl-C stops every
    process it started."""
    port = free_port()
    command = [
        sys.executable, "-m", "banditrec.cluster", "--replicas", "1", "--port", str(port),
        "--work-dir", str(tmp_path / "cluster"),
    ]  # fmt: skip
    output = tmp_path / "output.txt"
    with open(output, "wb") as out:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=clean_env(), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait(lambda: "Ready" in output.read_text() or process.poll() is not None, timeout=120)
        text = output.read_text()
        assert f"haproxy    http://127.0.0.1:{port}" in text, text
        redis_port = re.search(r"redis +redis://127.0.0.1:(\d+)/0", text)
        assert redis_port is not None, text
        body = {"context": SEED_CONTEXT, "event_id": "cli-1"}
        assert httpx.post(f"http://127.0.0.1:{port}/v1/rank", json=body).status_code == 200
        replica_pid = httpx.get(f"http://127.0.0.1:{port}/v1/model").json()["pid"]
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C in its terminal sends
        assert process.wait(timeout=60) == 0
    assert output.read_text().rstrip().endswith("Stopped.")
    with pytest.raises(ProcessLookupError):
        os.kill(replica_pid, 0)
    for stopped in (port, int(redis_port.group(1))):  # nothing listens any more
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", stopped), timeout=2).close()
