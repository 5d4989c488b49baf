"""`banditrec evaluate` judges the live policy and its neighbours, replayed along the log.

First a log written by the engine on the simulator, where every decision's true expected
rewards are kept: the replay reproduces the served distributions exactly, and each live
candidate's estimate lands near its true value. Then `make run`'s scenario end to end: a real
`banditrec serve` of a model trained on 20 rows, simulated traffic over HTTP, and the
`evaluate` command on the SQLite log it wrote.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from banditrec import evaluation as ev
from banditrec.cli import app
from banditrec.engine import Engine, prior_model
from banditrec.evaluation.candidates import CandidateError
from banditrec.evaluation.live import live_distributions
from banditrec.features import load_default_schema
from banditrec.logged_data import read_logged_csv, write_logged_csv
from banditrec.policies import AutoLinUCB, LinUCB, Policy
from banditrec.sim import AppSimulator
from banditrec.snapshot import read_metadata, save_model
from banditrec.store import LearnKind, RewardRules
from banditrec.store.sqlite import SQLiteEventStore
from banditrec.traffic import run_traffic
from serving import running_server

SCHEMA = load_default_schema()
runner = CliRunner()
#: The live policy and the neighbours that keep its choices (only its exploration differs).
LIVE_NEIGHBOURS = ("live", "live(epsilon=0)", "live(epsilon=0.05)", "live(epsilon=0.1)")


def _served_log(
    tmp: Path,
    policy: Policy,
    n: int,
    seed: int,
    name: str = "model.npz",
    add_action_at: int | None = None,
) -> tuple[Path, Path, np.ndarray]:
    """A base model learned from 20 simulated rounds, served through the engine with the
    SQLite log `tmp`/events.db (a new epoch if the log exists) for `n` decisions, each
    rewarded at once; the true expected rewards. An action added at run time (after
    `add_action_at` decisions) is never served by the simulator's users' rewards (0)."""
    sim, rng = AppSimulator(), np.random.default_rng(seed)
    model = prior_model(SCHEMA, policy)
    write_logged_csv(sim.simulate_logged(20, rng), tmp / "warm.csv")
    warm = read_logged_csv(tmp / "warm.csv", SCHEMA)
    model.policy.update_batch(warm.X, warm.action, warm.reward)
    model.version = f"test-{type(policy).__name__}-{seed}"
    model_path = tmp / name
    save_model(model, model_path)
    log = tmp / "events.db"
    store = SQLiteEventStore(log, SCHEMA.encoding_hash)
    model.log_offset = store.epoch_offset(model.version)
    engine = Engine(model, np.random.default_rng(seed + 1), store, RewardRules())
    columns = sim.sample_contexts(n, rng)
    mu = sim.expected_rewards(columns)

    async def drive() -> None:
        for i in range(n):
            if i == add_action_at:
                await engine.change_action(LearnKind.add_action, "new_offer")
            context = {f: columns[f][i].item() for f in SCHEMA.field_names}
            record = await engine.rank(context, None)
            k = SCHEMA.actions.index(record.action) if record.action in SCHEMA.actions else -1
            await engine.reward(record.event_id, float(k >= 0 and rng.random() < mu[i, k]))

    asyncio.run(drive())
    engine.close()
    store.close()
    return log, model_path, mu


@pytest.mark.parametrize("policy", [LinUCB(), AutoLinUCB()], ids=["linucb", "auto"])
def test_live_candidates_replay_the_served_model_and_estimate_their_true_value(
    tmp_path: Path, policy: Policy
) -> None:
    log, model_path, mu = _served_log(tmp_path, policy, n=1500, seed=3)
    rounds = ev.load_event_log(log, SCHEMA)
    live = ev.find_live_model(rounds, SCHEMA, [model_path])
    assert live is not None and live.name == policy.name and live.path == str(model_path)
    # The truth of every logged decision, kept by the test: true values beside estimates.
    rounds = replace(rounds, expected_rewards=mu)
    candidates = [ev.make_candidate("live", {})]
    candidates += [ev.make_candidate("live", {"epsilon": e}) for e in (0.0, 0.1)]
    if isinstance(policy, LinUCB):
        candidates += [ev.make_candidate("live", {"alpha": a}) for a in (0.5, 2.0)]
    config = ev.EvaluationConfig(n_bootstrap=300, seed=0)
    result = ev.evaluate(rounds, candidates, config, schema=SCHEMA, live=live)
    held = result.counts["evaluation"]
    by_label = {c.label: c for c in result.candidates}
    replayed = by_label["live"]
    # The replay reproduces every served distribution: weights 1, ESS n, and IPS is the
    # logged mean reward (the logging policy's value) to rounding.
    assert replayed.replay == {"rounds": held, "from_base_model": held, "reproduced": held}
    assert replayed.estimates["ips"].effective_sample_size == pytest.approx(held, rel=1e-9)
    assert replayed.estimates["ips"].value == pytest.approx(result.logging.value, abs=1e-9)
    # Its lift is DR applied to π − μ = 0: the policy that served is no different from itself.
    assert replayed.lift is not None and replayed.verdict == "no significant difference"
    assert max(abs(replayed.lift.ci_low), abs(replayed.lift.ci_high)) <= 1e-9
    for c in result.candidates:
        assert c.error is None, c.error
        if c.label.startswith("live(alpha"):
            # Another width changes the argmax on a share of the rounds, which a 1% floor
            # explored with probability 1/400 each: the log did not happen to draw those
            # weights (realized ESS high), the expected ESS counts them, and is low.
            assert c.expected_effective_sample_size is not None
            assert c.estimates["dr"].effective_sample_size > 3 * c.expected_effective_sample_size
            assert c.low_ess and c.decisions_needed is not None and c.decisions_needed > 0
            continue
        # The live policy and its exploration neighbours keep its argmax: reliable.
        assert not c.low_ess and c.decisions_needed is None, c.label
        assert c.effective_sample_size is not None and c.effective_sample_size >= 100
        # Unbiased for the mean value of the policies it would have served: the estimate
        # is within two interval widths (about four standard errors) of the truth.
        dr, truth = c.estimates["dr"], c.true_value
        assert truth is not None
        assert abs(dr.value - truth) <= 2 * (dr.ci_high - dr.ci_low), (c.label, dr, truth)
    assert result.live is not None and result.live["model_file"] == str(model_path)
    assert json.dumps(result.to_dict(), allow_nan=False)


def test_an_epoch_whose_model_is_gone_is_replayed_from_the_prior(tmp_path: Path) -> None:
    """Two epochs (a retrained model, as every `make run`), the first one's model file
    deleted, an action added during the second: the held-out part spans both."""
    _served_log(tmp_path, LinUCB(), n=300, seed=7, name="first.npz")
    (tmp_path / "first.npz").unlink()
    log, model_path, _ = _served_log(tmp_path, LinUCB(), n=500, seed=8, add_action_at=250)
    rounds = ev.load_event_log(log, SCHEMA)
    assert rounds.actions == (*SCHEMA.actions, "new_offer") and len(rounds.epochs) == 2
    live = ev.find_live_model(rounds, SCHEMA)  # found beside the log
    assert live is not None and live.path == str(model_path)
    config = ev.EvaluationConfig(n_bootstrap=50, estimators=("dr",), split=0.25)
    result = ev.evaluate(rounds, [ev.make_candidate("live", {})], config, schema=SCHEMA, live=live)
    (replayed,) = result.candidates
    assert replayed.error is None and replayed.replay is not None
    # Held out: the last 100 decisions of the first epoch and the 500 of the second.
    assert replayed.replay["rounds"] == 600 and replayed.replay["from_base_model"] == 500
    # The second epoch is reproduced exactly, the added action included; the first is the
    # prior's replay, which agrees with what served only where their argmax does.
    assert 500 <= replayed.replay["reproduced"] < 600
    assert any("replayed exactly on" in w for w in replayed.warnings)
    # Row by row: every decision of the second epoch, before and after the added action.
    held = rounds.part(200, rounds.n_rounds)
    dist, _ = live_distributions({}, live, held, np.random.default_rng(0), lambda k: None)
    assert held.model_version is not None and held.logged_dist is not None
    second = np.array([v.startswith("test-LinUCB-8@") for v in held.model_version])
    assert second.sum() == 500 and held.logged_dist[second, -1].max() > 0  # new_offer served
    np.testing.assert_allclose(dist[second], held.logged_dist[second], rtol=0, atol=1e-9)


def test_live_candidates_without_the_model_file_say_how_to_give_it(tmp_path: Path) -> None:
    log, model_path, _ = _served_log(tmp_path, LinUCB(), n=200, seed=5)
    model_path.rename(tmp_path / "elsewhere.bin")  # not a .npz beside the log any more
    (tmp_path / "junk.npz").write_text("not a model")  # passed over, not an error
    np.savez(tmp_path / "arrays.npz", a=np.ones(3))
    rounds = ev.load_event_log(log, SCHEMA)
    assert ev.find_live_model(rounds, SCHEMA, [tmp_path / "missing.npz"]) is None
    config = ev.EvaluationConfig(n_bootstrap=20, estimators=("dr",))
    candidates = [ev.make_candidate("live", {}), ev.make_candidate("linucb", {})]
    result = ev.evaluate(rounds, candidates, config, schema=SCHEMA)
    failed = next(c for c in result.candidates if c.label == "live")
    assert failed.error is not None and "give it with --model" in failed.error
    assert result.candidates[-1] is failed and failed.verdict == "failed"
    # Without the live model the defaults are the frozen candidates only.
    labels = [c.label for c in ev.default_candidates()]
    assert not any(label.startswith("live") for label in labels)


def test_a_live_parameter_is_checked_against_the_live_policy(tmp_path: Path) -> None:
    log, model_path, _ = _served_log(tmp_path, LinUCB(), n=200, seed=6)
    rounds = ev.load_event_log(log, SCHEMA)
    live = ev.find_live_model(rounds, SCHEMA, [model_path])
    assert live is not None
    config = ev.EvaluationConfig(n_bootstrap=20, estimators=("dr",))
    bad = [ev.parse_candidate("live:alphas=1"), ev.parse_candidate("live:alpha=-1")]
    result = ev.evaluate(rounds, bad, config, schema=SCHEMA, live=live)
    errors = {c.label: c.error or "" for c in result.candidates}
    assert "Unknown parameter 'alphas' for policy 'linucb'" in errors["live(alphas=1)"]
    assert "alpha" in errors["live(alpha=-1)"]
    with pytest.raises(CandidateError, match="replayed"):
        ev.make_candidate("live", {}).build()
    # A log without a learn stream (a CSV) cannot replay anything, whatever the model.
    csv = tmp_path / "logged.csv"
    write_logged_csv(AppSimulator().simulate_logged(200, np.random.default_rng(0)), csv)
    (failed,) = ev.evaluate(
        ev.load_csv(csv, SCHEMA), [ev.make_candidate("live", {})], config, live=live
    ).candidates
    assert failed.error is not None and "does not give the stream" in failed.error


def _report(directory: Path) -> dict[str, Any]:
    return dict(json.loads((directory / "report.json").read_text()))


def test_after_make_runs_traffic_the_live_neighbours_are_reliable(tmp_path: Path) -> None:
    """`make run` end to end, shorter: a model trained on 20 rows served over HTTP, 2,000
    simulated users, then `banditrec evaluate` on the SQLite log (defaults, model found
    beside the log). Before the live candidates, all 16 defaults had an ESS of 9 to 51."""
    data = tmp_path / "sim.csv"
    write_logged_csv(AppSimulator().simulate_logged(2000, np.random.default_rng(0)), data)
    model = tmp_path / "demo_model.npz"
    trained = runner.invoke(
        app, ["train", "--data", str(data), "--model", str(model), "--rows", "20"]
    )
    assert trained.exit_code == 0, trained.output
    with running_server(tmp_path, "--no-access-log", model=model) as server:
        report = run_traffic(server.url, n_requests=2000, concurrency=4, seed=0, display="none")
    assert report.n_errors == 0
    out = tmp_path / "report"
    evaluated = runner.invoke(
        app,
        ["evaluate", "--log", str(tmp_path / "events.db"), "--out", str(out),
         "--n-bootstrap", "200"],
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    result = _report(out)
    # Whatever `train` makes by default (LinUCB, auto, ...): read from the model file.
    served = read_metadata(model)["policy"]
    assert result["live_policy"]["model_file"] == str(model)
    assert result["live_policy"]["policy"] == served
    assert any(line.startswith(f"Live policy: {served}(") for line in result["summary"])
    assert "reproduces the served distribution" in (out / "report.html").read_text()
    rows = {c["label"]: c for c in result["candidates"]}
    threshold = result["protocol"]["min_effective_sample_size"]
    held = result["counts"]["evaluation"]
    assert rows["live"]["replay"]["reproduced"] == held
    for label in LIVE_NEIGHBOURS:
        row = rows[label]
        assert row["error"] is None and not row["low_ess"], (label, row["error"])
        assert row["effective_sample_size"] >= threshold and row["decisions_needed"] is None
    low = [c for c in result["candidates"] if c["low_ess"]]
    assert low, "the frozen candidates stray from what was served"
    for row in low:
        assert row["label"] not in LIVE_NEIGHBOURS
        # The others say how many more decisions they need (none has an ESS of 0 here).
        assert isinstance(row["decisions_needed"], int) and row["decisions_needed"] > 0
    # Reliable rows rank first; no row is both worse than logging and tied with the best.
    assert [c["low_ess"] for c in result["candidates"]] == sorted(
        c["low_ess"] for c in result["candidates"]
    )
    best = result["candidates"][0]
    for row in result["candidates"]:
        if row["tied_with_best"] and row is not best:
            assert (row["verdict"] == "worse") == (best["verdict"] == "worse")


def test_switch_dr_alone_ranks_and_bounds_its_bias(tmp_path: Path) -> None:
    log, model_path, _ = _served_log(tmp_path, LinUCB(), n=400, seed=9)
    rounds = ev.load_event_log(log, SCHEMA)
    live = ev.find_live_model(rounds, SCHEMA, [model_path])
    config = ev.EvaluationConfig(
        n_bootstrap=50, estimators=("switch-dr",), ranking_estimator="switch-dr"
    )
    candidates = [ev.make_candidate("live", {}), ev.make_candidate("live", {"alpha": 3.0})]
    result = ev.evaluate(rounds, candidates, config, schema=SCHEMA, live=live)
    by_label = {c.label: c for c in result.candidates}
    assert all(c.error is None for c in result.candidates)
    bounds = {label: c.estimates["switch-dr"].bias_bound for label, c in by_label.items()}
    # The live policy replayed puts no mass above the cap: no bias; the wider width does.
    assert bounds["live"] == 0.0
    assert bounds["live(alpha=3)"] is not None and 0.0 < bounds["live(alpha=3)"] <= 1.0
    assert (
        json.loads(json.dumps(result.to_dict()))["candidates"][0]["estimates"]["switch-dr"][
            "bias_bound"
        ]
        is not None
    )
