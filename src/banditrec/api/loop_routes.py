"""The named loops' routes: ``/v1/loops/{loop}/...`` and the loops' admin API.

Every route of the default loop that a loop has too (`LOOPED_PATHS`) is declared again
under ``/v1/loops/{loop}`` by `loop_route`, with the same work: `LoopBoundRoute` finds the
loop (404 ``loop_not_found``), checks the key against the server's keys and the loop's own
(`banditrec.loops.keys`), validates the body with the loop's own request model (its schema,
its reward range) and runs the work on the loop's state instead of ``app.state``. The
decision and reward routes stay hot. ``/v1/loops/default/...`` is the default loop.

``GET /v1/loops`` lists the loops; ``GET``, ``PUT`` and ``DELETE /v1/loops/{loop}`` read,
create and delete one (`banditrec.loops.LoopRegistry`).
"""

# No `from __future__ import annotations`: FastAPI reads the signatures at runtime.

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError
from starlette.datastructures import State
from starlette.types import Scope

from banditrec.api.route import BoundRoute, Route, header
from banditrec.auth import Role, key_table
from banditrec.config import Settings
from banditrec.errors import LoopNotFoundError, RequestValidationError
from banditrec.loops import DEFAULT_LOOP, LOOP_NAME_PATTERN, LoopRegistry, LoopSpec
from banditrec.loops.keys import authorize_loop
from banditrec.responses import FastJSONResponse

__all__ = ["LOOPED_PATHS", "LoopBoundRoute", "LoopName", "LoopRoute", "loop_routes"]


def _check_name(name: str) -> str:
    if not re.match(LOOP_NAME_PATTERN, name):
        raise PydanticCustomError(
            "loop_name",
            "The loop name '{name}' is not valid: use 1 to 63 lower-case letters, digits, "
            "'-' and '_', starting with a letter or digit",
            {"name": name},
        )
    return name


LoopName = Annotated[
    str,
    AfterValidator(_check_name),
    WithJsonSchema({"type": "string", "pattern": LOOP_NAME_PATTERN}),
]
"""A loop's name in a path: 1 to 63 lower-case letters, digits, '-' and '_'."""

_LOOP_NAME = TypeAdapter(LoopName)

#: The default loop's routes every named loop has too, under ``/v1/loops/{loop}``.
LOOPED_PATHS: frozenset[str] = frozenset(
    {
        "/health", "/v1/rank", "/v1/rank/batch", "/v1/events/{event_id}/reward",
        "/v1/events/{event_id}/activate", "/v1/model", "/v1/actions", "/v1/admin/model",
        "/v1/admin/snapshot", "/v1/admin/actions", "/v1/admin/actions/{action_id}/{change}",
        "/v1/admin/users/{user_id}", "/v1/lifecycle", "/v1/admin/lifecycle/serve",
        "/v1/admin/candidates", "/v1/admin/candidates/{name}/promote",
        "/v1/admin/candidates/{name}/remove", "/v1/admin/models",
        "/v1/admin/models/{version_id}/activate",
    }
)  # fmt: skip


@dataclass(frozen=True)
class LoopRoute(Route):
    """A default-loop route (`inner`) declared again for every named loop."""

    inner: Route | None = None

    def bind(self, settings: Settings) -> "LoopBoundRoute":
        assert self.inner is not None
        return LoopBoundRoute(self, self.inner.bind(settings))


class LoopBoundRoute(BoundRoute):
    """A `LoopRoute` of one app: finds the loop, checks its keys, runs the work on it.

    Parameters
    ----------
    route
        The declaration under ``/v1/loops/{loop}``.
    default
        Its inner route bound to the default loop (``/v1/loops/default/...`` calls it).
    """

    def __init__(self, route: LoopRoute, default: BoundRoute) -> None:
        # No request model of its own: each loop has its own; the documentation refers to
        # the default loop's (`_openapi_extra`), which the default route documents.
        super().__init__(route, None)
        assert route.inner is not None
        self.inner = route.inner
        self.default = default

    async def call(self, scope: Scope, body: bytes) -> Any:
        app = scope["app"]
        raw_name = scope.get("path_params", {}).get("loop", "")
        try:
            name: str = _LOOP_NAME.validate_python(raw_name)
        except ValidationError as exc:
            raise RequestValidationError.from_pydantic(exc, prefix="loop") from None
        if name == DEFAULT_LOOP:
            return await self.default.call(scope, body)
        registry: LoopRegistry = app.state.loops
        role = self.route.role
        try:
            loop = await registry.get(name)
        except LoopNotFoundError:
            if role is not None:  # a client without a valid key learns nothing, not even this
                self._authorize(scope, key_table(app), {}, registry, Role.reader, name)
            raise
        if role is not None:
            self._authorize(scope, key_table(app), loop.key_roles, registry, role, name)
        key = (self.inner.method, self.inner.path)  # GET and POST may share a path
        bound = loop.bound_routes.get(key)
        if bound is None:
            bound = loop.bound_routes[key] = self.inner.bind(loop.settings)
        return await bound.run(loop.state, scope, body)

    @staticmethod
    def _authorize(
        scope: Scope,
        server_keys: Any,
        loop_keys: Any,
        registry: LoopRegistry,
        needed: Role,
        name: str,
    ) -> None:
        authorization, x_api_key = header(scope, b"authorization"), header(scope, b"x-api-key")
        authorize_loop(
            server_keys, loop_keys, registry.scoped_loops, authorization, x_api_key, needed, name
        )

    def _error_responses(self, keys_configured: bool) -> dict[int | str, Any]:
        # Documented as the server's keys say (a loop's own keys are not in the document).
        responses = self.default._error_responses(keys_configured)
        return {**responses, **super()._error_responses(keys_configured)}

    def _openapi_extra(self, keys_configured: bool) -> dict[str, Any]:
        extra = super()._openapi_extra(keys_configured)
        if self.default.request_model is not None:
            ref = f"#/components/schemas/{self.default.request_model.__name__}"
            extra["requestBody"] = {
                "required": True,
                "description": "As the default loop's, with the loop's own schema.",
                "content": {"application/json": {"schema": {"$ref": ref}}},
            }
        return extra


