"""Candidate configurations: specs, grids, TOML files, parameters checked against the registry.

A candidate is a registered policy (`banditrec.policies.POLICIES`) with some of its constructor
parameters and of its exploration rule's (`banditrec.exploration.EXPLORATIONS`); every value is
checked and given its parameter's type before anything runs. A candidate is built by
`banditrec.policies.build_policy`, the factory `serve` and `train` use, so a candidate and a
served or trained policy given the same parameters are the same policy.
"""

from __future__ import annotations

import inspect
import itertools
import math
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from banditrec.evaluation.config import EvaluationError
from banditrec.exploration import EXPLORATIONS
from banditrec.policies import POLICIES, Policy, build_policy

if TYPE_CHECKING:
    from banditrec.evaluation.live import LiveModel
    from banditrec.features import FeatureSchema

#: The policy name of a live candidate (banditrec.evaluation.live).
LIVE = "live"

__all__ = [
    "Candidate",
    "CandidateError",
    "default_candidates",
    "grid_candidates",
    "load_candidates_file",
    "make_candidate",
    "parse_candidate",
    "parse_grid",
    "parse_value",
    "unique",
]

# Default grid when no candidate is given: the LinUCB knobs that matter most when serving,
# around and including what `serve` runs by default (α = 1, ε = 0.01).
_DEFAULT_LINUCB_GRID: dict[str, list[Any]] = {"alpha": [0.1, 0.5, 1.0, 2.0], "epsilon": [0.01, 0.1]}


class CandidateError(EvaluationError):
    """A candidate specification is malformed or names an unknown policy or parameter."""


@dataclass(frozen=True)
class Candidate:
    """A policy name and the parameters given for it (validated, coerced); the rest default.

    Parameters are the policy constructor's (``alpha``, ``ridge``, ...) and its exploration
    rule's (``epsilon``, ``temperature``, ...); ``exploration=<rule>`` picks another rule and
    ``exploration.<name>`` names a rule parameter that a policy parameter shadows.
    """

    policy: str
    params: tuple[tuple[str, Any], ...] = ()
    label: str = ""

    def build(self, schema: FeatureSchema | None = None) -> Policy:
        """A fresh, unfitted policy with these parameters, by `build_policy`.

        `schema` fills in what the schema knows (``feature_names`` and ``actions`` of
        `FixedRule`), as it does for `serve` and `train`. A live candidate has no policy of
        its own until the log's live model is known (`banditrec.evaluation.live`).
        """
        if self.live:
            raise CandidateError(
                f"{self.label} is the live policy replayed: it is built from the model that "
                "served the log (banditrec.evaluation.live), not from the registry."
            )
        return _build(self.policy, dict(self.params), schema)

    @property
    def live(self) -> bool:
        """Whether this is the live policy (with some parameters changed), replayed."""
        return self.policy == LIVE


def _signature(cls: type[Any]) -> dict[str, inspect.Parameter]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        name: p
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind in kinds and name != "exploration"
    }


def _policy_class(name: str) -> type[Policy]:
    try:
        return POLICIES[name]
    except KeyError:
        raise CandidateError(
            f"Unknown policy {name!r}; registered policies: {', '.join(sorted(POLICIES))}."
        ) from None


def _exploration_class(policy_cls: type[Policy], params: Mapping[str, Any]) -> type[Any] | None:
    """The exploration rule the parameters configure; None if the policy takes no rule."""
    if "exploration" not in inspect.signature(policy_cls).parameters:
        return None
    if "exploration" in params:
        name = params["exploration"]
        if name not in EXPLORATIONS:
            raise CandidateError(
                f"Unknown exploration rule {name!r}; known rules: "
                f"{', '.join(sorted(EXPLORATIONS))}."
            )
        return EXPLORATIONS[name]
    return type(policy_cls.default_exploration())


