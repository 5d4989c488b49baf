"""docs/operations.md's backup and restore procedure, done on a real server.

The backup is taken while the server runs and learns (snapshots first, then SQLite's online
backup of the log); the restored server must serve exactly the model of the backed-up log.
Restoring the log without its snapshots, next to newer ones, must trip the log-identity
check: the newer snapshots are set aside, and the model is still the restored log's.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from banditrec.client import Client, NotFound
from conftest import SEED_CONTEXT
from serving import running_server


def learn(client: Client, n: int) -> list[str]:
    """`n` decisions, each rewarded (learned); their event ids."""
    events = []
    for i in range(n):
        decision = client.rank({**SEED_CONTEXT, "n_sessions": i % 50})
        assert client.reward(decision.event_id, float(i % 2)).learned
        events.append(decision.event_id)
    return events


def online_backup(db: Path, target: Path) -> None:
    """What ``sqlite3 events.db ".backup target"`` does: SQLite's online backup API."""
    source, copy = sqlite3.connect(db), sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        copy.close()
        source.close()


def test_backup_while_serving_then_restore(tmp_path: Path) -> None:
    live, backup = tmp_path / "live", tmp_path / "backup"
    live.mkdir()
    backup.mkdir()
    with running_server(live, seed="0") as server, Client(server.url, trust_env=False) as c:
        learn(c, 30)
        c.snapshot()
        kept = learn(c, 20)  # after the snapshot: replayed from the log at restore
        # The backup, in the documented order: snapshots first, then the log.
        shutil.copytree(live / "snapshots", backup / "snapshots")
        online_backup(live / "events.db", backup / "events.db")
        at_backup = c.model()
        lost = learn(c, 10)  # after the backup
        c.snapshot()  # a snapshot newer than the backup
        assert c.model().n_updates == at_backup.n_updates + 10

    # Restore as documented: the log with its snapshots.
    restored = tmp_path / "restored"
    shutil.copytree(backup, restored)
    with running_server(restored, seed="0") as server, Client(server.url, trust_env=False) as c:
        model = c.model()
        assert (model.n_updates, model.log_offset) == (at_backup.n_updates, at_backup.log_offset)
        assert model.n_updates_by_action == at_backup.n_updates_by_action
        assert c.reward(kept[0], 1.0).duplicate  # its decision and reward are there
        with pytest.raises(NotFound) as caught:  # made after the backup: gone with it
            c.reward(lost[0], 1.0)
        assert caught.value.code == "event_not_found"
        assert "do not belong" not in server.log()

    # The log alone, beside the live (newer) snapshots: the identity check sets those aside.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(backup / "events.db", mixed / "events.db")
    shutil.copytree(live / "snapshots", mixed / "snapshots")
    with running_server(mixed, seed="0") as server, Client(server.url, trust_env=False) as c:
        model = c.model()
        assert (model.n_updates, model.log_offset) == (at_backup.n_updates, at_backup.log_offset)
        log = server.log()
    assert "Snapshots that do not belong to the event log" in log
    assert "past the end of this log" in log
    assert any(p.name.startswith("rejected-") for p in (mixed / "snapshots").rglob("*"))
