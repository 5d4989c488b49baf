"""The evaluation report: ``report.json``, PNG figures, a self-contained ``report.html``.

Figures are drawn with matplotlib's Agg canvas on `Figure` objects (never pyplot), so nothing
needs a screen and no global state is touched. The HTML embeds every PNG as a base64 data URI:
it is one file that can be mailed or attached to a ticket.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.table import Table

from banditrec.evaluation import RANKING_TEXT, CandidateResult, EvaluationResult

__all__ = ["ReportFiles", "ranking_table", "render_figures", "render_html", "write_report"]

#: Candidates drawn in the per-candidate figures (the table lists them all).
MAX_PLOTTED = 40
#: Candidates whose running estimate is drawn.
MAX_CURVES = 6
_COLORS = {
    "dr": "#1f77b4",
    "snips": "#2ca02c",
    "ips": "#ff7f0e",
    "dm": "#9467bd",
    "replay": "#8c564b",
}


@dataclass(frozen=True)
class ReportFiles:
    """Where the report was written."""

    directory: Path
    json: Path
    html: Path
    figures: tuple[Path, ...]


def write_report(result: EvaluationResult, directory: str | Path) -> ReportFiles:
    """Write ``report.json``, ``report.html`` and the PNG figures into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    figures = render_figures(result)
    paths = []
    for name, png in figures.items():
        paths.append(directory / name)
        paths[-1].write_bytes(png)
    data = result.to_dict()
    data["figures"] = list(figures)
    json_path, html_path = directory / "report.json", directory / "report.html"
    json_path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    html_path.write_text(render_html(result, figures), encoding="utf-8")
    return ReportFiles(directory, json_path, html_path, tuple(paths))


# ---------------------------------------------------------------------------------- figures


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _ok(result: EvaluationResult) -> list[CandidateResult]:
    return [c for c in result.candidates if c.error is None][:MAX_PLOTTED]


def render_figures(result: EvaluationResult) -> dict[str, bytes]:
    """File name -> PNG bytes: estimates with intervals, running value, ESS, and truth."""
    figures = {
        "estimates.png": _estimates_figure(result),
        "running.png": _running_figure(result),
        "ess.png": _ess_figure(result),
    }
    if result.has_truth:
        figures["truth.png"] = _truth_figure(result)
    return figures


