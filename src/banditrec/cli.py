"""The `banditrec` command: simulate data, train a model, serve it."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

# Each command imports what it needs when it runs: a process pays for its own command only
# (`train` needs no web framework, `simulate` no numba), so `banditrec simulate` starts in
# ~0.2 s, not the ~1 s of importing everything (`python -X importtime -m banditrec`).
if TYPE_CHECKING:
    from banditrec.config import Settings
    from banditrec.logged_data import Progress
    from banditrec.retention import Forgotten

app = typer.Typer(
    help="banditrec: a self-hosted contextual-bandit decision engine.",
    no_args_is_help=True,
    add_completion=False,
)
# No emoji codes: a Redis prefix such as "shop:loop:store:" must print as it is.
console = Console(stderr=True, emoji=False)

DEFAULT_DATA = Path("data/bandit_simulated.csv")
DEFAULT_MODEL = Path("data/linucb_model.npz")
SchemaOption = Annotated[
    Path | None, typer.Option(help="Feature schema file (TOML/JSON); default: the seed's.")
]
LogOption = Annotated[
    Path | None,
    typer.Option(
        help="SQLite event log (default: BANDITREC_STORE_URL, else BANDITREC_DB_PATH); with "
        "--loop, the server's log, beside which the loop's is."
    ),
]
LoopOption = Annotated[
    str | None,
    typer.Option(
        help="A named loop (docs/loops.md): its own log (loops/NAME/events.db beside the "
        "server's log, or its Redis keys), archive and schema, from the loop catalog."
    ),
]


def _base_settings(log: Path | None, archive: Path | None) -> Settings:
    """The server's settings, with --log and --archive standing for BANDITREC_DB_PATH (a
    SQLite file: no store URL then) and BANDITREC_ARCHIVE_DIR."""
    from banditrec.config import Settings

    update: dict[str, Any] = {}
    if log is not None:
        update.update(db_path=log, store_url=None)
    if archive is not None:
        update["archive_dir"] = archive
    return Settings().model_copy(update=update)


def _loop_settings(
    name: str, log: Path | None, archive: Path | None, schema: Path | None
) -> Settings:
    """The settings of the named loop `name`, derived as the server derives them: its log,
    archive and model beside the server's (`_base_settings`), its schema its definition's.

    Reads the loop catalog read-only (`banditrec.loops.offline`); raises `LoopError` for a
    loop the catalog does not hold, or when --schema is given too.
    """
    from banditrec.errors import LoopError
    from banditrec.loops.offline import offline_loop_settings

    if schema is not None:
        raise LoopError("Give --loop or --schema, not both: a loop's schema is its definition's.")
    return offline_loop_settings(_base_settings(log, archive), name)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"banditrec {package_version('banditrec')}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """banditrec: a self-hosted contextual-bandit decision engine."""
    _complete_help(ctx)


def _complete_help(ctx: typer.Context) -> None:
    """Fill in the help text that needs heavy imports, for the command about to run only.

    The group's callback runs before the command parses its options (and `--help`), so
    `serve --help` lists every setting and `train --help` every policy, while `simulate`
    imports neither pydantic-settings nor numba.
    """
    command = ctx.command.get_command(ctx, ctx.invoked_subcommand or "")  # type: ignore[attr-defined]
    if command is None:
        return
    if ctx.invoked_subcommand == "serve":
        command.epilog = _settings_epilog()
    elif ctx.invoked_subcommand == "train":
        from banditrec.policies import POLICIES

        for param in command.params:
            if param.name == "policy":
                param.help = f"Policy: {', '.join(POLICIES)}."


#: Inputs at least this long show a progress bar (a few seconds of work or more).
LONG_INPUT_ROWS = 200_000
LONG_INPUT_BYTES = 20_000_000


@contextmanager
def _progress(show: bool) -> Iterator[Progress | None]:
    """A progress callback drawing bars on standard error, or None when `show` is false.

    The bars are transient: once done they give way to the command's one-line summary.
    """
    if not show:
        yield None
        return
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=1)


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

    with _progress(rows >= LONG_INPUT_ROWS) as progress:
        try:
            write_logged(batches(), out, progress, total_rows=rows)
        except OSError as exc:
            raise _fail(f"Cannot write {out}: {exc.strerror or exc}.") from None
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
        with _progress(long_input) as progress:
            fitted = train_from_file(
                data, model, feature_schema, fitted_policy, first_rows=rows, progress=progress
            )
    except (LoggedDataError, SchemaError, ModelFileError, ValueError) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:  # e.g. a model directory that cannot be written
        raise _fail(f"Cannot write {model}: {exc.strerror or exc}.") from None
    console.print(
        f"Trained on {fitted.n_updates:,} rounds in {time.perf_counter() - start:.1f} s; "
        f"wrote {model} ({policy}, version {fitted.version})."
    )


class LogLevel(StrEnum):
    """uvicorn's log levels (also the `banditrec` logger's)."""

    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"
    trace = "trace"


def _settings_epilog() -> str:
    """Every BANDITREC_* setting with its default and meaning, from `Settings` itself."""
    from banditrec.config import Settings

    lines = ["Settings (environment variables; the options above set some of them):"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "unset" if default is None else json.dumps(default, default=str)
        about = f": {field.description}" if field.description else ""
        lines.append(f"BANDITREC_{name.upper()} (default {shown}){about}")
    # Typer's help joins single line breaks; a blank line keeps one setting per line.
    return "\n\n".join(lines)


@app.command()  # its epilog, every setting, is filled in by `_complete_help`
def serve(
    model: Annotated[
        Path | None,
        typer.Option(
            help="Model file to serve; it must exist. Default: BANDITREC_MODEL_PATH or "
            f"{DEFAULT_MODEL}, served from the policy's prior (with a warning) when absent."
        ),
    ] = None,
    db: Annotated[
        Path | None,
        typer.Option(help="SQLite event log (BANDITREC_DB_PATH; default data/events.db)."),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            help="Shared event log of replicas on several hosts, redis://host:port/db "
            "(BANDITREC_STORE_URL); default: the SQLite file --db."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=1, max=65535, envvar="BANDITREC_PORT", help="Port to listen on.")
    ] = 8020,
    schema: SchemaOption = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    log_level: Annotated[
        LogLevel, typer.Option(case_sensitive=False, help="Log level of uvicorn and banditrec.")
    ] = LogLevel.info,
    access_log: Annotated[bool, typer.Option(help="Log every request (uvicorn).")] = True,
) -> None:
    """Serve the model over HTTP (the seed's API plus docs at /docs)."""
    import uvicorn
    from pydantic import ValidationError

    from banditrec._startup import import_numba_numpy_support
    from banditrec.config import Settings
    from banditrec.features import SchemaError
    from banditrec.server import LimitedHttpToolsProtocol, port_problem
    from banditrec.snapshot import ModelFileError, load_model

    # Before any kernel runs (the model check below is the first): with one worker the app
    # runs in this process, and its start-up skips scipy.linalg too (see banditrec._startup).
    import_numba_numpy_support()
    # Settings travel through the environment so that every worker process sees them.
    if model is not None:
        if not model.is_file():
            raise _fail(
                f"The model file {model} does not exist. Train one with `banditrec train "
                f"--model {model}`, or leave out --model to serve from the prior."
            )
        os.environ["BANDITREC_MODEL_PATH"] = str(model)
    if db is not None:
        os.environ["BANDITREC_DB_PATH"] = str(db)
    if store is not None:
        os.environ["BANDITREC_STORE_URL"] = store
    if schema is not None:
        os.environ["BANDITREC_SCHEMA_PATH"] = str(schema)
    try:
        # Fail here, in one line, rather than with a traceback in every worker.
        settings = Settings()
        if settings.model_path.exists():
            load_model(settings.model_path, settings.feature_schema)
        elif settings.model_path != DEFAULT_MODEL:  # set in the environment, and mistyped?
            raise _fail(
                f"The model file {settings.model_path} (BANDITREC_MODEL_PATH) does not exist. "
                "Check the path, or unset the variable to serve from the prior."
            )
    except ValidationError as exc:
        problems = "; ".join(
            f"BANDITREC_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}"
            if e["loc"]
            else e["msg"]
            for e in exc.errors()
        )
        raise _fail(f"Invalid settings: {problems}.") from None
    except (SchemaError, ModelFileError) as exc:
        raise _fail(str(exc)) from None
    _raise_open_file_limit(settings.max_connections)
    problem = port_problem(host, port)
    if problem is not None:
        raise _fail(
            f"{problem} Stop the server that holds it (`fuser -k {port}/tcp` or "
            f"`lsof -i :{port}` finds it) or pick another port with --port."
        )
    metrics_dir = None
    if workers > 1:
        # Worker processes add up their metrics through files in one fresh directory, which
        # prometheus-client must see in the environment before it is first imported.
        metrics_dir = new_metrics_dir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    try:
        uvicorn.run(
            "banditrec.api:create_serving_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            http=LimitedHttpToolsProtocol,
            log_level=log_level.value,
            log_config=_log_config(log_level),
            access_log=access_log,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


#: Descriptors a server process needs besides its connections: the event log, snapshots,
#: metrics files, pipes, the listening socket.
OWN_FILES = 256


def _raise_open_file_limit(max_connections: int) -> None:
    """Raise this process's soft limit on open files (the workers inherit it) so that
    `max_connections` fit: the cap, not the kernel's EMFILE, must be what refuses them.

    The hard limit is the ceiling; when it is too low the operator is told.
    """
    import resource

    needed = max_connections + OWN_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        console.print(
            f"[yellow]warning:[/yellow] The open-file limit is {target}, too low for "
            f"BANDITREC_MAX_CONNECTIONS={max_connections} plus the server's own files "
            f"({OWN_FILES}): raise it (ulimit -n {needed}) or lower the setting."
        )


def _log_config(level: LogLevel) -> dict[str, Any]:
    """uvicorn's logging configuration, plus a handler for the `banditrec` logger (its
    start-up and learner lines), in uvicorn's format, on standard error."""
    import uvicorn.config

    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["banditrec"] = {
        "handlers": ["default"],
        "level": uvicorn.config.LOG_LEVELS[level.value],
        "propagate": False,
    }
    return config


METRICS_PREFIX = "banditrec-metrics-"


def new_metrics_dir() -> Path:
    """A fresh directory for the workers' metrics files, named with this process's id.

    Directories left by a server that was killed (`kill -9` runs no clean-up) are removed
    first: their owner's process id no longer exists.
    """
    tmp = Path(tempfile.gettempdir())
    for path in tmp.glob(f"{METRICS_PREFIX}*"):
        owner = path.name.removeprefix(METRICS_PREFIX).partition("-")[0]
        if owner.isdigit() and not _alive(int(owner)) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-", dir=tmp))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@app.command()
def traffic(
    url: Annotated[str, typer.Option(help="Base URL of a running banditrec server.")] = (
        "http://127.0.0.1:8020"
    ),
    requests: Annotated[
        int | None,
        typer.Option("--requests", "-n", min=1, help="Stop after this many users."),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=0, help="Stop after this many seconds (default 60).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Users in flight at once.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the simulated users and rewards.")] = 0,
    api_key: Annotated[
        str | None, typer.Option(envvar="BANDITREC_API_KEY", help="Bearer API key.")
    ] = None,
    reward_delay: Annotated[
        float, typer.Option(min=0, help="Seconds before each reward is reported.")
    ] = 0.0,
    window: Annotated[int, typer.Option(min=1, help="Rounds in the 'last' window.")] = 2000,
    wait: Annotated[float, typer.Option(min=0, help="Seconds to wait for the server.")] = 30.0,
    rate: Annotated[
        float | None,
        typer.Option(min=0.001, help="Users per second (default: as fast as answered)."),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(help="Model file to score the same users with, shown beside the server's."),
    ] = None,
    server_pid: Annotated[
        int | None, typer.Option(help="Stop waiting when this process (the server) exits.")
    ] = None,
) -> None:
    """Drive a running server with simulated users and show it learning, live."""
    from banditrec.snapshot import ModelFileError
    from banditrec.traffic import TrafficError, run_traffic

    if requests is None and duration is None:
        duration = 60.0
    try:
        report = run_traffic(
            url,
            n_requests=requests,
            duration=duration,
            concurrency=concurrency,
            seed=seed,
            api_key=api_key,
            reward_delay=reward_delay,
            window=window,
            console=console,
            wait_for_server=wait,
            rate=rate,
            reference=reference,
            server_pid=server_pid,
        )
    except (TrafficError, ModelFileError) as exc:
        raise _fail(str(exc)) from None
    first, last = report.first, report.last
    summary = f"{report.n_rounds:,} rounds in {report.elapsed:.0f} s, {report.n_errors} errors"
    if report.n_rounds:
        summary += (
            f"; first {first.n:,}: {first.pct_of_oracle:.1%} of the oracle, "
            f"last {last.n:,}: {last.pct_of_oracle:.1%} (uniform random: "
            f"{last.uniform / last.oracle:.1%}"
        )
        if reference is not None:
            summary += f"; {reference}: {last.reference / last.oracle:.1%}"
        summary += ")"
    console.print(summary + ".")


@app.command()
def evaluate(
    log: Annotated[
        Path | None, typer.Option(help="SQLite event log to evaluate on (default data/events.db).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Or a logged-data CSV in the simulation format.")
    ] = None,
    schema: SchemaOption = None,
    protocol: Annotated[
        str, typer.Option(help="split (learn on the first part, evaluate the rest) or replay.")
    ] = "split",
    split: Annotated[
        float, typer.Option(help="Fraction of the log, in log order, candidates learn from.")
    ] = 0.7,
    estimator: Annotated[
        str, typer.Option(help="Estimator that ranks: dr, snips, ips, dm or replay.")
    ] = "dr",
    estimators: Annotated[
        str | None, typer.Option(help="Comma-separated estimators to report (default: all).")
    ] = None,
    policy: Annotated[
        str | None, typer.Option(help="Policy to evaluate; the --grid options apply to it.")
    ] = None,
    grid: Annotated[
        list[str] | None, typer.Option(help="NAME=V1,V2,... (repeatable; every combination).")
    ] = None,
    candidate: Annotated[
        list[str] | None, typer.Option(help="POLICY or POLICY:NAME=V,NAME=V (repeatable).")
    ] = None,
    candidates: Annotated[
        Path | None, typer.Option(help="TOML file of [[candidate]] tables.")
    ] = None,
    n_bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples per interval.")] = 1000,
    min_ess: Annotated[
        float, typer.Option(help="Effective sample size below which an estimate is flagged.")
    ] = 100.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Report directory (default reports/evaluate-<time>/).")
    ] = None,
    archive: Annotated[
        Path | None,
        typer.Option(help="Parquet archive directory (retention, export), read before the log."),
    ] = None,
    model: Annotated[
        list[Path] | None,
        typer.Option(
            help="Model file that served the log (repeatable; default: BANDITREC_MODEL_PATH "
            "and the .npz files beside the log): live candidates are replayed from it."
        ),
    ] = None,
    loop: LoopOption = None,
) -> None:
    """Estimate the logging policy's value and candidates' (CIs), rank them, write a report.

    Default candidates: the live policy and its neighbours replayed along the log (when the
    model that served it is found), a LinUCB grid of α and ε, every other registered policy.
    With --loop, the named loop's log (and its archive under --archive's loops/NAME).
    """
    from rich.console import Console as StdoutConsole
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from banditrec import evaluation as ev
    from banditrec.config import Settings
    from banditrec.errors import LoopError
    from banditrec.features import SchemaError, load_default_schema, load_schema
    from banditrec.loops.offline import loop_of
    from banditrec.report import ranking_table, write_report
    from banditrec.store import StoreError

    loop = loop_of(loop)
    model_path = None
    try:
        if loop is not None:
            if data is not None:
                raise ev.EvaluationError("--loop reads a loop's event log; give it without --data.")
            looped = _loop_settings(loop, log, archive, schema)
            feature_schema, model_path = looped.feature_schema, looped.model_path
            archive = None if archive is None else looped.archive_dir
            if looped.store_url:
                if archive is None:
                    raise ev.EvaluationError(
                        f"The loop {loop!r} logs to Redis, and evaluate reads SQLite logs and "
                        f"archives: export it first (banditrec export --loop {loop} --out DIR), "
                        f"then run evaluate --loop {loop} --archive DIR."
                    )
                log = None
            else:
                log = looped.db_path
        else:
            feature_schema = load_default_schema() if schema is None else load_schema(schema)
        if log is not None and data is not None:
            raise ev.EvaluationError("Give either --log or --data, not both.")
        if archive is not None and data is not None:
            raise ev.EvaluationError("Give --archive with --log (or alone), not with --data.")
        if loop is not None:
            pass  # the loop's log (and archive) were found above
        elif log is None and data is None and archive is not None:
            log = Settings().db_path if Settings().db_path.exists() else None
        elif log is None and data is None:
            log = Settings().db_path
            if not log.exists() and DEFAULT_DATA.exists():
                log, data = None, DEFAULT_DATA
            elif not log.exists():
                raise ev.EvaluationError(
                    f"Give --log or --data: neither {log} nor {DEFAULT_DATA} exists."
                )
        chosen: list[ev.Candidate] = []
        if grid:
            chosen += ev.grid_candidates(policy or "linucb", ev.parse_grid(grid))
        elif policy is not None:
            chosen.append(ev.make_candidate(policy, {}))
        chosen += [ev.parse_candidate(text) for text in candidate or ()]
        if candidates is not None:
            chosen += ev.load_candidates_file(candidates)
        names = None
        if estimators is not None:
            names = tuple(n.strip() for n in estimators.split(",") if n.strip())
        config = ev.EvaluationConfig(
            protocol=protocol,
            split=split,
            ranking_estimator=estimator,
            estimators=names,
            n_bootstrap=n_bootstrap,
            min_effective_sample_size=min_ess,
            seed=seed,
        )
        config.check()
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console) as bar:
            tasks: dict[str, TaskID] = {}

            def progress(stage: str, done: int, total: int, detail: str) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(
                    tasks[stage], completed=done, total=total, description=f"{stage}: {detail}"
                )

            if log is not None or archive is not None:
                rounds = ev.load_event_log(log, feature_schema, progress, archive=archive)
            else:
                assert data is not None
                rounds = ev.load_csv(data, feature_schema)
            model_files = [*(model or ()), model_path or Settings().model_path]
            result = ev.evaluate(
                rounds,
                ev.unique(chosen) or None,
                config,
                progress,
                schema=feature_schema,
                live=ev.find_live_model(rounds, feature_schema, model_files),
            )
    except (ev.EvaluationError, SchemaError, LoopError, StoreError) as exc:
        raise _fail(str(exc)) from None
    if out is None:
        out = Path("reports") / f"evaluate-{time.strftime('%Y%m%dT%H%M%S')}"
    files = write_report(result, out)
    StdoutConsole().print(ranking_table(result))
    for line in result.summary():
        console.print(line)
    console.print(f"Report: {files.html} (JSON {files.json}, {len(files.figures)} figures).")


