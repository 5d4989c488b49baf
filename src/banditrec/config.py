"""Settings, read from the environment (``BANDITREC_*``) or given in code.

One object carries every knob of a running server, so `create_app(settings)` is all a test
or an embedding application needs, and several worker processes started by uvicorn read the
same values from their shared environment.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, JsonValue, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from banditrec.auth import ApiKeys
from banditrec.features import FeatureSchema, load_default_schema, load_schema
from banditrec.policies import DEFAULT_POLICY, Policy, build_policy
from banditrec.store import RewardRules

__all__ = ["Settings"]


class Settings(BaseSettings):
    """banditrec's configuration; every field can be set as ``BANDITREC_<FIELD>``.

    Examples
    --------
    >>> Settings(port=9000).port
    9000
    """

    # hide_input_in_errors: a validation error must not echo the API key table.
    model_config = SettingsConfigDict(
        env_prefix="BANDITREC_", frozen=True, hide_input_in_errors=True
    )

    model_path: Path = Field(Path("data/linucb_model.npz"), description="Model file to serve.")
    schema_path: Path | None = Field(
        None, description="Feature schema file (TOML or JSON); default: the seed's app schema."
    )
    host: str = Field("127.0.0.1", description="Interface to bind (`banditrec serve --host`).")
    port: int = Field(8020, ge=1, le=65535, description="Port (`banditrec serve --port`).")
    # None: the configured policy's own default (auto: widths 0.3 and 1, λ = 10, ε = 0.01;
    # for auto, alpha is the widest width).
    alpha: float | None = Field(None, ge=0, description="α of the policy started from the prior.")
    ridge: float | None = Field(None, gt=0, description="Ridge λ of the policy from the prior.")
    epsilon: float | None = Field(None, ge=0, le=1, description="ε-greedy exploration floor.")
    # The policy served when there is no model file (a model file records its own).
    policy: str = Field(
        DEFAULT_POLICY,
        description="linucb, hybrid_linucb, thompson, epsilon_greedy, softmax, squarecb, "
        "uniform, popular, fixed_rule or auto.",
    )
    policy_params: dict[str, JsonValue] = Field(
        default_factory=dict,
        description='The policy\'s parameters as JSON, e.g. {"gamma": 0.999}; `alpha` and '
        "`ridge` are the defaults of the parameters of those names.",
    )
    exploration: str | None = Field(
        None, description="epsilon_greedy, softmax or igw; default: the policy's own rule."
    )
    exploration_params: dict[str, float] = Field(
        default_factory=dict,
        description='The rule\'s parameters as JSON, e.g. {"temperature": 0.05}; `epsilon` is '
        "the default floor.",
    )
    seed: int | None = Field(None, description="Seed of the decision sampler (None: random).")
    max_body_bytes: int = Field(64 * 1024, gt=0, description="Larger request bodies get 413.")
    constraints: dict[str, JsonValue] = Field(
        default_factory=dict,
        description='Eligibility rules per action and a fallback, as JSON: {"eligibility": '
        '{"invite_friend": {"device": "android"}}, "fallback_action": "show_bonus_offer"} '
        "(banditrec.constraints); empty: every action is eligible.",
    )
    max_batch_size: int = Field(
        1000, ge=1, description="Most contexts in one POST /v1/rank/batch; more get 422."
    )
    max_batch_body_bytes: int = Field(
        8 * 1024 * 1024, gt=0, description="Larger POST /v1/rank/batch bodies get 413."
    )
    # The HTTP server's own bounds (banditrec.server), so that one client cannot exhaust it.
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="Request line and headers of one request; more get 431."
    )
    request_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="A request (headers and body) must arrive within this many seconds of its "
        "first byte, or of the connection; else 408 and the connection is closed.",
    )
    max_connections: int = Field(
        1000, ge=1, description="Open connections per worker process; more are refused (503)."
    )

    api_keys: ApiKeys = Field(
        default_factory=dict,
        repr=False,  # printing the settings must not print the keys
        description='API key -> role, as JSON: {"<key>": "writer"}. Empty: every route is open.',
    )

    # The event log and snapshots.
    store_url: str | None = Field(
        None,
        description="The event log shared by replicas on several hosts, redis://host:port/db; "
        "unset: the SQLite file db_path (one host).",
    )
    db_path: Path = Field(Path("data/events.db"), description="SQLite event log.")
    store_prefix: str = Field(
        "banditrec",
        pattern=r"^[A-Za-z0-9_:.-]+$",
        description="Every Redis key of the log starts with this and ':' (several logs, and "
        "the named loops, share one server under their own prefixes).",
    )
    loops_file: Path | None = Field(
        None,
        description="TOML file of named loops (docs/loops.md), created or updated at start-up.",
    )
    sqlite_synchronous: Literal["NORMAL", "FULL"] = Field(
        "NORMAL", description="NORMAL survives a process crash; FULL also a power loss."
    )
    snapshot_dir: Path = Field(
        Path("data/snapshots"), description="Model snapshots (kept in the store with Redis)."
    )
    snapshot_every_events: int = Field(
        10_000, ge=1, description="A snapshot every this many learn events..."
    )
    snapshot_every_seconds: float = Field(
        300.0, gt=0, description="...or every this many seconds, whichever comes first."
    )
    snapshot_lease_seconds: float = Field(
        10.0, gt=0, description="A dead snapshot writer is replaced within this many seconds."
    )
    poll_interval_seconds: float = Field(
        0.05, gt=0, le=1, description="How often a worker applies other workers' learn events."
    )
    # Retention (banditrec.retention).
    retention_seconds: float | None = Field(
        None,
        gt=0,
        description="Decisions older than this whose reward window closed move to archive_dir "
        "(Parquet) and leave the live log; unset: keep everything.",
    )
    archive_dir: Path = Field(
        Path("data/archive"), description="Parquet archive retention moves old decisions to."
    )
    retention_every_seconds: float = Field(
        60.0, gt=0, description="How often the retention job looks for old decisions."
    )

    # Rewards.
    reward_window_seconds: float = Field(
        3600.0, gt=0, description="Rewards later than this after their decision get 410."
    )
    default_reward: float = Field(
        0.0, description="Learned for a decision with no reward when its window closes."
    )
    reward_aggregation: Literal["earliest", "sum"] = Field(
        "earliest", description="earliest: the first reward wins; sum: clipped to the range."
    )
    reward_min: float = Field(0.0, description="Lowest reward accepted (422 below).")
    reward_max: float = Field(1.0, description="Highest reward accepted (422 above).")

    # The lifecycle (banditrec.lifecycle, docs/lifecycle.md).
    apprentice: bool = Field(
        False,
        description="Start in apprentice mode: serve the app's baseline (baseline_rules, or "
        "baseline_action per rank request) until banditrec's own choices are proven better.",
    )
    baseline_rules: list[dict[str, JsonValue]] | None = Field(
        None,
        description='The app\'s current rule as a fixed_rule list, e.g. [{"if": {"segment": '
        '"high"}, "then": "deep_link_to_store"}, {"else": "show_bonus_offer"}].',
    )
    apprentice_explore: float = Field(
        0.1,
        ge=0,
        le=0.4,
        description="Share of apprentice decisions drawn from banditrec's own "
        "distribution (0: only an admin can end apprentice mode).",
    )
    apprentice_hold_seconds: float = Field(
        3600.0,
        ge=0,
        description="The lift's lower bound must stay above 0 this long before "
        "banditrec serves its own choices.",
    )
    auto_graduate: bool = Field(True, description="End apprentice mode automatically.")
    auto_promote: bool = Field(
        False, description="Promote a shadow candidate automatically once it passes the gate."
    )
    promotion_margin: float = Field(
        0.0, ge=0, description="A candidate's lower bound must beat the live value by this."
    )
    guardrail: bool = Field(
        True, description="Roll back when the previous version is significantly better."
    )
    guardrail_margin: float = Field(
        0.0, ge=0, description="...by more than this (lower bound of previous minus live)."
    )
    lifecycle_window: int = Field(
        5000, ge=100, description="Latest learned rounds each lifecycle estimate uses."
    )
    lifecycle_check_every: int = Field(
        500, ge=1, description="Learned rounds between two checks of the gates."
    )
    lifecycle_min_effective_sample_size: float = Field(
        100.0, ge=0, description="No switch on an estimate with fewer effective rounds."
    )

    @model_validator(mode="after")
    def _check_reward_range(self) -> Settings:
        if not self.reward_min < self.reward_max:
            raise ValueError("reward_min must be below reward_max.")
        if not self.reward_min <= self.default_reward <= self.reward_max:
            raise ValueError("default_reward must lie in [reward_min, reward_max].")
        return self

    @model_validator(mode="after")
    def _check_baseline(self) -> Settings:
        if self.baseline_rules is not None:  # a bad rule fails at startup
            build_policy("fixed_rule", {"rules": self.baseline_rules})
        return self

    @model_validator(mode="after")
    def _check_policy(self) -> Settings:
        self.build_policy(with_schema=False)  # a bad name or parameter fails at startup
        return self

    def build_policy(self, with_schema: bool = True) -> Policy:
        """The configured policy with its exploration rule, at no particular shape yet."""
        return build_policy(
            self.policy,
            self.policy_params,
            exploration=self.exploration,
            exploration_params=self.exploration_params,
            schema=self.feature_schema if with_schema else None,
            defaults=_given(alpha=self.alpha, ridge=self.ridge),
            exploration_defaults=_given(epsilon=self.epsilon),
        )

    @property
    def reward_rules(self) -> RewardRules:
        return RewardRules(
            window_seconds=self.reward_window_seconds,
            default_reward=self.default_reward,
            aggregation=self.reward_aggregation,
            min_reward=self.reward_min,
            max_reward=self.reward_max,
        )

    @cached_property
    def feature_schema(self) -> FeatureSchema:
        return load_default_schema() if self.schema_path is None else load_schema(self.schema_path)


def _given(**values: float | None) -> dict[str, float]:
    """The values that were set (None means: keep the policy's own default)."""
    return {name: value for name, value in values.items() if value is not None}
