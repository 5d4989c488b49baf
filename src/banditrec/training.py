"""Offline training: logged data ─► a fitted policy ─► a model file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from banditrec.features import FeatureSchema
from banditrec.logged_data import LoggedData, Progress, read_logged_csv
from banditrec.policies import Policy
from banditrec.snapshot import Model, new_version, save_model

__all__ = ["train_from_csv"]


def train_from_csv(
    data_path: str | Path,
    model_path: str | Path,
    schema: FeatureSchema,
    policy: Policy,
    *,
    first_rows: int | None = None,
    progress: Progress | None = None,
) -> Model:
    """Fit `policy` (from its prior) on a logged-data CSV and save it to `model_path`.

    The file is fully validated before learning starts and the model is written atomically,
    so a bad file or a crash leaves any existing model untouched. Rows are learned in file
    order, which matters only for a forgetting factor γ < 1 (discounting follows the order).
    `first_rows` learns only the file's first rows (the whole file is still validated);
    `progress` hears of each stage, as ``progress(stage, done, total)``.
    """
    data = read_logged_csv(data_path, schema, progress)
    if first_rows is not None:
        if first_rows < 1:
            raise ValueError(f"first_rows must be >= 1, got {first_rows}.")
        n = first_rows
        data = LoggedData(data.X[:n], data.action[:n], data.propensity[:n], data.reward[:n])
    if progress is not None:
        progress("learning", 0, 1)
    policy.reset(schema.n_actions, schema.n_features)
    policy.update_batch(data.X, data.action, data.reward)
    if progress is not None:
        progress("learning", 1, 1)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    n_updates = int(policy.n_updates_.sum())
    model = Model(policy, schema, created_at=created, version=new_version(schema, n_updates))
    save_model(model, model_path)
    return model
