"""The work of the decision and reward routes: a validated request in, a response body out.

Each is written once; the routes declared in `banditrec.api.routes` call it, on the FastAPI
route and on the hot path alike. Neither path builds a body or maps a reward outcome
to a status itself, so the two cannot answer differently.
"""

import json
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from banditrec.caps import Held
from banditrec.engine import Engine
from banditrec.errors import EventNotActivatedError, EventNotFoundError, RewardWindowClosedError
from banditrec.lifecycle.apprentice import apprentice_round
from banditrec.metrics import Metrics
from banditrec.slates import rank_slate, slot_entries
from banditrec.store import DecisionRecord, RewardOutcome, RewardResult, UserHistory

__all__ = [
    "DecisionWork",
    "explain_ranking",
    "rank_body",
    "recommend_body",
    "reward_body",
    "unavailable_causes",
]


class DecisionWork:
    """What ``/recommend_action``, ``/v1/rank`` and ``/v1/events/{event_id}/reward`` do.

    Parameters
    ----------
    metrics
        Where decisions, rewards and joins are counted.
    alpha
        The ``alpha`` reported for policies without one (the configured value).
    reward_window_seconds
        The reward window, named in the answer to a late reward.
    """

    def __init__(self, metrics: Metrics, alpha: float, reward_window_seconds: float) -> None:
        self.metrics = metrics
        self._alpha = alpha
        self.reward_window_seconds = reward_window_seconds

    def alpha(self, engine: Engine) -> float:
        """The served policy's ``alpha``, or the configured one if the policy has none."""
        return float(getattr(engine.policy, "alpha", self._alpha))

    async def recommend(self, engine: Engine, body: Any) -> dict[str, Any]:
        """The seed's decision: `body` is a validated ``RecommendRequest``."""
        context: dict[str, Any] = body.model_dump()
        user_id = context.pop("user_id")
        record = await self._decide(engine, context, user_id=user_id)
        # The α of this decision (a learn event applied since may have changed auto's).
        alpha = self.alpha(engine) if record.alpha is None else record.alpha
        return recommend_body(record, user_id, alpha)

    async def rank(self, engine: Engine, body: Any) -> dict[str, Any]:
        """The Personalizer-shaped decision: `body` is a validated ``RankRequest``.

        A client event id that was logged before returns the first decision, flagged
        ``replayed`` (and ``context_mismatch`` if that decision's context differs).
        """
        eligible = engine.eligible_mask(body.actions, body.excluded_actions)
        context: dict[str, Any] = body.context.model_dump()
        started = engine.clock()
        if body.slots is not None:  # a slate: one logged decision per slot
            records = await rank_slate(engine, body, context, eligible)
            for slot_record in records:
                self.metrics.decision(slot_record.action)
            record = records[0]
        else:
            record = await self._decide(
                engine,
                context,
                eligible,
                event_id=body.event_id,
                deferred=body.defer_activation,
                user_id=body.user_id,
                baseline=body.baseline_action,
            )
        content = rank_body(record)
        if body.slots is not None:
            content["slots"] = slot_entries(records)
        if body.explain:
            requested = set(body.actions or engine.actions) - set(body.excluded_actions)
            history = await _history(engine, record)
            explain_ranking(content, record, engine, requested=requested, history=history)
        # A decision made for this request is stamped after `started` (deciding takes
        # microseconds); the first decision of a repeated id was stamped before it.
        if body.event_id is not None and record.created_at < started:
            content["replayed"] = True
            content["context_mismatch"] = record.context != context
        return content

    async def reward(self, engine: Engine, body: Any, event_id: str) -> dict[str, Any]:
        """Report the reward in `body` (a validated ``RewardRequest``) for `event_id`."""
        if body.slot:  # a slate's slot below the first is a decision of its own
            event_id = f"{event_id}:{body.slot}"
        result = await engine.reward(event_id, body.value)
        self.metrics.reward(result.action, result.outcome.value)  # every outcome, even errors
        content = reward_body(result, self.reward_window_seconds)
        self.metrics.join()
        return content

    async def _decide(
        self,
        engine: Engine,
        context: dict[str, Any],
        eligible: NDArray[np.bool_] | None = None,
        event_id: str | None = None,
        deferred: bool = False,
        user_id: str | None = None,
        baseline: str | None = None,
    ) -> DecisionRecord:
        record = await engine.rank(
            context, eligible, event_id=event_id, deferred=deferred, user_id=user_id,
            baseline=baseline,
        )  # fmt: skip
        self.metrics.decision(record.action)
        return record


