"""The HTTP service: the seed's contract, the Personalizer-shaped v1 API, health and metrics.

`create_app(settings)` builds an app; the lifespan opens the event log, recovers the model
(newest valid snapshot + the log tail, or the base model, or the prior) and starts the
learner. Handlers only translate HTTP to `Engine` calls: the decision and reward routes call
the work in `banditrec.decisions`, which the hot path (`banditrec.hot_path`) calls too;
domain errors map to statuses in one place (`banditrec.errors.ERROR_STATUS`).
`uvicorn banditrec.api:app` serves an app configured from ``BANDITREC_*`` variables.
"""

# No `from __future__ import annotations`: FastAPI must see the schema-built request models.

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from banditrec.auth import Admin, AuthError, Reader, Writer, auth_error_handler, log_auth_mode
from banditrec.config import Settings
from banditrec.decisions import DecisionWork, EngineDep
from banditrec.engine import Engine, prior_model
from banditrec.errors import (
    ERROR_STATUS,
    ActionNotFoundError,
    EventNotFoundError,
    domain_error,
    validation_error,
)
from banditrec.exploration import sample_action
from banditrec.features import CategoricalField, SchemaError
from banditrec.guard import RequestGuard
from banditrec.hot_path import HotRoutes
from banditrec.learner import Learner, SnapshotDirectory, recover_model
from banditrec.metrics import Metrics, MetricsMiddleware, metrics_response
from banditrec.responses import FastJSONResponse
from banditrec.schemas import (
    ActionInfo,
    ActivateResponse,
    AddActionRequest,
    HealthResponse,
    ModelResponse,
    RankResponse,
    RecommendResponse,
    RewardResponse,
    rank_request_model,
    recommend_request_model,
    reward_request_model,
)
from banditrec.snapshot import Model, load_model, model_bytes
from banditrec.store import LearnKind
from banditrec.store.sqlite import SQLiteEventStore

__all__ = ["app", "create_app"]

logger = logging.getLogger("banditrec")