def loop_route(inner: Route) -> LoopRoute:
    """`inner` (a default-loop route) under ``/v1/loops/{loop}``, with the same work."""
    path = "/v1/loops/{loop}" + inner.path.removeprefix("/v1")
    return LoopRoute(
        inner.method, path, inner.work, inner.response_model, inner.role, None,
        {"loop": LoopName, **inner.params}, (*inner.errors, 404), inner.status_code,
        inner.hot, inner.public, inner.responses, inner=inner,
    )  # fmt: skip


# -- the loops' admin API --------------------------------------------------------------------


class LoopDeleted(BaseModel):
    name: str
    deleted: bool = Field(description="Always true: the loop no longer serves.")


class LoopInfo(BaseModel):
    """A loop: its definition (keys by role only), what it serves and how much it learned."""

    name: str
    created_at: float | None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    settings: dict[str, Any]
    api_keys: dict[str, int]
    actions: list[str]
    policy: str
    model_version: str
    n_updates: int
    schema_hash: str


async def list_loops(state: State) -> list[dict[str, Any]]:
    """Every loop: the default one first, then the named loops by name."""
    registry: LoopRegistry = state.loops
    loops = [_default_info(state)]
    for record in registry.records():
        try:
            loops.append((await registry.get(record.name)).describe())
        except LoopNotFoundError:  # deleted meanwhile
            continue
    return loops


async def get_loop(state: State) -> dict[str, Any]:
    """One loop: its definition (its keys by role, never the keys), what it serves."""
    describe = getattr(state, "describe_loop", None)  # a named loop's state has it
    return _default_info(state) if describe is None else dict(describe())


async def put_loop(state: State, body: LoopSpec, loop: str) -> FastJSONResponse:
    """Create or redefine the loop: its schema (context fields and actions), its settings
    (policy, exploration, rewards, constraints, lifecycle) and its own API keys. 201 when
    created: it serves at once, from the prior (or ``loops/<name>.npz`` beside the model
    file), on every worker. 200 when a loop of that name exists: with this very definition
    nothing changes; with new settings or keys it is reopened with them on every worker
    (its log replayed). 409 when it exists with another schema."""
    registry: LoopRegistry = state.loops
    created, outcome = await registry.create(loop, body)
    return FastJSONResponse(created.describe(), 201 if outcome == "created" else 200)


async def delete_loop(state: State, loop: str) -> dict[str, Any]:
    """Stop the loop on every worker and forget its definition. Its event log, snapshots and
    archive stay on disk (or in Redis): creating it again with the same schema serves from
    them; with another schema, remove them first."""
    registry: LoopRegistry = state.loops
    if loop == DEFAULT_LOOP:
        raise RequestValidationError(
            [{"loc": (), "msg": "The default loop cannot be deleted"}], prefix="loop"
        )
    await registry.delete(loop)
    return {"name": loop, "deleted": True}


def _default_info(state: State) -> dict[str, Any]:
    engine = state.engine
    settings: Settings = state.settings
    return {
        "name": DEFAULT_LOOP,
        "created_at": None,
        "schema": None,
        "settings": {"policy": settings.policy},
        "api_keys": {role.value: 0 for role in Role},
        "actions": list(engine.actions),
        "policy": engine.policy.name,
        "model_version": engine.model_version,
        "n_updates": int(engine.policy.n_updates_.sum()),
        "schema_hash": engine.schema.hash,
    }


def loop_routes(routes: tuple[Route, ...]) -> tuple[Route, ...]:
    """The loops' admin routes, and each route of `routes` in `LOOPED_PATHS` per loop."""
    looped = tuple(loop_route(route) for route in routes if route.path in LOOPED_PATHS)
    missing = LOOPED_PATHS - {route.path for route in routes}
    if missing:  # a renamed default route must not silently vanish from the loops
        raise RuntimeError(f"Looped routes without a default route: {sorted(missing)}.")
    name = {"loop": LoopName}
    # GET /v1/loops/{loop} is a loop route (a loop's own reader key may read it); its
    # default-loop route has no path of its own.
    info = loop_route(Route("GET", "", get_loop, LoopInfo, Role.reader))
    admin = (
        Route("GET", "/v1/loops", list_loops, list[LoopInfo], Role.reader),
        info,
        Route("PUT", "/v1/loops/{loop}", put_loop, LoopInfo, Role.admin,
              body=lambda _: LoopSpec, params=name, errors=(409,), status_code=201),
        Route("DELETE", "/v1/loops/{loop}", delete_loop, LoopDeleted, Role.admin, params=name,
              errors=(404,)),
    )  # fmt: skip
    return admin + looped
