"""Choosing a policy in configuration: settings, `banditrec train --policy`, the server's
prior, and what the model file records."""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from banditrec.api import base_model
from banditrec.cli import app
from banditrec.config import Settings
from banditrec.evaluation import make_candidate
from banditrec.exploration import EpsilonGreedy, InverseGapWeighting, Softmax
from banditrec.features import load_default_schema
from banditrec.policies import POLICIES, FixedRule, LinearThompsonSampling, LinUCB, SquareCB
from banditrec.snapshot import ModelFileError, load_model, read_metadata

SCHEMA = load_default_schema()
RULES = [
    {"if": {"segment": "high"}, "then": "deep_link_to_store"},
    {"else": "show_bonus_offer"},
]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BANDITREC_* variable left by another test (`serve` sets some) reaches Settings."""
    for name in list(os.environ):
        if name.startswith("BANDITREC_"):
            monkeypatch.delenv(name)


# -- settings -------------------------------------------------------------------------


def test_settings_choose_the_policy_and_its_rule() -> None:
    settings = Settings(
        policy="thompson",
        policy_params={"v": 0.5, "gamma": 0.999},
        exploration="softmax",
        exploration_params={"temperature": 0.2},
        ridge=3.0,
        epsilon=0.02,
    )
    policy = settings.build_policy()
    assert isinstance(policy, LinearThompsonSampling)
    assert policy.get_params() == {
        "v": 0.5, "ridge": 3.0, "gamma": 0.999, "refresh_every": 1000, "n_draws": 100,
    }  # fmt: skip
    assert policy.exploration == Softmax(temperature=0.2, epsilon=0.02)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANDITREC_POLICY", "fixed_rule")
    monkeypatch.setenv("BANDITREC_POLICY_PARAMS", json.dumps({"rules": RULES}))
    monkeypatch.setenv("BANDITREC_EPSILON", "0.1")
    policy = Settings().build_policy()
    assert isinstance(policy, FixedRule)
    assert policy.get_params()["actions"] == list(SCHEMA.actions)  # filled in from the schema
    assert policy.exploration == EpsilonGreedy(0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy": "linucbb"}, "Unknown policy 'linucbb'"),
        ({"policy_params": {"alpha": -1}}, "alpha"),
        ({"policy_params": {"alpah": 1}}, "alpah"),
        ({"exploration": "boltzmann"}, "Unknown exploration rule"),
        ({"policy": "squarecb", "exploration_params": {"gamma": -5}}, "gamma"),
        ({"policy": "fixed_rule", "policy_params": {"rules": [{"else": 0}, {"else": 1}]}}, "last"),
    ],
)
def test_bad_policy_settings_fail_at_startup(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**kwargs)


def test_the_server_starts_from_the_configured_prior(tmp_path: Path) -> None:
    settings = Settings(model_path=tmp_path / "none.npz", policy="squarecb", epsilon=0.01)
    model, loaded = base_model(settings)
    assert not loaded and isinstance(model.policy, SquareCB)
    assert model.policy.exploration == InverseGapWeighting(gamma=100.0, epsilon=0.01)
    assert model.policy.n_actions_ == SCHEMA.n_actions


def test_a_model_file_keeps_its_own_policy(
    model_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="banditrec"):
        model, loaded = base_model(Settings(model_path=model_file, policy="thompson"))
    assert loaded and isinstance(model.policy, LinUCB)
    assert "holds a linucb policy, not the configured thompson" in caplog.text


# -- banditrec train ------------------------------------------------------------------


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_train_any_policy_with_parameters(data_file: Path, tmp_path: Path) -> None:
    model = tmp_path / "ts.npz"
    result = invoke(
        "train", "--data", str(data_file), "--model", str(model),
        "--policy", "thompson", "--param", "v=0.3", "--param", "n_draws=250",
        "--param", "gamma=0.9999", "--exploration-param", "epsilon=0.1", "--ridge", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metadata = read_metadata(model)
    assert metadata["policy"] == "thompson"
    assert metadata["policy_params"] == {
        "v": 0.3, "ridge": 2.0, "gamma": 0.9999, "refresh_every": 1000, "n_draws": 250,
    }  # fmt: skip
    assert metadata["exploration"] == "epsilon_greedy"
    assert metadata["exploration_params"]["epsilon"] == 0.1
    loaded = load_model(model, SCHEMA).policy
    assert isinstance(loaded, LinearThompsonSampling) and loaded.n_updates_.sum() == 2000


def test_train_a_fixed_rule_from_json(data_file: Path, tmp_path: Path) -> None:
    model = tmp_path / "rule.npz"
    result = invoke(
        "train", "--data", str(data_file), "--model", str(model),
        "--policy", "fixed_rule", "--param", f"rules={json.dumps(RULES)}",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    policy = load_model(model, SCHEMA).policy
    assert isinstance(policy, FixedRule) and policy.rules == RULES
    x = SCHEMA.vectorize(
        {"country": "AT", "device": "ios", "segment": "high", "n_sessions": 10,
         "days_since_install": 5, "recent_engagement": 12, "avg_session_length": 180.0}
    )  # fmt: skip
    _, p = policy.distribution(x, np.ones(SCHEMA.n_actions, dtype=bool))
    assert SCHEMA.actions[int(p.argmax())] == "deep_link_to_store"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "nope"], "Unknown policy 'nope'"),
        (["--param", "gamma"], "--param takes key=value"),
        (["--param", "gamma=2"], "gamma must be in (0, 1]"),
        (["--exploration", "softmax", "--exploration-param", "temperature=0"], "temperature"),
    ],
)
def test_train_reports_bad_policy_options_and_writes_nothing(
    data_file: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    model = tmp_path / "m.npz"
    result = invoke("train", "--data", str(data_file), "--model", str(model), *args)
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    assert not model.exists()


# -- the model file -------------------------------------------------------------------


def _rewrite_metadata(path: Path, **changes: Any) -> None:
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    metadata = json.loads(str(arrays["__metadata__"]))
    metadata.update(changes)
    arrays["__metadata__"] = np.array(json.dumps(metadata))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def test_a_file_records_the_policy_and_holds_no_shape_array(model_file: Path) -> None:
    metadata = read_metadata(model_file)
    assert metadata["policy"] == "linucb"
    assert set(metadata["policy_params"]) == {"alpha", "ridge", "gamma", "refresh_every"}
    with zipfile.ZipFile(model_file) as z:
        assert sorted(z.namelist()) == ["A_.npy", "__metadata__.npy", "b_.npy", "n_updates_.npy"]


def test_a_file_of_an_unknown_policy_is_refused_by_name(model_file: Path) -> None:
    _rewrite_metadata(model_file, policy="neural_ucb")
    with pytest.raises(ModelFileError, match="holds a 'neural_ucb' policy; this banditrec knows"):
        load_model(model_file, SCHEMA)


# -- one factory: serve, train and evaluate ---------------------------------------------

# Per default rule, one of its parameters given alone: the others must keep the *policy's*
# defaults (LinUCB's ε = 0.01, softmax's τ = 0.1), not the rule class's.
RULE_PARAM: dict[str, dict[str, float]] = {
    "epsilon_greedy": {"tie_tolerance": 1e-9},
    "softmax": {"epsilon": 0.02},
    "igw": {"epsilon": 0.02},
}
# Per policy, a constructor parameter away from its default.
POLICY_PARAM: dict[str, dict[str, Any]] = {
    "popular": {"a": 2.0},
    "fixed_rule": {"rules": RULES},
    "uniform": {},
}


def _cases() -> list[Any]:
    cases = []
    for name, cls in POLICIES.items():
        cases.append(pytest.param(name, {}, None, {}, id=f"{name}-defaults"))
        params = POLICY_PARAM.get(name, {"ridge": 3.0})
        if params:
            cases.append(pytest.param(name, params, None, {}, id=f"{name}-policy-param"))
        if getattr(cls, "configurable_exploration", True):
            rule = RULE_PARAM[cls.default_exploration().name]
            cases.append(pytest.param(name, {}, None, rule, id=f"{name}-rule-param"))
            other = ("softmax", {"temperature": 0.3})
            cases.append(pytest.param(name, {}, *other, id=f"{name}-other-rule"))
    return cases


@pytest.mark.parametrize(("name", "params", "rule", "rule_params"), _cases())
def test_serve_train_and_evaluate_build_the_same_policy(
    name: str,
    params: dict[str, Any],
    rule: str | None,
    rule_params: dict[str, float],
    data_file: Path,
    tmp_path: Path,
) -> None:
    # serve: the settings' policy (the prior when there is no model file).
    served = Settings(
        policy=name, policy_params=params, exploration=rule, exploration_params=rule_params
    ).build_policy()
    # train: `banditrec train` with the same options, as recorded in its model file.
    model = tmp_path / "m.npz"
    options = [f"--param={k}={json.dumps(v)}" for k, v in params.items()]
    options += [f"--exploration={rule}"] if rule else []
    options += [f"--exploration-param={k}={json.dumps(v)}" for k, v in rule_params.items()]
    result = invoke("train", "--data", str(data_file), "--model", str(model), "--policy", name,
                    *options)  # fmt: skip
    assert result.exit_code == 0, result.output
    trained = read_metadata(model)
    # evaluate: a candidate of the same parameters (rule parameters by their full name).
    spec = {**params, **{f"exploration.{k}": v for k, v in rule_params.items()}}
    if rule:
        spec["exploration"] = rule
    candidate = make_candidate(name, spec).build(SCHEMA)

    def as_json(value: Any) -> Any:
        return json.loads(json.dumps(value))

    assert as_json(served.get_params()) == trained["policy_params"]
    assert as_json(candidate.get_params()) == trained["policy_params"]
    assert served.exploration == candidate.exploration
    assert served.exploration.name == candidate.exploration.name == trained["exploration"]
    assert as_json(served.exploration.get_params()) == trained["exploration_params"]
