"""Settings, read from the environment (``BANDITREC_*``) or given in code.

One object carries every knob of a running server, so `create_app(settings)` is all a test
or an embedding application needs, and several worker processes started by uvicorn read the
same values from their shared environment.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from banditrec.features import FeatureSchema, load_default_schema, load_schema

__all__ = ["Settings"]


class Settings(BaseSettings):
    """banditrec's configuration; every field can be set as ``BANDITREC_<FIELD>``.

    Examples
    --------
    >>> Settings(port=9000).port
    9000
    """

    model_config = SettingsConfigDict(env_prefix="BANDITREC_", frozen=True)

    model_path: Path = Field(Path("data/linucb_model.npz"), description="Model file to serve.")
    schema_path: Path | None = Field(
        None, description="Feature schema file (TOML or JSON); default: the seed's app schema."
    )
    host: str = "127.0.0.1"
    port: int = Field(8020, ge=1, le=65535)
    alpha: float = Field(1.0, ge=0, description="LinUCB α when starting from the prior.")
    ridge: float = Field(1.0, gt=0, description="LinUCB ridge λ when starting from the prior.")
    epsilon: float = Field(0.05, ge=0, le=1, description="ε-greedy exploration floor.")
    seed: int | None = Field(None, description="Seed of the decision sampler (None: random).")
    max_body_bytes: int = Field(64 * 1024, gt=0, description="Larger request bodies get 413.")

    @cached_property
    def feature_schema(self) -> FeatureSchema:
        return load_default_schema() if self.schema_path is None else load_schema(self.schema_path)
