"""Speed of the self-tuning `auto` policy against LinUCB, in process, side by side.

One command, one table::

    .venv/bin/python -m benchmarks.bench_auto            # K = 4, d = 22 (the default schema)
    .venv/bin/python -m benchmarks.bench_auto --actions 10 --features 50 --rows 100000

Rows: deciding one context (`distribution`), deciding a batch (`distribution_batch`, what
``/v1/rank/batch`` calls; µs per row), learning one event (`update`) and learning a batch
(`update_batch`, what ``banditrec train`` calls), for LinUCB (α = 1, the fixed
reference), `auto` through its compiled kernels (`_kernels.auto_epsilon_greedy`, `auto_learn`,
`auto_learn_rows`) and `auto` learning through its Python reference (`_credit`, the path of
softmax/igw rules and γ < 1; it decides through the same kernel). Per
call: the best of `--repeats` runs of `--calls` calls, in process CPU time (the machine may be
shared: CPU time is what the process itself spent), and the ratio to LinUCB's. Batch: rows per
CPU second over `--rows` rows, best of the repeats.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np

try:  # python -m benchmarks.<name>, or python benchmarks/<name>.py
    from benchmarks import _machine
except ImportError:
    import _machine  # type: ignore[no-redef]
from banditrec.policies import AutoLinUCB, LinUCB
from banditrec.policies.base import Policy


def best_seconds(call: Callable[[], None], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        call()
        best = min(best, time.process_time() - start)
    return best


def contenders() -> dict[str, Callable[[], Policy]]:
    def python_auto() -> Policy:
        policy = AutoLinUCB()
        policy._compiled = lambda: False  # type: ignore[method-assign]
        return policy

    return {
        "LinUCB α = 1": lambda: LinUCB(alpha=1.0, ridge=10.0),
        "auto (compiled)": AutoLinUCB,
        "auto (Python reference)": python_auto,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_auto", description=__doc__)
    parser.add_argument("--actions", type=int, default=4)
    parser.add_argument("--features", type=int, default=22)
    parser.add_argument("--calls", type=int, default=5000, help="calls per timed run [5000]")
    parser.add_argument("--rows", type=int, default=200_000, help="batch rows [200000]")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    K, d = args.actions, args.features
    rng = np.random.default_rng(0)
    X = np.hstack([rng.normal(size=(args.rows, d - 1)), np.ones((args.rows, 1))])
    actions = rng.integers(0, K, args.rows)
    rewards = (rng.random(args.rows) < 0.3).astype(np.float64)
    eligible = np.ones(K, dtype=bool)
    n = args.calls

    print("Machine")
    for line in _machine.machine_notes(["numpy", "numba"]):
        print(f"  {line}")
    print(f"K = {K}, d = {d}; per call: best of {args.repeats} × {n:,} calls, CPU time")
    rows: list[tuple[str, float, float, float, float]] = []
    batch_eligible = np.ones((n, K), dtype=bool)
    for label, make in contenders().items():
        policy = make().reset(K, d)
        policy.update_batch(X[:2000], actions[:2000], rewards[:2000])  # warm: compiled, learned

        def decide(policy: Policy = policy) -> None:
            for i in range(n):
                policy.distribution(X[i], eligible)

        def learn(policy: Policy = policy) -> None:
            for i in range(n):
                policy.update(X[i], int(actions[i]), float(rewards[i]))

        def decide_batch(policy: Policy = policy) -> None:
            policy.distribution_batch(X[:n], batch_eligible)

        decide_s = best_seconds(decide, args.repeats) / n
        decide_batch_s = best_seconds(decide_batch, args.repeats) / n
        learn_s = best_seconds(learn, args.repeats) / n
        batch_rows = args.rows if "Python" not in label else min(args.rows, 20_000)

        def batch(make: Callable[[], Policy] = make, m: int = batch_rows) -> None:
            make().reset(K, d).update_batch(X[:m], actions[:m], rewards[:m])

        batch(make, 100)  # compile outside the timing
        rate = batch_rows / best_seconds(batch, args.repeats)
        rows.append((label, decide_s, decide_batch_s, learn_s, rate))
    base = rows[0]
    print(
        "\n| policy | decide (µs) | × LinUCB | decide batch (µs/row) | × LinUCB | learn (µs) "
        "| × LinUCB | learn batch (rows/s) | × LinUCB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, decide_s, decide_batch_s, learn_s, rate in rows:
        print(
            f"| {label} | {decide_s * 1e6:.2f} | {decide_s / base[1]:.2f} "
            f"| {decide_batch_s * 1e6:.2f} | {decide_batch_s / base[2]:.2f} "
            f"| {learn_s * 1e6:.2f} | {learn_s / base[3]:.2f} "
            f"| {rate:,.0f} | {rate / base[4]:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
