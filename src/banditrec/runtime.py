"""`LoopRuntime`: the running parts of one decision loop, and how they are opened.

A loop is an event log, an engine serving a model, the lifecycle following it and a learner
applying the log's learn events. The server's default loop (``/v1/rank``) and every named
loop (``/v1/loops/{loop}/rank``, `banditrec.loops`) are opened the same way, by
`open_runtime`: open the log, recover the model (newest valid snapshot + the log tail, or the
base model, or the prior), attach the lifecycle, replay, apply the constraints and warm the
decision path up. `LoopRuntime.start` starts its background tasks; `LoopRuntime.stop` ends
them and closes the log.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from banditrec.config import Settings
from banditrec.constraints import constraints_from_config
from banditrec.engine import Engine, prior_model
from banditrec.exploration import sample_action
from banditrec.features import CategoricalField, SchemaError
from banditrec.learner import Learner, recover_model
from banditrec.lifecycle.service import Lifecycle, LifecycleCollector, lifecycle_from_settings
from banditrec.metrics import Metrics
from banditrec.retention import retention_of
from banditrec.snapshot import Model, ModelFileError, load_model
from banditrec.snapshot_store import snapshot_store_for
from banditrec.store import EventStore
from banditrec.store.factory import describe_store, open_store

__all__ = ["DEFAULT_MODEL_PATH", "LoopRuntime", "base_model", "open_runtime"]

logger = logging.getLogger("banditrec")

#: The model path when none is configured: absent, the server starts from the prior.
DEFAULT_MODEL_PATH: Path = Settings.model_fields["model_path"].default


def base_model(settings: Settings, *, require_file: bool = False) -> tuple[Model, bool]:
    """The model file if there is one, else the prior; and whether a file was loaded.

    A model file that exists but cannot be used (corrupt, other schema) is an error: serving
    from the prior instead would silently throw away everything the model learned.

    Parameters
    ----------
    settings
        Where the model file is, and the policy of the prior.
    require_file
        Refuse a configured model path (other than the default) that does not exist: a
        mistyped path must not silently serve from the prior. The server sets it.
    """
    path = settings.model_path
    if path.exists():
        model = load_model(path, settings.feature_schema)
        if "policy" in settings.model_fields_set and model.policy.name != settings.policy:
            logger.warning(  # the file records what was trained; it wins
                "The model file holds a %s policy, not the configured %s.",
                model.policy.name,
                settings.policy,
            )
        return model, True
    if require_file and path != DEFAULT_MODEL_PATH:
        raise ModelFileError(
            f"The model file {path} does not exist; check the path, or leave "
            "BANDITREC_MODEL_PATH (--model) unset to start from the prior."
        )
    logger.warning("No model file at %s: serving from the prior.", path)
    return prior_model(settings.feature_schema, settings.build_policy()), False


@dataclass
class LoopRuntime:
    """One loop's event log, engine, lifecycle and learner (see `open_runtime`)."""

    settings: Settings
    store: EventStore
    engine: Engine
    lifecycle: Lifecycle
    learner: Learner
    model_loaded: bool
    metrics: Metrics | None = None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def start(self) -> None:
        """Start the log's upkeep, the learner and the lifecycle (on the running loop)."""
        self.store.start()  # background upkeep (SQLite: WAL checkpoints off the commit path)
        self._tasks = [
            asyncio.create_task(self.learner.run()),
            asyncio.create_task(self.lifecycle.run(self.settings.poll_interval_seconds)),
        ]

    async def stop(self) -> None:
        """End the background tasks, then close the engine, the records and the log."""
        for running in reversed(self._tasks):
            running.cancel()
            with suppress(asyncio.CancelledError):
                await running
        self._tasks = []
        self.engine.close()
        self.lifecycle.records.close()
        self.store.close()
        if self.metrics is not None:  # its model, backlog and lifecycle gauges go too
            self.metrics.release()


def open_runtime(
    settings: Settings, metrics: Metrics, *, require_file: bool = False, name: str = "default"
) -> LoopRuntime:
    """Open the event log `settings` name and recover the model that serves from it.

    Parameters
    ----------
    settings
        The loop's settings (a named loop's come from `banditrec.loops.loop_settings`).
    metrics
        Where the learner counts (a named loop's view of the process's metrics).
    require_file
        As in `base_model`.
    name
        The loop's name, for the log lines.

    Raises
    ------
    ModelFileError, SchemaError, StoreError, ValueError
        For a model file, log or constraint that cannot serve this schema; nothing stays
        open.
    """
    schema = settings.feature_schema
    store = open_store(
        settings.store_url,
        db_path=settings.db_path,
        encoding_hash=schema.encoding_hash,
        synchronous=settings.sqlite_synchronous,
        prefix=settings.store_prefix,
    )
    where = describe_store(settings.store_url, settings.db_path)
    tag = "" if name == "default" else f"Loop {name}: "  # the default loop's lines as always
    if settings.store_url and tag:
        where += f" (keys {settings.store_prefix}:*)"
    logger.info("%sEvent log: %s.", tag, where)
    try:
        base, loaded = base_model(settings, require_file=require_file)
        snapshots = snapshot_store_for(store, settings.snapshot_dir)
        model, origin = recover_model(base, store, snapshots)
        engine = Engine(model, np.random.default_rng(settings.seed), store, settings.reward_rules)
        # Switch entries in the tail are applied while replaying: attach the lifecycle first.
        # Automatic switches are made by the process holding the snapshot lease.
        learners: list[Learner] = []
        lifecycle = lifecycle_from_settings(
            engine, store, settings, may_switch=lambda: bool(learners[0].holds_lease)
        )
        replayed = engine.catch_up()
        # After the replay: rules may name actions added at run time.
        engine.constraints = constraints_from_config(
            settings.constraints, engine.schema, engine.actions
        )
    except BaseException:
        store.close()
        raise
    logger.info("%sModel from %s, %d learn events replayed.", tag, origin, replayed)
    learner = Learner(
        engine,
        store,
        snapshots,
        poll_interval=settings.poll_interval_seconds,
        snapshot_every_events=settings.snapshot_every_events,
        snapshot_every_seconds=settings.snapshot_every_seconds,
        lease_seconds=settings.snapshot_lease_seconds,
        metrics=metrics,
        retention=retention_of(settings, store, snapshots),
    )
    learners.append(learner)
    metrics.model(engine.model_version, engine.model.n_updates)
    metrics.watch_collector(LifecycleCollector(lifecycle))  # banditrec_lifecycle_*{loop}
    # Compile (or load) the decision path's kernels now, so the first request does not.
    warm_up(engine)
    return LoopRuntime(settings, store, engine, lifecycle, learner, loaded, metrics)


def warm_up(engine: Engine) -> None:
    """Run the decision path once on a made-up context, without logging or touching the
    engine's generator, so that its first request does not pay for compilation."""
    context: dict[str, Any] = {}
    for f in engine.schema.fields:
        if isinstance(f, CategoricalField):
            context[f.name] = f.values[0] if f.values else "?"
        else:
            context[f.name] = f.min
    try:
        x = engine.schema.vectorize(context)
    except SchemaError:  # a schema with nothing to make a context from: warm up later
        return
    rng = np.random.default_rng(0)
    _, probabilities = engine.policy.distribution(x, engine.eligible_mask(), rng)
    sample_action(probabilities, rng)
    # Learning too, on a scratch copy of the policy (the first reward must not compile).
    policy = engine.policy
    scratch = type(policy)(**policy.get_params(), exploration=policy.exploration)
    scratch.reset(len(probabilities), len(x)).update(x, 0, 0.0)