def recommend_body(record: DecisionRecord, user_id: str, alpha: float) -> dict[str, Any]:
    """The seed's answer: the action, every action's score and probability, the event id."""
    actions = record.actions
    scores = dict(zip(actions, record.scores.tolist(), strict=True))
    return {
        "user_id": user_id,
        "recommended_action": record.action,
        "ucb_score": scores[record.action],
        "scores": scores,
        "alpha": alpha,
        "event_id": record.event_id,
        "probability": record.probability,
        "probabilities": dict(zip(actions, record.probabilities.tolist(), strict=True)),
        "model_version": record.model_version,
    }


def rank_body(record: DecisionRecord) -> dict[str, Any]:
    """The rank answer: the chosen action, then every action, most probable first."""
    actions = record.actions
    if len(actions) <= _PYTHON_SORT_MAX:
        # Few actions: `sorted` over the lists costs less than numpy's calls (~2 µs a request).
        probabilities, scores = record.probabilities.tolist(), record.scores.tolist()
        order = sorted(range(len(actions)), key=lambda k: (-probabilities[k], -scores[k]))
        ranking = [
            {"action_id": actions[k], "probability": probabilities[k], "score": scores[k]}
            for k in order
        ]
    else:
        # Most probable first, then the highest score, then the action's position: one
        # stable numpy sort (as `batch.render_decisions` sorts), not `sorted` with a Python
        # key, which cost 0.35 ms more at K = 1,000 (~15% of a request).
        by = np.lexsort((-record.scores, -record.probabilities))
        sorted_p, sorted_s = record.probabilities[by].tolist(), record.scores[by].tolist()
        ranking = [
            {"action_id": actions[k], "probability": p, "score": s}
            for k, p, s in zip(by.tolist(), sorted_p, sorted_s, strict=True)
        ]
    return {
        "event_id": record.event_id,
        "action_id": record.action,
        "probability": record.probability,
        "ranking": ranking,
        "model_version": record.model_version,
        "deferred": record.deferred,
        "replayed": False,
        "context_mismatch": False,
    }


#: Up to this many actions `rank_body` sorts in Python; above, with numpy (the same order).
_PYTHON_SORT_MAX = 64


#: Why an action got its probability (see `explain_ranking`).
Reason = Literal[
    "baseline", "best", "explored", "capped", "excluded", "disabled", "ineligible",
    "frequency_capped", "cooling_down",
]  # fmt: skip

#: What kept an action out of a decision, most direct first, and the reason each gives.
Cause = Literal["request", "disabled", "eligibility", "cap", "cooldown"]
_REASON_OF: dict[str, Reason] = {
    "request": "excluded",
    "disabled": "disabled",
    "eligibility": "ineligible",
    "cap": "frequency_capped",
    "cooldown": "cooling_down",
}

#: Relative tolerance under which two scores count as tied (that of the exploration rules).
_TIE_TOLERANCE = 1e-12


