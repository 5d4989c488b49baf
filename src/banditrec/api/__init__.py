"""The HTTP service: the seed's contract, the Personalizer-shaped v1 API, health and metrics.

`create_app(settings)` builds an app from the route declarations (`routes.ROUTES`): each
becomes a FastAPI route (documented, answering every error) and, for the decision and reward
routes, an entry of the hot path, which answers them without FastAPI's per-request cost.
`create_serving_app()` is the app of a server process (`banditrec serve`,
``uvicorn banditrec.api:app``): configured from ``BANDITREC_*`` variables.

Modules: `route` (the declaration and what follows from it), `routes` (the declarations),
`hot_path`, `guard` (413/415, reads bodies), `lifespan` (start-up), `docs` (OpenAPI, /docs).
"""

# No `from __future__ import annotations`: FastAPI reads the signatures at runtime.

from typing import Any

from fastapi import FastAPI

from banditrec.api.docs import docs_app, install_openapi
from banditrec.api.guard import RequestGuard
from banditrec.api.hot_path import FrontDoorApp, HotLane, HotRoutes
from banditrec.api.lifespan import StartupFailure, base_model, lifespan
from banditrec.api.routes import ROUTES
from banditrec.config import Settings
from banditrec.decisions import DecisionWork
from banditrec.errors import ANSWERED_ERRORS, handle_error, handle_server_error
from banditrec.metrics import Metrics, MetricsMiddleware
from banditrec.responses import FastJSONResponse

__all__ = ["HotRoutes", "app", "base_model", "create_app", "create_serving_app"]


def create_app(
    settings: Settings | None = None, *, serving: bool = False, hot_path: bool = True
) -> FastAPI:
    """Build the banditrec app for `settings` (default: from the environment).

    Parameters
    ----------
    settings
        Every knob of the service.
    serving
        True in a server process (`create_serving_app`): a configured model path must
        exist, and the garbage collector is frozen after start-up.
    hot_path
        False sends every request through FastAPI (the tests compare both paths).
    """
    settings = settings or Settings()
    metrics = Metrics(actions=settings.feature_schema.actions)
    app = docs_app(
        title="banditrec",
        summary="Real-time contextual-bandit decisions that learn online.",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=FastJSONResponse,
    )
    app = FrontDoorApp.adopt(app)
    state = app.state
    state.settings, state.metrics, state.serving = settings, metrics, serving
    state.hot_path = hot_path
    state.api_keys = settings.api_keys
    state.decisions = DecisionWork(metrics, settings.alpha or 0.0, settings.reward_window_seconds)
    hot_routes = HotRoutes()
    bound = [route.bind(settings) for route in ROUTES]
    for route in bound:
        route.add_to(app, keys_configured=bool(settings.api_keys))
        if route.route.hot and hot_path:
            hot_routes.add(route)
    install_openapi(
        app, [r.request_model for r in bound if r.request_model], bool(settings.api_keys)
    )
    # Every HTTP request passes these two in front of FastAPI (`FrontDoorApp`); a hot one
    # is answered by `hot_routes` without entering FastAPI at all.
    guard = RequestGuard(
        app.framework,
        max_body_bytes=settings.max_body_bytes,
        hot_routes=hot_routes,
        path_limits={
            "/v1/rank/batch": settings.max_batch_body_bytes,
            "*/rank/batch": settings.max_batch_body_bytes,  # /v1/loops/{loop}/rank/batch
        },
    )
    general = MetricsMiddleware(guard, metrics=metrics)  # outer: 413/415 are timed too
    app.front = HotLane(hot_routes, guard, metrics, general) if hot_path else general
    app.add_middleware(StartupFailure)
    for error in ANSWERED_ERRORS:
        app.add_exception_handler(error, handle_error)
    app.add_exception_handler(Exception, handle_server_error)
    return app


def create_serving_app() -> FastAPI:
    """The app of a server process, configured from ``BANDITREC_*`` variables.

    Unlike `create_app`'s default, a model path that was set and does not exist is a
    start-up error, and the collector is frozen once the model is loaded.
    """
    return create_app(Settings(), serving=True)


_app: FastAPI | None = None


def __getattr__(name: str) -> Any:
    # `uvicorn banditrec.api:app` imports `app`; build it on first access, and once, so
    # importing this module (tests, `create_app` users) does not read the environment.
    global _app
    if name == "app":
        if _app is None:
            _app = create_serving_app()
        return _app
    raise AttributeError(name)


# For type checkers and `from banditrec.api import app`.
app: FastAPI
