"""The evaluation report: JSON that parses strictly, PNG files, one self-contained HTML page."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from banditrec import evaluation as ev
from banditrec.features import load_default_schema
from banditrec.policies import POLICIES, LinUCB
from banditrec.report import ranking_table, render_figures, write_report
from banditrec.sim import AppSimulator

SCHEMA = load_default_schema()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rounds(n: int, truth: bool = True) -> ev.LoggedRounds:
    logged = AppSimulator().simulate_logged(n, np.random.default_rng(0))
    mu = np.stack([logged[f"expected_reward_{a}"] for a in SCHEMA.actions], axis=1)
    return ev.LoggedRounds(
        actions=SCHEMA.actions,
        X=SCHEMA.vectorize_many(logged),
        action=np.array([SCHEMA.actions.index(a) for a in logged["action"]]),
        propensity=logged["propensity"],
        reward=logged["reward"],
        eligible=np.ones((n, SCHEMA.n_actions), dtype=bool),
        source={"kind": "csv", "path": "<simulated>"},
        counts={"decisions": n + 3, "pending": 2, "never_activated": 1, "used": n},
        expected_rewards=mu if truth else None,
    )


class Broken(LinUCB):
    name = "broken"

    def distribution(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no luck")


@pytest.fixture(scope="module")
def result() -> ev.EvaluationResult:
    POLICIES["broken"] = Broken
    try:
        candidates = [
            ev.make_candidate("linucb", {"alpha": 0.5}),
            ev.make_candidate("linucb", {"epsilon": 1.0}, label="<b>uniform</b> & co"),
            ev.make_candidate("broken", {}),
        ]
        config = ev.EvaluationConfig(n_bootstrap=50, min_effective_sample_size=30)
        return ev.evaluate(rounds(800), candidates, config)
    finally:
        del POLICIES["broken"]


def strict_json(path: Path) -> dict[str, Any]:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return dict(json.loads(path.read_text(), parse_constant=refuse))


def test_the_report_has_json_html_and_png_files(
    result: ev.EvaluationResult, tmp_path: Path
) -> None:
    files = write_report(result, tmp_path / "nested" / "report")
    assert {p.name for p in files.figures} == {"estimates.png", "running.png", "ess.png",
                                               "truth.png"}  # fmt: skip
    for png in files.figures:
        assert png.read_bytes().startswith(PNG_MAGIC)
    data = strict_json(files.json)
    assert data["figures"] == [p.name for p in files.figures]
    assert [c["rank"] for c in data["candidates"]] == [1, 2, 3]
    assert data["candidates"][-1]["error"] == "RuntimeError: no luck"
    assert data["candidates"][-1]["estimates"] == {}
    assert data["best"] == "linucb(alpha=0.5)"
    assert data["counts"]["pending"] == 2 and data["protocol"]["name"] == "split"
    for key in ("value", "ci_low", "ci_high", "effective_sample_size", "warnings"):
        assert key in data["candidates"][0]["estimates"]["dr"]


def test_the_html_is_self_contained_and_escaped(
    result: ev.EvaluationResult, tmp_path: Path
) -> None:
    page = write_report(result, tmp_path).html.read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 4
    assert all(base64.b64decode(image).startswith(PNG_MAGIC) for image in images)
    assert not re.search(r"(src|href)=['\"](?!data:)", page)  # nothing fetched from elsewhere
    assert "&lt;b&gt;uniform&lt;/b&gt; &amp; co" in page and "<b>uniform</b>" not in page
    assert "failed: RuntimeError: no luck" in page
    assert "skipped: reward still pending" in page
    assert "Best: linucb(alpha=0.5)" in page
    assert result.protocol_text().split(".")[0] in page


def test_without_truth_there_is_no_truth_figure_or_column() -> None:
    plain = ev.evaluate(
        rounds(300, truth=False),
        [ev.make_candidate("linucb", {})],
        ev.EvaluationConfig(n_bootstrap=20, estimators=("dr",)),
    )
    assert set(render_figures(plain)) == {"estimates.png", "running.png", "ess.png"}
    assert plain.to_dict()["candidates"][0]["true_value"] is None
    console = Console(record=True, width=160)
    console.print(ranking_table(plain))
    assert "true" not in console.export_text().split("\n")[2]


def test_the_terminal_table_ranks_and_flags(result: ev.EvaluationResult) -> None:
    console = Console(record=True, width=200)
    console.print(ranking_table(result))
    text = console.export_text()
    lines = [line for line in text.splitlines() if "│" in line]
    assert "logging policy" in lines[0]
    assert "1 │ linucb(alpha=0.5)" in lines[1] and "better" in lines[1]
    assert "<b>uniform</b> & co" in lines[2] and "n.s." in lines[2]
    assert "failed: RuntimeError: no luck" in lines[3]


def test_a_low_ess_row_says_how_many_more_decisions_it_needs() -> None:
    from banditrec.report import _flags

    row = ev.CandidateResult(ev.make_candidate("linucb", {}), low_ess=True, decisions_needed=1234)
    assert _flags(row) == "low ESS (≈1,234 more decisions needed)"
    row.decisions_needed = None  # no overlap: more of the same log will not help
    assert _flags(row) == "low ESS"