def explain_ranking(
    content: dict[str, Any],
    record: DecisionRecord,
    engine: Engine,
    *,
    requested: Collection[str] | None = None,
    history: UserHistory | None = None,
) -> None:
    """Add to each entry of a rank answer's ``ranking`` why it has its score and probability.

    Each entry gains ``mean`` (the estimated mean reward), ``width`` (its uncertainty, see
    `Explanation`), ``contributions`` (feature name → its part of the mean; empty for
    policies whose mean is not a sum over features) and ``reason``:

    - ``baseline``: in apprentice mode, the app's own rule's choice, served with most of
      the mass (`banditrec.lifecycle.apprentice`);
    - ``excluded``: the request left it out (``actions``, ``excluded_actions``): probability 0;
    - ``disabled``: an admin disabled it: probability 0;
    - ``ineligible``: a configured eligibility rule does not hold for this context;
    - ``frequency_capped``: a per-user cap: the user was served it as often as the cap allows
      within its window;
    - ``cooling_down``: a per-user cooldown after a serve or a negative reward;
    - ``best``: the highest score among the eligible actions (ties: each of them), which the
      exploration rule serves with most of its mass;
    - ``explored``: eligible, not the best, served with the probability the rule keeps for
      exploring (the ε floor, softmax or inverse-gap weights, Thompson's posterior draws);
    - ``capped``: eligible, not the best, and the rule held it at probability 0 (ε = 0, or a
      softmax or Thompson probability that is 0): it is never served for this context.

    Each action that could not be served also gets ``unavailable``: every cause that kept
    it out (`unavailable_causes`), the first of which gives its reason. `requested` is what
    the request allowed (None for a replayed decision: then what no rule explains was left
    out by the request that made it); `history` is the user's history, read after the
    decision, for the caps and cooldowns.

    Reasons come from the logged decision (its scores, probabilities and eligible actions),
    so they are exact for a replayed one too. Means, widths and contributions are computed
    from the model now; ``explanation_version`` says which model state that was (the
    decision's ``model_version`` unless a learn event was applied in between).
    """
    unavailable = unavailable_causes(record, engine, requested, history)
    explanation, version = engine.explain(record.x)
    names = engine.schema.feature_names()
    eligible = set(record.eligible)
    scores = record.scores
    best = max(float(scores[k]) for k, a in enumerate(record.actions) if a in eligible)
    tie = _TIE_TOLERANCE * max(abs(best), 1.0)
    index = {name: k for k, name in enumerate(record.actions)}
    contributions = explanation.contributions
    # An apprentice decision logs the mixture: the app's choice holds most of the mass.
    apprentice = apprentice_round(record.model_version, record.probabilities, 0) is not None
    baseline = int(np.argmax(record.probabilities)) if apprentice else -1
    for entry in content["ranking"]:
        k = index[entry["action_id"]]
        reason: Reason
        if entry["action_id"] not in eligible:
            causes = unavailable[entry["action_id"]]
            entry["unavailable"] = causes
            reason = _REASON_OF[causes[0]["cause"]]
        elif k == baseline:
            reason = "baseline"
        elif float(scores[k]) >= best - tie:
            reason = "best"
        else:
            reason = "explored" if record.probabilities[k] > 0 else "capped"
        # k indexes the model too: actions are only ever appended to it.
        entry["mean"] = float(explanation.mean[k])
        entry["width"] = float(explanation.width[k])
        entry["contributions"] = (
            {}
            if contributions is None
            else dict(zip(names, contributions[k].tolist(), strict=True))
        )
        entry["reason"] = reason
    content["explanation_version"] = version


async def _history(engine: Engine, record: DecisionRecord) -> UserHistory | None:
    """The decision's user's history, if caps or cooldowns may have held actions back."""
    constraints = engine.constraints
    rules = constraints.frequency if constraints is not None else None
    if rules is None or record.user_id is None or engine.store is None:
        return None
    return await engine.user_history(record.user_id, record.created_at - rules.horizon)


