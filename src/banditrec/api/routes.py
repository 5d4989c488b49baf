"""Every route of the service, declared once (`ROUTES`), and the work of each.

The seed's contract (``GET /health``, ``POST /recommend_action``) and the v1 API. Each work
function receives ``app.state`` (the engine, the learner, the settings, the metrics and the
`DecisionWork` that the decision and reward routes share), then the validated body and path
parameters; its docstring is the route's documentation.
"""

import asyncio
import functools
import os
from typing import Any, Literal

from pydantic import BaseModel
from starlette.datastructures import State
from starlette.responses import Response

from banditrec.api.lifecycle_routes import LIFECYCLE_ROUTES
from banditrec.api.loop_routes import loop_routes
from banditrec.api.route import Route
from banditrec.auth import Role
from banditrec.batch import RankBatchResponse, rank_batch, rank_batch_request_model
from banditrec.dashboard.page import Asset, dashboard_asset, dashboard_data, dashboard_page
from banditrec.engine import Engine
from banditrec.errors import ActionNotFoundError, EventNotFoundError
from banditrec.metrics import metrics_response
from banditrec.retention import forget_user as forget_user_everywhere
from banditrec.schemas import (
    ActionInfo,
    ActivateResponse,
    AddActionRequest,
    EventId,
    ForgetUserResponse,
    HealthResponse,
    ModelResponse,
    NonEmptyString,
    RankResponse,
    RecommendResponse,
    RewardResponse,
    SnapshotResponse,
    rank_request_model,
    recommend_request_model,
    reward_request_model,
)
from banditrec.snapshot import model_bytes
from banditrec.store import LearnKind

__all__ = ["ROUTES"]


async def health(state: State) -> dict[str, Any]:
    """Liveness and what is being served.

    ``status`` is ``ok``, or ``degraded`` while ``faults`` lists a fault (learning or
    snapshots failing; decisions are still served and logged). The answer is 200 either
    way: the process is alive, and restarting it would not fix a full disk.
    """
    engine: Engine = state.engine
    fault = getattr(state.learner, "fault", None)
    faults = [fault] if isinstance(fault, str) and fault else []
    return {
        "status": "degraded" if faults else "ok",
        "faults": faults,
        "model_loaded": state.model_loaded,
        "n_actions": len(engine.actions),
        "alpha": state.decisions.alpha(engine),
        "model_version": engine.model_version,
        "schema_hash": engine.schema.hash,
    }


async def prometheus_metrics(state: State) -> Response:
    """Prometheus metrics (text format)."""
    state.metrics.model(state.engine.model_version, state.engine.model.n_updates)
    state.loops.refresh_metrics()  # each named loop's model_updates{loop}
    return metrics_response(state.metrics)


async def ping(_: State) -> dict[str, str]:
    # A constant answer through the same app and middleware: the ceiling the decision
    # endpoints are benchmarked against.
    return {"status": "ok"}


async def recommend_action(state: State, body: BaseModel) -> dict[str, Any]:
    """The seed's endpoint: the next best action for a user, logged with its probability.

    Context fields the schema does not know are ignored."""
    result: dict[str, Any] = await state.decisions.recommend(state.engine, body)
    return result


async def rank(state: State, body: BaseModel) -> dict[str, Any]:
    """Rank the actions for a context and choose one; log the decision durably.

    A repeated ``event_id`` returns the decision logged the first time, with
    ``replayed: true``, and ``context_mismatch: true`` if it was made for another context.
    Context fields the schema does not know are ignored; unknown keys of the body are not."""
    result: dict[str, Any] = await state.decisions.rank(state.engine, body)
    return result


async def reward(state: State, body: BaseModel, event_id: str) -> dict[str, Any]:
    """Report the reward of a decision; the first one in its window is learned at once."""
    result: dict[str, Any] = await state.decisions.reward(state.engine, body, event_id=event_id)
    return result


async def activate(state: State, event_id: str) -> dict[str, Any]:
    """Activate a deferred event: from now on it is learned from (its window starts)."""
    activated = await state.engine.activate(event_id)
    if activated is None:
        raise EventNotFoundError(event_id)
    return {"event_id": event_id, "activated": activated}


async def model_info(state: State) -> dict[str, Any]:
    """The model being served: version, updates, log offset, schema hash, parameters."""
    engine: Engine = state.engine
    policy = engine.policy
    return {
        "pid": os.getpid(),  # which worker answered (several may serve one port)
        "version": engine.model_version,
        "n_updates": int(policy.n_updates_.sum()),
        "n_updates_by_action": dict(zip(engine.actions, policy.n_updates_.tolist(), strict=True)),
        "log_offset": engine.applied_offset,
        "applied_at": engine.applied_at,
        "schema_hash": engine.schema.hash,
        "policy": policy.name,
        "policy_params": policy.get_params(),
        "exploration": policy.exploration.name,
        "exploration_params": policy.exploration.get_params(),
    }


async def export_model(state: State) -> Response:
    """The live model of the worker that answers, as a model file (.npz, no pickle)."""
    data = model_bytes(state.engine.snapshot_model())
    headers = {
        "Content-Disposition": 'attachment; filename="model.npz"',
        "X-Banditrec-Pid": str(os.getpid()),
    }
    return Response(data, media_type="application/octet-stream", headers=headers)


async def snapshot(state: State) -> dict[str, Any]:
    """Write a snapshot of the live model now. The body may be empty."""
    learner = state.learner
    path = await asyncio.get_running_loop().run_in_executor(None, learner.snapshot)
    return {"path": str(path), "log_offset": learner.engine.applied_offset}


