"""The HTTP service: the seed's contract, the Personalizer-shaped v1 API, health and metrics.

`create_app(settings)` builds an app; the lifespan opens the event log, recovers the model
(newest valid snapshot + the log tail, or the base model, or the prior) and starts the
learner. Handlers only translate HTTP to `Engine` calls; domain errors map to statuses in
one place (`ERROR_STATUS`). `uvicorn banditrec.api:app` serves an app configured from
``BANDITREC_*`` variables.
"""

# No `from __future__ import annotations`: FastAPI must see the schema-built request models.

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from banditrec.auth import (
    Admin,
    AuthError,
    Reader,
    Role,
    Writer,
    auth_error_handler,
    authorize,
    key_table,
    log_auth_mode,
)
from banditrec.config import Settings
from banditrec.engine import ActionExistsError, Engine, UnknownActionError, prior_model
from banditrec.exploration import NoEligibleActionError, sample_action
from banditrec.features import CategoricalField, SchemaError
from banditrec.learner import Learner, SnapshotDirectory, recover_model
from banditrec.metrics import Metrics, MetricsMiddleware, metrics_response
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
from banditrec.store import DecisionRecord, LearnKind, RewardOutcome
from banditrec.store.sqlite import SQLiteEventStore

__all__ = ["app", "create_app"]

logger = logging.getLogger("banditrec")


class FastJSONResponse(JSONResponse):
    """JSON rendered by orjson: several times faster than `json.dumps` on these bodies."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class EventNotFoundError(LookupError):
    """No decision has this event id."""


class ActionNotFoundError(LookupError):
    """No action has this name."""


class RewardRejectedError(Exception):
    """A reward that is recorded but not learned: late, or for a deferred event."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error = status, error


#: Domain errors and the HTTP status each maps to; the message is the error's own sentence.
ERROR_STATUS: dict[type[Exception], int] = {
    SchemaError: 422,
    UnknownActionError: 422,
    NoEligibleActionError: 422,
    EventNotFoundError: 404,
    ActionNotFoundError: 404,
    ActionExistsError: 409,
}
_DOMAIN_ERRORS: tuple[type[Exception], ...] = (*ERROR_STATUS, RewardRejectedError)


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


