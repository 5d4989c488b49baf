"""Model files: the log a snapshot belongs to, and the temporary files of interrupted writes."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from pathlib import Path

import numpy as np

from banditrec.engine import prior_model
from banditrec.features import load_default_schema
from banditrec.snapshot import load_model, read_metadata, remove_stale_temp_files, save_model
from banditrec.store import LearnEvent, LearnKind

SCHEMA = load_default_schema()


def test_a_snapshot_records_the_log_it_summarises(tmp_path: Path) -> None:
    model = prior_model(SCHEMA)
    model.log_offset, model.log_id, model.log_tip = 7, "a" * 32, "b" * 32
    save_model(model, tmp_path / "model.npz")
    loaded = load_model(tmp_path / "model.npz", SCHEMA)
    assert (loaded.log_offset, loaded.log_id, loaded.log_tip) == (7, "a" * 32, "b" * 32)
    assert read_metadata(tmp_path / "model.npz")["log_id"] == "a" * 32


def test_one_model_is_one_file_whatever_the_clock_says(tmp_path: Path) -> None:
    # Two replicas write the same model at a switch, an export now and one later: the bytes
    # must agree (np.savez dated each member by the clock, so they did not across seconds).
    import time
    import zipfile

    from banditrec.snapshot import model_bytes

    model = prior_model(SCHEMA)
    first = model_bytes(model)
    time.sleep(2.1)  # zip dates have a 2-second resolution
    assert model_bytes(model) == first
    path = tmp_path / "model.npz"
    path.write_bytes(first)
    with zipfile.ZipFile(path) as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    loaded = load_model(path, SCHEMA)
    for name, value in model.policy.get_state().items():
        if name != "shape_":
            np.testing.assert_array_equal(getattr(loaded.policy, name), value)


def test_a_model_file_without_a_log_still_loads(tmp_path: Path) -> None:
    save_model(prior_model(SCHEMA), tmp_path / "model.npz")  # a base model, trained offline
    loaded = load_model(tmp_path / "model.npz", SCHEMA)
    assert loaded.log_id is None and loaded.log_tip is None


def test_the_fingerprint_of_a_learn_event_covers_everything_it_holds() -> None:
    event = LearnEvent(
        seq=5, event_id="e1", action_index=2, x=np.array([1.0, 0.5]), reward=1.0, weight=1.0
    )
    same = dataclasses.replace(event, x=np.array([1.0, 0.5]))
    assert event.fingerprint == same.fingerprint and len(event.fingerprint) == 32
    others = [
        dataclasses.replace(event, seq=6),
        dataclasses.replace(event, event_id="e2"),
        dataclasses.replace(event, action_index=1),
        dataclasses.replace(event, x=np.array([1.0, 0.25])),
        dataclasses.replace(event, reward=0.0),
        dataclasses.replace(event, weight=2.0),
        dataclasses.replace(event, kind=LearnKind.default),
    ]
    assert len({event.fingerprint, *(e.fingerprint for e in others)}) == 8
    # A numpy scalar (as a backend may hand back) gives the same digest as a float.
    assert dataclasses.replace(event, reward=np.float64(1.0)).fingerprint == event.fingerprint


def test_stale_temporary_files_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = multiprocessing.get_context("spawn").Process(target=int)
    dead.start()
    dead.join()
    stale = [
        tmp_path / f".model-000000000010.npz.{dead.pid}.ab12cd.tmp",  # its writer is gone
        tmp_path / f".model-000000000011.npz.{os.getpid()}.ab12cd.tmp",  # ours, from before
        tmp_path / ".model-000000000020.npz.x9y8z7.tmp",  # written before names had a pid
    ]
    kept = [
        tmp_path / f".model-000000000030.npz.{os.getppid()}.qw34er.tmp",  # a live writer's
        tmp_path / "notes.tmp",  # not a model file's
        tmp_path / "model-000000000040.npz",
    ]
    for path in (*stale, *kept):
        path.write_bytes(b"x")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(kept)
    assert remove_stale_temp_files(tmp_path / "absent") == []
