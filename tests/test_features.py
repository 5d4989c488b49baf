"""The feature schema: encoding, the "other" bucket, ranges, and a stable hash."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from banditrec.features import (
    OTHER,
    FeatureSchema,
    NumericField,
    SchemaError,
    load_default_schema,
    load_schema,
)
from banditrec.sim import AppSimulator
from conftest import SEED_CONTEXT


def test_default_schema_is_the_seeds() -> None:
    schema = load_default_schema()
    assert schema.actions == (
        "show_bonus_offer",
        "invite_friend",
        "suggest_new_app",
        "deep_link_to_store",
    )
    assert schema.field_names == tuple(SEED_CONTEXT)
    assert schema.n_features == len(schema.feature_names()) == 22


def test_vectorize_one_hot_transforms_and_bias() -> None:
    schema = load_default_schema()
    x = dict(zip(schema.feature_names(), schema.vectorize(SEED_CONTEXT), strict=True))
    assert x["country=AT"] == 1.0 and x[f"country={OTHER}"] == 0.0
    assert x["device=ios"] == 1.0 and x["segment=high"] == 1.0
    assert x["n_sessions"] == pytest.approx((np.log1p(10) - 2.0) / 1.0)
    assert x["avg_session_length"] == pytest.approx(0.0)
    assert x["bias"] == 1.0
    assert sum(v for k, v in x.items() if k.startswith("country=")) == 1.0


def test_unknown_categories_go_to_the_other_bucket() -> None:
    schema = load_default_schema()
    names = schema.feature_names()
    x = schema.vectorize({**SEED_CONTEXT, "country": "ZZ", "device": "fridge"})
    assert x[names.index(f"country={OTHER}")] == 1.0
    assert x[names.index(f"device={OTHER}")] == 1.0


def test_clipping_bounds_extreme_values() -> None:
    schema = load_default_schema()
    names = schema.feature_names()
    x = schema.vectorize({**SEED_CONTEXT, "avg_session_length": 86_400.0})
    assert x[names.index("avg_session_length")] == 4.0


def test_vectorize_many_equals_row_by_row() -> None:
    # Bitwise on purpose: a row served (`vectorize`) and the same row trained
    # (`vectorize_many`) must be one encoding on every CPU. With `np.log1p` in the batch path
    # this failed on AVX-512 (rows 17 and 18 differed by 1 ulp from libm's `math.log1p`).
    schema = load_default_schema()
    contexts = AppSimulator().sample_contexts(300, np.random.default_rng(0))
    X = schema.vectorize_many(contexts)
    for i in range(300):
        row = {name: contexts[name][i] for name in schema.field_names}
        np.testing.assert_array_equal(X[i], schema.vectorize(row), err_msg=f"row {i}")


@pytest.mark.parametrize("transform", ["identity", "log1p", "scale", "log1p_scale"])
def test_a_numeric_column_is_its_values_encoded_one_by_one(transform: str) -> None:
    # Values over twelve decades, where SIMD and libm logarithms are most likely to part.
    field = NumericField(
        "x",
        "real",
        0.0,
        1e12,
        transform,
        center=2.5,
        scale=1.7,
        clip=6.0,  # type: ignore[arg-type]
    )
    values = np.expm1(np.random.default_rng(1).uniform(0.0, np.log(1e12), 20_000))
    expected = np.array([field.apply_one(v) for v in values.tolist()])
    np.testing.assert_array_equal(field.apply(values), expected)


def test_out_of_range_values_are_rejected() -> None:
    schema = load_default_schema()
    with pytest.raises(SchemaError, match="n_sessions"):
        schema.vectorize({**SEED_CONTEXT, "n_sessions": -1})
    with pytest.raises(SchemaError, match="avg_session_length"):
        schema.vectorize({**SEED_CONTEXT, "avg_session_length": float("nan")})
    columns = {k: np.array([v, v]) for k, v in SEED_CONTEXT.items()}
    columns["days_since_install"] = np.array([5, 10**9])
    with pytest.raises(SchemaError, match=r"days_since_install.*row 1"):
        schema.vectorize_many(columns)


def test_hash_is_stable_and_sensitive_to_the_encoding(tmp_path: Path) -> None:
    schema = load_default_schema()
    as_json = tmp_path / "schema.json"
    as_json.write_text(json.dumps(schema.to_dict(), indent=4))
    assert load_schema(as_json).hash == schema.hash  # same encoding, other file format
    changed = schema.to_dict()
    changed["fields"][0]["values"].append("CH")
    assert FeatureSchema.from_dict(changed).hash != schema.hash


def test_reject_mode_refuses_unknown_values() -> None:
    data = load_default_schema().to_dict()
    data["fields"][1]["on_unknown"] = "reject"
    schema = FeatureSchema.from_dict(data)
    with pytest.raises(SchemaError, match="device: unknown value 'fridge'"):
        schema.vectorize({**SEED_CONTEXT, "device": "fridge"})


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("actions"), "missing the key 'actions'"),
        (lambda d: d.update(actions=[]), "at least one action"),
        (lambda d: d["fields"].append(dict(d["fields"][0])), "unique"),
        (lambda d: d["fields"][3].update(transform="sqrt"), "transform must be one of"),
        (lambda d: d["fields"][3].update(min=5, max=1), "min must not exceed max"),
        (lambda d: d["fields"][0].update(kind="date"), "kind must be"),
        (lambda d: d["fields"][6].update(scale=0), "scale must be positive"),
    ],
)
def test_invalid_schemas_are_reported(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = load_default_schema().to_dict()
    mutate(data)
    with pytest.raises(SchemaError, match=message):
        FeatureSchema.from_dict(data)


def test_unreadable_schema_file(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="Cannot read the schema file"):
        load_schema(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("actions = [")
    with pytest.raises(SchemaError, match="is not valid"):
        load_schema(broken)
