"""HTTP request and response bodies.

The request body of `/recommend_action` is built from the feature schema, so a team that
replaces the schema gets validation (types, ranges, empty strings, NaN) and OpenAPI docs for
its own context fields without writing a line of pydantic.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from banditrec.features import CategoricalField, FeatureSchema

__all__ = ["HealthResponse", "RecommendResponse", "context_model", "recommend_request_model"]

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
    status: str = "ok"
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
    field: str
    message: str


class ErrorResponse(BaseModel):
    error: str
    message: str
    detail: list[ErrorDetail] = []