def unavailable_causes(
    record: DecisionRecord,
    engine: Engine,
    requested: Collection[str] | None = None,
    history: UserHistory | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Every cause that kept each action out of the logged decision `record` (action name
    → causes, most direct first: the request, an admin, an eligibility rule, caps,
    cooldowns), each a dict with ``cause``, ``rule`` (where it is configured), ``message``
    (a sentence) and its details.

    The eligibility rules are applied again to the logged vector. The caps and cooldowns
    are judged on `history` as it stood when the decision was made: its serves and
    negative rewards from before ``record.created_at`` (a serve is claimed only if the
    history did not move since it was read, so none recorded later came before it). An
    action no rule explains was left out by the request.
    """
    constraints = engine.constraints
    names = record.actions
    allowed = (
        constraints.mask(record.x, len(names))
        if constraints is not None
        else np.ones(len(names), dtype=bool)
    )
    held: dict[int, list[Held]] = {}
    if constraints is not None and constraints.frequency is not None and history is not None:
        at = record.created_at
        before = UserHistory(
            history.version,
            tuple((a, t) for a, t in history.serves if t < at),
            tuple((a, t) for a, t in history.negatives if t < at),
        )
        held = constraints.frequency.held(before, at, names)
    eligible = set(record.eligible)
    out: dict[str, list[dict[str, Any]]] = {}
    for k, name in enumerate(names):
        if name in eligible:
            continue
        causes: list[dict[str, Any]] = []
        if requested is not None and name not in requested:
            causes.append(
                _cause("request", None, "Excluded by the request (actions, excluded_actions).")
            )
        if name in engine.disabled:
            causes.append(_cause("disabled", None, "Disabled by an admin."))
        if not allowed[k] and constraints is not None:
            rule = f"constraints.eligibility.{name}"
            condition = constraints.config["eligibility"][name]
            causes.append(
                _cause(
                    "eligibility", rule,
                    f"Ineligible by rule {rule}: {json.dumps(condition)} does not hold for this "
                    "context.", condition=condition,
                )
            )  # fmt: skip
        causes.extend(_held_cause(h) for h in held.get(k, ()))
        if not causes:
            causes.append(
                _cause("request", None, "Left out by the request that made this decision.")
            )
        out[name] = causes
    return out


def _cause(cause: Cause, rule: str | None, message: str, **details: Any) -> dict[str, Any]:
    return {"cause": cause, "rule": rule, "message": message, **details}


def _held_cause(held: Held) -> dict[str, Any]:
    until = "never" if held.until is None else _iso(held.until)
    if held.cap is not None:
        cap = held.cap
        return _cause(
            "cap", held.rule,
            f"Capped by rule {held.rule}: {held.serves} serves to this user in the last "
            f"{cap.window_seconds:g} s, at most {cap.max_serves}; free again at {until}.",
            serves=held.serves, max_serves=cap.max_serves,
            window_seconds=cap.window_seconds, until=held.until,
        )  # fmt: skip
    after = "a serve" if held.after == "serve" else "a negative reward"
    return _cause(
        "cooldown", held.rule,
        f"Cooling down by rule {held.rule} until {until}, after {after} to this user.",
        after=held.after, until=held.until,
    )  # fmt: skip


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def reward_body(result: RewardResult, window_seconds: float) -> dict[str, Any]:
    """The answer to a reward that was joined (learned, summed or a duplicate).

    Raises
    ------
    EventNotFoundError, RewardWindowClosedError, EventNotActivatedError
        For a reward that was recorded but not joined: its event is unknown, its window
        had closed, or it was deferred and never activated.
    """
    event_id, outcome = result.event_id, result.outcome
    if outcome is RewardOutcome.unknown:
        raise EventNotFoundError(event_id)
    if outcome is RewardOutcome.late:
        raise RewardWindowClosedError(event_id, window_seconds)
    if outcome is RewardOutcome.not_activated:
        raise EventNotActivatedError(event_id)
    return {
        "event_id": event_id,
        "status": outcome.value,
        "learned": outcome is not RewardOutcome.duplicate,
        "duplicate": outcome is RewardOutcome.duplicate,
        "value": result.value,
        "total": result.total,
    }
