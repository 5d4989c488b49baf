"""Batches of decisions: ``POST /v1/rank/batch`` and its request and response bodies.

A client that decides for many users at once (a nightly push campaign, a page of feed items
ranked for one screen each) sends up to ``max_batch_size`` contexts in one request. Each
context gets its own decision, with its own event id and logged probability, exactly as if
it had been sent to ``POST /v1/rank``: rewards, activation, evaluation and privacy requests
treat them alike. What a batch saves is the per-request cost: the policy scores all
contexts in one compiled call (`banditrec.policies.Policy.distribution_batch`) and the
decisions are logged in one group commit (one ``log_decisions`` call), before the answer.

A batch is one unit: if one context is invalid (422 naming ``contexts.<i>.<field>``), or one
decision has no eligible action, nothing of the batch is decided or logged.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any, Self

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model, model_validator
from starlette.datastructures import State

from banditrec.engine import Engine
from banditrec.errors import RequestValidationError
from banditrec.features import FeatureSchema
from banditrec.schemas import NonEmptyString, RankResponse, context_model
from banditrec.store import DecisionRecord

__all__ = ["RankBatchResponse", "rank_batch", "rank_batch_request_model", "rank_bodies"]


class _RankBatchBase(BaseModel):
    """The checks across fields of a batch request (the fields come from the schema)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _same_lengths(self) -> Self:
        n = len(self.contexts)  # type: ignore[attr-defined]
        for name in ("user_ids", "baseline_actions"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise ValueError(
                    f"{name} has {len(values)} entries for {n} contexts; give one per "
                    "context (null where there is none), or leave it out"
                )
        return self


def _at_most(limit: int) -> BeforeValidator:
    """Refuse more than `limit` contexts before validating any of them."""

    def check(value: Any) -> Any:
        if isinstance(value, list) and len(value) > limit:
            raise ValueError(
                f"a batch holds at most {limit} contexts (setting max_batch_size), this one "
                f"has {len(value)}; split it into several requests"
            )
        return value

    return BeforeValidator(check)


def rank_batch_request_model(schema: FeatureSchema, max_batch_size: int) -> type[BaseModel]:
    """The body of ``POST /v1/rank/batch`` for `schema`: up to `max_batch_size` contexts."""
    context = context_model(schema)
    action_list = Annotated[list[NonEmptyString], Field(max_length=1000)]
    optional_names = list[NonEmptyString | None] | None
    # Too many contexts are refused before any of them is validated.
    contexts_type: Any = Annotated[list[context], Field(min_length=1), _at_most(max_batch_size)]  # type: ignore[valid-type]
    return create_model(
        "RankBatchRequest",
        __base__=_RankBatchBase,
        contexts=(
            contexts_type,
            Field(description=f"The users' contexts, 1 to {max_batch_size}: one decision each."),
        ),
        actions=(
            action_list | None,
            Field(None, description="Only these actions may be served (default: all)."),
        ),
        excluded_actions=(
            action_list,
            Field([], description="These actions are not served to any context."),
        ),
        user_ids=(
            optional_names,
            Field(None, description="Whose decision each one is (as user_id of /v1/rank)."),
        ),
        baseline_actions=(
            optional_names,
            Field(
                None,
                description="In apprentice mode: the action the app's rule would take, one "
                "per context (as baseline_action of /v1/rank).",
            ),
        ),
    )


class RankBatchResponse(BaseModel):
    decisions: list[RankResponse] = Field(
        description="One decision per context, in the order of the contexts."
    )


async def rank_batch(state: State, body: Any) -> dict[str, Any]:
    """Decide for many contexts at once: one decision per context, in their order, each
    with its own event id, all logged durably (in one group commit) before the answer.

    Each decision is what ``POST /v1/rank`` would answer for its context (``replayed`` and
    ``context_mismatch`` are always false: a batch's event ids are new). ``actions`` and
    ``excluded_actions`` hold for every context, and so do the configured eligibility
    rules; per-user caps and cooldowns are not applied to batches (422 if ``user_ids`` are
    given while they are configured). At most ``max_batch_size`` contexts (422
    beyond), in a body of at most ``max_batch_body_bytes`` (413 beyond). If one context is
    invalid or cannot be served, nothing of the batch is decided or logged."""
    engine: Engine = state.engine
    capped = engine.constraints is not None and engine.constraints.frequency is not None
    if capped and body.user_ids is not None and any(u is not None for u in body.user_ids):
        raise RequestValidationError(
            [
                {
                    "loc": ("user_ids",),
                    "msg": "per-user caps and cooldowns are configured, and batches do not "
                    "apply them; send the decisions of capped users to POST /v1/rank",
                }
            ]
        )
    eligible = (
        engine.eligible_mask(body.actions, body.excluded_actions)
        if body.actions is not None or body.excluded_actions
        else None
    )
    contexts = [context.model_dump() for context in body.contexts]
    records = await engine.rank_batch(contexts, eligible, body.user_ids, body.baseline_actions)
    metrics = state.decisions.metrics
    for action, n in Counter(record.action for record in records).items():
        metrics.decision(action, n)
    return {"decisions": rank_bodies(records)}


def rank_bodies(records: list[DecisionRecord]) -> list[dict[str, Any]]:
    """`banditrec.decisions.rank_body` of each record, the rankings sorted all at once (in
    the same order: most probable first, then the highest score, then the action's
    position; both sorts are stable)."""
    if not records:
        return []
    probabilities = np.stack([r.probabilities for r in records])
    scores = np.stack([r.scores for r in records])
    orders = np.lexsort((-scores, -probabilities), axis=-1).tolist()
    bodies = []
    for record, p, s, order in zip(
        records, probabilities.tolist(), scores.tolist(), orders, strict=True
    ):
        names = record.actions
        bodies.append(
            {
                "event_id": record.event_id,
                "action_id": names[record.action_index],
                "probability": record.probability,
                "ranking": [
                    {"action_id": names[k], "probability": p[k], "score": s[k]} for k in order
                ],
                "model_version": record.model_version,
                "deferred": record.deferred,
                "replayed": False,
                "context_mismatch": False,
            }
        )
    return bodies
