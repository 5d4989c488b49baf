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

Speed: a batch of 1,000 is worth doing only if each decision costs far less than a single
request. So nothing here goes item by item through Python objects where a column will do:
the body is read by orjson and checked field by field (`FastBatchValidator`, which leaves
every error to the request model, so errors are worded once), the decisions stay columns
(`banditrec.store.decision_batch.DecisionBatch`) from the policy's one call to the store's
one insert and the answer (`render_decisions`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Annotated, Any, ClassVar, Self

import numpy as np
import orjson
from numpy.typing import NDArray
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)
from starlette.datastructures import State

from banditrec.decisions import rank_body
from banditrec.engine import Engine
from banditrec.features import CategoricalField, FeatureSchema
from banditrec.schemas import MAX_STRING_LENGTH, NonEmptyString, RankResponse, context_model
from banditrec.store.decision_batch import DecisionBatch

__all__ = [
    "BatchRequest",
    "FastBatchValidator",
    "RankBatchResponse",
    "rank_batch",
    "rank_batch_request_model",
    "render_decisions",
]


class _RankBatchBase(BaseModel):
    """The checks across fields of a batch request (the fields come from the schema)."""

    model_config = ConfigDict(extra="forbid")

    #: The route's fast path (`BoundRoute.call` tries it first); set by
    #: `rank_batch_request_model`.
    fast_validator: ClassVar[FastBatchValidator | None] = None

    @classmethod
    def validate_fast(cls, body: bytes) -> BatchRequest | None:
        """The body validated without pydantic, or None to validate it with this model."""
        return None if cls.fast_validator is None else cls.fast_validator(body)

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
    # Too many contexts are refused before any of them is validated.
    contexts_type: Any = Annotated[list[context], Field(min_length=1), _at_most(max_batch_size)]  # type: ignore[valid-type]
    model = _batch_model("RankBatchRequest", contexts_type, max_batch_size)
    # The same body with the contexts left unchecked: the fast path's other fields.
    anything: Any = Annotated[list[Any], Field(min_length=1), _at_most(max_batch_size)]
    envelope = _batch_model("RankBatchEnvelope", anything, max_batch_size)
    model.fast_validator = FastBatchValidator(schema, max_batch_size, envelope)
    return model


