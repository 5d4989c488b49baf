"""The `banditrec` command: simulate data, train a model, serve it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console

from banditrec.config import Settings
from banditrec.exploration import EpsilonGreedy
from banditrec.features import SchemaError, load_default_schema, load_schema
from banditrec.logged_data import LoggedDataError, write_logged_csv
from banditrec.policies import LinUCB
from banditrec.sim import AppSimulator
from banditrec.snapshot import ModelFileError
from banditrec.training import train_from_csv

app = typer.Typer(
    help="banditrec: a self-hosted contextual-bandit decision engine.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)

DEFAULT_DATA = Path("data/bandit_simulated.csv")
DEFAULT_MODEL = Path("data/linucb_model.npz")
SchemaOption = Annotated[
    Path | None, typer.Option(help="Feature schema file (TOML/JSON); default: the seed's.")
]


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=1)


@app.command()
def simulate(
    rows: Annotated[int, typer.Option(min=1, help="Number of logged rounds.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[Path, typer.Option(help="CSV to write.")] = DEFAULT_DATA,
) -> None:
    """Simulate the seed's app logged by a uniform random policy, and write it as CSV."""
    start = time.perf_counter()
    logged = AppSimulator().simulate_logged(rows, np.random.default_rng(seed))
    write_logged_csv(logged, out)
    mu = np.stack([logged[f"expected_reward_{a}"] for a in AppSimulator().actions], axis=1)
    console.print(
        f"Wrote {rows:,} rows to {out} in {time.perf_counter() - start:.1f} s "
        f"(logged reward {logged['reward'].mean():.4f}, oracle {mu.max(axis=1).mean():.4f})."
    )


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Logged-data CSV.")] = DEFAULT_DATA,
    model: Annotated[Path, typer.Option(help="Model file to write.")] = DEFAULT_MODEL,
    schema: SchemaOption = None,
    alpha: Annotated[float, typer.Option(min=0, help="LinUCB exploration width α.")] = 1.0,
    ridge: Annotated[float, typer.Option(min=0, help="Ridge λ (> 0).")] = 1.0,
    epsilon: Annotated[float, typer.Option(min=0, max=1, help="ε-greedy floor.")] = 0.05,
) -> None:
    """Train LinUCB on a logged-data CSV and write the model file atomically."""
    start = time.perf_counter()
    try:
        feature_schema = load_default_schema() if schema is None else load_schema(schema)
        policy = LinUCB(alpha=alpha, ridge=ridge, exploration=EpsilonGreedy(epsilon))
        fitted = train_from_csv(data, model, feature_schema, policy)
    except (LoggedDataError, SchemaError, ModelFileError, ValueError) as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"Trained on {fitted.n_updates:,} rounds in {time.perf_counter() - start:.1f} s; "
        f"wrote {model} (version {fitted.version})."
    )


@app.command()
def serve(
    model: Annotated[Path, typer.Option(help="Model file to serve.")] = DEFAULT_MODEL,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8020,
    schema: SchemaOption = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the model over HTTP (the seed's API plus docs at /docs)."""
    import uvicorn

    # Settings travel through the environment so that every worker process sees them.
    os.environ["BANDITREC_MODEL_PATH"] = str(model)
    if schema is not None:
        os.environ["BANDITREC_SCHEMA_PATH"] = str(schema)
    try:
        Settings().feature_schema  # noqa: B018 - fail here, with a clear message, not in a worker
    except SchemaError as exc:
        raise _fail(str(exc)) from None
    uvicorn.run(
        "banditrec.api:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )


def main() -> None:
    app()
