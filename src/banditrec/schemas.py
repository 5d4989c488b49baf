"""HTTP request and response bodies.

Unknown keys: a context may carry keys the schema does not know, which are ignored (apps
send what they have, and a schema can drop a field without breaking them); the envelope of a
``/v1`` body is strict, so a typo like ``"exluded_actions"`` is a 422, never silently
ignored. ``/recommend_action``'s flat body is a context plus ``user_id``, so it follows the
context's rule.

The request body of `/recommend_action` is built from the feature schema, so a team that
replaces the schema gets validation (types, ranges, empty strings, NaN) and OpenAPI docs for
its own context fields without writing a line of pydantic.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StringConstraints,
    create_model,
)

from banditrec.features import CategoricalField, FeatureSchema

__all__ = [
    "ErrorResponse",
    "EventId",
    "HealthResponse",
    "RankResponse",
    "RecommendResponse",
    "context_model",
    "rank_request_model",
    "recommend_request_model",
    "reward_request_model",
]

#: Longest accepted string value; anything longer is a client bug, not a category.
MAX_STRING_LENGTH = 128

NonEmptyString = Annotated[
    str, StringConstraints(strict=True, min_length=1, max_length=MAX_STRING_LENGTH)
]


def _field_definitions(schema: FeatureSchema) -> dict[str, Any]:
    definitions: dict[str, Any] = {}
    for f in schema.fields:
        if isinstance(f, CategoricalField):
            description = (
                f"One of {list(f.values)}; any other value goes to the 'other' bucket."
                if f.on_unknown == "other"
                else f"One of {list(f.values)}."
            )
            definitions[f.name] = (NonEmptyString, Field(description=description))
        else:
            # strict: "10" or true are not numbers; JSON NaN/Infinity are refused too.
            kind: type = int if f.kind == "integer" else float
            field = Field(
                ge=f.min, le=f.max, strict=True, allow_inf_nan=False,
                description=f"{f.kind} in [{f.min:g}, {f.max:g}], transform {f.transform}.",
            )  # fmt: skip
            definitions[f.name] = (kind, field)
    return definitions


def context_model(schema: FeatureSchema) -> type[BaseModel]:
    """A pydantic model validating one context under `schema`."""
    return create_model(
        "Context", __config__=ConfigDict(extra="ignore"), **_field_definitions(schema)
    )


def recommend_request_model(schema: FeatureSchema) -> type[BaseModel]:
    """The seed's flat request body: `user_id` plus every context field of `schema`."""
    definitions = {"user_id": (NonEmptyString, Field(description="The app's user id."))}
    definitions.update(_field_definitions(schema))
    return create_model(  # type: ignore[call-overload, no-any-return]
        "RecommendRequest", __config__=ConfigDict(extra="ignore"), **definitions
    )


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"] = Field(
        description="ok, or degraded while a fault is reported: decisions are still "
        "served, but learning or snapshots are failing (see faults)."
    )
    faults: list[str] = Field(description="One sentence per fault; empty when ok.")
    model_loaded: bool = Field(description="False when serving from the prior (no model file).")
    n_actions: int
    alpha: float
    model_version: str
    schema_hash: str


class RecommendResponse(BaseModel):
    user_id: str
    recommended_action: str
    ucb_score: float = Field(description="The score (UCB) of the served action.")
    scores: dict[str, float] = Field(description="Score of every action.")
    alpha: float
    event_id: str = Field(description="Id of this decision; rewards refer to it.")
    probability: float = Field(description="Probability with which the action was served.")
    probabilities: dict[str, float] = Field(description="The full serving distribution.")
    model_version: str


class ErrorDetail(BaseModel):
    field: str = Field(description="The field that failed, as a dotted path: context.n_sessions.")
    message: str = Field(description="What is wrong with it, naming the field.")


class ErrorResponse(BaseModel):
    """The body of every error answer (see the table in ``banditrec.errors``)."""

    error: str = Field(description="A snake_case code to branch on, e.g. validation_error.")
    message: str = Field(description="One sentence that says what is wrong and what to do.")
    detail: list[ErrorDetail] = Field(
        [], description="Every field that failed validation (empty for other errors)."
    )


#: Event ids: what URLs carry unchanged. Ids made only of dots are refused: clients and
#: proxies normalise "/v1/events/../reward" away, so such an event could never be rewarded.
EVENT_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"


