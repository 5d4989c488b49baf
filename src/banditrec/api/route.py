"""`Route`: one HTTP route, declared once; its FastAPI route and its hot-path entry follow.

A declaration names the path, the method, the request model, the least role, the work, the
response model and the error statuses the work itself may answer. `BoundRoute` (a route
bound to one app's settings) does everything between the request and the work, once, for
both paths: the key check, path parameter and body validation, calling the work. FastAPI
contributes only routing, the OpenAPI documentation and its exception handlers; the hot
path (`banditrec.api.hot_path`) calls the same `BoundRoute.call` without them.

The body arrives as bytes read by `RequestGuard`, which has already checked its size and
content type; `parse_json` is the only JSON parser of request bodies.
"""

import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.types import Scope

from banditrec.auth import SECURITY_REQUIREMENT, AuthError, Role, authorize, key_table
from banditrec.config import Settings
from banditrec.errors import InvalidJSONError, RequestValidationError
from banditrec.loops.keys import other_loop_key
from banditrec.responses import FastJSONResponse
from banditrec.schemas import ErrorResponse

__all__ = ["BODY_KEY", "BoundRoute", "Route", "Work", "header", "parse_json"]

#: Where `RequestGuard` leaves the body it read, in the ASGI scope.
BODY_KEY = "banditrec.body"

#: What a route does: called with ``app.state``, then the validated body (for a route with
#: a request model), then the validated path parameters by name. It returns the response
#: content (JSON-able), or a `Response` for answers that are not JSON.
Work = Callable[..., Awaitable[Any]]

_ERROR_DESCRIPTIONS = {
    400: "The body is not JSON (invalid_json).",
    401: "No API key, or an unknown one (missing_api_key, invalid_api_key).",
    403: "The API key's role is too low (insufficient_role).",
    404: "The event or action named does not exist.",
    409: "Conflict with the current state (see the message).",
    410: "The reward window has closed; the reward was recorded, not learned.",
    413: "The body is larger than the configured limit (payload_too_large).",
    415: "A non-empty body whose Content-Type is not JSON (unsupported_media_type).",
    422: "A field failed validation, each one named in detail (validation_error), or the "
    "request cannot be served as asked (invalid_context, unknown_action, no_eligible_action).",
    500: "A bug; the traceback is in the server's log (internal_error).",
    503: "The event log cannot be reached now; retry later (store_unavailable).",
}


@dataclass(frozen=True)
class Route:
    """The declaration of one route.

    Parameters
    ----------
    method, path
        As routed; ``{name}`` segments are path parameters.
    work
        What the route does (see `Work`); its docstring documents the route.
    response_model
        The documented body of a successful answer.
    role
        The least role a key needs; None for a public route.
    body
        Builds the request model from the settings (schema, reward range); None: no body.
    params
        Each path parameter's type, validated like a body field (422 naming it).
    errors
        The error statuses the work itself may answer, beyond those every route of its
        kind may (401/403, 400/413/415/422, 500), which are added here.
    status_code
        The status of a successful answer.
    hot
        Answered by the hot path too (the decision and reward routes).
    public
        Listed in the OpenAPI document.
    """

    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str
    work: Work
    response_model: Any = None
    role: Role | None = None
    body: Callable[[Settings], type[BaseModel]] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    status_code: int = 200
    hot: bool = False
    public: bool = True
    responses: Mapping[int | str, Any] = field(default_factory=dict)

    def bind(self, settings: Settings) -> "BoundRoute":
        """This route with its request model built for `settings`."""
        return BoundRoute(self, self.body(settings) if self.body is not None else None)