async def list_actions(state: State) -> list[dict[str, Any]]:
    """Every action: the schema's, then those added at run time, and whether it is served."""
    return _actions_body(state.engine)


async def add_action(state: State, body: AddActionRequest) -> list[dict[str, Any]]:
    """Add an action without a restart; it starts from the prior (or what is shared)."""
    await state.engine.change_action(LearnKind.add_action, body.action_id)
    return _actions_body(state.engine)


async def toggle_action(
    state: State, action_id: str, change: Literal["disable", "enable"]
) -> list[dict[str, Any]]:
    """Disable an action (never served, probability 0; what it learned is kept) or enable it
    again. Decisions logged before stay evaluable. The body may be empty."""
    engine: Engine = state.engine
    if action_id not in engine.actions:
        raise ActionNotFoundError(f"Unknown action {action_id!r}; known: {list(engine.actions)}.")
    kind = LearnKind.disable_action if change == "disable" else LearnKind.enable_action
    await engine.change_action(kind, action_id)
    return _actions_body(engine)


async def forget_user(state: State, user_id: str) -> dict[str, Any]:
    """Delete every decision of a user, and the rewards of those decisions, from the live
    event log and from the archive's Parquet files (privacy requests); say how many
    decisions went from each. Decisions are found by the ``user_id`` they were logged with
    (``/recommend_action``, or ``user_id`` in the ``/v1/rank`` body). The model keeps what
    it learned: it holds sums over all users, not their decisions. 503 while the retention
    job holds its lease for more than 30 s (nothing was removed: retry). On the default
    loop's route, the user is forgotten in every named loop too (the counts add up); on a
    loop's route (``/v1/loops/{loop}/admin/users/...``), in that loop only."""
    states = [state]
    registry = getattr(state, "loops", None)  # the app's state; a loop's has none
    if registry is not None:
        states += [(await registry.get(r.name)).state for r in registry.records()]
    live = archive = 0
    for each in states:
        settings = each.settings
        work = functools.partial(
            forget_user_everywhere,
            each.learner.store,
            settings.archive_dir,
            user_id,
            encoding_hash=settings.feature_schema.encoding_hash,
        )
        forgotten = await asyncio.get_running_loop().run_in_executor(None, work)
        live, archive = live + forgotten.live, archive + forgotten.archive
    return {"user_id": user_id, "live": live, "archive": archive}


def _actions_body(engine: Engine) -> list[dict[str, Any]]:
    n_updates = engine.policy.n_updates_.tolist()
    return [
        {"action_id": name, "enabled": name not in engine.disabled, "n_updates": n}
        for name, n in zip(engine.actions, n_updates, strict=True)
    ]


_EXPORT_RESPONSES: dict[int | str, Any] = {
    200: {
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    }
}

#: The service's routes. Statuses every route of a kind may answer (401/403 with keys,
#: 400/413/415/422 with a body, 500) are added by `Route`; ``errors`` lists the others.
ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", health, HealthResponse),
    Route("GET", "/metrics", prometheus_metrics, public=False),
    Route("GET", "/ping", ping, public=False),
    Route(
        "POST", "/recommend_action", recommend_action, RecommendResponse, Role.writer,
        body=lambda s: recommend_request_model(s.feature_schema), errors=(503,), hot=True,
    ),
    Route(
        "POST", "/v1/rank", rank, RankResponse, Role.writer,
        body=lambda s: rank_request_model(s.feature_schema), errors=(503,), hot=True,
    ),
    Route(
        "POST", "/v1/rank/batch", rank_batch, RankBatchResponse, Role.writer,
        body=lambda s: rank_batch_request_model(s.feature_schema, s.max_batch_size),
        errors=(503,), hot=True,
    ),
    Route(
        "POST", "/v1/events/{event_id}/reward", reward, RewardResponse, Role.writer,
        body=lambda s: reward_request_model(s.reward_min, s.reward_max),
        params={"event_id": EventId}, errors=(404, 409, 410, 503), hot=True,
    ),
    Route(
        "POST", "/v1/events/{event_id}/activate", activate, ActivateResponse, Role.writer,
        params={"event_id": EventId}, errors=(404, 503),
    ),
    Route("GET", "/v1/model", model_info, ModelResponse, Role.reader),
    Route(
        "GET", "/v1/admin/model", export_model, None, Role.admin, responses=_EXPORT_RESPONSES
    ),
    Route("POST", "/v1/admin/snapshot", snapshot, SnapshotResponse, Role.admin),
    Route("GET", "/v1/actions", list_actions, list[ActionInfo], Role.reader),
    Route(
        "POST", "/v1/admin/actions", add_action, list[ActionInfo], Role.admin,
        body=lambda _: AddActionRequest, errors=(409, 503), status_code=201,
    ),
    Route(
        "POST", "/v1/admin/actions/{action_id}/{change}", toggle_action, list[ActionInfo],
        Role.admin, params={"action_id": str, "change": Literal["disable", "enable"]},
        errors=(404, 503),
    ),
    Route(
        "DELETE", "/v1/admin/users/{user_id}", forget_user, ForgetUserResponse, Role.admin,
        params={"user_id": NonEmptyString}, errors=(503,),
    ),
    # The dashboard: the page and its assets are open (no data); its data needs a reader.
    Route("GET", "/dashboard", dashboard_page, public=False),
    Route("GET", "/dashboard/{name}", dashboard_asset, public=False, params={"name": Asset}),
    Route("GET", "/v1/dashboard/data", dashboard_data, dict[str, Any], Role.reader, errors=(503,)),
    *LIFECYCLE_ROUTES,
)  # fmt: skip
# Each named loop's routes (/v1/loops/{loop}/rank, ...) and the loops' admin API.
ROUTES += loop_routes(ROUTES)
