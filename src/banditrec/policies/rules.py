"""A fixed rule given in configuration: the app's current logic, as a comparable policy.

A team runs some hand-written logic today ("high spenders get the store deep link, everyone
else the bonus offer"). Written as a `FixedRule`, it is served and logged like any other
policy (with an ε floor, so its logs can evaluate other policies and vice versa), and
off-policy evaluation compares the two on the same data.

The rule list
-------------
Rules are tried in order; the first whose conditions all hold names the action::

    [{"if": {"segment": "high", "device": ["ios", "web"]}, "then": "deep_link_to_store"},
     {"if": {"n_sessions": {"gt": 1.5}}, "then": "suggest_new_app"},
     {"else": "show_bonus_offer"}]

Policies see feature vectors, not raw contexts, so conditions test the vector's columns by
the schema's feature names (`FeatureSchema.feature_names()`):

- ``"segment": "high"`` tests the one-hot column ``segment=high``; a list of values means
  any of them (unknown values are in ``segment=__other__``);
- ``"n_sessions": {"gt": 1.5}`` compares a numeric column *after the schema's transform*
  (ops ``eq ne gt ge lt le``, several are ANDed); a bare number means ``eq``;
- ``{"else": action}`` always matches and must come last. Without it, contexts that match
  no rule are served uniformly at random.

Actions are names (with ``actions`` given) or indices. Without ``feature_names`` the columns
are called ``x0, x1, ...``. Without rules the policy always serves the first action (plus the
floor). Actions added at run time (`add_action`) have no name here: no rule serves them.

If the chosen action is not eligible, the next matching rule's action is served: scores are
rule priorities, so the exploration rule picks the first eligible one.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from banditrec.exploration import Exploration
from banditrec.policies.base import Array, CountingPolicy, Scores

__all__ = ["FixedRule"]

_Op = Callable[[float, float], bool]
_OPS: dict[str, _Op] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}
#: (column, op, value): x[column] op value.
_Test = tuple[int, _Op, float]


class FixedRule(CountingPolicy):
    """The first matching rule's action, with the exploration floor around it.

    Parameters
    ----------
    rules
        The rule list (see the module documentation); JSON-ready, stored in model files.
        Default: ``[{"else": 0}]``, always the first action.
    feature_names
        Names of the feature vector's columns (the schema's; filled in by `build_policy`).
    actions
        Names of the actions, in index order (the schema's; filled in by `build_policy`);
        actions added later may have none.
    exploration
        The rule from scores to serving probabilities (default ε-greedy, ε = 0.05).

    Examples
    --------
    >>> import numpy as np
    >>> rule = FixedRule(
    ...     [{"if": {"segment": "high"}, "then": "store"}, {"else": "bonus"}],
    ...     feature_names=["segment=low", "segment=high", "bias"],
    ...     actions=["bonus", "store"],
    ... ).reset(n_actions=2, n_features=3)
    >>> eligible = np.ones(2, dtype=bool)
    >>> rule.distribution(np.array([0.0, 1.0, 1.0]), eligible)[1].tolist()
    [0.025, 0.975]
    >>> rule.distribution(np.array([1.0, 0.0, 1.0]), eligible)[1].tolist()
    [0.975, 0.025]
    """

    name: ClassVar[str] = "fixed_rule"
    state_arrays = ()

    def __init__(
        self,
        rules: Sequence[Mapping[str, Any]] | None = None,
        feature_names: Sequence[str] | None = None,
        actions: Sequence[str] | None = None,
        exploration: Exploration | None = None,
    ) -> None:
        super().__init__(exploration)
        self.rules = _check_rules([{"else": 0}] if rules is None else rules)
        self.feature_names = None if feature_names is None else [str(n) for n in feature_names]
        self.actions = None if actions is None else [str(a) for a in actions]

    def get_params(self) -> dict[str, Any]:
        return {"rules": self.rules, "feature_names": self.feature_names, "actions": self.actions}

    def _init_state(self) -> None:
        K, d = self.n_actions_, self.n_features_
        names = self.feature_names or [f"x{j}" for j in range(d)]
        if len(names) != d:
            raise ValueError(f"feature_names has {len(names)} names for {d} features.")
        if self.actions is not None and len(self.actions) > K:
            raise ValueError(f"actions has {len(self.actions)} names for {K} actions.")
        columns = {name: j for j, name in enumerate(names)}
        self._compiled = [
            (
                [_compile_condition(key, value, columns) for key, value in rule["if"].items()],
                self._action_index(rule["then"]),
            )
            if "if" in rule
            else ([], self._action_index(rule["else"]))
            for rule in self.rules
        ]

    def _action_index(self, action: str | int) -> int:
        if isinstance(action, int):
            if not 0 <= action < self.n_actions_:
                raise ValueError(f"Rule action {action} is not in [0, {self.n_actions_}).")
            return action
        if self.actions is None or action not in self.actions:
            known = "indices" if self.actions is None else str(self.actions)
            raise ValueError(f"Rule action {action!r} is unknown; known: {known}.")
        return self.actions.index(action)

    def score(self, x: Array) -> Scores:
        """Priority of the first matching rule naming each action (0: no rule matches)."""
        score = np.zeros(self.n_actions_)
        n_rules = len(self._compiled)
        for i, (condition, action) in enumerate(self._compiled):
            if score[action] == 0.0 and all(
                any(test(x[column], value) for column, test, value in alternatives)
                for alternatives in condition
            ):
                score[action] = n_rules - i
        return Scores(score, score, np.zeros(self.n_actions_))


def _check_rules(rules: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check the rule list's structure; return a JSON-ready deep copy."""
    if isinstance(rules, str | bytes) or not isinstance(rules, Sequence) or not rules:
        raise ValueError("rules must be a non-empty list of {'if': ..., 'then': ...} rules.")
    checked: list[dict[str, Any]] = json.loads(json.dumps(list(rules)))  # copy, JSON-only
    for i, rule in enumerate(checked):
        where = f"rules[{i}]"
        if not isinstance(rule, dict):
            raise ValueError(f"{where} must be an object, got {rule!r}.")
        if set(rule) == {"else"}:
            if i != len(checked) - 1:
                raise ValueError(f"{where}: 'else' must be the last rule.")
            action = rule["else"]
        elif set(rule) == {"if", "then"}:
            if not isinstance(rule["if"], dict) or not rule["if"]:
                raise ValueError(f"{where}: 'if' must be a non-empty object of conditions.")
            action = rule["then"]
        else:
            raise ValueError(f"{where} must be {{'if': ..., 'then': ...}} or {{'else': ...}}.")
        if isinstance(action, bool) or not isinstance(action, str | int):
            raise ValueError(f"{where}: the action must be a name or an index, not {action!r}.")
    return checked


def _compile_condition(key: str, value: Any, columns: Mapping[str, int]) -> list[_Test]:
    """One condition as alternatives (any may hold) of all-of tests on single columns."""
    if key in columns:
        column = columns[key]
        if isinstance(value, int | float) and not isinstance(value, bool):
            return [(column, operator.eq, float(value))]
        if isinstance(value, dict) and value:
            # Several ops on one column are all required: encode as one alternative whose
            # test checks them all.
            ops = []
            for op, bound in value.items():
                if op not in _OPS or isinstance(bound, bool) or not isinstance(bound, int | float):
                    raise ValueError(
                        f"Condition on {key!r}: {op!r}: {bound!r} is not one of "
                        f"{sorted(_OPS)} with a number."
                    )
                ops.append((_OPS[op], float(bound)))
            return [(column, _all_of(ops), 0.0)]
        raise ValueError(f"Condition on {key!r} must be a number or {{op: number}}, not {value!r}.")
    values = value if isinstance(value, list) else [value]
    one_hot = [f"{key}={v}" for v in values]
    if values and all(isinstance(v, str) for v in values):
        missing = [name for name in one_hot if name not in columns]
        if not missing:
            return [(columns[name], operator.ge, 0.5) for name in one_hot]
        if any(name.startswith(f"{key}=") for name in columns):
            known = sorted(n.split("=", 1)[1] for n in columns if n.startswith(f"{key}="))
            raise ValueError(f"Condition on {key!r}: {missing} unknown; values: {known}.")
    raise ValueError(f"Condition on unknown feature {key!r}; features: {sorted(columns)}.")


def _all_of(ops: list[tuple[_Op, float]]) -> _Op:
    def test(x: float, _: float) -> bool:
        return all(op(x, bound) for op, bound in ops)

    return test
