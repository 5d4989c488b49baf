"""Where does an off-policy interval stop being trustworthy? Coverage by effective sample size.

One command, one table::

    .venv/bin/python -m benchmarks.ess_coverage             # 60 logs, a few minutes
    .venv/bin/python -m benchmarks.ess_coverage --runs 10   # a quick look

`banditrec evaluate` flags an estimate whose effective sample size (ESS, ``(Σw)²/Σw²`` of the
importance weights) is below ``--min-ess`` (100 by default) as unreliable. This measures
what that threshold buys. For each seed 0, 1, ..., ``--runs - 1``, users of
`banditrec.sim.AppSimulator` are served by a LinUCB (α = 1) that learns online, with an
ε-greedy floor of 0.01, 0.05 or 0.2 (by seed): a log like a live server's, far from uniform.
Its held-out 30% is evaluated exactly as ``banditrec evaluate`` does (time split 0.7,
`banditrec.evaluation.evaluate`, 200 bootstrap resamples) for frozen LinUCB candidates
(α ∈ {0.1, 1, 2} × ε ∈ {0, 0.01, 0.1, 0.3, 1}) whose overlap with the logger, hence ESS,
ranges from a handful of rounds to all of them. The simulator's true expected rewards give
each candidate's true value on those rounds, ``mean Σ_a π(a|x) μ(x, a)``.

The tables count, per ESS range and estimator, the 95% intervals that contain the truth,
with a Wilson 95% interval of that coverage, and the median error |estimate − truth|: once
by the ESS `evaluate` judges reliability with (the smaller of the realized ESS and the one
the logged distributions imply), once by the realized ESS alone.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict

import numpy as np

from banditrec.evaluation import EvaluationConfig, LoggedRounds, evaluate, make_candidate
from banditrec.exploration import EpsilonGreedy, sample_action
from banditrec.features import load_default_schema
from banditrec.policies import LinUCB
from banditrec.sim import AppSimulator

from .dr_coverage import wilson

SCHEMA = load_default_schema()
LOGGING_EPSILONS = (0.01, 0.05, 0.2)
BUCKETS = (0.0, 10.0, 30.0, 100.0, 300.0, math.inf)
ESTIMATORS = ("dr", "snips", "ips")


def served_log(seed: int, n: int) -> LoggedRounds:
    """`n` simulated users served by a learning LinUCB with an ε-greedy floor (by seed)."""
    rng = np.random.default_rng(seed)
    sim = AppSimulator()
    contexts = sim.sample_contexts(n, rng)
    X, mu = SCHEMA.vectorize_many(contexts), sim.expected_rewards(contexts)
    epsilon = LOGGING_EPSILONS[seed % len(LOGGING_EPSILONS)]
    logger = LinUCB(exploration=EpsilonGreedy(epsilon=epsilon))
    logger.reset(SCHEMA.n_actions, SCHEMA.n_features)
    everyone = np.ones(SCHEMA.n_actions, dtype=np.bool_)
    dist = np.empty((n, SCHEMA.n_actions))
    action = np.empty(n, dtype=np.intp)
    reward = np.empty(n)
    for i in range(n):
        dist[i] = logger.distribution(X[i], everyone)[1]
        action[i] = sample_action(dist[i], rng)
        reward[i] = float(rng.random() < mu[i, action[i]])
        logger.update(X[i], int(action[i]), float(reward[i]))
    return LoggedRounds(
        actions=SCHEMA.actions,
        X=X,
        action=action,
        propensity=dist[np.arange(n), action],
        reward=reward,
        eligible=np.ones((n, SCHEMA.n_actions), dtype=np.bool_),
        source={"kind": "simulated", "seed": seed, "logging_epsilon": epsilon},
        counts={"decisions": n, "pending": 0, "never_activated": 0, "used": n},
        logged_dist=dist,
        expected_rewards=mu,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3000)
    args = parser.parse_args()
    candidates = [
        make_candidate("linucb", {"alpha": a, "epsilon": e})
        for a in (0.1, 1.0, 2.0)
        for e in (0.0, 0.01, 0.1, 0.3, 1.0)
    ]
    config = EvaluationConfig(n_bootstrap=200, estimators=ESTIMATORS, min_effective_sample_size=0)
    # By the ESS `evaluate` judges reliability with (the smaller of realized and expected),
    # and by the realized ESS alone (what the flag used before the expected one).
    covered: dict[tuple[str, int, str], list[bool]] = defaultdict(list)
    errors: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    start = time.perf_counter()
    for seed in range(args.runs):
        result = evaluate(served_log(seed, args.rounds), candidates, config)
        for c in result.candidates:
            assert c.true_value is not None and c.error is None
            assert c.effective_sample_size is not None
            for name in ESTIMATORS:
                e = c.estimates[name]
                for kind, ess in (("used", c.effective_sample_size),
                                  ("realized", e.effective_sample_size)):  # fmt: skip
                    bucket = int(np.searchsorted(BUCKETS, ess, side="right")) - 1
                    covered[kind, bucket, name].append(e.ci_low <= c.true_value <= e.ci_high)
                    errors[kind, bucket, name].append(abs(e.value - c.true_value))
    seconds = time.perf_counter() - start
    held = args.rounds - math.floor(0.7 * args.rounds)
    print(
        f"{args.runs} logs of {args.rounds:,} rounds ({held:,} held out), logging ε "
        f"{'/'.join(f'{e:g}' for e in LOGGING_EPSILONS)}, {len(candidates)} frozen candidates "
        f"each: {seconds:.0f} s"
    )
    for kind, title in (
        ("used", "ESS as evaluate uses it: min(realized, expected from the logged distributions)"),
        ("realized", "realized ESS alone, (Σw)²/Σw² of the weights drawn"),
    ):
        print()
        print(f"By {title}:")
        print()
        print("| ESS | estimator | intervals | cover the truth | Wilson 95% | median error |")
        print("| --- | --- | ---: | ---: | --- | ---: |")
        for b in range(len(BUCKETS) - 1):
            low, high = BUCKETS[b], BUCKETS[b + 1]
            label = f"≥ {low:g}" if math.isinf(high) else f"{low:g}–{high:g}"
            for name in ESTIMATORS:
                hits = covered.get((kind, b, name), [])
                if not hits:
                    continue
                lo, hi = wilson(sum(hits), len(hits))
                error = float(np.median(errors[kind, b, name]))
                print(
                    f"| {label} | {name} | {len(hits)} | {sum(hits) / len(hits):.1%} | "
                    f"[{lo:.1%}, {hi:.1%}] | {error:.4f} |"
                )


if __name__ == "__main__":
    main()
