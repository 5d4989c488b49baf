"""Every policy by name, and building one from configuration.

`POLICIES` maps the name stored in model files and accepted in configuration
(``BANDITREC_POLICY``, ``banditrec train --policy``) to the class; `build_policy` turns a
name and JSON-ready parameters into a policy, filling in what the schema knows.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from banditrec.exploration import EXPLORATIONS, Exploration, exploration_from_params
from banditrec.policies.auto import AutoLinUCB
from banditrec.policies.base import Policy
from banditrec.policies.baselines import MostPopular, UniformRandom
from banditrec.policies.hybrid import HybridLinUCB
from banditrec.policies.linear import LinUCB, RidgeEpsilonGreedy, RidgeSoftmax, SquareCB
from banditrec.policies.rules import FixedRule
from banditrec.policies.thompson import LinearThompsonSampling

if TYPE_CHECKING:
    from banditrec.features import FeatureSchema

__all__ = ["DEFAULT_POLICY", "POLICIES", "build_policy"]

#: The policy served when nothing is configured (``BANDITREC_POLICY``, ``train --policy``):
#: the self-tuning LinUCB, which picks its own width (docs/benchmarks.md, the tuning table).
DEFAULT_POLICY = "auto"

#: Every policy by the name recorded in model files and accepted in configuration.
POLICIES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (
        LinUCB,
        HybridLinUCB,
        LinearThompsonSampling,
        RidgeEpsilonGreedy,
        RidgeSoftmax,
        SquareCB,
        UniformRandom,
        MostPopular,
        FixedRule,
        AutoLinUCB,
    )
}


def build_policy(
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    exploration: str | None = None,
    exploration_params: Mapping[str, Any] | None = None,
    schema: FeatureSchema | None = None,
    defaults: Mapping[str, Any] | None = None,
    exploration_defaults: Mapping[str, Any] | None = None,
) -> Policy:
    """Build the policy `name` with `params` and an exploration rule, from configuration.

    Parameters
    ----------
    name
        A key of `POLICIES`.
    params
        Constructor parameters of the policy (JSON-ready).
    exploration, exploration_params
        The exploration rule's name (a key of `EXPLORATIONS`) and parameters. Without a
        name, `exploration_params` adjust the policy's default rule.
    schema
        Fills in ``feature_names`` and ``actions`` for policies that take them (`FixedRule`).
    defaults, exploration_defaults
        Values used for parameters the policy (or rule) has and `params` (or
        `exploration_params`) leave out: how the server's ``alpha``, ``ridge`` and
        ``epsilon`` settings reach whichever policy is configured.

    Examples
    --------
    >>> build_policy("softmax", {"ridge": 2.0}, exploration_params={"temperature": 0.5})
    ... # doctest: +ELLIPSIS
    <banditrec.policies.linear.RidgeSoftmax object at ...>
    >>> build_policy("linucb", defaults={"alpha": 0.5, "temperature": 9}).get_params()
    {'alpha': 0.5, 'ridge': 10.0, 'gamma': 1.0, 'refresh_every': 1000}
    """
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"Unknown policy {name!r}; known: {', '.join(POLICIES)}.") from None
    accepted = inspect.signature(cls).parameters
    # A policy may take a server-wide setting under its own name (auto: alpha → max_alpha).
    renamed = getattr(cls, "setting_names", {})
    kwargs = {renamed.get(k, k): v for k, v in (defaults or {}).items()}
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    if schema is not None:
        kwargs.update(
            (k, v)
            for k, v in (("feature_names", schema.feature_names()), ("actions", schema.actions))
            if k in accepted
        )
    kwargs.update(params or {})
    if "exploration" in kwargs:
        raise ValueError("The exploration rule is configured on its own, not as a parameter.")
    rule = _exploration(cls, exploration, exploration_params, exploration_defaults)
    try:
        return cls(**kwargs, exploration=rule)
    except TypeError as exc:  # a missing or unknown parameter: name the policy
        raise ValueError(f"Policy {name!r}: {exc}.") from None


def _exploration(
    cls: type[Policy],
    name: str | None,
    params: Mapping[str, Any] | None,
    defaults: Mapping[str, Any] | None,
) -> Exploration | None:
    if not getattr(cls, "configurable_exploration", True):
        if name is None and not params:
            return None  # the server-wide defaults (ε) do not apply: the policy's rule is fixed
        defaults = None  # an explicit rule is passed on, and the policy checks it
    default = cls.default_exploration()
    rule_name = default.name if name is None else name
    if rule_name not in EXPLORATIONS:
        known = ", ".join(EXPLORATIONS)
        raise ValueError(f"Unknown exploration rule {rule_name!r}; known: {known}.")
    accepted = inspect.signature(EXPLORATIONS[rule_name]).parameters
    merged = {k: v for k, v in (defaults or {}).items() if k in accepted}
    if name is None:
        merged = {**default.get_params(), **merged}
    merged.update(params or {})
    return exploration_from_params(rule_name, merged)
