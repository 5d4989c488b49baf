"""CPU per reward of a Redis replica, by thread: this tree against another revision.

One command, one table::

    .venv/bin/python -m benchmarks.bench_reward_cpu --baseline HEAD~1
    .venv/bin/python -m benchmarks.bench_reward_cpu --baseline b3f5b44 --candidate 9fce197

For each source tree (the revision given with ``--baseline``, extracted with ``git archive``
into a temporary directory, and this working tree or the ``--candidate`` revision), in
alternating rounds: a fresh
``redis-server`` (AOF ``everysec``, as bench_http's Redis setups), one replica
(``banditrec serve`` with ``BANDITREC_STORE_URL``), ``--rewards`` decisions made over HTTP,
then one first reward for each (the first 200 not measured: they load the update kernels),
posted by ``--connections`` concurrent clients. Only the
reward phase is measured: the CPU time of the replica's main thread (the event loop: HTTP,
joins, learning), of its other threads (the writer, the stream follower, executors) and of
Redis, from ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds), divided by the number of
rewards. The load generator runs in this process, on the same two cores: wall-clock rates
are not compared, CPU per reward is, as the ratio of this tree to the baseline (median of
the rounds). The machine may be shared: compare the ratios, not the absolute figures.

``--in-process`` measures the reward path alone, without HTTP: a process of each tree runs
an `Engine` on Redis with its `LogFollower` (as a replica's learner does), makes
``--rewards`` decisions, then posts one reward for each through `Engine.reward`, in groups
of ``--connections`` at once, and reports the CPU time of its event-loop thread
(``time.thread_time``) and of the whole process per reward.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from banditrec.sim import AppSimulator
from benchmarks.bench_http import RedisServer, Server, _process_tree, train_model

_REPO = Path(__file__).resolve().parents[1]
#: Rewards posted before measuring (their decisions are made with the others).
_WARM = 200


@dataclass
class Sample:
    loop_us: float  # the replica's main thread (the event loop), per reward
    other_us: float  # the replica's other threads, per reward
    redis_us: float  # redis-server, per reward
    learned: int


def _thread_ns(pid: int) -> dict[int, int]:
    """CPU nanoseconds of each thread of `pid` (schedstat: time on a CPU)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def _extract(revision: str, into: Path) -> Path:
    """The ``src`` tree of `revision`, extracted into `into`."""
    archive = into / "src.tar"
    subprocess.run(
        ["git", "-C", str(_REPO), "archive", "--format=tar", "-o", str(archive), revision, "src"],
        check=True,
    )
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


async def _post_all(
    url: str, requests: list[tuple[str, dict[str, object]]], n: int
) -> list[tuple[int, dict[str, object]]]:
    """POST each (path, body) with `n` concurrent clients; (status, JSON answer) of each,
    in the order they were sent."""
    queue = list(reversed(requests))
    answers: list[tuple[int, dict[str, object]]] = [(0, {})] * len(requests)
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            while queue:
                i = len(requests) - len(queue)
                path, body = queue.pop()
                response = await client.post(path, json=body)
                answers[i] = (response.status_code, response.json())

        await asyncio.gather(*(worker() for _ in range(n)))
    return answers


def one_round(
    src: Path | None, workdir: Path, model: Path, n_rewards: int, connections: int, seed: int
) -> Sample:
    """One replica of `src` (None: this tree) on a fresh Redis: decisions, then rewards."""
    redis = RedisServer(workdir / "redis", "everysec")
    before_env = os.environ.get("PYTHONPATH")
    if src is not None:  # the baseline's package shadows the installed one
        os.environ["PYTHONPATH"] = str(src)
    try:
        redis.wait_ready()
        server = Server(workdir / "replica", model, 1, "NORMAL", redis.url)
    finally:
        if before_env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before_env
    try:
        server.wait_ready()
        pid = _process_tree(server.process.pid)[-1]
        columns = AppSimulator().sample_contexts(n_rewards, np.random.default_rng(seed))
        bodies: list[tuple[str, dict[str, object]]] = [
            ("/v1/rank", {"context": {k: v[i].item() for k, v in columns.items()}})
            for i in range(n_rewards)
        ]
        decided = asyncio.run(_post_all(server.url, bodies, connections))
        assert {status for status, _ in decided} == {200}, decided[:3]
        ids = [str(body["event_id"]) for _, body in decided]
        rewards = [(f"/v1/events/{i}/reward", {"value": 1.0}) for i in ids]
        # The first rewards compile (or load) the update kernels: not measured.
        warm, rewards = rewards[:_WARM], rewards[_WARM:]
        assert {s for s, _ in asyncio.run(_post_all(server.url, warm, connections))} == {200}
        threads0, redis0 = _thread_ns(pid), _thread_ns(redis.process.pid)
        answers = asyncio.run(_post_all(server.url, rewards, connections))
        threads1, redis1 = _thread_ns(pid), _thread_ns(redis.process.pid)
        learned = sum(body.get("status") == "learned" for _, body in answers)
        assert learned == len(rewards), (learned, answers[:3])
        loop = threads1[pid] - threads0.get(pid, 0)
        other = sum(t - threads0.get(tid, 0) for tid, t in threads1.items() if tid != pid)
        spent_redis = sum(redis1.values()) - sum(redis0.values())
        per = 1e-3 / len(rewards)
        return Sample(loop * per, other * per, spent_redis * per, learned)
    finally:
        server.stop()
        redis.stop()