def _time_option(text: str | None, option: str) -> float | None:
    """An ISO 8601 time as Unix seconds (a time without a zone is UTC)."""
    if text is None:
        return None
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _fail(f"{option} {text!r} is not an ISO 8601 time, e.g. 2026-01-31T12:00Z.") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@app.command()
def export(
    out: Annotated[Path, typer.Option(help="Directory to write the Parquet files to.")],
    since: Annotated[
        str | None, typer.Option(help="Only decisions made at or after this ISO 8601 time (UTC).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Only decisions made before this ISO 8601 time (UTC).")
    ] = None,
    log: LogOption = None,
    archive: Annotated[
        Path | None, typer.Option(help="Also export this archive directory's decisions.")
    ] = None,
    schema: SchemaOption = None,
    loop: LoopOption = None,
) -> None:
    """Write a range of the event log (and of an archive) to Parquet files, on demand.

    The files have the archive's layout (docs/retention.md), so `evaluate --archive` and any
    Parquet reader read them. A SQLite log is read read-only while a server may write to it.
    With --loop, the named loop's log (and its archive under --archive's loops/NAME) go to
    OUT/loops/NAME, where `evaluate --loop NAME --archive OUT` reads them.
    """
    from banditrec.archive import Archive, ArchiveError, export_log
    from banditrec.config import Settings
    from banditrec.errors import LoopError
    from banditrec.features import SchemaError, load_default_schema, load_schema
    from banditrec.loops.offline import loop_of
    from banditrec.store import StoreError
    from banditrec.store.factory import describe_store, open_store
    from banditrec.store.sqlite_reader import ReadOnlyEventLog

    start, end = _time_option(since, "--since"), _time_option(until, "--until")
    settings = Settings()
    loop = loop_of(loop)
    try:
        if loop is not None:
            settings = _loop_settings(loop, log, archive, schema)
            feature_schema, out = settings.feature_schema, out / "loops" / loop
            log = None if settings.store_url else settings.db_path
            archive = None if archive is None else settings.archive_dir
        else:
            feature_schema = load_default_schema() if schema is None else load_schema(schema)
        code = feature_schema.encoding_hash
        written: list[Any] = []
        if log is None and settings.store_url:
            where = describe_store(settings.store_url, settings.db_path)
            where += f" (keys {settings.store_prefix}:*)"
            store = open_store(
                settings.store_url,
                db_path=settings.db_path,
                encoding_hash=code,
                prefix=settings.store_prefix,
            )
            try:
                written.append(export_log(store, out, start, end, encoding_hash=code))
            finally:
                store.close()
        else:
            path = log or settings.db_path
            where = str(path)
            with ReadOnlyEventLog(path, code) as live:
                written.append(export_log(live, out, start, end, encoding_hash=code))
        if archive is not None:
            where += f" and {archive}"
            stored = Archive(archive, code)
            written.append(export_log(stored, out, start, end, encoding_hash=code))
    except (StoreError, ArchiveError, SchemaError, LoopError) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"Cannot write {out}: {exc.strerror or exc}.") from None
    decisions, rewards = sum(w.decisions for w in written), sum(w.rewards for w in written)
    files = sum(len(w.files) for w in written)
    console.print(
        f"Exported {decisions:,} decisions and {rewards:,} rewards of {where} to {out} "
        f"({files} Parquet files)."
    )