class BoundRoute:
    """A `Route` of one app: validates and calls its work, and adds its FastAPI route."""

    def __init__(self, route: Route, request_model: type[BaseModel] | None) -> None:
        self.route = route
        self.request_model = request_model
        self._params = {name: TypeAdapter(kind) for name, kind in route.params.items()}
        # Looked up once: a missing attribute of a pydantic model class costs an exception
        # inside its metaclass's __getattr__ (~1 µs a request).
        self._validate_fast: Callable[[bytes], Any] | None = getattr(
            request_model, "validate_fast", None
        )
        self.api_route: APIRoute | None = None  # set by `add_to`

    def call(self, scope: Scope, body: bytes) -> Awaitable[Any]:
        """Check the key, validate the path parameters and the body; the work, to await.

        A plain function returning the work's coroutine (as is `run`): a request waits on
        its work, and on its decision's commit, through two frames fewer.

        Raises
        ------
        AuthError, RequestValidationError, InvalidJSONError
            For a request that is not in order (in this order of checks: a client without
            a valid key learns nothing about the body).
        Exception
            Whatever the work raises (domain errors).
        """
        app = scope["app"]
        route = self.route
        if route.role is not None:
            keys = key_table(app)
            if keys:
                try:
                    authorize(
                        keys,
                        header(scope, b"authorization"),
                        header(scope, b"x-api-key"),
                        route.role,
                    )
                except AuthError as exc:  # a named loop's key says which loop it is for
                    raise other_loop_key(app, scope, exc, "default") from None
        return self.run(app.state, scope, body)

    def run(self, state: Any, scope: Scope, body: bytes) -> Awaitable[Any]:
        """Validate the path parameters and the body, and run the work on `state`
        (``app.state``, or a named loop's state: `banditrec.api.loop_routes`)."""
        route = self.route
        raw_params: Mapping[str, str] = scope.get("path_params", {})
        params: dict[str, Any] = {}
        for name, adapter in self._params.items():
            try:
                params[name] = adapter.validate_python(raw_params[name])
            except ValidationError as exc:
                raise RequestValidationError.from_pydantic(exc, prefix=name) from None
        if self.request_model is None:
            return route.work(state, **params)
        fast = self._validate_fast  # batches: orjson, columns
        accepted = fast(body) if fast is not None else None
        if accepted is not None:  # None: declined, validated below (the exact errors)
            return route.work(state, accepted, **params)
        try:
            # Parsed and validated in one pass by pydantic-core: half the time of json.loads
            # and model_validate. What it refuses is parsed and validated again below, the
            # reference way, so every error reads as before; it accepts nothing that way
            # refuses, with the same values (tests/test_hot_path.py checks both).
            validated = self.request_model.model_validate_json(body)
        except ValidationError:
            pass
        else:
            return route.work(state, validated, **params)
        data = parse_json(body)
        try:
            validated = self.request_model.model_validate(data)
        except ValidationError as exc:
            raise RequestValidationError.from_pydantic(exc) from None
        return route.work(state, validated, **params)

    def add_to(self, app: FastAPI, keys_configured: bool) -> APIRoute:
        """Add the FastAPI route: routing, OpenAPI documentation, FastAPI's error handlers."""
        route = self.route

        async def endpoint(request: Request) -> Response:
            body = request.scope.get(BODY_KEY)
            if body is None:  # not through `RequestGuard` (it reads every POST body)
                body = await request.body() if self.request_model is not None else b""
            content = await self.call(request.scope, body)
            if isinstance(content, Response):
                return content
            return FastJSONResponse(content, route.status_code)

        app.add_api_route(
            route.path,
            endpoint,
            methods=[route.method],
            name=route.work.__name__,
            description=inspect.getdoc(route.work) or "",
            response_model=route.response_model,
            status_code=route.status_code,
            responses={**self._error_responses(keys_configured), **route.responses},
            openapi_extra=self._openapi_extra(keys_configured),
            include_in_schema=route.public,
        )
        api_route = app.router.routes[-1]
        assert isinstance(api_route, APIRoute)
        self.api_route = api_route
        return api_route

    def _error_responses(self, keys_configured: bool) -> dict[int | str, Any]:
        route = self.route
        statuses = {500, *route.errors}
        if route.role is not None and keys_configured:
            statuses |= {401, 403}
        if route.method in ("POST", "PUT"):  # `RequestGuard` checks every such body
            statuses |= {413, 415}
        if self.request_model is not None:
            statuses |= {400, 422}
        if route.params:
            statuses.add(422)
        return {
            status: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[status]}
            for status in sorted(statuses)
        }

    def _openapi_extra(self, keys_configured: bool) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self._params:
            extra["parameters"] = [
                {"name": name, "in": "path", "required": True, "schema": adapter.json_schema()}
                for name, adapter in self._params.items()
            ]
        if self.request_model is not None:
            ref = f"#/components/schemas/{self.request_model.__name__}"
            extra["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": ref}}},
            }
        if self.route.role is not None and keys_configured:
            extra["security"] = SECURITY_REQUIREMENT
        return extra


def parse_json(body: bytes) -> Any:
    """The request body as JSON data, for validation by the request model.

    Raises
    ------
    RequestValidationError
        For an empty body ("body: Field required").
    InvalidJSONError
        For bytes that are not JSON.
    """
    if not body:
        raise RequestValidationError([{"loc": (), "msg": "Field required"}])
    try:
        # Python's parser, not orjson: orjson turns integers beyond 64 bits into floats
        # (10**30 would be "not a valid integer" instead of "less than or equal to ...").
        # It also reads NaN and Infinity, which the models then refuse by field name.
        return json.loads(body)
    except UnicodeDecodeError:
        raise InvalidJSONError("it is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InvalidJSONError(f"{exc.msg} at line {exc.lineno}, column {exc.colno}") from None


def header(scope: Scope, name: bytes) -> str:
    """The first value of header `name` (lower case), as Starlette's `Headers.get` reads it."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""