def _not_only_dots(value: str) -> str:
    if not value.strip("."):
        raise ValueError(
            "an id made only of dots cannot be used in a URL (clients normalise '.' and "
            "'..' away); use letters or digits too"
        )
    return value


EventId = Annotated[
    str,
    StringConstraints(strict=True, pattern=EVENT_ID_PATTERN),
    AfterValidator(_not_only_dots),
    Field(description="1 to 128 characters from A-Z a-z 0-9 . _ : - (not only dots)."),
]


def rank_request_model(schema: FeatureSchema) -> type[BaseModel]:
    """The Personalizer-shaped body of `POST /v1/rank` for `schema`."""
    action_list = Annotated[list[NonEmptyString], Field(max_length=1000)]
    return create_model(
        "RankRequest",
        __config__=ConfigDict(extra="forbid"),
        context=(context_model(schema), Field(description="The user's context.")),
        actions=(
            action_list | None,
            Field(None, description="Only these actions may be served (default: all)."),
        ),
        excluded_actions=(
            action_list,
            Field([], description="These actions are not served (probability 0)."),
        ),
        event_id=(
            EventId | None,
            Field(None, description="Client id of the event; a repeat returns the same decision."),
        ),
        defer_activation=(
            bool,
            Field(False, description="Log now, learn only after /v1/events/{id}/activate."),
        ),
        slots=(
            int | None,
            Field(
                None,
                ge=1,
                le=1000,
                strict=True,
                description="A slate: this many distinct actions, in slots filled in order, "
                "each with its probability given the slots above it (answered in 'slots'; "
                "slot 0 is action_id). Each slot is its own logged decision, rewarded with "
                "'slot' (README, section Slates).",
            ),
        ),
        explain=(
            StrictBool,
            Field(
                False,
                description="Also return, for each action, its estimated mean, its "
                "uncertainty width, each feature's contribution to the mean and why it got "
                "its probability (baseline, best, explored, capped, excluded, disabled, "
                "ineligible, frequency_capped, cooling_down), with every cause that kept an "
                "unavailable action out (unavailable).",
            ),
        ),
        user_id=(
            NonEmptyString | None,
            Field(
                None,
                description="Whose decision (not a feature): logged with it, so that "
                "DELETE /v1/admin/users/{user_id} can remove it (privacy requests).",
            ),
        ),
        baseline_action=(
            NonEmptyString | None,
            Field(
                None,
                description="In apprentice mode: the action the app's own rule would take. "
                "It is served, except for a small exploring share (docs/lifecycle.md).",
            ),
        ),
    )


def reward_request_model(min_reward: float, max_reward: float) -> type[BaseModel]:
    """`{"value": <float>}` with the configured reward range."""
    return create_model(
        "RewardRequest",
        __config__=ConfigDict(extra="forbid"),
        value=(
            float,
            Field(ge=min_reward, le=max_reward, strict=True, allow_inf_nan=False,
                  description=f"The reward, in [{min_reward:g}, {max_reward:g}]."),
        ),
        slot=(
            int | None,
            Field(None, ge=0, le=999, strict=True,
                  description="For a slate: the slot rewarded (0 is the first; default 0)."),
        ),
    )  # fmt: skip


class Unavailable(BaseModel):
    """One cause that kept an action out of a decision (``"explain": true``)."""

    cause: Literal["request", "disabled", "eligibility", "cap", "cooldown"] = Field(
        description="request: the request's actions/excluded_actions left it out; disabled: "
        "an admin; eligibility: an eligibility rule does not hold for the context; cap: a "
        "per-user frequency cap is reached; cooldown: a per-user cooldown runs."
    )
    rule: str | None = Field(
        description="Where the rule is configured, e.g. constraints.eligibility.invite_friend "
        "or constraints.caps[0] (None for the request and an admin)."
    )
    message: str = Field(description="The cause in one sentence.")
    condition: JsonValue | None = Field(
        None, description="eligibility: the rule as configured (a condition or a list)."
    )
    serves: int | None = Field(None, description="cap: serves to the user in the window.")
    max_serves: int | None = Field(None, description="cap: the most it allows.")
    window_seconds: float | None = Field(None, description="cap: its window.")
    after: Literal["serve", "negative"] | None = Field(
        None, description="cooldown: what started it (a serve, a negative reward)."
    )
    until: float | None = Field(
        None,
        description="cap, cooldown: Unix time at which it lets the action go again if "
        "nothing else is served (None for a cap of 0: never).",
    )


