"""`banditrec simulate` and `banditrec train`: logged data made and learned from, offline."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from banditrec.cli import (
    DEFAULT_DATA,
    DEFAULT_MODEL,
    LONG_INPUT_BYTES,
    LONG_INPUT_ROWS,
    SchemaOption,
    app,
    console,
    fail,
    progress_bars,
)

# As everywhere in the command: heavy modules are imported by the command that runs.
if TYPE_CHECKING:
    pass


@app.command()
def simulate(
    rows: Annotated[int, typer.Option(min=1, help="Number of logged rounds.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[
        Path, typer.Option(help="File to write: CSV, or Parquet if it ends in .parquet.")
    ] = DEFAULT_DATA,
) -> None:
    """Simulate the seed's app logged by a uniform random policy, and write it (CSV/Parquet).

    Rounds are drawn and written in batches, so memory stays flat however many there are.
    """
    import numpy as np

    from banditrec.logged_data import write_logged
    from banditrec.sim import AppSimulator

    start = time.perf_counter()
    sim = AppSimulator()
    totals = np.zeros(2)  # the logged rewards, the oracle's expected rewards

    def batches() -> Iterator[dict[str, Any]]:
        for batch in sim.logged_batches(rows, np.random.default_rng(seed)):
            mu = np.stack([batch[f"expected_reward_{a}"] for a in sim.actions], axis=1)
            totals[:] += batch["reward"].sum(), mu.max(axis=1).sum()
            yield batch

    with progress_bars(rows >= LONG_INPUT_ROWS) as progress:
        try:
            write_logged(batches(), out, progress, total_rows=rows)
        except OSError as exc:
            raise fail(f"Cannot write {out}: {exc.strerror or exc}.") from None
    console.print(
        f"Wrote {rows:,} rows to {out} in {time.perf_counter() - start:.1f} s "
        f"(logged reward {totals[0] / rows:.4f}, oracle {totals[1] / rows:.4f})."
    )


def _parse_params(items: list[str] | None, option: str) -> dict[str, Any]:
    """``key=value`` pairs; a value is read as JSON when it parses (1, 0.5, true, [..])."""
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} takes key=value, got {item!r}.")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


@app.command()
def train(
    data: Annotated[
        Path, typer.Option(help="Logged data: CSV, or Parquet (.parquet), streamed.")
    ] = DEFAULT_DATA,
    model: Annotated[Path, typer.Option(help="Model file to write.")] = DEFAULT_MODEL,
    schema: SchemaOption = None,
    rows: Annotated[
        int | None,
        typer.Option(min=1, help="Learn only the file's first ROWS rows (all are checked)."),
    ] = None,
    policy: Annotated[str, typer.Option(help="Policy (`train --help` lists them).")] = "auto",
    param: Annotated[
        list[str] | None,
        typer.Option(help="Policy parameter key=value (repeat), e.g. gamma=0.999."),
    ] = None,
    exploration: Annotated[
        str | None,
        typer.Option(
            help="Exploration rule: epsilon_greedy, softmax, igw (default: the policy's)."
        ),
    ] = None,
    exploration_param: Annotated[
        list[str] | None,
        typer.Option(help="Exploration parameter key=value (repeat), e.g. temperature=0.05."),
    ] = None,
    alpha: Annotated[
        float | None, typer.Option(min=0, help="Exploration width α; default: the policy's.")
    ] = None,
    ridge: Annotated[
        float | None, typer.Option(min=0, help="Ridge λ (> 0); default: the policy's.")
    ] = None,
    epsilon: Annotated[
        float | None, typer.Option(min=0, max=1, help="Exploration floor ε; default: the policy's.")
    ] = None,
) -> None:
    """Train a policy (default auto, the self-tuning LinUCB) on logged data and write the
    model file atomically.

    Rows are learned in file order (which matters only with a forgetting factor gamma < 1).
    --alpha, --ridge and --epsilon are the defaults of the parameters of those names.
    """
    from banditrec._startup import import_numba_numpy_support
    from banditrec.features import SchemaError, load_default_schema, load_schema
    from banditrec.logged_data import LoggedDataError
    from banditrec.policies import build_policy
    from banditrec.snapshot import ModelFileError
    from banditrec.training import train_from_file

    start = time.perf_counter()
    import_numba_numpy_support()  # the fit's kernels need no scipy: 0.3 s saved
    try:
        feature_schema = load_default_schema() if schema is None else load_schema(schema)
        fitted_policy = build_policy(
            policy,
            _parse_params(param, "--param"),
            exploration=exploration,
            exploration_params=_parse_params(exploration_param, "--exploration-param"),
            schema=feature_schema,
            defaults={k: v for k, v in {"alpha": alpha, "ridge": ridge}.items() if v is not None},
            exploration_defaults={} if epsilon is None else {"epsilon": epsilon},
        )
        long_input = data.is_file() and data.stat().st_size >= LONG_INPUT_BYTES
        with progress_bars(long_input) as progress:
            fitted = train_from_file(
                data, model, feature_schema, fitted_policy, first_rows=rows, progress=progress
            )
    except (LoggedDataError, SchemaError, ModelFileError, ValueError) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:  # e.g. a model directory that cannot be written
        raise fail(f"Cannot write {model}: {exc.strerror or exc}.") from None
    console.print(
        f"Trained on {fitted.n_updates:,} rounds in {time.perf_counter() - start:.1f} s; "
        f"wrote {model} ({policy}, version {fitted.version})."
    )
