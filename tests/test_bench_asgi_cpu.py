"""The in-process benchmark runs end to end and its table says what it measured."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest


def _bench() -> ModuleType:
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:  # `benchmarks` sits beside `tests`, outside the package
        sys.path.insert(0, root)
    return importlib.import_module("benchmarks.bench_asgi_cpu")


@pytest.mark.serial
def test_one_small_round_drives_both_apps_and_prints_their_ratios(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _bench().main(["--rounds", "1", "--requests", "60", "--in-flight", "4", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# CPU per decision in process")
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"ceiling", "/recommend_action", "/v1/rank"}
    assert rows["ceiling"][4] == "1.00"  # the ceiling against itself
    for row in rows.values():  # CPU per decision and rate were measured, not left blank
        assert float(row[1]) > 0 and float(row[5].replace(",", "")) > 0


@pytest.mark.serial
def test_skip_log_is_a_diagnostic_of_that_run_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from banditrec.group_commit import GroupCommitLog

    before = GroupCommitLog.log_decision
    argv = ["--rounds", "1", "--requests", "40", "--in-flight", "4", "-q", "--skip-log"]
    assert _bench().main(argv) == 0
    assert "log SKIPPED (diagnostic)" in capsys.readouterr().out.splitlines()[0]
    assert GroupCommitLog.log_decision is before  # later tests log as ever


def test_bad_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _bench().main(["--in-flight", "0"])
    assert exit_.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
