"""Start-up and shutdown of an app: the model, the event log, the learner; one-line failures.

`lifespan` opens the event log, recovers the model (newest valid snapshot + the log tail,
or the base model, or the prior), warms the decision path up and starts the learner.
`StartupFailure` turns the failures an operator causes (a model file for another schema, an
event log of another schema, a model path that does not exist) into one log line instead of
a traceback.
"""

import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from banditrec.auth import log_auth_mode
from banditrec.config import Settings
from banditrec.constraints import constraints_from_config
from banditrec.engine import Engine, prior_model
from banditrec.exploration import sample_action
from banditrec.features import CategoricalField, SchemaError
from banditrec.learner import Learner, recover_model
from banditrec.lifecycle.service import LifecycleCollector, lifecycle_from_settings
from banditrec.retention import retention_of
from banditrec.snapshot import Model, ModelFileError, load_model
from banditrec.snapshot_store import snapshot_store_for
from banditrec.store import StoreError
from banditrec.store.factory import describe_store, open_store

__all__ = ["DEFAULT_MODEL_PATH", "StartupFailure", "base_model", "lifespan"]

logger = logging.getLogger("banditrec")

#: The model path when none is configured: absent, the server starts from the prior.
DEFAULT_MODEL_PATH: Path = Settings.model_fields["model_path"].default

#: Failures of configuration or data, told in one line (anything else keeps its traceback).
STARTUP_ERRORS: tuple[type[Exception], ...] = (ModelFileError, SchemaError, StoreError)


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


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Recover the model and run the learner while the app serves (`app.state` holds
    ``settings``, ``metrics`` and ``serving``, set by `banditrec.api.create_app`)."""
    state = app.state
    settings: Settings = state.settings
    log_auth_mode(settings.api_keys, logger)
    schema = settings.feature_schema
    store = open_store(
        settings.store_url,
        db_path=settings.db_path,
        encoding_hash=schema.encoding_hash,
        synchronous=settings.sqlite_synchronous,
    )
    logger.info("Event log: %s.", describe_store(settings.store_url, settings.db_path))
    try:
        base, loaded = base_model(settings, require_file=state.serving)
        snapshots = snapshot_store_for(store, settings.snapshot_dir)
        model, origin = recover_model(base, store, snapshots)
    except BaseException:
        store.close()
        raise
    engine = Engine(model, np.random.default_rng(settings.seed), store, settings.reward_rules)
    # Switch entries in the tail are applied while replaying: attach the lifecycle first.
    # Automatic switches are made by the process holding the snapshot lease.
    lifecycle = lifecycle_from_settings(
        engine, store, settings, may_switch=lambda: bool(state.learner.holds_lease)
    )
    replayed = engine.catch_up()
    try:  # after the replay: rules may name actions added at run time
        engine.constraints = constraints_from_config(
            settings.constraints, engine.schema, engine.actions
        )
    except ValueError:
        store.close()
        raise
    logger.info("Model from %s, %d learn events replayed.", origin, replayed)
    learner = Learner(
        engine,
        store,
        snapshots,
        poll_interval=settings.poll_interval_seconds,
        snapshot_every_events=settings.snapshot_every_events,
        snapshot_every_seconds=settings.snapshot_every_seconds,
        lease_seconds=settings.snapshot_lease_seconds,
        metrics=state.metrics,
        retention=retention_of(settings, store, snapshots),
    )
    state.engine, state.learner, state.model_loaded = engine, learner, loaded
    state.lifecycle = lifecycle
    if state.metrics.registry is not None:
        state.metrics.registry.register(LifecycleCollector(lifecycle))
    state.metrics.model(engine.model_version, engine.model.n_updates)
    # Compile (or load) the decision path's kernels now, so the first request does not.
    _warm_up(engine)
    if state.serving:
        # Move everything loaded so far (FastAPI, numba, the model) out of the collector's
        # sight: it lives as long as the process, and full collections walking it paused
        # every request in flight for tens of milliseconds. Only a server process may do
        # this: an app built in a test or a script would leak what it froze.
        gc.collect()
        gc.freeze()
    store.start()  # background upkeep (SQLite: WAL checkpoints off the commit path)
    task = asyncio.create_task(learner.run())
    following = asyncio.create_task(lifecycle.run(settings.poll_interval_seconds))
    try:
        yield
    finally:
        for running in (following, task):
            running.cancel()
            with suppress(asyncio.CancelledError):
                await running
        engine.close()
        lifecycle.records.close()
        store.close()


def _warm_up(engine: Engine) -> None:
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


class StartupFailure:
    """Pure ASGI middleware: a start-up that fails for a reason in `STARTUP_ERRORS` is
    reported as one line, ``Cannot start banditrec (ModelFileError): <sentence>``.

    Starlette reports a failed lifespan with the traceback as its message, which the server
    logs; the operator needs the sentence, not the stack. Other exceptions (bugs) keep
    their traceback.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_one_line(message: Message) -> None:
            # Starlette sends this from inside its `except` block, so the exception is the
            # one being handled.
            exc = sys.exc_info()[1]
            if message["type"] == "lifespan.startup.failed" and isinstance(exc, STARTUP_ERRORS):
                line = f"Cannot start banditrec ({type(exc).__name__}): {exc}"
                message = {**message, "message": line}
            await send(message)

        await self.app(scope, receive, send_one_line)
