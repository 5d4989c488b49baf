"""The learning-quality benchmark runs end to end on a tiny setting (a few seconds)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def bq() -> ModuleType:
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:  # `benchmarks` sits beside `tests`, outside the package
        sys.path.insert(0, root)
    return importlib.import_module("benchmarks.bench_quality")


def test_data_sets_are_standardized_with_a_bias_and_one_hot_rewards(bq: ModuleType) -> None:
    stream = bq.load_dataset("wine")
    features = stream.X[:, :-1]
    np.testing.assert_allclose(features.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(features.std(axis=0), 1.0, atol=1e-12)
    assert np.all(stream.X[:, -1] == 1.0)
    assert np.all(stream.R.sum(axis=1) == 1.0)
    assert stream.n_actions == 3
    assert stream.vw_shared[0].startswith("shared |s f0:")


def test_an_oracle_has_no_loss_and_no_regret(bq: ModuleType) -> None:
    class Oracle:
        def __init__(self, stream: object) -> None:
            self.mu = stream.mu  # type: ignore[attr-defined]

        def act(self, i: int, rng: np.random.Generator) -> tuple[int, float]:
            return int(self.mu[i].argmax()), 1.0

        def learn(self, i: int, action: int, reward: float, probability: float) -> None:
            pass

    stream = bq.simulator_stream(500, seed=3)
    result = bq.online_pass(Oracle(stream), stream, np.random.default_rng(0))
    assert result.regret[-1] == 0.0
    iris = bq.load_dataset("iris")
    assert bq.online_pass(Oracle(iris), iris, np.random.default_rng(0)).mean_reward == 1.0


def test_every_contender_sees_the_same_stream_and_is_reproducible(bq: ModuleType) -> None:
    contenders = bq.banditrec_contenders(lambda msg: None) + bq.peer_contenders(lambda m: None)
    names = ["iris"]
    first = bq.run_datasets(contenders, names, 2, {}, 11, lambda msg: None)
    again = bq.run_datasets(contenders, names, 2, {}, 11, lambda msg: None)
    for c in contenders:
        assert first[(c.key, "iris")].values == again[(c.key, "iris")].values
        assert all(0.0 <= v <= 1.0 for v in first[(c.key, "iris")].values)


def test_the_command_prints_both_tables_and_the_target(
    bq: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--datasets", "iris", "--shuffles", "2", "--sim-rounds", "300", "--sim-seeds", "1"]
    argv += ["--variant", "alpha=0.3,epsilon=0.01", "--markdown", "-q"]
    assert bq.main(argv) == 0
    out = capsys.readouterr().out
    assert "Progressive validation loss" in out
    assert "cumulative regret" in out
    assert f"| banditrec {bq.DEFAULT_POLICY} (default) |" in out
    # alpha reaches the default policy as the server's setting does (auto: its widest width)
    assert f"| proposed: {bq.DEFAULT_POLICY} alpha=0.3, epsilon=0.01 |" in out
    assert "overall:" in out or "Target not checked" in out
    assert f"Seeds: base seed {bq.REPORTING_SEED}: reporting seeds" in out


@pytest.mark.parametrize(
    ("delta", "se", "verdict"),
    [
        (-0.003, 0.009, "tie"),  # iris, current defaults vs MABWiser: within 1 s.e.
        (-0.061, 0.009, "better"),
        (-0.017, 0.009, "tie"),  # below 0 by less than 2 s.e.: not a win
        (+16.4, 12.7, "tie"),
        (+168.0, 11.0, "worse"),
        (-1.0, float("nan"), "tie"),  # one pair: no standard error, nothing significant
    ],
)
def test_a_verdict_needs_a_paired_difference_beyond_two_standard_errors(
    bq: ModuleType, delta: float, se: float, verdict: str
) -> None:
    assert bq.Comparison(delta, se, 10).verdict == verdict


def test_a_tie_fails_the_target(bq: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    ours = bq.Contender("linucb", "banditrec linucb (default)", "banditrec", None, "")
    peer = bq.Contender("mabwiser", "MABWiser LinUCB", "mabwiser", None, "")
    clear = {("linucb", "wine"): bq.Cell([0.10, 0.12, 0.11, 0.13])}
    clear[("mabwiser", "wine")] = bq.Cell([0.20, 0.23, 0.21, 0.22])
    assert bq.check_targets(ours, [ours, peer], ["wine"], clear, None)
    noisy = {("linucb", "iris"): bq.Cell([0.10, 0.30, 0.12, 0.28])}
    noisy[("mabwiser", "iris")] = bq.Cell([0.20, 0.20, 0.21, 0.20])
    assert not bq.check_targets(ours, [ours, peer], ["iris"], noisy, None)
    out = capsys.readouterr().out
    assert "NOT met: a tie (within 2 s.e.)" in out
    assert "overall: NOT met (0 significantly better, 1 ties, 0 significantly worse)" in out


def test_reports_run_on_seeds_that_did_not_choose_the_defaults(bq: ModuleType) -> None:
    assert "reporting seeds" in bq.seeds_note(bq.REPORTING_SEED, 10, 5, True)
    for seed in bq.CHOOSING_SEEDS:
        assert "USED TO CHOOSE" in bq.seeds_note(seed, 10, 5, True)
    # The simulator streams of base 2020 are seeds 2020-2024: 2024 chose the defaults.
    assert "USED TO CHOOSE" in bq.seeds_note(2020, 10, 5, True)
    assert "reporting seeds" in bq.seeds_note(2020, 10, 5, False)
    assert bq.REPORTING_SEED not in bq.CHOOSING_SEEDS


@pytest.mark.parametrize(
    ("name", "n", "d", "k"),
    [("diabetes", 442, 11, 3), ("blobs", 1500, 9, 5), ("many_classes", 2000, 21, 12),
     ("moons", 1000, 3, 2), ("quantiles", 1500, 7, 4)],
)  # fmt: skip
def test_the_extra_data_sets_are_bundled_and_fixed(
    bq: ModuleType, name: str, n: int, d: int, k: int
) -> None:
    stream = bq.load_dataset(name)
    assert (stream.n, stream.n_features, stream.n_actions) == (n, d, k)
    np.testing.assert_allclose(stream.X[:, :-1].mean(axis=0), 0.0, atol=1e-12)
    assert np.all(stream.R.sum(axis=1) == 1.0) and stream.R.sum(axis=0).min() > 0
    np.testing.assert_array_equal(bq.load_dataset(name).X, stream.X)  # seeded: the same


def _cells(bq: ModuleType, values: dict[str, list[float]]) -> dict[tuple[str, str], object]:
    return {(key, "set"): bq.Cell(list(v)) for key, v in values.items()}


def test_the_tuning_target_needs_no_significant_loss_and_the_first_mean_rank(
    bq: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    def contender(key: str) -> object:
        return bq.Contender(key, key, "banditrec", lambda stream, seed: None, "")

    subject, other = contender("auto"), contender("fixed")
    noise = [0.01, -0.01, 0.02, -0.02, 0.0]
    fixed = [0.30 + e for e in noise]
    # Within noise of the best (Δ = +0.004 ± 0.0034 s.e.): not worse, but not first either.
    tied = _cells(bq, {"auto": [0.324, 0.284, 0.324, 0.28, 0.308], "fixed": fixed})
    assert not bq.check_tuning(subject, [subject, other], ["set"], tied)
    assert "not worse" in capsys.readouterr().out
    # Clearly better: met.
    better = _cells(bq, {"auto": [v - 0.05 for v in fixed], "fixed": fixed})
    assert bq.check_tuning(subject, [subject, other], ["set"], better)
    # Significantly worse (Δ = +0.02, tiny s.e.): not met, whatever the rank elsewhere.
    worse = _cells(bq, {"auto": [0.3201, 0.2899, 0.3402, 0.2798, 0.32], "fixed": fixed})
    assert not bq.check_tuning(subject, [subject, other], ["set"], worse)
    assert "WORSE" in capsys.readouterr().out


def test_a_variant_is_compared_with_the_subject_paired(
    bq: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    subject = bq.Contender("auto", "banditrec auto", "banditrec", lambda stream, seed: None, "")
    variant = bq.Contender("v", "proposed: auto ridge=1", "proposed", lambda s, seed: None, "")
    base = [0.30, 0.28, 0.33, 0.27, 0.31]  # the shuffles spread by ±0.03

    def shifted(deltas: list[float]) -> list[float]:
        return [b + d for b, d in zip(base, deltas, strict=True)]

    # Worse by 0.02 on every shuffle (±0.0001): paired, far beyond two s.e., although the
    # shuffles' own spread is larger than the gap.
    worse = _cells(bq, {"auto": base, "v": shifted([0.0201, 0.0199, 0.02, 0.0201, 0.0199])})
    bq.compare_variants(subject, [subject, variant], ["set"], worse)
    out = capsys.readouterr().out
    assert "Variant proposed: auto ridge=1 vs banditrec auto" in out
    assert "set" in out and ": worse (paired Δ +0.0200" in out
    # Differences that average zero: a tie.
    tied = _cells(bq, {"auto": base, "v": shifted([0.01, -0.01, 0.0, 0.0, 0.0])})
    bq.compare_variants(subject, [subject, variant], ["set"], tied)
    assert ": tie (paired Δ +0.0000" in capsys.readouterr().out


def test_ranks_share_ties(bq: ModuleType) -> None:
    assert bq._ranks({"a": 0.1, "b": 0.2, "c": 0.1}) == {"a": 1.5, "b": 3.0, "c": 1.5}


def test_the_tuning_command_prints_its_table_and_verdict(
    bq: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bq.main(["--tuning", "--datasets", "iris", "--shuffles", "2", "--markdown", "-q"]) == 0
    out = capsys.readouterr().out
    assert "mean ± standard error over shuffles" in out
    for label in ("| banditrec auto |", "| LinUCB α = 0.1 |", "| LinUCB α = 1 |",
                  "| greedy linear |"):  # fmt: skip
        assert label in out
    assert "Tuning target: banditrec auto" in out and "mean rank:" in out
    assert "cumulative regret" not in out  # no simulator