class RankedAction(BaseModel):
    action_id: str
    probability: float
    score: float
    # With "explain": true only (absent otherwise).
    mean: float | None = Field(None, description="explain: the estimated mean reward.")
    width: float | None = Field(
        None,
        description="explain: its uncertainty (LinUCB: the bonus α·√(xᵀA⁻¹x); Thompson: the "
        "sampled scores' deviation; ridge-mean policies: √(xᵀA⁻¹x)).",
    )
    contributions: dict[str, float] | None = Field(
        None,
        description="explain: feature name → its part of the mean (θ[j]·x[j] for the linear "
        "policies; they add up to the mean). Empty for policies whose mean is not a sum "
        "over features (uniform, most popular, fixed rules).",
    )
    reason: (
        Literal[
            "baseline", "best", "explored", "capped", "excluded", "disabled", "ineligible",
            "frequency_capped", "cooling_down",
        ]
        | None
    ) = Field(
        None,
        description="explain: why it got its probability: baseline (the app's rule's "
        "choice, in apprentice mode), best (highest score), explored "
        "(exploration mass), capped (eligible, held at probability 0 by the rule), excluded "
        "(by the request), disabled (by an admin), ineligible (an eligibility rule), "
        "frequency_capped (a per-user cap), cooling_down (a per-user cooldown). The first "
        "of its unavailable causes, for an action that could not be served.",
    )  # fmt: skip
    unavailable: list[Unavailable] | None = Field(
        None,
        description="explain, for an action that could not be served: every cause that kept "
        "it out, the most direct first (the request, an admin, eligibility rules, caps, "
        "cooldowns), each naming its rule.",
    )


class SlotEntry(BaseModel):
    slot: int = Field(description="Position, from 0 (the top).")
    action_id: str
    probability: float = Field(
        description="Probability with which it was chosen for this slot, given the slots "
        "above it (its logged propensity)."
    )
    event_id: str = Field(description="The slot's own decision: <event_id>:<slot> below 0.")


class RankResponse(BaseModel):
    event_id: str
    action_id: str = Field(description="The action to show: sampled from the ranking.")
    probability: float = Field(description="Probability with which it was chosen.")
    ranking: list[RankedAction] = Field(
        description="Every action by probability (excluded actions with probability 0)."
    )
    model_version: str
    deferred: bool = False
    replayed: bool = Field(
        False,
        description="True when the event id was logged before: this is the first decision, "
        "returned again (nothing new was logged).",
    )
    context_mismatch: bool = Field(
        False,
        description="True when a replayed decision was made for another context than this "
        "request's: the client reused an event id by mistake.",
    )
    slots: list[SlotEntry] | None = Field(
        None, description='With "slots": k: the k distinct actions of the slate, in order.'
    )
    explanation_version: str | None = Field(
        None,
        description="explain: the model state the explanation was computed from (the "
        "decision's model_version unless a learn event was applied in between).",
    )


class RewardResponse(BaseModel):
    event_id: str
    status: str = Field(description="learned, duplicate or summed.")
    learned: bool = Field(description="Whether this reward changed the model.")
    duplicate: bool = Field(description="True for a repeated reward under 'earliest'.")
    value: float
    total: float | None = Field(description="The reward now learned for the event.")


class ActivateResponse(BaseModel):
    event_id: str
    activated: bool = Field(description="False if the event was already active.")


class ModelResponse(BaseModel):
    pid: int = Field(description="Process id of the worker that answered.")
    version: str
    n_updates: int
    n_updates_by_action: dict[str, int]
    log_offset: int
    applied_at: float = Field(description="Unix time at which log_offset was reached.")
    schema_hash: str
    policy: str
    policy_params: dict[str, float | int]
    exploration: str
    exploration_params: dict[str, float | int]


class ForgetUserResponse(BaseModel):
    user_id: str
    live: int = Field(description="Decisions removed from the live event log.")
    archive: int = Field(description="Decisions removed from the archive's Parquet files.")


class SnapshotResponse(BaseModel):
    path: str = Field(description="The snapshot file written.")
    log_offset: int = Field(description="The last learn event it includes.")


class ActionInfo(BaseModel):
    action_id: str
    enabled: bool = Field(description="Disabled actions are never served (probability 0).")
    n_updates: int


class AddActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action_id: Annotated[
        str,
        StringConstraints(strict=True, pattern=EVENT_ID_PATTERN),
        AfterValidator(_not_only_dots),  # it is a path segment of the enable/disable routes
    ] = Field(description="Name of the new action.")