_WORKER = """
import asyncio, json, sys, time
import numpy as np
from banditrec.engine import Engine, prior_model
from banditrec.features import load_default_schema
from banditrec.replication import LogFollower
from banditrec.sim import AppSimulator
from banditrec.store import RewardRules
from banditrec.store.redis import RedisEventStore

url, n, group, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
schema = load_default_schema()


async def main():
    store = RedisEventStore.from_url(url, schema.encoding_hash)
    engine = Engine(prior_model(schema), np.random.default_rng(seed), store,
                    RewardRules(window_seconds=3600.0))
    follower = asyncio.create_task(LogFollower(engine, store).run())
    columns = AppSimulator().sample_contexts(n, np.random.default_rng(seed))
    contexts = [{k: v[i].item() for k, v in columns.items()} for i in range(n)]
    ids = []
    for i in range(0, n, group):
        records = await asyncio.gather(*(engine.rank(c) for c in contexts[i:i + group]))
        ids += [r.event_id for r in records]
    warm = 200  # (_WARM) the first rewards compile (or load) the update kernels: not measured
    for i in range(0, warm, group):
        await asyncio.gather(*(engine.reward(e, 1.0) for e in ids[i:min(i + group, warm)]))
    ids = ids[warm:]
    await asyncio.sleep(0.2)
    loop0, process0 = time.thread_time(), time.process_time()
    for i in range(0, len(ids), group):
        results = await asyncio.gather(*(engine.reward(e, 1.0) for e in ids[i:i + group]))
        assert all(r.outcome.value == "learned" for r in results)
    loop1, process1 = time.thread_time(), time.process_time()
    assert engine.applied_offset == n
    follower.cancel()
    await asyncio.gather(follower, return_exceptions=True)
    engine.close()
    store.close()
    per = 1e6 / len(ids)
    print(json.dumps({"loop": (loop1 - loop0) * per, "process": (process1 - process0) * per}))


asyncio.run(main())
"""


def one_in_process(
    src: Path | None, workdir: Path, n_rewards: int, group: int, seed: int
) -> Sample:
    """The reward path of `src` (None: this tree) without HTTP, on a fresh Redis."""
    redis = RedisServer(workdir / "redis", "everysec")
    try:
        redis.wait_ready()
        env = dict(os.environ)
        if src is not None:
            env["PYTHONPATH"] = str(src)
        before = sum(_thread_ns(redis.process.pid).values())
        out = subprocess.run(
            [sys.executable, "-c", _WORKER, redis.url, str(n_rewards), str(group), str(seed)],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"The in-process worker failed:\n{out.stderr[-3000:]}")
        spent_redis = sum(_thread_ns(redis.process.pid).values()) - before
        result = json.loads(out.stdout.strip().splitlines()[-1])
        loop, process = float(result["loop"]), float(result["process"])
        # Redis's CPU here covers the decisions too: per decision + reward.
        return Sample(loop, process - loop, spent_redis * 1e-3 / (n_rewards - _WARM), n_rewards)
    finally:
        redis.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="A git revision to compare with.")
    parser.add_argument(
        "--candidate", default=None, help="A git revision to measure (default: this tree)."
    )
    parser.add_argument("--rewards", type=int, default=3000, help="Rewards per round.")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="Rounds per tree (alternating).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--in-process", action="store_true", help="The reward path alone, without HTTP."
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-reward-cpu-") as tmp:
        root = Path(tmp)
        (root / "baseline").mkdir()
        baseline = _extract(args.baseline, root / "baseline")
        candidate = None
        if args.candidate is not None:
            (root / "candidate").mkdir()
            candidate = _extract(args.candidate, root / "candidate")
        model = root / "unused.npz" if args.in_process else train_model(root, args.seed)
        samples: dict[str, list[Sample]] = {"baseline": [], "this tree": []}
        for r in range(args.rounds):
            for name, src in (("baseline", baseline), ("this tree", candidate)):
                print(f"round {r + 1}/{args.rounds}: {name} ...", file=sys.stderr, flush=True)
                work = root / f"{name.replace(' ', '-')}-{r}"
                if args.in_process:
                    sample = one_in_process(src, work, args.rewards, args.connections, args.seed)
                else:
                    sample = one_round(
                        src, work, model, args.rewards, args.connections, args.seed + r
                    )
                samples[name].append(sample)
    how = (
        f"in process (Engine.reward, groups of {args.connections})"
        if args.in_process
        else f"over HTTP ({args.connections} connections)"
    )
    print(
        f"Redis replica, {args.rewards} first rewards per round {how}, {args.rounds} rounds; "
        "CPU µs per reward (median of rounds)\n"
    )
    print("| tree | event loop | other threads | Redis | replica total |")
    print("|---|---:|---:|---:|---:|")
    medians = {}
    for name, runs in samples.items():
        loop = statistics.median(s.loop_us for s in runs)
        other = statistics.median(s.other_us for s in runs)
        spent_redis = statistics.median(s.redis_us for s in runs)
        total = statistics.median(s.loop_us + s.other_us for s in runs)
        medians[name] = (loop, other, spent_redis, total)
        label = f"baseline ({args.baseline})" if name == "baseline" else "this tree"
        if name != "baseline" and args.candidate is not None:
            label = f"candidate ({args.candidate})"
        print(f"| {label} | {loop:.0f} | {other:.0f} | {spent_redis:.0f} | {total:.0f} |")
    new, old = medians["this tree"], medians["baseline"]
    print(
        f"| ratio this tree ÷ baseline | {new[0] / old[0]:.2f}× | {new[1] / old[1]:.2f}× | "
        f"{new[2] / old[2]:.2f}× | {new[3] / old[3]:.2f}× |"
    )
    pairs = zip(samples["baseline"], samples["this tree"], strict=True)
    spread = ", ".join(f"{b.loop_us:.0f} → {c.loop_us:.0f}" for b, c in pairs)
    print(f"\nEvent loop µs per reward, round by round (baseline → this tree): {spread}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
