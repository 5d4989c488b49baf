"""`LoopRegistry`: the named loops one server process runs beside its default loop.

Each `Loop` is a whole decision loop of its own (`banditrec.runtime.LoopRuntime`: event log,
engine, lifecycle, learner) with its own settings and keys, and a `state` that the route
work functions (`banditrec.api.routes`) receive in place of ``app.state``: the same work
answers ``/v1/rank`` and ``/v1/loops/{loop}/rank``. The loops share the process, the
metrics (labelled ``loop``) and the store's server or directory.

The definitions live in the catalog (`banditrec.loops.catalog`), in the default loop's event
store: a loop created through one worker is opened by every other one when a request names
it, or within `WATCH_SECONDS` by the watcher, which also closes loops deleted elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import tomllib
from contextlib import suppress
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import State

from banditrec.auth import Role
from banditrec.config import Settings
from banditrec.decisions import DecisionWork
from banditrec.errors import LoopError, LoopNotFoundError
from banditrec.features import SchemaError
from banditrec.loops.catalog import LoopCatalog, PutOutcome, catalog_for
from banditrec.loops.definition import LoopRecord, LoopSpec, check_loop_name, loop_settings
from banditrec.metrics import Metrics
from banditrec.runtime import LoopRuntime, open_runtime
from banditrec.snapshot import ModelFileError
from banditrec.store import EventStore, StoreError, StoreUnavailableError

__all__ = ["WATCH_SECONDS", "Loop", "LoopRegistry", "read_loops_file"]

logger = logging.getLogger("banditrec")

#: How often a worker looks for loops created or deleted through another one.
WATCH_SECONDS = 1.0


class Loop:
    """One named loop: its record, settings, runtime and the state its routes work on.

    Parameters
    ----------
    record
        Its definition, as kept in the catalog.
    settings
        Its complete settings (`banditrec.loops.loop_settings`).
    runtime
        Its opened event log, engine, lifecycle and learner.
    metrics
        Its view of the process's metrics (labelled with its name).
    """

    def __init__(
        self, record: LoopRecord, settings: Settings, runtime: LoopRuntime, metrics: Metrics
    ) -> None:
        self.name = record.name
        self.record = record
        self.settings = settings
        self.runtime = runtime
        #: The loop's keys, SHA-256 digest -> role (`banditrec.api.loop_routes` checks them).
        self.key_roles: dict[bytes, Role] = record.key_roles()
        #: Route declarations bound to this loop's schema, filled on first use by the routes.
        self.bound_routes: dict[tuple[str, str], Any] = {}
        state = State()
        state.settings, state.metrics, state.loop = settings, metrics, self.name
        state.describe_loop = self.describe
        state.engine, state.learner = runtime.engine, runtime.learner
        state.lifecycle, state.model_loaded = runtime.lifecycle, runtime.model_loaded
        state.decisions = DecisionWork(
            metrics, settings.alpha or 0.0, settings.reward_window_seconds
        )
        self.state = state

    def describe(self) -> dict[str, Any]:
        """The loop as ``GET /v1/loops/{loop}`` shows it (its keys by role, never the keys)."""
        engine = self.runtime.engine
        keys = {role.value: 0 for role in Role}
        for role in self.key_roles.values():
            keys[role.value] += 1
        return {
            "name": self.name,
            "created_at": self.record.created_at,
            "schema": self.record.schema,
            "settings": self.record.settings,
            "api_keys": keys,
            "actions": list(engine.actions),
            "policy": engine.policy.name,
            "model_version": engine.model_version,
            "n_updates": int(engine.policy.n_updates_.sum()),
            "schema_hash": engine.schema.hash,
        }


class LoopRegistry:
    """The named loops of one server process.

    Parameters
    ----------
    settings
        The server's settings: the loops file, and the per-process knobs every loop shares.
    metrics
        The process's metrics; each loop counts into `Metrics.for_loop`.
    store
        The default loop's event store, which keeps the catalog.
    serving
        A server process (not a test's app).
    """

    def __init__(
        self, settings: Settings, metrics: Metrics, store: EventStore, *, serving: bool = False
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.serving = serving
        self.catalog: LoopCatalog = catalog_for(store)
        self.loops: dict[str, Loop] = {}
        self._lock = asyncio.Lock()
        self._started = False
        self._watcher: asyncio.Task[None] | None = None

    # -- start-up and shutdown ---------------------------------------------------------------

    def open(self) -> None:
        """Put the loops file's loops in the catalog, then open every loop it holds.

        Raises
        ------
        LoopError
            For a loops file that cannot be read or defines a loop that cannot serve.
        StoreError, ModelFileError, SchemaError
            For a loop whose log or model cannot serve its definition.
        """
        try:
            if self.settings.loops_file is not None:
                now = time.time()
                for name, spec in read_loops_file(self.settings.loops_file).items():
                    record = LoopRecord.from_spec(name, spec, now)
                    # The file is the operator's word: it replaces what the catalog held.
                    self.catalog.put(record, replace=True)
            for record in self.catalog.records():
                self._open(record)
        except BaseException:
            for loop in self.loops.values():
                loop.runtime.engine.close()
                loop.runtime.lifecycle.records.close()
                loop.runtime.store.close()
            self.catalog.close()
            raise

    def start(self) -> None:
        """Start every loop's learner and the watcher (on the running event loop)."""
        self._started = True
        for loop in self.loops.values():
            loop.runtime.start()
        self._watcher = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        """Stop the watcher and every loop, and close the catalog."""
        if self._watcher is not None:
            self._watcher.cancel()
            with suppress(asyncio.CancelledError):
                await self._watcher
        for loop in list(self.loops.values()):
            await loop.runtime.stop()
        self.loops.clear()
        self.catalog.close()

    # -- look-up, creation, deletion ---------------------------------------------------------

    async def get(self, name: str) -> Loop:
        """The open loop `name`; one created through another worker is opened now.

        Raises
        ------
        LoopNotFoundError
            No loop of that name is in the catalog.
        """
        loop = self.loops.get(name)
        if loop is not None:
            return loop
        async with self._lock:
            loop = self.loops.get(name)
            if loop is None:
                record = self.catalog.get(name)
                if record is None:
                    raise LoopNotFoundError(name)
                loop = self._start(self._open(record))
        return loop

    async def create(self, name: str, spec: LoopSpec) -> tuple[Loop, PutOutcome]:
        """Create the loop `name` as `spec` defines it and open it (``created``); the same
        definition again changes nothing (``unchanged``); new settings or keys for the same
        schema reopen it with them (``replaced``: its log is replayed, and every worker
        follows within `WATCH_SECONDS`).

        Raises
        ------
        LoopError
            For a name or definition that cannot serve, or a log or model file left under
            its name that does not fit it (nothing is kept).
        LoopExistsError
            For a loop of that name with another schema.
        StoreUnavailableError
            The store cannot be reached now (nothing is kept).
        """
        record = LoopRecord.from_spec(check_loop_name(name), spec, time.time())
        async with self._lock:
            before = self.catalog.get(name)
            outcome = self.catalog.put(record)
            loop = self.loops.get(name)
            if loop is not None and outcome == "unchanged":
                return loop, outcome
            try:
                if loop is not None:
                    loop = await self._reopen(loop, record)
                else:
                    loop = self._start(self._open(self.catalog.get(name) or record))
            except BaseException as exc:
                # A definition that does not open is not kept: the catalog as it was.
                if outcome == "created":
                    self.catalog.delete(name)
                elif outcome == "replaced" and before is not None:
                    self.catalog.put(before, replace=True)
                if isinstance(exc, StoreUnavailableError):
                    raise  # 503: the store is down, not the definition wrong
                if isinstance(exc, StoreError | ModelFileError | SchemaError):
                    raise LoopError(f"Loop {name!r} cannot open: {exc}") from None
                raise
        return loop, outcome

    async def delete(self, name: str) -> None:
        """Stop the loop `name` and forget its definition; its log and files stay on disk.

        Raises
        ------
        LoopNotFoundError
            No loop of that name is in the catalog.
        """
        async with self._lock:
            if not self.catalog.delete(name):
                raise LoopNotFoundError(name)
            loop = self.loops.pop(name, None)
        if loop is not None:
            await loop.runtime.stop()

    def records(self) -> list[LoopRecord]:
        """Every loop's record, as the catalog holds them now."""
        return self.catalog.records()

    def refresh_metrics(self) -> None:
        """Set each open loop's model gauges (``GET /metrics`` calls it before rendering)."""
        for loop in self.loops.values():
            engine = loop.runtime.engine
            loop.state.metrics.model(engine.model_version, engine.model.n_updates)

    def scoped_loops(self, digest: bytes) -> list[str]:
        """The open loops whose own keys include the key with this SHA-256 digest."""
        return [name for name, loop in self.loops.items() if digest in loop.key_roles]

    # -- internals ---------------------------------------------------------------------------

    def _open(self, record: LoopRecord) -> Loop:
        settings = loop_settings(self.settings, record)
        settings.db_path.parent.mkdir(parents=True, exist_ok=True)
        metrics = self.metrics.for_loop(record.name, settings.feature_schema.actions)
        runtime = open_runtime(settings, metrics, name=record.name)
        loop = Loop(record, settings, runtime, metrics)
        self.loops[record.name] = loop
        return loop

    async def _reopen(self, old: Loop, record: LoopRecord) -> Loop:
        # The new runtime replays the log while the old one serves; then requests go to the
        # new one (`_open` swaps it in) and the old one stops. Decisions the old one logs
        # meanwhile are in the log, which the new one follows.
        loop = self._start(self._open(record))
        await old.runtime.stop()
        logger.info("Loop %s reopened with its new definition.", record.name)
        return loop

    def _start(self, loop: Loop) -> Loop:
        if self._started:
            loop.runtime.start()
        return loop

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            try:
                records = {record.name: record for record in self.catalog.records()}
            except Exception:  # the store is down: the learners say so; try again
                continue
            names = set(records)
            for name, record in records.items():
                if self._redefined(name, record) is None:
                    continue
                async with self._lock:  # redefined through another worker
                    current = self._redefined(name, record)  # still, now that we hold it
                    if current is not None:
                        try:
                            await self._reopen(current, record)
                        except Exception:
                            logger.exception("Cannot reopen the loop %r.", name)
            for name in names - set(self.loops):
                try:
                    await self.get(name)
                except Exception:
                    logger.exception("Cannot open the loop %r.", name)
            for name in set(self.loops) - names:
                async with self._lock:
                    gone = self.loops.pop(name, None)
                if gone is not None:
                    logger.info("Loop %s was deleted; it is stopped.", name)
                    await gone.runtime.stop()

    def _redefined(self, name: str, record: LoopRecord) -> Loop | None:
        """The open loop `name` if the catalog's `record` defines it otherwise."""
        loop = self.loops.get(name)
        if loop is None or loop.record.same_definition(record):
            return None
        return loop


def read_loops_file(path: Path) -> dict[str, LoopSpec]:
    """The loops a TOML loops file defines, by name (docs/loops.md shows one).

    A loop's ``schema_path`` (a TOML or ``.json`` schema file, relative to the loops file)
    may stand for its inline ``schema``.

    Raises
    ------
    LoopError
        For a file that cannot be read, or a loop whose definition is malformed.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LoopError(f"Cannot read the loops file {path}: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise LoopError(f"The loops file {path} is not valid TOML: {exc}.") from None
    loops = data.get("loops")
    if not isinstance(loops, dict) or set(data) - {"loops"}:
        raise LoopError(f"The loops file {path} must hold [loops.<name>] tables and nothing else.")
    specs: dict[str, LoopSpec] = {}
    for name, table in loops.items():
        if not isinstance(table, dict):
            raise LoopError(f"The loops file {path}: loops.{name} must be a table.")
        table = dict(table)
        schema_path = table.pop("schema_path", None)
        if schema_path is not None:
            if "schema" in table:
                raise LoopError(
                    f"The loops file {path}: loops.{name} has both schema and schema_path."
                )
            schema_file = path.parent / str(schema_path)
            try:  # a schema file as BANDITREC_SCHEMA_PATH takes: TOML, or JSON (.json)
                text = schema_file.read_text(encoding="utf-8")
                table["schema"] = (
                    json.loads(text) if schema_file.suffix == ".json" else tomllib.loads(text)
                )
            except (OSError, ValueError) as exc:
                raise LoopError(
                    f"The loops file {path}: cannot read loops.{name}'s schema {schema_file}: "
                    f"{exc}."
                ) from None
        try:
            specs[check_loop_name(name)] = LoopSpec.model_validate(table)
        except ValidationError as exc:
            messages = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {str(e['msg']).rstrip('.')}"
                for e in exc.errors(include_url=False)
            )
            raise LoopError(f"The loops file {path}: loops.{name}: {messages}.") from None
        except LoopError as exc:
            raise LoopError(f"The loops file {path}: {exc}") from None
    return specs
