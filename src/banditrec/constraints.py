"""Constraints on what may be served: per-action eligibility rules on the context, and the
configuration of the per-user caps and cooldowns of `banditrec.caps`.

Real apps never let every action be served to every user: an offer is for Android users
only, a store deep link needs a rich market. Such rules are configured once, here, instead of
being sent with every request (``excluded_actions`` still works on top of them):

    {"eligibility": {
        "invite_friend": {"device": "android"},
        "deep_link_to_store": [{"country": ["US", "GB", "DE", "AT", "JP"]},
                               {"segment": "high", "n_sessions": {"ge": 2.0}}]},
     "fallback_action": "show_bonus_offer"}

An action's rule is a condition object, all of whose conditions must hold, or a list of
them, any of which may hold; conditions are written in the language of the ``fixed_rule``
policy (`banditrec.policies.rules`): ``"device": "android"`` or a list of values tests the
one-hot columns, ``"n_sessions": {"ge": 2.0}`` a numeric column after the schema's transform.
Actions without a rule (and actions added at run time) are always eligible.

Honest probabilities (DESIGN principle 4): the rules mask actions *before* the policy's
distribution is computed, so the logged probability of the served action is the one it was
served with, given the constraints, and off-policy evaluation on these logs stays unbiased
for any policy that respects the same constraints.

When the rules mask every action a request allows, the decision gets the configured
``fallback_action`` (served with probability 1: nothing else could be served for this context;
it must still be allowed by the request and enabled), or, without one, a 422
``no_eligible_action`` whose message names the constraints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from banditrec.caps import FrequencyRules, frequency_rules_from_config
from banditrec.exploration import NoEligibleActionError
from banditrec.features import FeatureSchema
from banditrec.policies.rules import _compile_condition

__all__ = ["Constraints", "constraints_from_config"]

#: A compiled condition object: all of its conditions, each a list of alternatives.
_Condition = list[list[tuple[int, Any, float]]]


def _holds(condition: _Condition, x: NDArray[np.float64]) -> bool:
    return all(
        any(test(x[column], value) for column, test, value in alternatives)
        for alternatives in condition
    )


@dataclass(frozen=True)
class Constraints:
    """Per-action eligibility rules and the fallback action, compiled for one schema.

    Build it with `constraints_from_config`; `mask` and `mask_batch` are pure functions of the
    feature vectors.
    """

    config: dict[str, Any]
    #: action index -> its alternatives (any may hold), each a compiled condition object.
    rules: dict[int, list[_Condition]] = field(default_factory=dict)
    fallback: str | None = None
    #: Per-user frequency caps and cooldowns (`banditrec.caps`); None: none.
    frequency: FrequencyRules | None = None

    def mask(self, x: NDArray[np.float64], n_actions: int) -> NDArray[np.bool_]:
        """Which of the first `n_actions` actions the rules allow for the vector `x`."""
        allowed = np.ones(n_actions, dtype=bool)
        for k, alternatives in self.rules.items():
            if k < n_actions and not any(_holds(c, x) for c in alternatives):
                allowed[k] = False
        return allowed

    def mask_batch(self, X: NDArray[np.float64], n_actions: int) -> NDArray[np.bool_]:
        """`mask` of every row of `X` (n, d): shape (n, n_actions)."""
        out = np.ones((X.shape[0], n_actions), dtype=bool)
        for i in range(X.shape[0]):
            out[i] = self.mask(X[i], n_actions)
        return out

    def restrict(
        self,
        allowed: NDArray[np.bool_],
        requested: NDArray[np.bool_],
        actions: Sequence[str],
    ) -> NDArray[np.bool_]:
        """The mask to serve from: what the request allows and the rules allow; if that is
        nothing, the fallback action alone (if the request allows it).

        Raises
        ------
        NoEligibleActionError
            If the rules leave nothing and there is no usable fallback.
        """
        mask = requested & allowed
        if mask.any():
            return mask
        if self.fallback is not None and self.fallback in actions:
            k = actions.index(self.fallback)
            if requested[k]:
                only = np.zeros_like(requested)
                only[k] = True
                return only
        if not requested.any():
            raise NoEligibleActionError("No eligible action is left to serve.")
        why = (
            f"the fallback action {self.fallback!r} is excluded or disabled"
            if self.fallback is not None
            else "no fallback_action is configured"
        )
        raise NoEligibleActionError(
            "The configured eligibility rules allow none of the actions this request allows "
            f"for this context, and {why}."
        )


def constraints_from_config(
    config: Mapping[str, Any], schema: FeatureSchema, actions: Sequence[str]
) -> Constraints | None:
    """Compile a constraints configuration (see the module documentation) for `schema`;
    None if it constrains nothing.

    Raises
    ------
    ValueError
        For an unknown key, action or feature, or a malformed condition (naming it).
    """
    known = {"eligibility", "fallback_action", "caps", "cooldowns", "negative_at_most"}
    unknown = set(config) - known
    if unknown:
        raise ValueError(
            f"constraints: unknown keys {sorted(unknown)}; known: {', '.join(sorted(known))}."
        )
    frequency = frequency_rules_from_config(config, actions)
    eligibility = config.get("eligibility") or {}
    if not isinstance(eligibility, Mapping):
        raise ValueError("constraints.eligibility must be an object: action -> condition.")
    fallback = config.get("fallback_action")
    if fallback is not None and fallback not in actions:
        raise ValueError(
            f"constraints.fallback_action {fallback!r} is not an action; known: {list(actions)}."
        )
    columns = {name: j for j, name in enumerate(schema.feature_names())}
    rules: dict[int, list[_Condition]] = {}
    for action, rule in eligibility.items():
        where = f"constraints.eligibility.{action}"
        if action not in actions:
            raise ValueError(f"{where}: unknown action; known: {list(actions)}.")
        alternatives = rule if isinstance(rule, list) else [rule]
        if not alternatives or not all(isinstance(a, Mapping) and a for a in alternatives):
            raise ValueError(
                f"{where} must be a non-empty condition object or a non-empty list of them."
            )
        try:
            rules[actions.index(action)] = [
                [_compile_condition(key, value, columns) for key, value in alternative.items()]
                for alternative in alternatives
            ]
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    if not rules and fallback is None and frequency is None:
        return None
    return Constraints(dict(config), rules, fallback, frequency)
