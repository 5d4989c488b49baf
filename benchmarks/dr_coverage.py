"""Do the intervals of `banditrec evaluate` cover the truth? Coverage on simulated logs.

One command, one table::

    .venv/bin/python -m benchmarks.dr_coverage             # 30 logs, ~2-4 min on 2 cores
    .venv/bin/python -m benchmarks.dr_coverage --runs 5    # a quick look

For each seed 0, 1, ..., ``--runs - 1``, `banditrec.sim.AppSimulator` writes a log of
``--rounds`` rounds served uniformly at random over its 4 actions (the CSV of ``banditrec
simulate``, with the true expected reward of every action), and the log is evaluated exactly
as ``banditrec evaluate --data <log.csv> --candidate ... --n-bootstrap 300 --seed <seed>``
does (`banditrec.evaluation.evaluate`: time split 0.7, the estimators of `banditrec.ope`,
reward model cross-fitted on the held-out rounds). The candidates are two LinUCB
configurations that learn and a uniform random one (LinUCB with ε = 1, i.e. the logging
policy itself), those of ``tests/test_evaluation.py``.

Because the log is simulated, the true value of every candidate on the held-out rounds,
``mean Σ_a π(a|x) μ(x, a)``, is known. The table counts, per estimator, the intervals (95%
percentile bootstrap) that contain it, over runs × candidates, with a Wilson 95% interval of
the coverage rate itself; then how often the ranking came out as it should (a learned LinUCB
first and significantly better than the logging policy; uniform random last and not
significantly different from it).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from banditrec.evaluation import EvaluationConfig, EvaluationResult, evaluate, load_csv
from banditrec.evaluation.candidates import parse_candidate
from banditrec.features import load_default_schema
from banditrec.logged_data import write_logged_csv
from banditrec.sim import AppSimulator

#: Two learned LinUCB configurations and uniform random (ε = 1), as in tests/test_evaluation.py.
CANDIDATES = ("linucb:alpha=0.5", "linucb:alpha=2,epsilon=0.1", "linucb:epsilon=1")
UNIFORM = "linucb(epsilon=1)"
ESTIMATOR_ORDER = ("dr", "snips", "replay", "ips", "dm")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def one_run(seed: int, rounds: int, split: float, n_bootstrap: int, tmp: Path) -> EvaluationResult:
    """Simulate one uniform-random log and evaluate the candidates on it."""
    path = tmp / f"log-{seed}.csv"
    write_logged_csv(AppSimulator().simulate_logged(rounds, np.random.default_rng(seed)), path)
    logged = load_csv(path, load_default_schema())
    candidates = [parse_candidate(c) for c in CANDIDATES]
    config = EvaluationConfig(split=split, n_bootstrap=n_bootstrap, seed=seed)
    return evaluate(logged, candidates, config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dr_coverage",
        description="Coverage of the true value by banditrec evaluate's 95% intervals.",
    )
    parser.add_argument("--runs", type=int, default=30, help="logs, seeds 0..runs-1 [30]")
    parser.add_argument("--rounds", type=int, default=6_000, help="rounds per log [6000]")
    parser.add_argument("--split", type=float, default=0.7, help="learning fraction [0.7]")
    parser.add_argument("--n-bootstrap", type=int, default=300, help="resamples [300]")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    covered: dict[str, int] = {}
    intervals: dict[str, int] = {}
    logging_covered = 0
    learned_first = uniform_last = 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.runs):
            result = one_run(seed, args.rounds, args.split, args.n_bootstrap, Path(tmp))
            for c in result.candidates:
                if c.error is not None or c.true_value is None:
                    raise RuntimeError(f"seed {seed}: {c.label} failed: {c.error}")
                for name, e in c.estimates.items():
                    intervals[name] = intervals.get(name, 0) + 1
                    covered[name] = covered.get(name, 0) + (e.ci_low <= c.true_value <= e.ci_high)
            log, truth = result.logging, result.logging_true_value
            logging_covered += truth is not None and log.ci_low <= truth <= log.ci_high
            first, last = result.candidates[0], result.candidates[-1]
            learned_first += first.label != UNIFORM and first.verdict == "better"
            uniform_last += last.label == UNIFORM and last.verdict == "no significant difference"
            print(
                f"  seed {seed:>2}: "
                + ", ".join(
                    f"{c.label} DR {c.value('dr'):.4f} (true {c.true_value:.4f})"
                    for c in result.candidates
                ),
                file=sys.stderr,
                flush=True,
            )
    seconds = time.perf_counter() - start

    print(
        f"\nCoverage of the true value by the 95% intervals: {args.runs} simulated uniform-random "
        f"logs (seeds 0-{args.runs - 1}), {args.rounds:,} rounds each, split {args.split:g}, "
        f"{args.n_bootstrap} bootstrap resamples; candidates {', '.join(CANDIDATES)}.\n"
    )
    print("| estimator | intervals covering the truth | coverage | Wilson 95% interval |")
    print("|---|---:|---:|---|")
    names = [n for n in ESTIMATOR_ORDER if n in intervals] + sorted(
        set(intervals) - set(ESTIMATOR_ORDER)
    )
    for name in names:
        k, n = covered[name], intervals[name]
        low, high = wilson(k, n)
        print(f"| {name} | {k}/{n} | {k / n:.1%} | [{low:.1%}, {high:.1%}] |")
    low, high = wilson(logging_covered, args.runs)
    print(
        f"| logging policy (mean reward) | {logging_covered}/{args.runs} | "
        f"{logging_covered / args.runs:.1%} | [{low:.1%}, {high:.1%}] |"
    )
    print(
        f"\nA learned LinUCB ranked first and significantly better than the logging policy: "
        f"{learned_first}/{args.runs} runs; uniform random ranked last with no significant "
        f"difference from it: {uniform_last}/{args.runs} runs. ({seconds:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
