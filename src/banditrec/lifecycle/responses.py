"""The bodies the lifecycle's routes answer with, as pydantic models (for OpenAPI).

`banditrec.api.lifecycle_routes` declares each route with one of these models; the work
builds plain dicts (`Lifecycle.status`, `Lifecycle.candidates`, `Lifecycle.versions`,
`SwitchRecord.to_dict`), and tests/test_api_lifecycle.py validates the real answers against
the models, so the documentation cannot drift from what is sent. The models forbid unknown
keys for that reason: a key added to an answer must be documented here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

__all__ = [
    "ApprenticeStatus",
    "CandidateStatus",
    "EstimateBody",
    "GuardrailStatus",
    "LifecycleStatus",
    "ListedVersion",
    "ModelVersion",
    "PolicyValue",
    "Switch",
    "UploadResponse",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PolicyValue(_Strict):
    """One off-policy estimate with its bootstrap interval (None where not finite)."""

    estimator: str = Field(description="The estimator, e.g. snips.")
    value: float | None
    ci_low: float | None
    ci_high: float | None


class EstimateBody(_Strict):
    """A policy's estimated value against a reference, over the latest rounds."""

    n_rounds: int = Field(description="Learned rounds in the window.")
    effective_sample_size: float
    value: PolicyValue | None = Field(description="The policy's value.")
    reference: PolicyValue | None = Field(description="The reference's value.")
    lift: PolicyValue | None = Field(description="Value minus the reference's, paired.")


class ApprenticeStatus(_Strict):
    explore: float = Field(description="Share of decisions not the baseline's, to learn.")
    hold_seconds: float = Field(description="How long the lift must stay above 0 to graduate.")
    lower_bound_above_zero_since: float | None = Field(
        description="Unix time since when the lift's lower bound is above 0 (None: it is not)."
    )
    estimate: EstimateBody | None = Field(description="Own choices against the baseline.")


class GuardrailStatus(EstimateBody):
    """The live policy against the version served before the last promotion."""

    version: str = Field(description="The version followed in shadow.")


class CandidateStatus(_Strict):
    """A shadow candidate: its configuration and its estimate against the live policy."""

    name: str
    created_at: float
    policy: str | None = Field(description="A registered policy (None for a model file).")
    params: dict[str, JsonValue]
    exploration: str | None
    exploration_params: dict[str, float]
    model: str | None = Field(description='A model file, by its size ("1234 bytes").')
    running: bool = Field(description="False if it cannot run (the log says why).")
    started_at_offset: int | None = Field(description="The learn event it started after.")
    estimate: EstimateBody | None
    passes_gate: bool = Field(description="Whether it may be promoted without force.")


class Switch(_Strict):
    """A switch on the timeline: from learn event `seq` on, every replica serves anew."""

    seq: int = Field(description="The learn-stream entry of the switch.")
    kind: str = Field(description="serve_mode, promote or rollback.")
    target: str = Field(description="own / apprentice, or the version served.")
    at: float = Field(description="Unix time of the switch.")
    reason: str


class LifecycleStatus(_Strict):
    serving: Literal["own", "apprentice"]
    live_version: str | None
    previous_version: str | None
    evaluated_offset: int = Field(description="The last learn event the estimates include.")
    apprentice: ApprenticeStatus
    guardrail: GuardrailStatus | None
    candidates: list[CandidateStatus]
    switches: list[Switch] = Field(description="Every switch so far, oldest first.")


class ModelVersion(_Strict):
    """A kept model version."""

    id: str
    created_at: float
    kind: Literal["base", "promotion", "upload", "rollback"]
    label: str
    log_offset: int = Field(description="The learn event it starts after.")
    policy: str
    parent: str | None = Field(description="The version it came from, if any.")


class ListedVersion(ModelVersion):
    live: bool = Field(description="Whether it is served now.")


class UploadResponse(_Strict):
    version: ModelVersion
    switch: Switch | None = Field(description="The promote entry, with activate; else None.")