def _estimates_figure(result: EvaluationResult) -> bytes:
    rows = _ok(result)
    fig = Figure(figsize=(9.0, 1.6 + 0.42 * (len(rows) + 1)))
    ax = fig.add_subplot()
    log = result.logging
    ax.axvspan(log.ci_low, log.ci_high, color="0.85", label="logging policy (95% CI)")
    ax.axvline(log.value, color="0.4", lw=1)
    names = result.estimators
    step = 0.7 / max(len(names), 1)
    for j, name in enumerate(names):
        ys, xs, lo, hi = [], [], [], []
        for i, c in enumerate(rows):
            e = c.estimates[name]
            ys.append(i + (j - (len(names) - 1) / 2) * step)
            xs.append(e.value)
            lo.append(max(e.value - e.ci_low, 0.0) if math.isfinite(e.ci_low) else 0.0)
            hi.append(max(e.ci_high - e.value, 0.0) if math.isfinite(e.ci_high) else 0.0)
        ax.errorbar(
            xs,
            ys,
            xerr=[lo, hi],
            fmt="o",
            ms=4,
            capsize=2,
            lw=1,
            color=_COLORS.get(name),
            label=name.upper(),
        )
    if result.has_truth:
        truth = [(i, c.true_value) for i, c in enumerate(rows) if c.true_value is not None]
        ax.scatter(
            [t for _, t in truth],
            [i for i, _ in truth],
            marker="x",
            color="black",
            s=50,
            zorder=5,
            label="true value",
        )
    ax.set_yticks(range(len(rows)), [f"{c.rank}. {c.label}" for c in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("estimated value (mean reward per decision)")
    ax.set_title("Estimated value of each candidate, 95% bootstrap intervals")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def _running_figure(result: EvaluationResult) -> bytes:
    fig = Figure(figsize=(9.0, 4.5))
    ax = fig.add_subplot()
    x = result.curve_rounds
    if x is not None and result.logging_curve is not None:
        ax.plot(x, result.logging_curve, color="0.3", ls="--", lw=1.5, label="logging policy")
        curves = [result.logging_curve]
        for c in _ok(result)[:MAX_CURVES]:
            if c.curve is not None:
                ax.plot(x, c.curve, lw=1.2, label=f"{c.rank}. {c.label}")
                curves.append(c.curve)
        # The first rounds swing wildly (few terms averaged): scale the axis to the rest.
        settled = np.concatenate([curve[len(curve) // 10 :] for curve in curves])
        settled = settled[np.isfinite(settled)]
        if settled.size:
            low, high = float(settled.min()), float(settled.max())
            pad = 0.15 * (high - low) + 0.005
            ax.set_ylim(low - pad, high + pad)
        # The switches of what was served, where they fall among the held-out rounds.
        for switch in result.timeline:
            place = switch.get("round")
            if place is not None and x.size and x[0] <= place <= x[-1]:
                ax.axvline(place, color="0.5", lw=0.8, ls=":")
                label = f"{switch['kind']} {switch['target']}"
                ax.annotate(label, (place, 1.0), xycoords=("data", "axes fraction"),
                            rotation=90, va="top", ha="right", fontsize=7)  # fmt: skip
    est = result.config.ranking_estimator.upper()
    ax.ticklabel_format(axis="x", style="plain", useOffset=False)
    ax.set_xlabel("log position (evaluation rounds)")
    ax.set_ylabel(f"running {est} estimate")
    ax.set_title(f"Running {est} estimate over the held-out rounds (top candidates)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _ess_figure(result: EvaluationResult) -> bytes:
    rows = _ok(result)
    fig = Figure(figsize=(9.0, 1.4 + 0.32 * max(len(rows), 1)))
    ax = fig.add_subplot()
    ess = [c.effective_sample_size or 0.0 for c in rows]
    colors = ["#d62728" if c.low_ess else "#1f77b4" for c in rows]
    ax.barh(range(len(rows)), ess, color=colors)
    ax.axvline(
        result.config.min_effective_sample_size,
        color="#d62728",
        ls="--",
        lw=1,
        label=f"minimum ({result.config.min_effective_sample_size:g})",
    )
    ax.axvline(result.counts["evaluation"], color="0.4", lw=1, label="held-out rounds")
    ax.set_yticks(range(len(rows)), [f"{c.rank}. {c.label}" for c in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("effective sample size of the importance weights")
    ax.set_title("Effective sample size (red: too small to trust)")
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def _truth_figure(result: EvaluationResult) -> bytes:
    fig = Figure(figsize=(5.5, 5.0))
    ax = fig.add_subplot()
    pairs = [(c, c.true_value) for c in _ok(result) if c.true_value is not None]
    values = [t for _, t in pairs]
    for name in result.estimators:
        es = [c.estimates[name] for c, _ in pairs]
        ax.errorbar(
            values,
            [e.value for e in es],
            yerr=[[e.value - e.ci_low for e in es], [e.ci_high - e.value for e in es]],
            fmt="o",
            ms=4,
            capsize=2,
            lw=0.8,
            color=_COLORS.get(name),
            label=name.upper(),
        )
    if values:
        lo, hi = min(values), max(values)
        pad = 0.1 * (hi - lo) + 0.01
        ax.plot(
            [lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", lw=1, label="estimate = truth"
        )
    ax.set_xlabel("true value on the held-out rounds")
    ax.set_ylabel("estimate (95% CI)")
    ax.set_title("Estimates against the true values (simulation)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


# ------------------------------------------------------------------------------------ tables


def _ci(value: float, low: float, high: float, signed: bool = False) -> str:
    if not math.isfinite(value):
        return "—"
    f = "{:+.4f}" if signed else "{:.4f}"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f.format(value)
    return f"{f.format(value)} [{f.format(low)}, {f.format(high)}]"


def _flags(c: CandidateResult) -> str:
    flags = []
    if c.low_ess:
        needed = c.decisions_needed
        flags.append(
            "low ESS" if needed is None else f"low ESS (≈{needed:,} more decisions needed)"
        )
    if c.tied_with_best and c.rank != 1:
        flags.append("tied with best")
    if c.ci_overlaps_logging and c.verdict != "no significant difference":
        flags.append("CIs overlap logging")
    if c.unsupported_mass is not None and c.unsupported_mass > 1e-3:
        flags.append("unsupported actions")
    if c.error is not None:
        flags.append("failed")
    return ", ".join(flags)


def ranking_table(result: EvaluationResult) -> Table:
    """The ranked candidates as a rich table, for the terminal."""
    est = result.config.ranking_estimator
    table = Table(title=f"Candidates ranked by {est.upper()} (95% bootstrap CI)")
    table.add_column("#", justify="right")
    table.add_column("candidate", overflow="fold", min_width=12)
    table.add_column(est.upper(), justify="right", no_wrap=True)
    table.add_column("vs logging", justify="right", no_wrap=True)
    table.add_column("ESS", justify="right", no_wrap=True)
    if result.has_truth:
        table.add_column("true", justify="right", no_wrap=True)
    table.add_column("notes", overflow="fold", min_width=10)
    log = result.logging
    row = ["", "logging policy", _ci(log.value, log.ci_low, log.ci_high), "", f"{log.n_rounds:,}"]
    if result.has_truth:
        row.append(f"{result.logging_true_value:.4f}")
    table.add_row(*row, "baseline", style="dim")
    for c in result.candidates:
        if c.error is not None:
            cells = [str(c.rank), c.label, "—", "—", "—"]
            notes = f"failed: {c.error}"
        else:
            e = c.estimates[est]
            lift = "" if c.lift is None else f"{c.lift.value:+.4f}"
            verdict = {"better": "better", "worse": "worse"}.get(c.verdict, "n.s.")
            ess = c.effective_sample_size or 0.0
            cells = [
                str(c.rank),
                c.label,
                _ci(e.value, e.ci_low, e.ci_high),
                f"{lift} {verdict}",
                f"{ess:,.0f}",
            ]
            notes = _flags(c)
        if result.has_truth:
            cells.append("—" if c.true_value is None else f"{c.true_value:.4f}")
        table.add_row(*cells, notes, style="bold" if c.rank == 1 and c.error is None else None)
    return table


# -------------------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
tr.best td { font-weight: 600; background: #eef6ee; }
tr.log td { color: #555; background: #fafafa; }
tr.low td { color: #a33; } .summary li { margin: 0.3rem 0; } img { max-width: 100%; }
.note { color: #555; font-size: 0.85rem; }
"""


def render_html(result: EvaluationResult, figures: dict[str, bytes]) -> str:
    """The self-contained report page (figures as base64 data URIs)."""
    e = html.escape
    est = result.config.ranking_estimator
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>banditrec evaluation</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>banditrec evaluation</h1>",
        f"<p class='note'>Source: {e(result.source.get('kind', ''))} "
        f"<code>{e(str(result.source.get('path', '')))}</code>; "
        f"{result.seconds:.1f} s.</p>",
        "<h2>Conclusions</h2><ul class='summary'>",
        *(f"<li>{e(line)}</li>" for line in result.summary()),
        "</ul>",
        "<h2>Candidates</h2>",
        f"<p class='note'>Ranked by {e(est.upper())} — {e(RANKING_TEXT[est])} "
        "Candidates with a low effective sample size are ranked after the others. "
        "<i>vs logging</i> is the paired difference with the logging policy on the same "
        "rounds; <i>n.s.</i> means its interval contains 0 (no significant difference).</p>",
        _html_table(result),
    ]
    titles = {
        "estimates.png": "Estimates with 95% intervals",
        "running.png": "Running estimate over the held-out rounds",
        "ess.png": "Effective sample size",
        "truth.png": "Estimates against the truth",
    }
    for name, png in figures.items():
        data = base64.b64encode(png).decode("ascii")
        parts += [
            f"<h2>{e(titles.get(name, name))}</h2>",
            f"<img alt='{e(name)}' src='data:image/png;base64,{data}'>",
        ]
    if result.timeline:
        parts += [
            "<h2>Timeline</h2><p class='note'>Every switch of what was served (promotions, "
            "rollbacks, apprentice mode), from the lifecycle's records.</p><table><tr>"
            "<th>learn event</th><th class='l'>time</th><th class='l'>switch</th>"
            "<th>round</th><th class='l'>reason</th></tr>",
            *(
                f"<tr><td>{s['seq']}</td><td class='l'>{e(s['time'])}</td><td class='l'>"
                f"{e(s['kind'])} {e(s['target'])}</td><td>{_blank(s['round'])}</td>"
                f"<td class='l'>{e(s['reason'])}</td></tr>"
                for s in result.timeline
            ),
            "</table>",
        ]
    parts += ["<h2>Protocol</h2>", f"<p>{e(result.protocol_text())}</p>", _counts_html(result)]
    notes = list(result.warnings)
    notes += [f"{c.label}: {w}" for c in result.candidates for w in dict.fromkeys(c.warnings)]
    notes += [f"{c.label} failed: {c.error}" for c in result.candidates if c.error]
    if notes:
        parts += ["<h2>Warnings and notes</h2><ul>", *(f"<li>{e(n)}</li>" for n in notes), "</ul>"]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _blank(value: object) -> str:
    return "" if value is None else str(value)


def _html_table(result: EvaluationResult) -> str:
    e = html.escape
    names = result.estimators
    head = ["#", "candidate", *(n.upper() for n in names), "vs logging", "ESS"]
    head += ["true value"] if result.has_truth else []
    head += ["notes"]
    cls = {"candidate": "l", "notes": "l"}
    rows = ["<table><tr>" + "".join(f"<th class='{cls.get(h, '')}'>{e(h)}</th>" for h in head)]
    log = result.logging
    cells = ["", "<td class='l'>logging policy (mean reward)</td>"]
    cells += [f"<td>{e(_ci(log.value, log.ci_low, log.ci_high))}</td>"] * len(names)
    cells += ["<td></td>", f"<td>{log.n_rounds:,}</td>"]
    if result.has_truth:
        cells.append(f"<td>{result.logging_true_value:.4f}</td>")
    cells.append("<td class='l'>baseline</td>")
    rows.append("<tr class='log'><td></td>" + "".join(cells[1:]) + "</tr>")
    for c in result.candidates:
        style = "best" if c.rank == 1 and c.error is None else "low" if c.low_ess else ""
        cells = [f"<td>{c.rank}</td>", f"<td class='l'>{e(c.label)}</td>"]
        for n in names:
            x = c.estimates.get(n)
            cells.append(f"<td>{'—' if x is None else e(_ci(x.value, x.ci_low, x.ci_high))}</td>")
        if c.lift is not None:
            lift = _ci(c.lift.value, c.lift.ci_low, c.lift.ci_high, True)
            verdict = {"better": "better", "worse": "worse"}.get(c.verdict, "n.s.")
            cells.append(f"<td>{e(lift)} {verdict}</td>")
        else:
            cells.append("<td>—</td>")
        ess = c.effective_sample_size
        cells.append(f"<td>{'—' if ess is None else f'{ess:,.0f}'}</td>")
        if result.has_truth:
            cells.append(f"<td>{'—' if c.true_value is None else f'{c.true_value:.4f}'}</td>")
        note = _flags(c) if c.error is None else f"failed: {c.error}"
        cells.append(f"<td class='l'>{e(note)}</td>")
        rows.append(f"<tr class='{style}'>" + "".join(cells) + "</tr>")
    return "\n".join([*rows, "</table>"])


def _counts_html(result: EvaluationResult) -> str:
    c = result.counts
    items = [
        ("decisions in the log", c["decisions"]),
        ("used (reward known)", c["used"]),
        ("skipped: reward still pending", c["pending"]),
        ("skipped: never activated", c["never_activated"]),
        ("learning part (candidates train on it)", c["train"]),
        ("held-out part (evaluated)", c["evaluation"]),
    ]
    rows = "".join(f"<tr><td class='l'>{html.escape(k)}</td><td>{v:,}</td></tr>" for k, v in items)
    times = "".join(
        f"<tr><td class='l'>{html.escape(k.replace('_', ' '))}</td><td>{html.escape(v)}</td></tr>"
        for k, v in result.time_range.items()
    )
    cfg = result.config
    extra = (
        f"<p class='note'>Actions: {html.escape(', '.join(result.actions))}. "
        f"Estimators: {', '.join(n.upper() for n in result.estimators)}; "
        f"{cfg.n_bootstrap:,} bootstrap resamples; minimum ESS {cfg.min_effective_sample_size:g};"
        f" seed {cfg.seed}; logging policy uniform random: "
        f"{'yes' if result.logging_uniform else 'no'}.</p>"
    )
    return f"<table>{rows}{times}</table>{extra}"
