"""Model files: a policy's learned arrays ⇄ ``.npz`` with JSON metadata, never pickle.

A model file holds plain float/int arrays plus one JSON document (stored as a 0-d unicode
array) with the schema and its hash, the policy and exploration parameters, the actions and
the counts. Loading uses ``allow_pickle=False``, so a model file can never execute code, and
a model is refused when its schema hash differs from the schema the server runs with.

Writes are atomic: a temporary file in the same directory, fsync, then rename, so a reader or
a crash never sees half a model. A crash between the two leaves the temporary file, named after
the writing process; `remove_stale_temp_files` removes those of processes that are gone.

A snapshot also records the event log it was learned from (`Model.log_id`) and the last learn
event it applied (`Model.log_tip`), so that a snapshot of another log, or of a log that was
restored from an older copy, is never taken for a summary of this one.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from banditrec.exploration import exploration_from_params
from banditrec.features import FeatureSchema
from banditrec.policies import POLICIES, Policy

__all__ = [
    "FORMAT_VERSION",
    "Model",
    "ModelFileError",
    "load_model",
    "model_bytes",
    "remove_stale_temp_files",
    "save_model",
]

logger = logging.getLogger("banditrec.snapshot")

FORMAT_VERSION = 1
_METADATA_KEY = "__metadata__"
#: `save_model`'s temporary files: ``.<name>.<writer pid>.<random>.tmp`` (before the pid was
#: part of the name: ``.<name>.<random>.tmp``).
_TEMP_NAME = re.compile(r"^\.(?P<name>.+?\.npz)\.(?:(?P<pid>\d+)\.)?[A-Za-z0-9_]+\.tmp$")


class ModelFileError(ValueError):
    """A model file is missing, unreadable, corrupt, or made for another schema."""


@dataclass
class Model:
    """A policy together with the schema it was trained under and its provenance.

    `actions` are the schema's actions followed by those added at run time; `disabled` are
    the ones that must not be served (their learned state is kept). A snapshot records
    the event log it summarises: `log_id` (`EventStore.log_id`) and `log_tip`, the
    `LearnEvent.fingerprint` of the learn event at `log_offset` (None for offset 0).
    """

    policy: Policy
    schema: FeatureSchema
    created_at: str
    version: str
    log_offset: int = 0
    actions: tuple[str, ...] = ()
    disabled: frozenset[str] = frozenset()
    log_id: str | None = None
    log_tip: str | None = None
    #: What is served (banditrec.lifecycle.switching.LifecycleState), as of `log_offset`.
    lifecycle: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.actions:
            self.actions = self.schema.actions

    @property
    def n_updates(self) -> int:
        return int(self.policy.n_updates_.sum())


def new_version(schema: FeatureSchema, n_updates: int) -> str:
    """A short, sortable model version: UTC time, update count and schema hash prefix."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{n_updates}-{schema.hash[:8]}"


