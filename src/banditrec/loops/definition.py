"""What defines a named loop, and the settings it runs with.

A loop is defined by its feature schema (its context fields and its actions), its settings
(policy, exploration, rewards, constraints, lifecycle: the per-loop subset of
`banditrec.config.Settings`, `LOOP_SETTINGS`) and its own API keys. `LoopSpec` is that
definition as a client or a loops file gives it; `LoopRecord` is how it is kept in the
catalog (the keys as SHA-256 digests, never the keys themselves); `loop_settings` makes the
complete `Settings` a loop runs with: the per-process knobs of the server (store URL,
limits, polling) and the loop's own, with its log, snapshots, archive and model file beside
the default loop's, under ``loops/<name>``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from banditrec.auth import ApiKeys, Role
from banditrec.config import Settings
from banditrec.constraints import constraints_from_config
from banditrec.errors import LoopError
from banditrec.features import FeatureSchema, SchemaError
from banditrec.policies import build_policy

__all__ = [
    "DEFAULT_LOOP",
    "LOOP_NAME_PATTERN",
    "LOOP_SETTINGS",
    "LoopRecord",
    "LoopSpec",
    "check_loop_name",
    "key_digest",
    "loop_settings",
]

#: The name of the server's own loop (``/v1/rank``); no named loop may take it.
DEFAULT_LOOP = "default"

#: A loop name: a path segment, a Redis key part and a directory name alike.
LOOP_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_LOOP_NAME = re.compile(LOOP_NAME_PATTERN)

#: The settings a loop sets for itself; the others are the server's (store URL, limits,
#: polling, paths) and shared by every loop.
LOOP_SETTINGS: frozenset[str] = frozenset(
    {
        "policy", "policy_params", "exploration", "exploration_params", "alpha", "ridge",
        "epsilon", "seed", "constraints", "max_batch_size",
        "reward_window_seconds", "default_reward", "reward_aggregation", "reward_min",
        "reward_max",
        "apprentice", "baseline_rules", "apprentice_explore", "apprentice_hold_seconds",
        "auto_graduate", "auto_promote", "promotion_margin", "guardrail", "guardrail_margin",
        "lifecycle_window", "lifecycle_check_every", "lifecycle_min_effective_sample_size",
        "snapshot_every_events", "snapshot_every_seconds", "retention_seconds",
    }
)  # fmt: skip


def check_loop_name(name: str) -> str:
    """`name` if it can name a loop, else `LoopError` saying what a name may be.

    >>> check_loop_name("onboarding")
    'onboarding'
    """
    if name == DEFAULT_LOOP:
        raise LoopError(
            "The loop name 'default' is the server's own loop (/v1/rank); choose another."
        )
    if not _LOOP_NAME.match(name):
        raise LoopError(
            f"The loop name {name!r} is not valid: use 1 to 63 lower-case letters, digits, "
            "'-' and '_', starting with a letter or digit."
        )
    return name


class LoopSpec(BaseModel):
    """A loop's definition as given: ``PUT /v1/loops/{loop}``'s body, or a loops file's table.

    Examples
    --------
    >>> spec = LoopSpec.model_validate({
    ...     "schema": {"actions": ["a", "b"], "fields": [{"name": "age", "kind": "integer",
    ...                                                   "min": 0, "max": 120}]},
    ...     "settings": {"policy": "thompson"}})
    >>> spec.settings
    {'policy': 'thompson'}
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, hide_input_in_errors=True)

    feature_schema: dict[str, JsonValue] = Field(
        alias="schema",
        description="The loop's feature schema, as in a schema file: `actions`, `fields`, "
        "`bias` (docs/design.md).",
    )
    settings: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="The loop's own settings, named as BANDITREC_* settings without the "
        "prefix: policy, policy_params, exploration, reward_window_seconds, constraints, ...",
    )
    api_keys: ApiKeys = Field(
        default_factory=dict,
        description='Keys valid on this loop only, key -> role: {"<key>": "writer"}.',
    )


