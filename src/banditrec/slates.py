"""Slates: ``"slots": k`` on ``POST /v1/rank`` fills k slots with k distinct actions.

A home screen shows three tiles, a push carries two offers. A slate is served slot by slot,
top first: each slot's action is drawn from the policy's distribution over the eligible
actions not yet in the slate (the same call as a single decision, with the actions above it
masked). So each slot is an ordinary decision, logged on its own with its own event id
(``<event_id>`` for slot 0, ``<event_id>:<slot>`` below it) and with the probability it was
chosen with *given the slots above it*; its eligible set in the log is what was left.

Rewards per slot: ``POST /v1/events/{event_id}/reward`` with ``{"value": 1, "slot": 2}`` (or
the slot's own event id); a slot without a reward gets the default reward when its window
closes, like any decision. Learning per slot: each slot's reward is learned for its action
and the context, like a single decision's. Position is not a feature: a slot lower down
that is seen less gets lower rewards for the same action, so with strong position effects
the estimates mix positions (documented limitation; a position feature in the schema is the
remedy).

Evaluation: each slot's logged propensity is conditional on the slots above it, so
off-policy evaluation of a policy that fills slots in the same way is per slot, with the
usual estimators on that slot's decisions (slot 0 is exactly a single decision). This is
the documented alternative to the pseudo-inverse estimator of Swaminathan et al. (2017),
which needs the marginal probability of every action in every slot; those marginals are
not computed here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from banditrec.engine import Engine
from banditrec.errors import RequestValidationError
from banditrec.store import DecisionRecord

__all__ = ["rank_slate", "slot_entries"]


def _refuse(reason: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("slots",), "msg": reason}])


async def rank_slate(
    engine: Engine, body: Any, context: dict[str, Any], eligible: NDArray[np.bool_]
) -> list[DecisionRecord]:
    """The slate of a validated ``RankRequest`` with ``slots``: one record per slot, logged.

    Raises
    ------
    RequestValidationError
        For what slates do not combine with (apprentice mode, a baseline action, per-user
        caps): 422 naming ``slots``.
    NoEligibleActionError
        If fewer than ``slots`` distinct actions can be served for this context.
    """
    k: int = body.slots
    if k > 1:
        if engine.serving is not None or body.baseline_action is not None:
            raise _refuse("slates of more than one slot are not served in apprentice mode")
        capped = engine.constraints is not None and engine.constraints.frequency is not None
        if capped and body.user_id is not None:
            raise _refuse(
                "per-user caps and cooldowns are configured, and slates do not apply them; "
                "ask for one slot, or leave user_id out"
            )
    if k == 1:
        record = await engine.rank(
            context, eligible, event_id=body.event_id, deferred=body.defer_activation,
            user_id=body.user_id, baseline=body.baseline_action,
        )  # fmt: skip
        return [record]
    return await engine.rank_slate(
        context, k, eligible, event_id=body.event_id, deferred=body.defer_activation,
        user_id=body.user_id,
    )  # fmt: skip


def slot_entries(records: list[DecisionRecord]) -> list[dict[str, Any]]:
    """The ``slots`` of a rank answer: each slot's action, propensity and event id."""
    return [
        {
            "slot": slot,
            "action_id": record.action,
            "probability": record.probability,
            "event_id": record.event_id,
        }
        for slot, record in enumerate(records)
    ]
