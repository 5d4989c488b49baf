"""The lifecycle's routes: apprentice status, shadow candidates, versions and rollbacks.

Declared here once (`LIFECYCLE_ROUTES`, part of `banditrec.api.routes.ROUTES`). Every switch
they make is a learn-stream entry (`banditrec.lifecycle.switching`): the answer names its
``seq``, the learn event from which every replica serves the new way.
"""

import asyncio
import base64
import binascii
import time
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StringConstraints,
)
from starlette.datastructures import State

from banditrec.api.route import Route
from banditrec.auth import Role
from banditrec.errors import RequestValidationError
from banditrec.lifecycle.records import CandidateSpec
from banditrec.lifecycle.responses import (
    CandidateStatus,
    LifecycleStatus,
    ListedVersion,
    Switch,
    UploadResponse,
)
from banditrec.lifecycle.service import Lifecycle
from banditrec.schemas import EVENT_ID_PATTERN

__all__ = ["LIFECYCLE_ROUTES"]

Name = Annotated[
    str,
    StringConstraints(strict=True, pattern=EVENT_ID_PATTERN),
    Field(description="1 to 128 characters from A-Z a-z 0-9 . _ : -."),
]
Reason = Annotated[str, StringConstraints(max_length=500)]


def _model_file(value: str) -> str:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the model file must be base64 (standard alphabet, padded)") from None
    return value


ModelFile = Annotated[
    str,
    StringConstraints(strict=True, min_length=1),
    AfterValidator(_model_file),
    Field(description="A model file (`banditrec train`, GET /v1/admin/model), base64."),
]


class ServeModeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["own", "apprentice"] = Field(
        description="own: serve banditrec's choices; apprentice: serve the app's baseline."
    )
    reason: Reason = Field("admin", description="Written on the timeline.")


