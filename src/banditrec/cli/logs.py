"""`banditrec evaluate`, `export` and `forget-user`: what the event log holds, read offline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from banditrec.cli import (
    DEFAULT_DATA,
    LogOption,
    LoopOption,
    SchemaOption,
    app,
    base_settings,
    console,
    fail,
    named_loop_settings,
)

# As everywhere in the command: heavy modules are imported by the command that runs.
if TYPE_CHECKING:
    from banditrec.config import Settings
    from banditrec.retention import Forgotten


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
            looped = named_loop_settings(loop, log, archive, schema)
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
        raise fail(str(exc)) from None
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
        raise fail(f"{option} {text!r} is not an ISO 8601 time, e.g. 2026-01-31T12:00Z.") from None
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
            settings = named_loop_settings(loop, log, archive, schema)
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
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"Cannot write {out}: {exc.strerror or exc}.") from None
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
            looped = named_loop_settings(loop, log, archive, schema)
            where, forgotten = _forget_in(looped, looped.feature_schema.encoding_hash, user_id)
            console.print(
                f"Removed {forgotten.live:,} decisions of user {user_id!r} from the loop "
                f"{loop!r}'s live log {where} and {forgotten.archive:,} from its archive "
                f"{looped.archive_dir}."
            )
            return
        base = base_settings(log, archive)
        feature_schema = load_default_schema() if schema is None else load_schema(schema)
        where, forgotten = _forget_in(base, feature_schema.encoding_hash, user_id)
        loops = {record.name: loop_settings(base, record) for record in catalog_records(base)}
        in_loops = [
            _forget_in(each, each.feature_schema.encoding_hash, user_id, must_exist=False)[1]
            for each in loops.values()
        ]
    except (StoreError, ArchiveError, SchemaError, LoopError) as exc:
        raise fail(str(exc)) from None
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
