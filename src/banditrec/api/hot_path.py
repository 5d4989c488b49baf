"""`HotRoutes`: the decision and reward routes, answered without FastAPI's per-request machinery.

FastAPI spends more time per request (dependency resolution, request objects, several layers
of middleware) than deciding and logging take. A request to a hot route is therefore answered
here, by the same work function the FastAPI route calls (`RequestGuard` calls this with the
body it has read), and only when everything is in order: the API key is good, the body is
JSON that validates, and no dependency is overridden. Anything else (a missing key, a 422,
another route) goes on to FastAPI unchanged, which answers it exactly as before, so errors
keep their status and message. Domain errors raised while deciding (404 unknown event, 410
late reward, ...) are rendered by the app's own handler (`banditrec.errors.domain_error`).
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.types import Scope, Send

from banditrec.auth import AuthError, Role, authorize, key_table, require
from banditrec.decisions import engine_of, get_engine
from banditrec.errors import DOMAIN_ERRORS, domain_error_answer
from banditrec.responses import send_json

__all__ = ["HotRoutes", "Work"]

#: What a hot route does, as its FastAPI route does too: called with the engine, the
#: validated body and the route's path parameters (by name); returns the response body.
Work = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class _Hot:
    route: APIRoute
    validate: Callable[[Any], BaseModel]
    work: Work
    role: Role | None  # what the route's key check needs; None: the route is open


class HotRoutes:
    """The hot routes of one app, called by `RequestGuard` with each POST body it has read.

    The matching FastAPI route object is put in the scope, as the router would, so metrics
    label the request by its route template.
    """

    def __init__(self) -> None:
        self._exact: dict[str, _Hot] = {}
        self._patterns: list[_Hot] = []

    def add(self, route: APIRoute, request_model: type[BaseModel], work: Work) -> None:
        """Answer valid POST requests to `route` with `work`'s body and status 200, as the
        route itself does (it returns ``FastJSONResponse(await work(...))``).

        The key check is the route's own: the role its `banditrec.auth.require` dependency
        asks for. A route with any other dependency (than the engine) is refused, since the
        hot path would skip it.
        """
        if "POST" not in (route.methods or ()):
            raise ValueError(f"{route.path}: only POST routes can be hot.")
        role: Role | None = None
        for dependency in route.dependant.dependencies:
            guards = [r for r in Role if dependency.call is require(r)]
            if guards:
                role = guards[0]
            elif dependency.call is not get_engine:
                raise ValueError(f"{route.path}: the hot path cannot run {dependency.call!r}.")
        hot = _Hot(route, request_model.model_validate, work, role)
        if route.param_convertors:
            self._patterns.append(hot)
        else:
            self._exact[route.path] = hot

    async def __call__(self, scope: Scope, body: bytes, send: Send) -> bool:
        """Answer the request if it is for a hot route and in order; return whether it was."""
        if scope["method"] != "POST" or scope.get("root_path"):
            return False
        path: str = scope["path"]
        params: dict[str, Any] = {}
        hot = self._exact.get(path)
        if hot is None:
            for candidate in self._patterns:
                match = candidate.route.path_regex.match(path)
                if match is not None:
                    convertors = candidate.route.param_convertors
                    params = {k: convertors[k].convert(v) for k, v in match.groupdict().items()}
                    hot = candidate
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
        if hot.role is not None and not _key_allows(app, scope, hot.role):
            return False  # FastAPI's route answers it
        try:
            validated = hot.validate(data)
        except ValidationError:
            return False
        scope["route"] = hot.route
        try:
            status, content = 200, await hot.work(engine_of(app), validated, **params)
        except DOMAIN_ERRORS as exc:
            status, content = domain_error_answer(exc)
        await send_json(send, status, content)
        return True


def _key_allows(app: FastAPI, scope: Scope, role: Role) -> bool:
    keys = key_table(app)
    if not keys:
        return True
    try:
        authorize(
            keys, _first_header(scope, b"authorization"), _first_header(scope, b"x-api-key"), role
        )
    except AuthError:
        return False
    return True


def _first_header(scope: Scope, name: bytes) -> str:
    """The first value of header `name` (lower case), as Starlette's `Headers.get` reads it."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""