def key_digest(key: str) -> str:
    """The SHA-256 digest (hex) a loop keeps of one of its API keys."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class LoopRecord:
    """A loop's definition as kept in the catalog; `same_definition` compares two."""

    name: str
    schema: dict[str, Any]
    settings: dict[str, Any]
    key_digests: dict[str, str]  # SHA-256 hex digest -> role
    created_at: float

    @classmethod
    def from_spec(cls, name: str, spec: LoopSpec, now: float) -> LoopRecord:
        """The record of `spec`, checked: raises `LoopError` if it cannot serve."""
        check_loop_name(name)
        digests = {key_digest(key): str(role) for key, role in spec.api_keys.items()}
        record = cls(name, dict(spec.feature_schema), dict(spec.settings), digests, now)
        loop_settings(Settings(), record)  # every check of a loop that could not serve
        return record

    def same_definition(self, other: LoopRecord) -> bool:
        """Whether `other` defines the same loop (the creation time aside)."""
        return (self.schema, self.settings, self.key_digests) == (
            other.schema,
            other.settings,
            other.key_digests,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "settings": self.settings,
            "key_digests": self.key_digests,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> LoopRecord:
        return cls(name, data["schema"], data["settings"], data["key_digests"], data["created_at"])

    def key_roles(self) -> dict[bytes, Role]:
        """The loop's keys as raw digests -> role, as `banditrec.auth` compares them."""
        return {bytes.fromhex(digest): Role(role) for digest, role in self.key_digests.items()}


def loop_settings(base: Settings, record: LoopRecord) -> Settings:
    """The complete settings of the loop `record` on a server configured by `base`.

    The server's own knobs come from `base`; the loop's (`LOOP_SETTINGS`) from the record,
    or their defaults (never the server's: a default loop's policy or baseline rules name
    its own actions); its files go to ``loops/<name>`` beside the default loop's, and its
    Redis keys under ``<store_prefix>:loop:<name>``.

    Raises
    ------
    LoopError
        For a schema, setting, policy or constraint that cannot serve; the message names it.
    """
    name = record.name
    unknown = sorted(set(record.settings) - LOOP_SETTINGS)
    if unknown:
        raise LoopError(
            f"Loop {name!r}: {', '.join(map(repr, unknown))} cannot be set per loop; a loop "
            f"sets {', '.join(sorted(LOOP_SETTINGS))}."
        )
    try:
        schema = FeatureSchema.from_dict(record.schema)
    except (SchemaError, KeyError, TypeError, ValueError) as exc:
        raise LoopError(f"Loop {name!r}: the schema is not valid: {_sentence(exc)}") from None
    values: dict[str, Any] = {}
    for field_name, info in Settings.model_fields.items():
        if field_name in LOOP_SETTINGS:
            values[field_name] = info.get_default(call_default_factory=True)
        else:
            values[field_name] = getattr(base, field_name)
    values.update(record.settings)
    values.update(
        schema_path=None,
        api_keys={},  # a loop's keys are checked by the loop routes (`banditrec.loops`)
        loops_file=None,
        model_path=base.model_path.parent / "loops" / f"{name}.npz",
        db_path=base.db_path.parent / "loops" / name / base.db_path.name,
        snapshot_dir=base.snapshot_dir / "loops" / name,
        archive_dir=base.archive_dir / "loops" / name,
        store_prefix=f"{base.store_prefix}:loop:{name}",
    )
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        messages = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: "
            + str(e["msg"]).removeprefix("Value error, ").rstrip(".")
            for e in exc.errors(include_url=False)
        )
        raise LoopError(f"Loop {name!r}: the settings are not valid: {messages}.") from None
    # The schema is the record's, not a file's: fill `feature_schema` (a cached property)
    # before anything reads it.
    settings.__dict__["feature_schema"] = schema
    try:
        settings.build_policy()
        constraints_from_config(settings.constraints, schema, schema.actions)
        if settings.baseline_rules is not None:
            build_policy("fixed_rule", {"rules": settings.baseline_rules}, schema=schema)
    except (ValueError, KeyError, TypeError) as exc:
        raise LoopError(f"Loop {name!r}: {_sentence(exc)}") from None
    return settings


def _sentence(exc: BaseException) -> str:
    text = str(exc).strip().strip("'\"") or type(exc).__name__
    return text if text.endswith(".") else text + "."