@app.command("forget-user")
def forget_user(
    user_id: Annotated[str, typer.Argument(help="The user id decisions were logged with.")],
    log: LogOption = None,
    archive: Annotated[
        Path | None, typer.Option(help="Archive directory (default BANDITREC_ARCHIVE_DIR).")
    ] = None,
    schema: SchemaOption = None,
    loop: Annotated[
        str | None,
        typer.Option(help="Only in this named loop (default: the default loop and every loop)."),
    ] = None,
) -> None:
    """Delete every decision of a user, and their rewards, from the live log and the archive.

    The same as DELETE /v1/admin/users/{user_id}: in the default loop and every named loop
    (their logs and archives beside the default's), or with --loop in that loop only. A
    server may be running meanwhile.
    """
    from banditrec.archive import ArchiveError
    from banditrec.errors import LoopError
    from banditrec.features import SchemaError, load_default_schema, load_schema
    from banditrec.loops.definition import loop_settings
    from banditrec.loops.offline import catalog_records, loop_of
    from banditrec.store import StoreError

    loop = loop_of(loop)
    try:
        if loop is not None:
            looped = _loop_settings(loop, log, archive, schema)
            where, forgotten = _forget_in(looped, looped.feature_schema.encoding_hash, user_id)
            console.print(
                f"Removed {forgotten.live:,} decisions of user {user_id!r} from the loop "
                f"{loop!r}'s live log {where} and {forgotten.archive:,} from its archive "
                f"{looped.archive_dir}."
            )
            return
        base = _base_settings(log, archive)
        feature_schema = load_default_schema() if schema is None else load_schema(schema)
        where, forgotten = _forget_in(base, feature_schema.encoding_hash, user_id)
        loops = {record.name: loop_settings(base, record) for record in catalog_records(base)}
        in_loops = [
            _forget_in(each, each.feature_schema.encoding_hash, user_id, must_exist=False)[1]
            for each in loops.values()
        ]
    except (StoreError, ArchiveError, SchemaError, LoopError) as exc:
        raise _fail(str(exc)) from None
    summary = (
        f"Removed {forgotten.live:,} decisions of user {user_id!r} from the live log {where} "
        f"and {forgotten.archive:,} from the archive {base.archive_dir}"
    )
    if loops:  # as the server's route: every named loop too
        names = ", ".join(map(repr, loops))
        summary += (
            f"; from the loops {names}: {sum(f.live for f in in_loops):,} from their live logs "
            f"and {sum(f.archive for f in in_loops):,} from their archives"
        )
    console.print(summary + ".")