def checked_params(policy: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check every parameter name and give each value its parameter's type (by key)."""
    cls = _policy_class(policy)
    own = _signature(cls)
    rule = _exploration_class(cls, params)
    rule_params = _signature(rule) if rule is not None else {}
    coerced: dict[str, Any] = {}
    for key, value in params.items():
        name = key.removeprefix("exploration.")
        if key == "exploration" and rule is not None:
            coerced[key] = value
        elif key == name and name in own:
            coerced[key] = _coerce(policy, name, value, own[name].default)
        elif name in rule_params:
            coerced[key] = _coerce(policy, name, value, rule_params[name].default)
        else:
            known = sorted(own) + sorted(rule_params) + (["exploration"] if rule else [])
            raise CandidateError(
                f"Unknown parameter {key!r} for policy {policy!r}; its parameters are: "
                f"{', '.join(known)}."
            )
    return coerced


def split_params(
    policy: str, params: Mapping[str, Any]
) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """Checked parameters split into the policy's, the rule's name (if given) and the rule's."""
    cls = _policy_class(policy)
    own = _signature(cls)
    kwargs = {k: v for k, v in params.items() if k in own}
    rule_kwargs = {
        k.removeprefix("exploration."): v
        for k, v in params.items()
        if k not in own and k != "exploration"
    }
    rule_name = params.get("exploration")
    if (rule_name is not None or rule_kwargs) and _exploration_class(cls, params) is None:
        raise CandidateError(f"Policy {policy!r} takes no exploration rule.")
    return kwargs, rule_name, rule_kwargs


def _build(policy: str, params: Mapping[str, Any], schema: FeatureSchema | None = None) -> Policy:
    """Build the policy of checked parameters with `build_policy`.

    The parameters are split into the policy's and its rule's; a rule parameter given alone
    starts from the policy's default rule (LinUCB's ``tie_tolerance`` keeps its ε = 0.01), as
    it does for `serve` and `train`.
    """
    kwargs, rule_name, rule_kwargs = split_params(policy, params)
    return build_policy(
        policy, kwargs, exploration=rule_name, exploration_params=rule_kwargs, schema=schema
    )


def _coerce(policy: str, name: str, value: Any, default: Any) -> Any:
    """Give `value` the type of the parameter's default (1 → 1.0 for a float parameter)."""
    where = f"{policy}: parameter {name}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise CandidateError(f"{where} must be true or false, got {value!r}.")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CandidateError(f"{where} must be a number, got {value!r}.")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise CandidateError(f"{where} must be an integer, got {value!r}.")
    return value


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def make_candidate(policy: str, params: Mapping[str, Any], label: str | None = None) -> Candidate:
    """Validate a candidate: known policy and parameters, values the constructor accepts.

    ``live`` names the policy that served the log, replayed with these parameters changed
    (`banditrec.evaluation.live`); its parameters are checked when the log names it.

    Examples
    --------
    >>> make_candidate("linucb", {"alpha": 1, "epsilon": 0.1}).label
    'linucb(alpha=1, epsilon=0.1)'
    >>> make_candidate("live", {"alpha": 0.5}).label
    'live(alpha=0.5)'
    >>> make_candidate("linucb", {"alpha": -1})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    banditrec.evaluation.candidates.CandidateError: linucb(alpha=-1): alpha must be a finite...
    """
    if policy == LIVE:  # checked against the live policy once the log names it
        ordered = tuple(params.items())
        inner = ", ".join(f"{k}={_format(v)}" for k, v in ordered)
        return Candidate(policy, ordered, label or (f"{LIVE}({inner})" if inner else LIVE))
    coerced = checked_params(policy, params)
    ordered = tuple(coerced.items())
    if label is None:
        inner = ", ".join(f"{k}={_format(v)}" for k, v in ordered)
        label = f"{policy}({inner})" if inner else policy
    candidate = Candidate(policy, ordered, label)
    try:
        candidate.build()
    except (TypeError, ValueError) as exc:
        raise CandidateError(f"{label}: {exc}") from None
    return candidate


def parse_value(text: str) -> Any:
    """A command-line value: true/false, an int, a float, or else the string itself."""
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if isinstance(value, float) and math.isnan(value):
            raise CandidateError(f"{text!r} is not a usable number.")
        return value
    return text


def parse_grid(options: Iterable[str]) -> dict[str, list[Any]]:
    """Parse ``--grid NAME=V1,V2,...`` options into name -> values.

    Examples
    --------
    >>> parse_grid(["alpha=0.1,1", "ridge=10"])
    {'alpha': [0.1, 1], 'ridge': [10]}
    """
    grid: dict[str, list[Any]] = {}
    for option in options:
        key, sep, values = option.partition("=")
        key = key.strip()
        items = [v.strip() for v in values.split(",")]
        if not sep or not key or not all(items):
            raise CandidateError(
                f"--grid {option!r} is not NAME=V1,V2,... (for example alpha=0.1,0.5,1)."
            )
        if key in grid:
            raise CandidateError(f"--grid {key} is given twice; list all its values in one option.")
        grid[key] = [parse_value(v) for v in items]
    return grid


def grid_candidates(policy: str, grid: Mapping[str, Sequence[Any]]) -> list[Candidate]:
    """Every combination of the grid's values (cartesian product), validated."""
    names = list(grid)
    return [
        make_candidate(policy, dict(zip(names, values, strict=True)))
        for values in itertools.product(*(grid[n] for n in names))
    ]


def parse_candidate(text: str) -> Candidate:
    """Parse ``POLICY`` or ``POLICY:NAME=V,NAME=V`` (one ``--candidate`` option).

    Examples
    --------
    >>> parse_candidate("linucb:alpha=0.5,ridge=10").params
    (('alpha', 0.5), ('ridge', 10.0))
    """
    policy, sep, rest = text.partition(":")
    policy = policy.strip()
    usage = "expected POLICY or POLICY:NAME=VALUE,NAME=VALUE (for example linucb:alpha=0.5)"
    if not policy or (sep and not rest.strip()):
        raise CandidateError(f"--candidate {text!r}: {usage}.")
    params: dict[str, Any] = {}
    for piece in rest.split(",") if sep else ():
        key, eq, value = piece.partition("=")
        key = key.strip()
        if not eq or not key or not value.strip():
            raise CandidateError(
                f"--candidate {text!r}: {piece.strip()!r} is not NAME=VALUE; {usage}."
            )
        if key in params:
            raise CandidateError(f"--candidate {text!r}: {key} is given twice.")
        params[key] = parse_value(value)
    return make_candidate(policy, params)


def load_candidates_file(path: str | Path) -> list[Candidate]:
    """Candidates from a TOML file: ``[[candidate]]`` tables with ``policy`` and parameters.

    A list value makes a grid (every combination); ``label`` names a single candidate::

        [[candidate]]
        policy = "linucb"
        alpha = [0.1, 0.5, 1.0]
        epsilon = 0.05
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CandidateError(f"The candidates file {path} does not exist.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise CandidateError(f"The candidates file {path} is not valid TOML: {exc}.") from None
    tables = data.get("candidate")
    if not isinstance(tables, list) or not tables:
        raise CandidateError(f"The candidates file {path} has no [[candidate]] table.")
    out: list[Candidate] = []
    for i, table in enumerate(tables, start=1):
        out.extend(_table_candidates(f"{path}, candidate {i}", dict(table)))
    return out


def _table_candidates(where: str, table: dict[str, Any]) -> list[Candidate]:
    """The candidates of one ``[[candidate]]`` table: one if it has a label, else its grid."""
    policy, label = table.pop("policy", None), table.pop("label", None)
    if not isinstance(policy, str):
        raise CandidateError(f'{where}: needs policy = "<name>".')
    if isinstance(table.get("exploration"), dict):  # [candidate.exploration] sub-table
        rule = table.pop("exploration")
        table.update({f"exploration.{k}": v for k, v in rule.items() if k != "name"})
        if "name" in rule:
            table["exploration"] = rule["name"]
    grid = {k: v if isinstance(v, list) else [v] for k, v in table.items()}
    if any(not v for v in grid.values()):
        raise CandidateError(f"{where}: an empty list of values.")
    if any(isinstance(x, dict | list) for v in grid.values() for x in v):
        raise CandidateError(f"{where}: parameter values must be numbers, booleans or text.")
    if label is None:
        return grid_candidates(policy, grid)
    if any(len(v) > 1 for v in grid.values()):
        raise CandidateError(f"{where}: label names one candidate; it cannot go with a grid.")
    return [make_candidate(policy, {k: v[0] for k, v in grid.items()}, str(label))]


def default_candidates(live: LiveModel | None = None) -> list[Candidate]:
    """The live policy and its neighbours replayed (when the log's live model is known),
    then a small LinUCB grid (α × ε) and every other registered policy with its defaults.

    The first are the ones the log can judge (docs/evaluation.md: a frozen candidate that
    strays from what was served has a low effective sample size).
    """
    from banditrec.evaluation.live import neighbour_params

    out: list[Candidate] = []
    if live is not None:
        out.append(make_candidate(LIVE, {}))
        out.extend(make_candidate(LIVE, params) for params in neighbour_params(live))
    for name in POLICIES:
        if name == "linucb":
            out.extend(grid_candidates(name, _DEFAULT_LINUCB_GRID))
        else:
            out.append(make_candidate(name, {}))
    return out


def unique(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Candidates without repeats (same policy and parameters), first kept."""
    seen: set[tuple[str, tuple[tuple[str, Any], ...]]] = set()
    out = []
    for c in candidates:
        key = (c.policy, tuple(sorted(c.params, key=lambda kv: kv[0])))
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out