def _batch_model(name: str, contexts_type: Any, max_batch_size: int) -> type[_RankBatchBase]:
    action_list = Annotated[list[NonEmptyString], Field(max_length=1000)]
    optional_names = list[NonEmptyString | None] | None
    return create_model(
        name,
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


@dataclass(frozen=True)
class BatchRequest:
    """A validated ``POST /v1/rank/batch`` body: the contexts as dicts (as logged: the
    schema's fields only, values as the request model gives them) and column by column."""

    contexts: list[dict[str, Any]]
    columns: dict[str, Any]
    actions: list[str] | None = None
    excluded_actions: list[str] = field(default_factory=list)
    user_ids: list[str | None] | None = None
    baseline_actions: list[str | None] | None = None

    @classmethod
    def from_model(cls, body: Any, schema: FeatureSchema) -> BatchRequest:
        """From the request model's instance (the exact path)."""
        contexts = [context.model_dump() for context in body.contexts]
        columns = {name: [c[name] for c in contexts] for name in schema.field_names}
        return cls(
            contexts, columns, body.actions, body.excluded_actions, body.user_ids,
            body.baseline_actions,
        )  # fmt: skip


class FastBatchValidator:
    """Accept the common batch body without pydantic: orjson, then each field's column
    checked at once; decline (None) anything it is not sure of.

    Declining is always safe: the route then parses with `json` and validates with the
    request model, which either accepts the body (the same result) or raises the exact
    errors (``contexts.<i>.<field>``). So this validator never words an error itself: it
    only has to accept nothing that the request model would refuse, and to give what the
    model would give for what it accepts. It checks, column by column, what the model
    checks item by item: every context an object holding every field; a categorical value
    a string of 1 to `MAX_STRING_LENGTH` characters; an integer a JSON integer (not a bool,
    not a float) in range; a real a finite JSON number in range (an integer becomes a
    float, as the model makes it). The other keys of the body (few and small) go through
    the request model's own fields, with the contexts left unchecked (`envelope`).
    """

    def __init__(
        self, schema: FeatureSchema, max_batch_size: int, envelope: type[BaseModel]
    ) -> None:
        self.schema = schema
        self.max_batch_size = max_batch_size
        self.envelope = envelope
        self._names = schema.field_names
        # orjson reads integers beyond 64 bits as floats, `json` as integers: only where a
        # real's range reaches that far could the two differ in what is accepted.
        self._sure = bool(schema.fields) and all(
            isinstance(f, CategoricalField) or max(abs(f.min), abs(f.max)) < 2.0**63
            for f in schema.fields
        )

    def __call__(self, body: bytes) -> BatchRequest | None:
        if not self._sure:
            return None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if type(data) is not dict:
            return None
        contexts = data.get("contexts")
        if type(contexts) is not list or not 1 <= len(contexts) <= self.max_batch_size:
            return None
        if set(map(type, contexts)) != {dict}:
            return None
        envelope: Any = None
        if len(data) > 1:
            try:
                envelope = self.envelope.model_validate(data)
            except ValidationError:
                return None
        columns: dict[str, Any] = {}
        converted = False
        for f in self.schema.fields:
            try:
                column = list(map(itemgetter(f.name), contexts))
            except KeyError:
                return None
            checked = self._check(f, column)
            if checked is None:
                return None
            if checked is not column:
                converted = True
            columns[f.name] = checked
        n_fields = len(self._names)
        if converted or set(map(len, contexts)) != {n_fields}:
            # Unknown keys dropped, integers in real fields made floats: as the model does.
            values = [columns[name] for name in self._names]
            rows = zip(*values, strict=True)
            contexts = [dict(zip(self._names, row, strict=True)) for row in rows]
        if envelope is None:
            return BatchRequest(contexts, columns)
        return BatchRequest(
            contexts, columns, envelope.actions, envelope.excluded_actions, envelope.user_ids,
            envelope.baseline_actions,
        )  # fmt: skip

    @staticmethod
    def _check(f: Any, column: list[Any]) -> list[Any] | None:
        """`column` if every value passes as it is, a converted copy, or None."""
        types = set(map(type, column))
        if isinstance(f, CategoricalField):
            if types != {str}:
                return None
            shortest, longest = min(map(len, column)), max(map(len, column))
            return column if shortest >= 1 and longest <= MAX_STRING_LENGTH else None
        # Python's min and max: exact for integers of any size (no conversion to check).
        if types != {int} and (f.kind == "integer" or not types <= {int, float}):
            return None
        low, high = min(column), max(column)
        # orjson reads no NaN and no infinity (it refuses them); integers are finite.
        if types != {int} and not (math.isfinite(low) and math.isfinite(high)):
            return None
        if not f.min <= low <= high <= f.max:
            return None
        if f.kind == "real" and int in types:
            return [float(v) for v in column]  # as the model makes them
        return column


async def rank_batch(state: State, body: BatchRequest | BaseModel) -> dict[str, Any]:
    """Decide for many contexts at once: one decision per context, in their order, each
    with its own event id, all logged durably (in one transaction) before the answer.

    Each decision is what ``POST /v1/rank`` would answer for its context (``replayed`` and
    ``context_mismatch`` are always false: a batch's event ids are new). ``actions`` and
    ``excluded_actions`` hold for every context, and so do the configured eligibility
    rules; per-user caps and cooldowns hold for each decision with a user id, as for
    ``POST /v1/rank`` (a user named twice is served as by two requests in a row). At most
    ``max_batch_size`` contexts (422 beyond), in a body of at most ``max_batch_body_bytes``
    (413 beyond). If one context is invalid or cannot be served, nothing of the batch is
    decided or logged."""
    engine: Engine = state.engine
    if not isinstance(body, BatchRequest):  # the request model's instance (exact path)
        body = BatchRequest.from_model(body, engine.schema)
    eligible = (
        engine.eligible_mask(body.actions, body.excluded_actions)
        if body.actions is not None or body.excluded_actions
        else None
    )
    metrics = state.decisions.metrics
    rules = engine.constraints.frequency if engine.constraints is not None else None
    if rules is not None and body.user_ids is not None and any(body.user_ids):
        records = await engine.rank_batch_capped(
            rules, body.contexts, body.user_ids, eligible, body.baseline_actions,
            columns=body.columns,
        )  # fmt: skip
        for action, n in Counter(record.action for record in records).items():
            metrics.decision(action, n)
        return {"decisions": [rank_body(record) for record in records]}
    batch = await engine.rank_batch(
        body.contexts, eligible, body.user_ids, body.baseline_actions, columns=body.columns
    )
    counts = np.bincount(batch.action_index, minlength=len(batch.actions)).tolist()
    for action, n in zip(batch.actions, counts, strict=True):
        if n:
            metrics.decision(action, n)
    # Rendered here, embedded as it is by the response's orjson.dumps.
    return {"decisions": orjson.Fragment(render_decisions(batch))}


def render_decisions(batch: DecisionBatch) -> bytes:
    """The JSON array of `banditrec.decisions.rank_body` of each decision of `batch`: the
    same bytes as ``orjson.dumps`` of those bodies, without building them.

    Rankings are sorted all at once (as `rank_body` sorts: most probable first, then the
    highest score, then the action's position; both sorts are stable). The numbers are
    written by orjson (one call per matrix, the same shortest round-trip text as for a
    Python float); the names and fixed keys are pieces encoded once; one ``join`` of a
    matrix of pieces (a row a decision) writes the whole. Building 1,000 nested dicts and
    serialising them cost three times as much.
    """
    probabilities, scores = batch.probabilities, batch.scores
    n, k = probabilities.shape
    if n == 0:
        return b"[]"
    orders = np.lexsort((-scores, -probabilities), axis=-1)
    rows = np.arange(n)[:, None]
    names = [orjson.dumps(name) for name in batch.actions]
    served = np.array([b'","action_id":' + a + b',"probability":' for a in names], dtype=object)
    first = np.array([b'{"action_id":' + a + b',"probability":' for a in names], dtype=object)
    later = np.array([b'},{"action_id":' + a + b',"probability":' for a in names], dtype=object)
    end = 5 + 4 * k  # the columns of the ranking: 4 pieces an entry
    pieces = np.empty((n, end + 1), dtype=object)
    pieces[:, 0] = b'{"event_id":"'
    pieces[:, 1] = [event_id.encode() for event_id in batch.event_ids]
    # Every number in one orjson call: the ranked probabilities, the ranked scores, then
    # the served action's probability.
    numbers = np.empty((n, 2 * k + 1))
    numbers[:, :k] = probabilities[rows, orders]
    numbers[:, k : 2 * k] = scores[rows, orders]
    numbers[:, 2 * k] = batch.probability
    text = _numbers(numbers)
    pieces[:, 2] = served[batch.action_index]
    pieces[:, 3] = text[:, 2 * k]
    pieces[:, 4] = b',"ranking":['
    pieces[:, 5] = first[orders[:, 0]]
    pieces[:, 9:end:4] = later[orders[:, 1:]]
    pieces[:, 6:end:4] = text[:, :k]
    pieces[:, 7:end:4] = b',"score":'
    pieces[:, 8:end:4] = text[:, k : 2 * k]
    pieces[:, end] = (
        b'}],"model_version":' + orjson.dumps(batch.model_version)
        + b',"deferred":false,"replayed":false,"context_mismatch":false},'
    )  # fmt: skip
    return b"[" + b"".join(pieces.ravel().tolist())[:-1] + b"]"


def _numbers(matrix: NDArray[np.float64]) -> NDArray[np.object_]:
    """Each number of `matrix` as orjson writes it, in an object array of its shape."""
    text = orjson.dumps(np.ascontiguousarray(matrix), option=orjson.OPT_SERIALIZE_NUMPY)
    numbers = text[2:-2].replace(b"],[", b",").split(b",")
    return np.array(numbers, dtype=object).reshape(matrix.shape)