def _forget_in(
    settings: Settings, encoding_hash: str, user_id: str, *, must_exist: bool = True
) -> tuple[str, Forgotten]:
    """Forget `user_id` in the log and archive `settings` name: (where, `Forgotten`)."""
    from banditrec.retention import Forgotten
    from banditrec.retention import forget_user as forget_everywhere
    from banditrec.store import StoreError
    from banditrec.store.factory import describe_store, open_store

    url, path = settings.store_url, settings.db_path
    where = describe_store(url, path) + (f" (keys {settings.store_prefix}:*)" if url else "")
    if not url and not path.exists():
        if must_exist:
            raise StoreError(f"The event log {path} does not exist.")
        return where, Forgotten(0, 0)  # a loop that never logged has nothing to forget
    store = open_store(url, db_path=path, encoding_hash=encoding_hash, prefix=settings.store_prefix)
    try:
        forgotten = forget_everywhere(
            store, settings.archive_dir, user_id, encoding_hash=encoding_hash
        )
    finally:
        store.close()
    return where, forgotten


#: Commands whose process ends the moment they return, without the interpreter's clean-up:
#: tearing down numba's and pyarrow's modules costs ~0.2 s of CPU, a fifth of `train` on a
#: million rows. Their files are closed (and renamed into place) before they return.
QUICK_EXIT_COMMANDS = frozenset({"simulate", "train"})


def main() -> None:
    """The `banditrec` console script (and ``python -m banditrec``)."""
    if len(sys.argv) < 2 or sys.argv[1] not in QUICK_EXIT_COMMANDS:
        app()
        return
    try:
        app()
        code: int | str | None = 0
    except SystemExit as exc:
        code = exc.code
    if isinstance(code, str):  # sys.exit("message") prints the message, exits 1
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
