"""The lifecycle's two scenarios, measured: apprentice mode and the guardrail after a drift.

One command, two tables and a summary over seeds::

    .venv/bin/python -m benchmarks.bench_lifecycle              # seeds 1-5, ~2 min on 2 cores
    .venv/bin/python -m benchmarks.bench_lifecycle --seeds 1    # the tests' run only

Both run the engine as a server does, on a real SQLite log in a temporary directory: every
decision is logged, every reward joined through the log, and the lifecycle follows the learn
stream (a step every 250 decisions), switching through learn-stream entries. The clock moves
one second per decision. Users come from `banditrec.sim` (reward scale 2), whose true
expected rewards give the truth every estimate is compared with.

Apprentice: banditrec starts from the prior (LinUCB) in the shadow of a sensible fixed rule
(high-value iOS users get the store deep link, low-value users the bonus offer, Android users
the invite, everyone else the new-app suggestion: 0.52 where the best possible is 0.61), and
serves it with an exploring share of 0.2. It switches to its own choices when the lower bound
of its lift over the rule has stayed above 0 for 1000 s. Seed 1 is tests/test_lifecycle.py's
``test_apprentice_starts_behind_overtakes_and_switches_only_after_the_interval``.

Guardrail: the live policy is LinUCB that forgets (γ = 0.995). At decision 3000 a model
trained offline on 50,000 uniform rounds (LinUCB, ε = 0.1) is uploaded and served; at
decision 6000 the users' preferences reverse (`DriftingAppSimulator`). The guardrail follows
the previous version in shadow and rolls back when its lower bound beats the live value by
0.05 (at least 50 effective rounds). Seed 1 is the test
``test_guardrail_rolls_back_after_a_drift``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from banditrec.engine import Engine, prior_model
from banditrec.features import load_default_schema
from banditrec.lifecycle.apprentice import apprentice_round
from banditrec.lifecycle.service import Lifecycle, LifecycleSettings
from banditrec.policies import build_policy
from banditrec.sim import AppSimulator, DriftingAppSimulator
from banditrec.snapshot import Model, model_bytes
from banditrec.store import RewardRules
from banditrec.store.sqlite import SQLiteEventStore

SCHEMA = load_default_schema()
K, D = SCHEMA.n_actions, SCHEMA.n_features
RULES: list[dict[str, Any]] = [
    {"if": {"segment": "high", "device": "ios"}, "then": "deep_link_to_store"},
    {"if": {"segment": "low"}, "then": "show_bonus_offer"},
    {"if": {"device": "android"}, "then": "invite_friend"},
    {"else": "suggest_new_app"},
]
STEP = 250


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _contexts(sim: AppSimulator, n: int, seed: int) -> tuple[list[dict[str, Any]], Any]:
    columns = sim.sample_contexts(n, np.random.default_rng(seed))
    return [{f: columns[f][i].item() for f in SCHEMA.field_names} for i in range(n)], columns


def _engine(path: Path, clock: Clock, seed: int, policy: Any = None) -> Engine:
    store = SQLiteEventStore(path, SCHEMA.encoding_hash)
    return Engine(prior_model(SCHEMA, policy), np.random.default_rng(seed), store,
                  RewardRules(), clock)  # fmt: skip


def _close(engine: Engine) -> None:
    engine.close()
    if engine.store is not None:
        engine.store.close()


def _lift(lifecycle: Lifecycle, key: str) -> tuple[float, float, float] | None:
    estimate = lifecycle.estimate(key)
    if estimate is None or estimate.lift is None:
        return None
    lift = estimate.lift
    return lift.value, lift.ci_low, lift.ci_high


async def apprentice(directory: Path, seed: int, n: int = 7000) -> dict[str, Any]:
    """The apprentice scenario; per block of `STEP` decisions: mode, truths, estimate."""
    sim = AppSimulator(reward_scale=2.0)
    rows, columns = _contexts(sim, n, seed)
    mu, rng, clock = sim.expected_rewards(columns), np.random.default_rng(seed), Clock()
    engine = _engine(directory / "events.db", clock, seed + 1)
    rule = build_policy("fixed_rule", {"rules": RULES}, schema=SCHEMA).reset(K, D)
    settings = LifecycleSettings(
        apprentice=True, apprentice_explore=0.2, apprentice_hold_seconds=1000.0,
        window=2000, check_every=STEP,
    )  # fmt: skip
    assert engine.store is not None
    lifecycle = Lifecycle.attach(engine, engine.store, settings, rule=rule)
    blocks: list[dict[str, Any]] = []
    own, base, served = [], [], []
    for i in range(n):
        clock.now += 1.0
        record = await engine.rank(rows[i])
        seen = apprentice_round(record.model_version, record.probabilities, record.action_index)
        b = int(np.argmax(record.probabilities)) if seen is not None else None
        if b is not None:
            mine = (record.probabilities - 0.8 * (np.arange(K) == b)) / 0.2
            own.append(float(mine @ mu[i]))
            base.append(float(mu[i, b]))
        served.append(float(mu[i, record.action_index]))
        await engine.reward(record.event_id, float(rng.random() < mu[i, record.action_index]))
        if i % STEP == STEP - 1:
            mode = lifecycle.state.serving
            await lifecycle.step()
            blocks.append({
                "decisions": i + 1, "mode": mode,
                "own_true": float(np.mean(own[-STEP:])) if mode == "apprentice" else None,
                "rule_true": float(np.mean(base[-STEP:])) if mode == "apprentice" else None,
                "served_true": float(np.mean(served[-STEP:])),
                "lift": _lift(lifecycle, "apprentice"),
            })  # fmt: skip
    switches = lifecycle.records.switches()
    _close(engine)
    return {"blocks": blocks, "switches": switches, "rule_true": float(np.mean(base))}


def _offline_model(n: int = 50_000, epsilon: float = 0.1) -> bytes:
    sim = AppSimulator(reward_scale=2.0)
    rows, columns = _contexts(sim, n, 3)
    mu = sim.expected_rewards(columns)
    X = np.stack([SCHEMA.vectorize(row) for row in rows])
    rng = np.random.default_rng(4)
    actions = rng.integers(0, K, n)
    rewards = (rng.random(n) < mu[np.arange(n), actions]).astype(float)
    policy = build_policy("linucb", exploration_params={"epsilon": epsilon}).reset(K, D)
    policy.update_batch(X, actions, rewards)
    return model_bytes(Model(policy, SCHEMA, created_at="2026-01-01", version="offline"))


async def guardrail(
    directory: Path, seed: int, data: bytes, n: int = 11_000, upload_at: int = 3000,
    drift_at: int = 6000,
) -> dict[str, Any]:  # fmt: skip
    """The drift scenario; per block of `STEP` decisions: version, truth, guardrail lift."""
    sim = DriftingAppSimulator(drift_at=drift_at, reward_scale=2.0)
    rows, columns = _contexts(sim, n, seed)
    mu = sim.expected_rewards_at(columns, np.arange(n))
    rng, clock = np.random.default_rng(seed), Clock()
    policy = build_policy("linucb", {"gamma": 0.995})
    engine = _engine(directory / "events.db", clock, seed + 1, policy)
    settings = LifecycleSettings(window=2000, check_every=STEP, guardrail_margin=0.05,
                                 min_effective_sample_size=50)  # fmt: skip
    assert engine.store is not None
    lifecycle = Lifecycle.attach(engine, engine.store, settings)
    blocks: list[dict[str, Any]] = []
    served = []
    for i in range(n):
        clock.now += 1.0
        if i == upload_at:
            await lifecycle.upload(data, "trained offline", activate=True)
        record = await engine.rank(rows[i])
        served.append(float(mu[i, record.action_index]))
        await engine.reward(record.event_id, float(rng.random() < mu[i, record.action_index]))
        if i % STEP == STEP - 1:
            live = lifecycle.state_now().live_version
            await lifecycle.step()
            blocks.append({
                "decisions": i + 1, "live": live or "base",
                "served_true": float(np.mean(served[-STEP:])),
                "best_true": float(np.mean(mu[i + 1 - STEP : i + 1].max(axis=1))),
                "lift": _lift(lifecycle, "previous"),
            })  # fmt: skip
    switches = lifecycle.records.switches()
    _close(engine)
    return {"blocks": blocks, "switches": switches, "served": np.array(served)}


def _ci(lift: tuple[float, float, float] | None) -> str:
    if lift is None:
        return ""
    return f"{lift[0]:+.3f} [{lift[1]:+.3f}, {lift[2]:+.3f}]"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, default=5, help="Seeds 1..N (default 5).")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data = _offline_model()
    runs = []
    for seed in range(1, args.seeds + 1):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as g:
            runs.append((
                asyncio.run(apprentice(Path(a), seed)),
                asyncio.run(guardrail(Path(g), seed, data)),
            ))  # fmt: skip
    first_a, first_g = runs[0]
    print("Apprentice, seed 1 (every 500 decisions; truths are means over the last 250)\n")
    print("| decisions | serving | own choices (true) | rule (true) | served (true) | "
          "estimated lift over the rule [95% CI] |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---|")
    for b in first_a["blocks"][1::2]:
        print(f"| {b['decisions']:,} | {b['mode']} | {_num(b['own_true'])} | "
              f"{_num(b['rule_true'])} | {b['served_true']:.3f} | {_ci(b['lift'])} |")  # fmt: skip
    for s in first_a["switches"]:
        print(f"\nSwitch at learn event {s.seq}: {s.kind} {s.target} — {s.reason}")
    print("\nGuardrail, seed 1 (every 500 decisions; upload at 3,000, drift at 6,000)\n")
    print("| decisions | live version | served (true) | best possible (true) | "
          "previous minus live [95% CI] |")  # fmt: skip
    print("|---:|---|---:|---:|---|")
    for b in first_g["blocks"][1::2]:
        print(f"| {b['decisions']:,} | {b['live']} | {b['served_true']:.3f} | "
              f"{b['best_true']:.3f} | {_ci(b['lift'])} |")  # fmt: skip
    for s in first_g["switches"]:
        print(f"\nSwitch at learn event {s.seq}: {s.kind} {s.target} — {s.reason}")
    print("\nEvery seed\n")
    print(
        "| seed | own choices from learn event | served after (true) | rule (true) | "
        "rollback at learn event | served 1000 after drift (true) | last 1500 (true) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for seed, (a, g) in enumerate(runs, start=1):
        own = [s.seq for s in a["switches"] if s.kind == "serve_mode"]
        back = [s.seq for s in g["switches"] if s.kind == "rollback"]
        after = [b["served_true"] for b in a["blocks"] if b["mode"] == "own"]
        served = g["served"]
        print(f"| {seed} | {own[0] if own else 'never'} | {_num(np.mean(after) if after else None)}"
              f" | {a['rule_true']:.3f} | {back[0] if back else 'never'} | "
              f"{served[6000:7000].mean():.3f} | {served[-1500:].mean():.3f} |")  # fmt: skip
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
