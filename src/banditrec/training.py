"""Offline training: logged data ─► a fitted policy ─► a model file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from banditrec.features import FeatureSchema
from banditrec.logged_data import read_logged_csv
from banditrec.policies import Policy
from banditrec.snapshot import Model, new_version, save_model

__all__ = ["train_from_csv"]


def train_from_csv(
    data_path: str | Path, model_path: str | Path, schema: FeatureSchema, policy: Policy
) -> Model:
    """Fit `policy` (from its prior) on a logged-data CSV and save it to `model_path`.

    The file is fully validated before learning starts and the model is written atomically,
    so a bad file or a crash leaves any existing model untouched. Rows are learned in file
    order, which matters only for a forgetting factor γ < 1 (discounting follows the order).
    """
    data = read_logged_csv(data_path, schema)
    policy.reset(schema.n_actions, schema.n_features)
    policy.update_batch(data.X, data.action, data.reward)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    n_updates = int(policy.n_updates_.sum())
    model = Model(policy, schema, created_at=created, version=new_version(schema, n_updates))
    save_model(model, model_path)
    return model
