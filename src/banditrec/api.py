"""The HTTP service: the seed's contract (`GET /health`, `POST /recommend_action`) and more.

`create_app(settings)` builds an app; the lifespan loads the model (or starts from the prior
when there is no model file yet) and handlers only translate HTTP to `Engine` calls.
`uvicorn banditrec.api:app` serves an app configured from ``BANDITREC_*`` variables.
"""

# No `from __future__ import annotations`: FastAPI must see the schema-built request model.

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from banditrec.config import Settings
from banditrec.engine import Engine, UnknownActionError
from banditrec.exploration import EpsilonGreedy, NoEligibleActionError
from banditrec.features import SchemaError
from banditrec.policies import LinUCB
from banditrec.schemas import HealthResponse, RecommendResponse, recommend_request_model
from banditrec.snapshot import load_model

__all__ = ["app", "create_app"]

logger = logging.getLogger("banditrec")

#: Domain errors and the HTTP status each maps to; the message is the error's own sentence.
ERROR_STATUS: dict[type[Exception], int] = {
    SchemaError: 422,
    UnknownActionError: 422,
    NoEligibleActionError: 422,
}


def load_engine(settings: Settings) -> tuple[Engine, bool]:
    """The engine for `settings`: from the model file if there is one, else from the prior.

    A model file that exists but cannot be used (corrupt, other schema) is an error: serving
    from the prior instead would silently throw away everything the model learned.
    """
    rng = np.random.default_rng(settings.seed)
    if settings.model_path.exists():
        model = load_model(settings.model_path, settings.feature_schema)
        return Engine(model, rng), True
    logger.warning("No model file at %s: serving from the prior.", settings.model_path)
    policy = LinUCB(
        alpha=settings.alpha, ridge=settings.ridge, exploration=EpsilonGreedy(settings.epsilon)
    )
    return Engine.from_prior(settings.feature_schema, rng, policy), False


class RequestGuard:
    """Pure ASGI middleware: 413 for bodies over the limit, 415 for non-JSON bodies.

    Pure ASGI (not `BaseHTTPMiddleware`) so the body is counted as it streams in, also when
    the client sends no Content-Length, and so nothing is buffered twice.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

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
        if content_type != b"application/json" and not content_type.endswith(b"+json"):
            message = "The request body must be JSON (Content-Type: application/json)."
            await _error(send, 415, "unsupported_media_type", message)
            return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise _BodyTooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLargeError:
            if not started:
                await _error(send, 413, "payload_too_large", self._too_large)

    @property
    def _too_large(self) -> str:
        return f"The request body is larger than {self.max_body_bytes} bytes."


class _BodyTooLargeError(Exception):
    pass


async def _error(send: Send, status: int, error: str, message: str) -> None:
    response = JSONResponse({"error": error, "message": message, "detail": []}, status)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def _validation_error(_: Request, exc: Exception) -> JSONResponse:
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
    return JSONResponse({"error": "validation_error", "message": message, "detail": detail}, 422)


def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    status = next(code for cls, code in ERROR_STATUS.items() if isinstance(exc, cls))
    return JSONResponse({"error": type(exc).__name__, "message": str(exc), "detail": []}, status)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the banditrec app for `settings` (default: from the environment)."""
    settings = settings or Settings()
    schema = settings.feature_schema  # read now: the request model and the docs depend on it

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine, loaded = load_engine(settings)
        app.state.engine, app.state.model_loaded = engine, loaded
        logger.info("Serving model %s (loaded from file: %s).", engine.model.version, loaded)
        yield

    app = FastAPI(
        title="banditrec",
        summary="Real-time contextual-bandit decisions that learn online.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for error_type in ERROR_STATUS:
        app.add_exception_handler(error_type, _domain_error)

    def get_engine(request: Request) -> Engine:
        engine: Engine = request.app.state.engine
        return engine

    EngineDep = Annotated[Engine, Depends(get_engine)]
    RecommendRequest = recommend_request_model(schema)

    @app.get("/health")
    async def health(request: Request, engine: EngineDep) -> HealthResponse:
        """Liveness and what is being served."""
        policy = engine.policy
        return HealthResponse(
            model_loaded=request.app.state.model_loaded,
            n_actions=schema.n_actions,
            alpha=float(getattr(policy, "alpha", 0.0)),
            model_version=engine.model.version,
            schema_hash=schema.hash,
        )

    @app.post("/recommend_action", responses={413: {}, 415: {}})
    async def recommend_action(
        body: RecommendRequest,  # type: ignore[valid-type]
        engine: EngineDep,
    ) -> RecommendResponse:
        """The next best action for a user, sampled with an explicit, logged probability."""
        context: dict[str, Any] = body.model_dump()  # type: ignore[attr-defined]
        decision = engine.decide(context)
        return RecommendResponse(
            user_id=context["user_id"],
            recommended_action=decision.action,
            ucb_score=float(decision.scores[decision.action_index]),
            scores=decision.score_by_action(schema.actions),
            alpha=float(getattr(engine.policy, "alpha", 0.0)),
            event_id=decision.event_id,
            probability=decision.probability,
            probabilities=decision.probability_by_action(schema.actions),
            model_version=decision.model_version,
        )

    return app


def __getattr__(name: str) -> Any:
    # `uvicorn banditrec.api:app` imports `app`; build it lazily so importing this module
    # (tests, `create_app` users) does not read the environment or the schema file.
    if name == "app":
        return create_app()
    raise AttributeError(name)


# For type checkers and `from banditrec.api import app`.
app: FastAPI
