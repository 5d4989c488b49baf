"""Offline training: logged data (CSV or Parquet) ─► a fitted policy ─► a model file.

The file is streamed: each record batch is checked, encoded and learned (one batched ridge
fit per action: sufficient statistics add up), then dropped, so memory holds one batch
whatever the size of the file. The model file is written only once the last row has been
checked, atomically: a bad row anywhere, or a crash, leaves any existing model untouched.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from banditrec.features import FeatureSchema
from banditrec.logged_data import Progress, iter_logged
from banditrec.policies import AutoLinUCB, Policy
from banditrec.snapshot import Model, new_version, save_model

__all__ = ["fit_file", "train_from_csv", "train_from_file"]


def fit_file(
    data_path: str | Path,
    schema: FeatureSchema,
    policy: Policy,
    *,
    first_rows: int | None = None,
    progress: Progress | None = None,
) -> Policy:
    """Reset `policy` to its prior and learn a logged-data file into it, batch by batch.

    Rows are learned in file order, which matters only for a forgetting factor γ < 1
    (discounting follows the order; batch by batch equals row by row). `first_rows` learns
    only the file's first rows, and every row is still checked. If the file is bad, the
    error is raised once the bad row is reached, with the policy partly trained: use
    `train_from_file` to get a model only from a good file.
    """
    if first_rows is not None and first_rows < 1:
        raise ValueError(f"first_rows must be >= 1, got {first_rows}.")
    policy.reset(schema.n_actions, schema.n_features)
    learned = 0
    for batch in iter_logged(data_path, schema, progress):
        take = batch if first_rows is None else batch.head(max(first_rows - learned, 0))
        if not take.n_rounds:
            continue
        if isinstance(policy, AutoLinUCB):  # its member scores divide by the logged propensity
            policy.update_batch(take.X, take.action, take.reward, propensities=take.propensity)
        else:
            policy.update_batch(take.X, take.action, take.reward)
        learned += take.n_rounds
    return policy


def train_from_file(
    data_path: str | Path,
    model_path: str | Path,
    schema: FeatureSchema,
    policy: Policy,
    *,
    first_rows: int | None = None,
    progress: Progress | None = None,
) -> Model:
    """Fit `policy` (from its prior) on a logged-data file and save it to `model_path`.

    The file is CSV, or Parquet (see `banditrec.logged_data`); it is streamed and fully
    checked before the model is written atomically, so a bad file or a crash leaves any
    existing model untouched. `first_rows` learns only the file's first rows (the whole file
    is still checked); `progress` hears of each stage, as ``progress(stage, done, total)``.
    """
    fit_file(data_path, schema, policy, first_rows=first_rows, progress=progress)
    if progress is not None:
        progress("learning", 0, 1)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    n_updates = int(policy.n_updates_.sum())
    model = Model(policy, schema, created_at=created, version=new_version(schema, n_updates))
    save_model(model, model_path)
    if progress is not None:
        progress("learning", 1, 1)
    return model


#: The seed's name: it reads Parquet as well.
train_from_csv = train_from_file
