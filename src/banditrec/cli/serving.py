"""`banditrec serve` and `banditrec traffic`: the server, and simulated users against it."""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from banditrec.cli import (
    DEFAULT_MODEL,
    SchemaOption,
    app,
    console,
    fail,
)

# As everywhere in the command: heavy modules are imported by the command that runs.
if TYPE_CHECKING:
    pass


class LogLevel(StrEnum):
    """uvicorn's log levels (also the `banditrec` logger's)."""

    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"
    trace = "trace"


def settings_epilog() -> str:
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
            raise fail(
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
            raise fail(
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
        raise fail(f"Invalid settings: {problems}.") from None
    except (SchemaError, ModelFileError) as exc:
        raise fail(str(exc)) from None
    _raise_open_file_limit(settings.max_connections)
    problem = port_problem(host, port)
    if problem is not None:
        raise fail(
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
        raise fail(str(exc)) from None
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
