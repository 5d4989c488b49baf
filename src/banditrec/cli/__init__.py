"""The `banditrec` command: simulate data, train a model, serve it.

This module holds the command group (`app`), what its commands share and the console script
(`main`); the commands are in `data` (simulate, train), `serving` (serve, traffic) and `logs`
(evaluate, export, forget-user).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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


def base_settings(log: Path | None, archive: Path | None) -> Settings:
    """The server's settings, with --log and --archive standing for BANDITREC_DB_PATH (a
    SQLite file: no store URL then) and BANDITREC_ARCHIVE_DIR."""
    from banditrec.config import Settings

    update: dict[str, Any] = {}
    if log is not None:
        update.update(db_path=log, store_url=None)
    if archive is not None:
        update["archive_dir"] = archive
    return Settings().model_copy(update=update)


def named_loop_settings(
    name: str, log: Path | None, archive: Path | None, schema: Path | None
) -> Settings:
    """The settings of the named loop `name`, derived as the server derives them: its log,
    archive and model beside the server's (`base_settings`), its schema its definition's.

    Reads the loop catalog read-only (`banditrec.loops.offline`); raises `LoopError` for a
    loop the catalog does not hold, or when --schema is given too.
    """
    from banditrec.errors import LoopError
    from banditrec.loops.offline import offline_loop_settings

    if schema is not None:
        raise LoopError("Give --loop or --schema, not both: a loop's schema is its definition's.")
    return offline_loop_settings(base_settings(log, archive), name)


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
        from banditrec.cli.serving import settings_epilog

        command.epilog = settings_epilog()
    elif ctx.invoked_subcommand == "train":
        from banditrec.policies import POLICIES

        for param in command.params:
            if param.name == "policy":
                param.help = f"Policy: {', '.join(POLICIES)}."


#: Inputs at least this long show a progress bar (a few seconds of work or more).
LONG_INPUT_ROWS = 200_000
LONG_INPUT_BYTES = 20_000_000


@contextmanager
def progress_bars(show: bool) -> Iterator[Progress | None]:
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


def fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=1)


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


# The commands register themselves on `app`, in the order `--help` lists them.
# isort: off
from banditrec.cli import data  # noqa: E402, F401  (simulate, train)
from banditrec.cli import serving  # noqa: E402, F401  (serve, traffic)
from banditrec.cli import logs  # noqa: E402, F401  (evaluate, export, forget-user)
# isort: on