def save_model(model: Model, path: str | Path) -> None:
    """Write `model` to `path` atomically (temp file in the same directory + rename).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from banditrec.features import load_default_schema
    >>> from banditrec.policies import LinUCB
    >>> schema = load_default_schema()
    >>> policy = LinUCB().reset(schema.n_actions, schema.n_features)
    >>> model = Model(policy, schema, created_at="2026-01-01T00:00:00+00:00", version="v1")
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "model.npz"
    >>> save_model(model, path)
    >>> load_model(path, schema).version
    'v1'
    """
    data = model_bytes(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid in the name tells a crashed writer's leftover from a file being written.
    prefix = f".{path.name}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; other processes (workers) read the model
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


#: The date of every member of a model file (the earliest a zip file can hold).
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def model_bytes(model: Model) -> bytes:
    """The model file's content: an ``.npz`` of the learned arrays plus JSON metadata."""
    policy = model.policy
    metadata = {
        "format_version": FORMAT_VERSION,
        "version": model.version,
        "created_at": model.created_at,
        "log_offset": model.log_offset,
        "log_id": model.log_id,
        "log_tip": model.log_tip,
        "lifecycle": model.lifecycle,
        "schema": model.schema.to_dict(),
        "schema_hash": model.schema.hash,
        "encoding_hash": model.schema.encoding_hash,
        "actions": list(model.actions),
        "disabled": sorted(model.disabled),
        "policy": policy.name,
        "policy_params": policy.get_params(),
        "exploration": policy.exploration.name,
        "exploration_params": policy.exploration.get_params(),
        "n_updates": int(policy.n_updates_.sum()),
        "n_updates_by_action": policy.n_updates_.tolist(),
    }
    # The policy's shape (`shape_`) is not stored: the metadata's actions and schema give it.
    arrays: dict[str, Any] = {k: v for k, v in policy.get_state().items() if k != "shape_"}
    arrays[_METADATA_KEY] = np.array(json.dumps(metadata))
    # As `np.savez` writes it (stored, zip64), but every member dated at zip's epoch: savez
    # dates members by the clock, so one model written twice (two replicas at a switch, an
    # export now and later) gave different bytes. The same model is now the same file.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
    return buffer.getvalue()


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Remove the temporary files that crashed `save_model` calls left in `directory`.

    A file is stale when the process that wrote it is gone; the calling process counts as
    gone (it calls this before it writes). Returns the files removed.

    Examples
    --------
    >>> import os, tempfile, pathlib
    >>> directory = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (directory / f".model.npz.{os.getpid()}.x1y2.tmp").write_bytes(b"half a model")
    >>> [p.name[-8:] for p in remove_stale_temp_files(directory)]
    ['x1y2.tmp']
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        match = _TEMP_NAME.match(path.name)
        if match is None or _writer_alive(match["pid"]):
            continue
        try:
            path.unlink()
        except FileNotFoundError:  # another process starting beside us removed it first
            continue
        except OSError as exc:
            logger.warning("Could not remove the stale temporary file %s: %s", path, exc)
            continue
        removed.append(path)
    if removed:
        logger.warning(
            "Removed %d temporary file(s) left in %s by interrupted writes: %s.",
            len(removed),
            directory,
            ", ".join(p.name for p in removed),
        )
    return removed


def _writer_alive(pid: str | None) -> bool:
    if pid is None or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except (OverflowError, ValueError):
        return False
    return True


def _fsync_directory(directory: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a model file, without building the policy."""
    metadata, _ = _read(Path(path))
    return metadata


def _read(
    path: Path, data: bytes | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray[Any, Any]]]:
    # `data`: the file's bytes, read from elsewhere (a shared store); `path` names it.
    try:
        with np.load(path if data is None else io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise ModelFileError(f"The model file {path} does not exist.") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelFileError(f"The model file {path} is corrupt or truncated: {exc}.") from None
    try:
        metadata = json.loads(str(arrays.pop(_METADATA_KEY)))
    except (KeyError, ValueError):
        raise ModelFileError(f"The model file {path} has no valid metadata.") from None
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"The model file {path} has format version {metadata.get('format_version')!r}; "
            f"this banditrec reads version {FORMAT_VERSION}."
        )
    return metadata, arrays


def load_model(path: str | Path, schema: FeatureSchema, data: bytes | None = None) -> Model:
    """Load a model written by `save_model`, refusing one trained under another schema.

    With `data` (the bytes of `model_bytes`, e.g. a snapshot kept in a shared store), the
    model is read from them and `path` only names them in error messages.
    """
    path = Path(path)
    metadata, arrays = _read(path, data)
    trained_with = FeatureSchema.from_dict(metadata["schema"])
    if trained_with.encoding_hash != schema.encoding_hash:
        raise ModelFileError(
            f"The model file {path} was trained with schema {metadata['schema_hash'][:12]}… "
            f"but the server is configured with schema {schema.hash[:12]}…; retrain the model "
            "with this schema or configure the schema it was trained with."
        )
    if metadata.get("policy") not in POLICIES:
        raise ModelFileError(
            f"The model file {path} holds a {metadata.get('policy')!r} policy; this banditrec "
            f"knows {', '.join(POLICIES)}."
        )
    actions = tuple(metadata.get("actions", trained_with.actions))
    arrays["shape_"] = np.array([len(actions), trained_with.n_features])
    try:
        policy_cls = POLICIES[metadata["policy"]]
        exploration = exploration_from_params(
            metadata["exploration"], metadata["exploration_params"]
        )
        policy = policy_cls(**metadata["policy_params"], exploration=exploration)
        policy.set_state(arrays)
    except (KeyError, TypeError, ValueError, np.linalg.LinAlgError) as exc:
        raise ModelFileError(f"The model file {path} does not hold a valid policy: {exc}") from None
    if policy.n_actions_ != len(actions) or policy.n_features_ != schema.n_features:
        raise ModelFileError(f"The model file {path} does not match the schema's shapes.")
    actions = _reconcile_actions(path, actions, schema.actions, policy)
    for name, value in policy.get_state().items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ModelFileError(f"The model file {path} holds NaN or infinity in {name}.")
    return Model(
        policy=policy,
        schema=schema,
        created_at=metadata["created_at"],
        version=metadata["version"],
        log_offset=int(metadata.get("log_offset", 0)),
        actions=actions,
        disabled=frozenset(metadata.get("disabled", ())),
        log_id=metadata.get("log_id"),
        log_tip=metadata.get("log_tip"),
        lifecycle=dict(metadata.get("lifecycle") or {}),
    )


def _reconcile_actions(
    path: Path, model_actions: tuple[str, ...], schema_actions: tuple[str, ...], policy: Policy
) -> tuple[str, ...]:
    """The model's actions extended by the schema's new ones (appended, from the prior).

    Action indices are positions, so the schema's actions must be the model's first ones (the
    model may have more, added at run time) or extend them (added to the schema file later).
    """
    n = min(len(model_actions), len(schema_actions))
    if model_actions[:n] != schema_actions[:n]:
        raise ModelFileError(
            f"The model file {path} has the actions {list(model_actions)} but the schema has "
            f"{list(schema_actions)}; actions can be appended, not renamed or reordered."
        )
    for _ in schema_actions[n:]:
        policy.add_action()
    return model_actions + schema_actions[len(model_actions) :]