def base_model(settings: Settings) -> tuple[Model, bool]:
    """The model file if there is one, else the prior; and whether a file was loaded.

    A model file that exists but cannot be used (corrupt, other schema) is an error: serving
    from the prior instead would silently throw away everything the model learned.
    """
    if settings.model_path.exists():
        model = load_model(settings.model_path, settings.feature_schema)
        if "policy" in settings.model_fields_set and model.policy.name != settings.policy:
            logger.warning(  # the file records what was trained; it wins
                "The model file holds a %s policy, not the configured %s.",
                model.policy.name,
                settings.policy,
            )
        return model, True
    logger.warning("No model file at %s: serving from the prior.", settings.model_path)
    return prior_model(settings.feature_schema, settings.build_policy()), False


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the banditrec app for `settings` (default: from the environment)."""
    settings = settings or Settings()
    schema = settings.feature_schema  # read now: the request models and docs depend on it
    metrics = Metrics(actions=schema.actions)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log_auth_mode(settings.api_keys, logger)
        store = SQLiteEventStore(
            settings.db_path, schema.encoding_hash, settings.sqlite_synchronous
        )
        base, loaded = base_model(settings)
        snapshots = SnapshotDirectory(settings.snapshot_dir)
        model, origin = recover_model(base, store, snapshots)
        engine = Engine(model, np.random.default_rng(settings.seed), store, settings.reward_rules)
        replayed = engine.catch_up()
        logger.info("Model from %s, %d learn events replayed.", origin, replayed)
        learner = Learner(
            engine,
            store,
            snapshots,
            poll_interval=settings.poll_interval_seconds,
            snapshot_every_events=settings.snapshot_every_events,
            snapshot_every_seconds=settings.snapshot_every_seconds,
            metrics=metrics,
        )
        app.state.engine, app.state.learner, app.state.model_loaded = engine, learner, loaded
        metrics.model(engine.model_version, engine.model.n_updates)
        # Compile (or load) the decision path's kernels now, then move everything loaded so
        # far (FastAPI, numba, the model) out of the collector's sight: it lives as long as
        # the process, and full collections walking it paused every request in flight for
        # tens of milliseconds.
        _warm_up(engine)
        gc.collect()
        gc.freeze()
        store.start_checkpointer()  # WAL checkpoints off the commit path
        task = asyncio.create_task(learner.run())
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            engine.close()
            store.close()

    app = FastAPI(
        title="banditrec",
        summary="Real-time contextual-bandit decisions that learn online.",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=FastJSONResponse,
    )
    app.state.api_keys = settings.api_keys
    app.state.metrics = metrics
    hot_routes = HotRoutes()
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes, hot_routes=hot_routes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: 413/415 are timed too
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(AuthError, auth_error_handler)
    for error_type in ERROR_STATUS:
        app.add_exception_handler(error_type, domain_error)

    RecommendRequest = recommend_request_model(schema)
    RankRequest = rank_request_model(schema)
    RewardRequest = reward_request_model(settings.reward_min, settings.reward_max)
    work = DecisionWork(metrics, settings.alpha or 0.0, settings.reward_window_seconds)

    @app.get("/health", response_model=HealthResponse)
    async def health(request: Request, engine: EngineDep) -> FastJSONResponse:
        """Liveness and what is being served."""
        return FastJSONResponse(
            {
                "status": "ok",
                "model_loaded": request.app.state.model_loaded,
                "n_actions": len(engine.actions),
                "alpha": work.alpha(engine),
                "model_version": engine.model_version,
                "schema_hash": schema.hash,
            }
        )

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(engine: EngineDep) -> Any:
        metrics.model(engine.model_version, engine.model.n_updates)
        return metrics_response(metrics)

    @app.get("/ping", include_in_schema=False)
    async def ping() -> FastJSONResponse:
        # A constant answer through the same app and middleware: the ceiling the decision
        # endpoints are benchmarked against.
        return FastJSONResponse({"status": "ok"})

    # The decision and reward routes: each one's work is a `DecisionWork` method of validated
    # input, called by the FastAPI route (documented, and answering every error) and by the
    # hot path (`HotRoutes`), which answers requests in order without FastAPI's overhead.

    @app.post("/recommend_action", response_model=RecommendResponse, responses={413: {}, 415: {}})
    async def recommend_action(
        body: RecommendRequest,  # type: ignore[valid-type]
        engine: EngineDep,
        _: Writer,
    ) -> FastJSONResponse:
        """The seed's endpoint: the next best action for a user, logged with its probability."""
        return FastJSONResponse(await work.recommend(engine, body))

    @app.post("/v1/rank", response_model=RankResponse, responses={413: {}, 415: {}})
    async def rank(
        body: RankRequest,  # type: ignore[valid-type]
        engine: EngineDep,
        _: Writer,
    ) -> FastJSONResponse:
        """Rank the actions for a context and choose one; log the decision durably."""
        return FastJSONResponse(await work.rank(engine, body))

    @app.post(
        "/v1/events/{event_id}/reward",
        response_model=RewardResponse,
        responses={404: {}, 409: {}, 410: {}},
    )
    async def reward(
        event_id: str,
        body: RewardRequest,  # type: ignore[valid-type]
        engine: EngineDep,
        _: Writer,
    ) -> FastJSONResponse:
        """Report the reward of a decision; the first one in its window is learned at once."""
        return FastJSONResponse(await work.reward(engine, body, event_id=event_id))

    # The hot path: the same work, for requests with a good key and a valid body.
    routes = {r.path: r for r in app.routes if isinstance(r, APIRoute)}
    hot_routes.add(routes["/recommend_action"], RecommendRequest, work.recommend)
    hot_routes.add(routes["/v1/rank"], RankRequest, work.rank)
    hot_routes.add(routes["/v1/events/{event_id}/reward"], RewardRequest, work.reward)

    @app.post(
        "/v1/events/{event_id}/activate", response_model=ActivateResponse, responses={404: {}}
    )
    async def activate(event_id: str, engine: EngineDep, _: Writer) -> FastJSONResponse:
        """Activate a deferred event: from now on it is learned from (its window starts)."""
        activated = await engine.activate(event_id)
        if activated is None:
            raise EventNotFoundError(event_id)
        return FastJSONResponse({"event_id": event_id, "activated": activated})

    @app.get("/v1/model", response_model=ModelResponse)
    async def model_info(engine: EngineDep, _: Reader) -> FastJSONResponse:
        """The model being served: version, updates, log offset, schema hash, parameters."""
        policy = engine.policy
        return FastJSONResponse(
            {
                "pid": os.getpid(),  # which worker answered (several may serve one port)
                "version": engine.model_version,
                "n_updates": int(policy.n_updates_.sum()),
                "n_updates_by_action": dict(
                    zip(engine.actions, policy.n_updates_.tolist(), strict=True)
                ),
                "log_offset": engine.applied_offset,
                "applied_at": engine.applied_at,
                "schema_hash": schema.hash,
                "policy": policy.name,
                "policy_params": policy.get_params(),
                "exploration": policy.exploration.name,
                "exploration_params": policy.exploration.get_params(),
            }
        )

    @app.get(
        "/v1/admin/model",
        response_class=Response,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    async def export_model(engine: EngineDep, _: Admin) -> Response:
        """The live model of the worker that answers, as a model file (.npz, no pickle)."""
        data = model_bytes(engine.snapshot_model())
        headers = {
            "Content-Disposition": 'attachment; filename="model.npz"',
            "X-Banditrec-Pid": str(os.getpid()),
        }
        return Response(data, media_type="application/octet-stream", headers=headers)

    @app.post("/v1/admin/snapshot")
    async def snapshot(request: Request, _: Admin) -> FastJSONResponse:
        """Write a snapshot of the live model now."""
        learner: Learner = request.app.state.learner
        path = await asyncio.get_running_loop().run_in_executor(None, learner.snapshot)
        return FastJSONResponse({"path": str(path), "log_offset": learner.engine.applied_offset})

    @app.get("/v1/actions", response_model=list[ActionInfo])
    async def list_actions(engine: EngineDep, _: Reader) -> FastJSONResponse:
        """Every action: the schema's, then those added at run time, and whether it is served."""
        return FastJSONResponse(_actions_body(engine))

    @app.post(
        "/v1/admin/actions",
        status_code=201,
        response_model=list[ActionInfo],
        responses={409: {}},
    )
    async def add_action(body: AddActionRequest, engine: EngineDep, _: Admin) -> FastJSONResponse:
        """Add an action without a restart; it starts from the prior (or what is shared)."""
        await engine.change_action(LearnKind.add_action, body.action_id)
        return FastJSONResponse(_actions_body(engine), 201)

    @app.post(
        "/v1/admin/actions/{action_id}/{change}",
        response_model=list[ActionInfo],
        responses={404: {}},
    )
    async def toggle_action(
        action_id: str, change: Literal["disable", "enable"], engine: EngineDep, _: Admin
    ) -> FastJSONResponse:
        """Disable an action (never served, probability 0; what it learned is kept) or
        enable it again. Decisions logged before stay evaluable."""
        if action_id not in engine.actions:
            raise ActionNotFoundError(
                f"Unknown action {action_id!r}; known: {list(engine.actions)}."
            )
        kind = LearnKind.disable_action if change == "disable" else LearnKind.enable_action
        await engine.change_action(kind, action_id)
        return FastJSONResponse(_actions_body(engine))

    return app


def _actions_body(engine: Engine) -> list[dict[str, Any]]:
    n_updates = engine.policy.n_updates_.tolist()
    return [
        {"action_id": name, "enabled": name not in engine.disabled, "n_updates": n}
        for name, n in zip(engine.actions, n_updates, strict=True)
    ]


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


def __getattr__(name: str) -> Any:
    # `uvicorn banditrec.api:app` imports `app`; build it lazily so importing this module
    # (tests, `create_app` users) does not read the environment or the schema file.
    if name == "app":
        return create_app()
    raise AttributeError(name)


# For type checkers and `from banditrec.api import app`.
app: FastAPI