class CandidateRequest(BaseModel):
    """A registered policy with parameters, or a model file (exactly one of the two)."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    policy: str | None = Field(None, description="A registered policy, e.g. linucb.")
    params: dict[str, JsonValue] = Field(default_factory=dict)
    exploration: str | None = None
    exploration_params: dict[str, float] = Field(default_factory=dict)
    model_base64: ModelFile | None = None

    def spec(self) -> CandidateSpec:
        if (self.policy is None) == (self.model_base64 is None):
            raise RequestValidationError(
                [{"loc": ("policy",), "msg": "give exactly one of policy or model_base64"}]
            )
        model = None if self.model_base64 is None else base64.b64decode(self.model_base64)
        return CandidateSpec(
            self.name, time.time(), self.policy, dict(self.params), self.exploration,
            dict(self.exploration_params), model,
        )  # fmt: skip


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: StrictBool = Field(
        False, description="Promote even if the interval does not support it."
    )
    reason: Reason = Field("admin", description="Written on the timeline.")


class UploadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_base64: ModelFile
    label: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="What this model is, for the list of versions."
    )
    activate: StrictBool = Field(False, description="Serve it now (a promote entry in the log).")


def _lifecycle(state: State) -> Lifecycle:
    lifecycle: Lifecycle = state.lifecycle
    return lifecycle


async def _blocking(fn: Any, *args: Any) -> Any:
    # Records are written to the store: off the event loop.
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def lifecycle_status(state: State) -> dict[str, Any]:
    """What is served (own choices or the apprentice's baseline, which version), the
    apprentice's estimated lift over the baseline, each shadow candidate's and the
    guardrail's estimates with their intervals, and every switch so far (the timeline)."""
    status: dict[str, Any] = await _blocking(_lifecycle(state).status)
    return status


async def serve_mode(state: State, body: ServeModeRequest) -> dict[str, Any]:
    """Serve banditrec's own choices, or the app's baseline again (apprentice mode), from
    the next learn event on, on every replica."""
    record = await _lifecycle(state).set_serving(body.mode, f"admin: {body.reason}")
    return record.to_dict()


async def list_candidates(state: State) -> list[dict[str, Any]]:
    """Every shadow candidate with its estimated value and lift over the live policy."""
    candidates: list[dict[str, Any]] = await _blocking(_lifecycle(state).candidates)
    return candidates


async def add_candidate(state: State, body: CandidateRequest) -> list[dict[str, Any]]:
    """Run a candidate in shadow: it learns from the live stream from now on and is scored
    off-policy on every learned round."""
    lifecycle = _lifecycle(state)
    await _blocking(lifecycle.add_candidate, body.spec())
    candidates: list[dict[str, Any]] = await _blocking(lifecycle.candidates)
    return candidates


async def promote_candidate(state: State, body: PromoteRequest, name: str) -> dict[str, Any]:
    """Serve a candidate (its current state) from the next learn event on. Refused (409)
    unless its lift's lower bound beats the live policy by the margin, or ``force``."""
    reason = f"admin: {body.reason}" + (" (forced)" if body.force else "")
    record = await _lifecycle(state).promote(name, force=body.force, reason=reason)
    return record.to_dict()


async def remove_candidate(state: State, name: str) -> list[dict[str, Any]]:
    """Stop a shadow candidate. The body may be empty."""
    lifecycle = _lifecycle(state)
    await _blocking(lifecycle.remove_candidate, name)
    candidates: list[dict[str, Any]] = await _blocking(lifecycle.candidates)
    return candidates


async def list_versions(state: State) -> list[dict[str, Any]]:
    """Every model version kept: the base, promotions, uploads and rollback states."""
    versions: list[dict[str, Any]] = await _blocking(_lifecycle(state).versions)
    return versions


async def upload_model(state: State, body: UploadRequest) -> dict[str, Any]:
    """Keep a model file as a new version; serve it at once with ``activate``. It starts
    at the current end of the log, like a newly trained base model."""
    data = base64.b64decode(body.model_base64)
    version, record = await _lifecycle(state).upload(data, body.label, body.activate)
    return {"version": version.to_dict(), "switch": None if record is None else record.to_dict()}


async def activate_version(state: State, version_id: str) -> dict[str, Any]:
    """Roll back (or forward) to any version, from the next learn event on, on every
    replica. The body may be empty."""
    record = await _lifecycle(state).rollback(version_id, "admin")
    return record.to_dict()


_CANDIDATES = list[CandidateStatus]

#: Each route with its response model (`banditrec.lifecycle.responses`); error answers are
#: the one error body, declared by `Route` from ``errors``.
LIFECYCLE_ROUTES: tuple[Route, ...] = (
    Route(
        "GET", "/v1/lifecycle", lifecycle_status, LifecycleStatus, Role.reader, errors=(503,)
    ),
    Route(
        "POST", "/v1/admin/lifecycle/serve", serve_mode, Switch, Role.admin,
        body=lambda _: ServeModeRequest, errors=(503,),
    ),
    Route("GET", "/v1/admin/candidates", list_candidates, _CANDIDATES, Role.admin),
    Route(
        "POST", "/v1/admin/candidates", add_candidate, _CANDIDATES, Role.admin,
        body=lambda _: CandidateRequest, errors=(409, 503), status_code=201,
    ),
    Route(
        "POST", "/v1/admin/candidates/{name}/promote", promote_candidate, Switch, Role.admin,
        body=lambda _: PromoteRequest, params={"name": Name}, errors=(404, 409, 503),
    ),
    Route(
        "POST", "/v1/admin/candidates/{name}/remove", remove_candidate, _CANDIDATES,
        Role.admin, params={"name": Name}, errors=(404, 503),
    ),
    Route(
        "GET", "/v1/admin/models", list_versions, list[ListedVersion], Role.admin, errors=(503,)
    ),
    Route(
        "POST", "/v1/admin/models", upload_model, UploadResponse, Role.admin,
        body=lambda _: UploadRequest, errors=(503,), status_code=201,
    ),
    Route(
        "POST", "/v1/admin/models/{version_id}/activate", activate_version, Switch,
        Role.admin, params={"version_id": Name}, errors=(404, 503),
    ),
)  # fmt: skip