class RequestGuard:
    """Pure ASGI middleware: 413 for bodies over the limit, 415 for non-JSON bodies.

    Pure ASGI (not `BaseHTTPMiddleware`) so the body is counted as it streams in, also when
    the client sends no Content-Length, and reading stops at the limit.
    """

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, hot_routes: "HotRoutes | None" = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.hot_routes = hot_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await _error(send, 413, "payload_too_large", self._too_large)
            return
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if (length is None or length != b"0") and not (
            content_type == b"application/json" or content_type.endswith(b"+json")
        ):
            reason = "The request body must be JSON (Content-Type: application/json)."
            await _error(send, 415, "unsupported_media_type", reason)
            return

        # Read the body here, up to the limit, then hand it to the app: an error raised from
        # inside the app's `receive` would become FastAPI's 400, not a 413.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_body_bytes:
                await _error(send, 413, "payload_too_large", self._too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if self.hot_routes is not None and await self.hot_routes(scope, body, send):
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @property
    def _too_large(self) -> str:
        return f"The request body is larger than {self.max_body_bytes} bytes."


async def _error(send: Send, status: int, error: str, message: str) -> None:
    response = FastJSONResponse({"error": error, "message": message, "detail": []}, status)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


#: What a hot route's handler gets: the app, the JSON body (parsed, not validated), the
#: route's path parameter (or None) and the ASGI scope; it returns the response body and
#: status, or None to hand the request on to FastAPI.
HotHandler = Callable[[FastAPI, Any, str | None, Scope], Awaitable[tuple[Any, int] | None]]


class HotRoutes:
    """The decision and reward routes, answered without FastAPI's per-request machinery.

    FastAPI spends more time per request (dependency resolution, request objects, several
    layers of middleware) than deciding and logging take. A request to a hot route is
    therefore answered here, by the same code the FastAPI route runs (`RequestGuard` calls
    this with the body it has read), and only when everything is in order: the API key is
    good, the body is JSON that validates, and no dependency is overridden. Anything else (a
    missing key, a 422, another route) goes on to FastAPI unchanged, which answers it exactly
    as before, so errors keep their status and message. Domain errors raised while deciding
    (404 unknown event, 410 late reward, ...) are rendered by the app's own handler.

    The matching FastAPI route object is put in the scope, as the router would, so metrics
    label the request by its route template.
    """

    def __init__(self) -> None:
        self._exact: dict[str, tuple[HotHandler, APIRoute]] = {}
        self._patterns: list[tuple[HotHandler, APIRoute]] = []

    def add(self, route: APIRoute, handler: HotHandler) -> None:
        """Serve POST requests to `route` (at most one path parameter) with `handler`."""
        if len(route.param_convertors) > 1 or "POST" not in (route.methods or ()):
            raise ValueError(f"{route.path}: only POST routes with one path parameter or none.")
        if route.param_convertors:
            self._patterns.append((handler, route))
        else:
            self._exact[route.path] = (handler, route)

    async def __call__(self, scope: Scope, body: bytes, send: Send) -> bool:
        """Answer the request if it is for a hot route and in order; return whether it was."""
        if scope["method"] != "POST" or scope.get("root_path"):
            return False
        path: str = scope["path"]
        param: str | None = None
        found = self._exact.get(path)
        if found is None:
            for handler, route in self._patterns:
                match = route.path_regex.match(path)
                if match is not None:
                    found, param = (handler, route), next(iter(match.groupdict().values()))
                    break
            else:
                return False
        app: FastAPI = scope["app"]
        if app.dependency_overrides:
            return False
        # FastAPI reads the first Content-Type header (the guard checked the last one) and
        # parses JSON for more types than this; the rest goes to FastAPI.
        content_type = _first_header(scope, b"content-type").split(";", 1)[0]
        if content_type.strip().lower() != "application/json":
            return False
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return False  # FastAPI reports it (and parses what orjson refuses, like NaN)
        handler, route = found
        scope["route"] = route
        try:
            answer = await handler(app, data, param, scope)
        except _DOMAIN_ERRORS as exc:
            error = _domain_error(None, exc)
            await _send_json(send, error.status_code, bytes(error.body))
            return True
        if answer is None:
            del scope["route"]
            return False
        content, status = answer
        await _send_json(send, status, orjson.dumps(content))
        return True


async def _send_json(send: Send, status: int, payload: bytes) -> None:
    # The headers FastJSONResponse sends, built without a Response object.
    headers = [(b"content-length", str(len(payload)).encode()), _JSON_CONTENT_TYPE]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


_JSON_CONTENT_TYPE = (b"content-type", b"application/json")


def _first_header(scope: Scope, name: bytes) -> str:
    """The first value of header `name` (lower case), as Starlette's `Headers.get` reads it."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


def _validation_error(_: Request, exc: Exception) -> FastJSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = []
    for error in exc.errors():
        if error["type"] == "json_invalid":
            detail.append({"field": "body", "message": "The request body is not valid JSON."})
            continue
        loc = [str(part) for part in error["loc"] if part != "body"]
        field = ".".join(loc) or "body"
        detail.append({"field": field, "message": f"{field}: {error['msg']}."})
    message = "; ".join(d["message"] for d in detail)
    return FastJSONResponse(
        {"error": "validation_error", "message": message, "detail": detail}, 422
    )


def _domain_error(_: Request | None, exc: Exception) -> FastJSONResponse:
    if isinstance(exc, RewardRejectedError):
        status, error = exc.status, exc.error
    else:
        status = next(code for cls, code in ERROR_STATUS.items() if isinstance(exc, cls))
        error = type(exc).__name__
    return FastJSONResponse({"error": error, "message": str(exc), "detail": []}, status)


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
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(AuthError, auth_error_handler)
    for error_type in _DOMAIN_ERRORS:
        app.add_exception_handler(error_type, _domain_error)

    async def get_engine(request: Request) -> Engine:  # async: no thread-pool hop
        engine: Engine = request.app.state.engine
        return engine

    EngineDep = Annotated[Engine, Depends(get_engine)]
    RecommendRequest = recommend_request_model(schema)
    RankRequest = rank_request_model(schema)
    RewardRequest = reward_request_model(settings.reward_min, settings.reward_max)
    alpha = float(settings.alpha)

    def policy_alpha(engine: Engine) -> float:
        return float(getattr(engine.policy, "alpha", alpha))

    @app.get("/health", response_model=HealthResponse)
    async def health(request: Request, engine: EngineDep) -> FastJSONResponse:
        """Liveness and what is being served."""
        return FastJSONResponse(
            {
                "status": "ok",
                "model_loaded": request.app.state.model_loaded,
                "n_actions": len(engine.actions),
                "alpha": policy_alpha(engine),
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

    # The decision and reward routes: each one's work is a function of validated input,
    # called by the FastAPI route (documented, and answering every error) and by the hot
    # path (`HotRoutes`), which answers requests in order without FastAPI's overhead.

    async def recommend_content(engine: Engine, context: dict[str, Any]) -> dict[str, Any]:
        user_id = context.pop("user_id")
        record = await engine.rank(context)
        metrics.decision(record.action)
        actions = record.actions
        scores = dict(zip(actions, record.scores.tolist(), strict=True))
        return {
            "user_id": user_id,
            "recommended_action": record.action,
            "ucb_score": scores[record.action],
            "scores": scores,
            "alpha": policy_alpha(engine),
            "event_id": record.event_id,
            "probability": record.probability,
            "probabilities": dict(zip(actions, record.probabilities.tolist(), strict=True)),
            "model_version": record.model_version,
        }

    async def rank_content(engine: Engine, body: Any) -> dict[str, Any]:
        eligible = engine.eligible_mask(body.actions, body.excluded_actions)
        record = await engine.rank(
            body.context.model_dump(),
            eligible,
            event_id=body.event_id,
            deferred=body.defer_activation,
        )
        metrics.decision(record.action)
        return _rank_body(record)

    async def reward_content(engine: Engine, event_id: str, value: float) -> dict[str, Any]:
        result = await engine.reward(event_id, value)
        metrics.reward(result.action, result.outcome.value)
        if result.outcome is RewardOutcome.unknown:
            raise EventNotFoundError(f"No decision has the event id {event_id!r}.")
        if result.outcome is RewardOutcome.late:
            raise RewardRejectedError(
                410,
                "reward_window_closed",
                f"The reward window of event {event_id!r} has closed "
                f"({settings.reward_window_seconds:g} s); the reward was recorded, not learned.",
            )
        if result.outcome is RewardOutcome.not_activated:
            raise RewardRejectedError(
                409,
                "event_not_activated",
                f"Event {event_id!r} was deferred and has not been activated; activate it "
                "first. The reward was recorded, not learned.",
            )
        metrics.join()
        return {
            "event_id": event_id,
            "status": result.outcome.value,
            "learned": result.outcome is not RewardOutcome.duplicate,
            "duplicate": result.outcome is RewardOutcome.duplicate,
            "value": result.value,
            "total": result.total,
        }

    @app.post("/recommend_action", response_model=RecommendResponse, responses={413: {}, 415: {}})
    async def recommend_action(
        body: RecommendRequest,  # type: ignore[valid-type]
        engine: EngineDep,
        _: Writer,
    ) -> FastJSONResponse:
        """The seed's endpoint: the next best action for a user, logged with its probability."""
        context: dict[str, Any] = body.model_dump()  # type: ignore[attr-defined]
        return FastJSONResponse(await recommend_content(engine, context))

    @app.post("/v1/rank", response_model=RankResponse, responses={413: {}, 415: {}})
    async def rank(
        body: RankRequest,  # type: ignore[valid-type]
        engine: EngineDep,
        _: Writer,
    ) -> FastJSONResponse:
        """Rank the actions for a context and choose one; log the decision durably."""
        return FastJSONResponse(await rank_content(engine, body))

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
        value: float = body.value  # type: ignore[attr-defined]
        return FastJSONResponse(await reward_content(engine, event_id, value))

    # The hot path: the same work, for requests with a good key and a valid body.
    validate_recommend = RecommendRequest.model_validate
    validate_rank = RankRequest.model_validate
    validate_reward = RewardRequest.model_validate

    def writer_allowed(app: FastAPI, scope: Scope) -> bool:
        keys = key_table(app)
        if not keys:
            return True
        try:
            authorize(
                keys,
                _first_header(scope, b"authorization"),
                _first_header(scope, b"x-api-key"),
                Role.writer,
            )
        except AuthError:
            return False  # FastAPI's route answers it
        return True

    async def hot_recommend(
        app: FastAPI, data: Any, _: str | None, scope: Scope
    ) -> tuple[Any, int] | None:
        if not writer_allowed(app, scope):
            return None
        try:
            body = validate_recommend(data)
        except ValidationError:
            return None
        return await recommend_content(app.state.engine, body.model_dump()), 200

    async def hot_rank(
        app: FastAPI, data: Any, _: str | None, scope: Scope
    ) -> tuple[Any, int] | None:
        if not writer_allowed(app, scope):
            return None
        try:
            body = validate_rank(data)
        except ValidationError:
            return None
        return await rank_content(app.state.engine, body), 200

    async def hot_reward(
        app: FastAPI, data: Any, event_id: str | None, scope: Scope
    ) -> tuple[Any, int] | None:
        if not writer_allowed(app, scope) or event_id is None:
            return None
        try:
            body = validate_reward(data)
        except ValidationError:
            return None
        value: float = body.value  # type: ignore[attr-defined]
        return await reward_content(app.state.engine, event_id, value), 200

    routes = {r.path: r for r in app.routes if isinstance(r, APIRoute)}
    hot_routes.add(routes["/recommend_action"], hot_recommend)
    hot_routes.add(routes["/v1/rank"], hot_rank)
    hot_routes.add(routes["/v1/events/{event_id}/reward"], hot_reward)

    @app.post(
        "/v1/events/{event_id}/activate", response_model=ActivateResponse, responses={404: {}}
    )
    async def activate(event_id: str, engine: EngineDep, _: Writer) -> FastJSONResponse:
        """Activate a deferred event: from now on it is learned from (its window starts)."""
        activated = await engine.activate(event_id)
        if activated is None:
            raise EventNotFoundError(f"No decision has the event id {event_id!r}.")
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


def _rank_body(record: DecisionRecord) -> dict[str, Any]:
    probabilities, scores = record.probabilities.tolist(), record.scores.tolist()
    order = sorted(range(len(record.actions)), key=lambda k: (-probabilities[k], -scores[k]))
    return {
        "event_id": record.event_id,
        "action_id": record.action,
        "probability": record.probability,
        "ranking": [
            {"action_id": record.actions[k], "probability": probabilities[k], "score": scores[k]}
            for k in order
        ],
        "model_version": record.model_version,
        "deferred": record.deferred,
    }


def __getattr__(name: str) -> Any:
    # `uvicorn banditrec.api:app` imports `app`; build it lazily so importing this module
    # (tests, `create_app` users) does not read the environment or the schema file.
    if name == "app":
        return create_app()
    raise AttributeError(name)


# For type checkers and `from banditrec.api import app`.
app: FastAPI
