"""Shared fixtures: the seed's example request and one real trained model per session."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import settings as hypothesis_settings

from banditrec.features import load_default_schema
from banditrec.logged_data import write_logged_csv
from banditrec.policies import LinUCB
from banditrec.sim import AppSimulator
from banditrec.training import train_from_csv
from redis_server import redis_server  # noqa: F401  (the fixture, for every test module)

# In CI the property tests run a fixed set of examples (derandomized): a red build then
# always means a change broke something, never that a new random example was drawn.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

#: The seed's example body for `POST /recommend_action`.
SEED_REQUEST: dict[str, Any] = {
    "user_id": "u123",
    "country": "AT",
    "device": "ios",
    "segment": "high",
    "n_sessions": 10,
    "days_since_install": 5,
    "recent_engagement": 12,
    "avg_session_length": 180.0,
}

#: The seed's context alone (the body of `/v1/rank`'s "context").
SEED_CONTEXT: dict[str, Any] = {k: v for k, v in SEED_REQUEST.items() if k != "user_id"}

ACTIONS = ("show_bonus_offer", "invite_friend", "suggest_new_app", "deep_link_to_store")


def write_schema_toml(path: Path, data: Mapping[str, Any]) -> Path:
    """Write a schema in its dict form (`FeatureSchema.to_dict()`) as a TOML file."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return repr(v) if isinstance(v, int | float) else json.dumps(v)

    lines = [f"{k} = {value(v)}" for k, v in data.items() if k != "fields"]
    for field in data["fields"]:
        lines += ["", "[[fields]]", *(f"{k} = {value(v)}" for k, v in field.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def other_schema_toml(path: Path, **changes: Any) -> Path:
    """The default schema as TOML, with one more country (another hash) or `changes` to
    fields by name, e.g. ``country={"on_unknown": "reject"}``."""
    data = load_default_schema().to_dict()
    if not changes:
        changes = {"country": {"values": [*data["fields"][0]["values"], "CH"]}}
    for field in data["fields"]:
        field.update(changes.get(field["name"], {}))
    return write_schema_toml(path, data)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data CSV, model file) simulated and trained once; copy before touching them."""
    root = tmp_path_factory.mktemp("trained")
    data_path, model_path = root / "logged.csv", root / "model.npz"
    write_logged_csv(AppSimulator().simulate_logged(2000, np.random.default_rng(0)), data_path)
    train_from_csv(data_path, model_path, load_default_schema(), LinUCB())
    return data_path, model_path


@pytest.fixture
def model_file(trained: tuple[Path, Path], tmp_path: Path) -> Path:
    """A private copy of the trained model file in this test's tmp_path."""
    path = tmp_path / "model.npz"
    shutil.copyfile(trained[1], path)
    return path


@pytest.fixture
def data_file(trained: tuple[Path, Path], tmp_path: Path) -> Path:
    """A private copy of the logged-data CSV the model was trained on."""
    path = tmp_path / "logged.csv"
    shutil.copyfile(trained[0], path)
    return path
