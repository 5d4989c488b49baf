"""Named loops outside the request path: the offline commands' ``--loop`` and the metrics.

One real `banditrec serve` (SQLite in a temporary directory) gets two named loops with other
schemas than the default loop's, decisions with user ids and rewards in all three, and is
scraped; it is then stopped, and the real CLI (`python -m banditrec ...`, a process of its
own) evaluates, exports and forgets users loop by loop, on the real SQLite files.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from banditrec.store.sqlite_reader import ReadOnlyEventLog
from redis_server import RedisServer
from serving import running_server
from test_api_loop import CONTEXT
from test_cli import run_cli
from test_loops import (
    ADMIN,
    ONBOARDING,
    ONBOARDING_WRITER,
    SERVER_KEYS,
    STORE,
    STORE_WRITER,
    auth,
    onboarding_context,
    store_context,
)

#: Decisions (all rewarded) per loop; user ids alternate u1, u2.
N_DECISIONS = {"default": 50, "onboarding": 60, "store": 44}
ROUTE = {"default": "/v1", "onboarding": "/v1/loops/onboarding", "store": "/v1/loops/store"}
KEY = {"default": ADMIN, "onboarding": ONBOARDING_WRITER, "store": STORE_WRITER}
CONTEXTS: dict[str, Any] = {
    "default": lambda rng: CONTEXT,
    "onboarding": onboarding_context,
    "store": store_context,
}


@dataclass
class Served:
    """The data directory a stopped server left, and what its /metrics showed."""

    root: Path
    metrics: str  # with every loop open
    metrics_after_delete: str  # after the loop "temp" was deleted, and "store" reopened

    def env(self, root: Path | None = None) -> dict[str, str]:
        root = root or self.root
        return {
            "BANDITREC_DB_PATH": str(root / "events.db"),
            "BANDITREC_ARCHIVE_DIR": str(root / "archive"),
        }


def decide(http: httpx.Client, loop: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        body = {"context": CONTEXTS[loop](rng), "user_id": f"u{i % 2 + 1}"}
        answer = http.post(f"{ROUTE[loop]}/rank", json=body, headers=auth(KEY[loop]))
        assert answer.status_code == 200, answer.text
        event = answer.json()["event_id"]
        reward = http.post(
            f"{ROUTE[loop]}/events/{event}/reward",
            json={"value": float(rng.random() < 0.4)},
            headers=auth(KEY[loop]),
        )
        assert reward.status_code == 200, reward.text


def scrape(http: httpx.Client) -> str:
    response = http.get("/metrics", headers=auth(ADMIN))
    assert response.status_code == 200, response.text
    return response.text


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    root = tmp_path_factory.mktemp("loops-cli")
    with (
        running_server(root, api_keys=SERVER_KEYS, archive_dir=str(root / "archive")) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        for name, definition in (("onboarding", ONBOARDING), ("store", STORE)):
            created = http.put(f"/v1/loops/{name}", json=definition, headers=auth(ADMIN))
            assert created.status_code == 201, created.text
        for seed, (loop, n) in enumerate(N_DECISIONS.items()):
            decide(http, loop, n, seed)
        # A request naming a loop that does not exist, and one a name cannot be.
        for name in ("nosuch", "Not-A-Name"):
            missing = http.post(
                f"/v1/loops/{name}/rank", json={"context": CONTEXT}, headers=auth(ADMIN)
            )
            assert missing.status_code in (404, 422), missing.text
        temp = http.put("/v1/loops/temp", json=STORE, headers=auth(ADMIN))
        assert temp.status_code == 201, temp.text
        metrics = scrape(http)
        assert http.delete("/v1/loops/temp", headers=auth(ADMIN)).status_code == 200
        # New settings: "store" is reopened (a new runtime replays its log), the old one stops.
        settings = {**STORE["settings"], "reward_window_seconds": 7200}
        reopened = http.put(
            "/v1/loops/store", json={**STORE, "settings": settings}, headers=auth(ADMIN)
        )
        assert reopened.status_code == 200, reopened.text
        after = scrape(http)
    return Served(root, metrics, after)


def samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {
        frozenset(s.labels.items()): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def loops_of(text: str, name: str) -> list[str]:
    return sorted(dict(labels)["loop"] for labels in samples(text, name))


# -- metrics -------------------------------------------------------------------------------


def test_model_backlog_and_lifecycle_gauges_are_labelled_by_loop(served: Served) -> None:
    every = ["default", "onboarding", "store", "temp"]
    assert loops_of(served.metrics, "banditrec_model_info") == every
    assert loops_of(served.metrics, "banditrec_default_reward_backlog") == every
    assert loops_of(served.metrics, "banditrec_lifecycle_apprentice") == every
    updates = {
        dict(labels)["loop"]: value
        for labels, value in samples(served.metrics, "banditrec_model_updates").items()
    }
    # Every decision was rewarded at once: each loop learned exactly its own.
    assert updates == {**{k: float(v) for k, v in N_DECISIONS.items()}, "temp": 0.0}
    # Each loop's model version is its own (one series per loop, no stale versions).
    versions = samples(served.metrics, "banditrec_model_info")
    assert len(versions) == 4
    assert len({dict(labels)["version"] for labels in versions}) == 4
    assert all(value == 1.0 for value in versions.values())
    # Nothing is overdue: the reward window is long and every decision was rewarded.
    backlog = samples(served.metrics, "banditrec_default_reward_backlog")
    assert set(backlog.values()) == {0.0}


def test_a_deleted_loop_leaves_the_gauges_and_a_reopened_one_keeps_them(served: Served) -> None:
    rest = ["default", "onboarding", "store"]
    for name in (
        "banditrec_model_info",
        "banditrec_default_reward_backlog",
        "banditrec_lifecycle_apprentice",
    ):
        assert loops_of(served.metrics_after_delete, name) == rest, name
    # The reopened loop replayed its log: the same model, shown once.
    before = samples(served.metrics, "banditrec_model_info")
    after = samples(served.metrics_after_delete, "banditrec_model_info")
    store = [labels for labels in after if dict(labels)["loop"] == "store"]
    assert len(store) == 1 and store[0] in before


def test_request_latency_is_labelled_by_the_loop_it_served(served: Served) -> None:
    counts = samples(served.metrics, "banditrec_http_request_duration_seconds_count")

    def count(route: str, loop: str, status: str = "200") -> float | None:
        labels = {"route": route, "method": "POST", "status": status, "loop": loop}
        return counts.get(frozenset(labels.items()))

    assert count("/v1/loops/{loop}/rank", "onboarding") == N_DECISIONS["onboarding"]
    assert count("/v1/loops/{loop}/rank", "store") == N_DECISIONS["store"]
    assert count("/v1/rank", "default") == N_DECISIONS["default"]
    reward = "/v1/loops/{loop}/events/{event_id}/reward"
    assert count(reward, "onboarding") == N_DECISIONS["onboarding"]
    # Names that are no open loop's are one series together ("") and never a label value.
    labelled = {dict(labels)["loop"] for labels in counts}
    assert labelled == {"default", "onboarding", "store", "temp", ""}
    assert count("/v1/loops/{loop}/rank", "", "404") == 1
    assert count("/v1/loops/{loop}/rank", "", "422") == 1


def test_with_workers_each_loops_lifecycle_gauges_are_shown(tmp_path: Path) -> None:
    # Multiprocess metrics: the scrape-time gauges are the answering worker's, per loop.
    with (
        running_server(tmp_path, "--workers", "2", api_keys=SERVER_KEYS) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        created = http.put("/v1/loops/onboarding", json=ONBOARDING, headers=auth(ADMIN))
        assert created.status_code == 201, created.text
        decide(http, "onboarding", 5, 0)
        # Either worker may answer; the other opens the loop within a second (its watcher).
        for _ in range(200):
            text = http.get("/metrics", headers={**auth(ADMIN), "Connection": "close"}).text
            if loops_of(text, "banditrec_lifecycle_apprentice") == ["default", "onboarding"]:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"No scrape showed both loops' lifecycle:\n{text}")
    assert loops_of(text, "banditrec_model_info") == ["default", "onboarding"]
    assert loops_of(text, "banditrec_default_reward_backlog") == ["default", "onboarding"]


# -- evaluate ------------------------------------------------------------------------------


def files_of(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and modification time."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


EVALUATE = ("evaluate", "--candidate", "linucb", "--n-bootstrap", "50", "--split", "0.5")


def report(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "report.json").read_text())
    return data


@pytest.mark.parametrize("loop", ["onboarding", "store"])
def test_evaluate_loop_reads_the_loops_log_with_its_schema_and_writes_nothing_beside_it(
    served: Served, tmp_path: Path, loop: str
) -> None:
    before = files_of(served.root)
    out = tmp_path / "report"
    done = run_cli(*EVALUATE, "--loop", loop, "--out", str(out), cwd=tmp_path, **served.env())
    assert done.returncode == 0, done.stderr
    data = report(out)
    assert data["source"]["path"] == str(served.root / "loops" / loop / "events.db")
    assert data["actions"] == (ONBOARDING if loop == "onboarding" else STORE)["schema"]["actions"]
    assert data["counts"]["used"] == data["counts"]["decisions"] == N_DECISIONS[loop]
    # Read-only: no file created, none written (no -wal, -shm or journal either).
    assert files_of(served.root) == before


def test_evaluate_loop_with_log_reads_the_loop_beside_that_log(
    served: Served, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    # No BANDITREC_DB_PATH: --log names the server's log, the loop's is beside it.
    args = (*EVALUATE, "--log", str(served.root / "events.db"), "--loop", "store")
    done = run_cli(*args, "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert report(out)["source"]["path"] == str(served.root / "loops" / "store" / "events.db")
    # `--loop default` is the default loop itself.
    out = tmp_path / "default"
    args = (*EVALUATE, "--log", str(served.root / "events.db"), "--loop", "default")
    done = run_cli(*args, "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert report(out)["counts"]["decisions"] == N_DECISIONS["default"]


COMMANDS = {
    "evaluate": (*EVALUATE, "--out", "report"),
    "export": ("export", "--out", "exported"),
    "forget-user": ("forget-user", "u1"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unknown_loop_is_one_line_naming_it_and_changes_nothing(
    served: Served, tmp_path: Path, command: str
) -> None:
    before = files_of(served.root)
    done = run_cli(*COMMANDS[command], "--loop", "nosuch", cwd=tmp_path, **served.env())
    assert done.returncode == 1
    message = " ".join(done.stderr.split())
    assert message.startswith("error: No loop is named 'nosuch' in the loop catalog of ")
    assert "(it holds 'onboarding', 'store')" in message  # "temp" was deleted
    assert "Traceback" not in done.stderr
    assert files_of(served.root) == before
    assert list(tmp_path.iterdir()) == []  # no report, no export


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (("--loop", "Bad Name"), "The loop name 'Bad Name' is not valid: use 1 to 63"),
        (("--loop", "store", "--schema", "schema.toml"), "Give --loop or --schema, not both"),
    ],
)
def test_a_bad_loop_option_is_refused_in_one_line(
    served: Served, tmp_path: Path, extra: tuple[str, ...], expected: str
) -> None:
    for command in COMMANDS.values():
        done = run_cli(*command, *extra, cwd=tmp_path, **served.env())
        assert done.returncode == 1, command
        assert expected in " ".join(done.stderr.split()), command
    assert list(tmp_path.iterdir()) == []


# -- export --------------------------------------------------------------------------------


def test_export_loop_writes_the_loops_log_where_evaluate_loop_reads_it(
    served: Served, tmp_path: Path
) -> None:
    before = files_of(served.root)
    out = tmp_path / "exported"
    done = run_cli("export", "--loop", "store", "--out", str(out), cwd=tmp_path, **served.env())
    assert done.returncode == 0, done.stderr
    assert f"Exported {N_DECISIONS['store']} decisions" in " ".join(done.stderr.split())
    assert files_of(served.root) == before
    files = sorted((out / "loops" / "store").glob("decisions-*.parquet"))
    assert files and not (out / "decisions").exists()
    table = pq.read_table(files[0])
    assert table.num_rows == N_DECISIONS["store"]
    assert {tuple(a) for a in table.column("actions").to_pylist()} == {
        tuple(STORE["schema"]["actions"])
    }
    # Read back with the loop's schema: the archive and the live log, each decision once.
    report_dir = tmp_path / "report"
    args = (*EVALUATE, "--loop", "store", "--archive", str(out), "--out", str(report_dir))
    done = run_cli(*args, cwd=tmp_path, **served.env())
    assert done.returncode == 0, done.stderr
    data = report(report_dir)
    assert data["source"]["archive"] == str(out / "loops" / "store")
    assert data["counts"]["used"] == N_DECISIONS["store"]


# -- forget-user ---------------------------------------------------------------------------


def users_in(log: Path) -> list[str | None]:
    with ReadOnlyEventLog(log) as read:
        return [row.user_id for row in read.iter_decision_rows()]


@pytest.fixture
def copy(served: Served, tmp_path: Path) -> Path:
    """A copy of the stopped server's data directory, for commands that write."""
    root = tmp_path / "data"
    shutil.copytree(served.root, root, ignore=shutil.ignore_patterns("*.log"))
    return root


def test_forget_user_forgets_in_the_default_loop_and_every_loop(
    served: Served, copy: Path, tmp_path: Path
) -> None:
    done = run_cli("forget-user", "u1", cwd=tmp_path, **served.env(copy))
    assert done.returncode == 0, done.stderr
    half = {loop: n // 2 for loop, n in N_DECISIONS.items()}
    message = " ".join(done.stderr.split())
    assert f"Removed {half['default']} decisions of user 'u1' from the live log" in message
    loops = half["onboarding"] + half["store"]
    assert f"from the loops 'onboarding', 'store': {loops} from their live logs" in message
    assert users_in(copy / "events.db") == ["u2"] * half["default"]
    for loop in ("onboarding", "store"):
        assert users_in(copy / "loops" / loop / "events.db") == ["u2"] * half[loop]


def test_forget_user_loop_forgets_in_that_loop_only(
    served: Served, copy: Path, tmp_path: Path
) -> None:
    done = run_cli("forget-user", "u2", "--loop", "store", cwd=tmp_path, **served.env(copy))
    assert done.returncode == 0, done.stderr
    message = " ".join(done.stderr.split())
    assert f"Removed {N_DECISIONS['store'] // 2} decisions of user 'u2' from the loop" in message
    assert users_in(copy / "loops" / "store" / "events.db") == ["u1"] * (N_DECISIONS["store"] // 2)
    assert users_in(copy / "loops" / "onboarding" / "events.db").count("u2") == 30
    assert users_in(copy / "events.db").count("u2") == N_DECISIONS["default"] // 2


# -- Redis ---------------------------------------------------------------------------------


@pytest.fixture
def redis_loops(tmp_path: Path, redis_server: RedisServer) -> Iterator[dict[str, str]]:
    """A real server logging to a real redis-server, with the loop "store" (44 decisions)."""
    with (
        running_server(
            tmp_path, api_keys=SERVER_KEYS, store_url=redis_server.url, store_prefix="shop"
        ) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        created = http.put("/v1/loops/store", json=STORE, headers=auth(ADMIN))
        assert created.status_code == 201, created.text
        decide(http, "store", N_DECISIONS["store"], 3)
        decide(http, "default", 4, 4)
    yield {"BANDITREC_STORE_URL": redis_server.url, "BANDITREC_STORE_PREFIX": "shop"}


def test_export_and_forget_user_loop_on_redis_use_the_loops_prefix(
    redis_loops: dict[str, str], tmp_path: Path
) -> None:
    env = {**redis_loops, "BANDITREC_DB_PATH": str(tmp_path / "none.db")}
    out = tmp_path / "exported"
    done = run_cli("export", "--loop", "store", "--out", str(out), cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    message = " ".join(done.stderr.split())
    assert f"Exported {N_DECISIONS['store']} decisions" in message
    assert "(keys shop:loop:store:*)" in message
    files = sorted((out / "loops" / "store").glob("decisions-*.parquet"))
    assert sum(pq.read_table(f).num_rows for f in files) == N_DECISIONS["store"]
    # evaluate reads SQLite logs and archives: it says how to evaluate a Redis loop.
    done = run_cli(*EVALUATE, "--loop", "store", "--out", "report", cwd=tmp_path, **env)
    assert done.returncode == 1
    assert "export it first (banditrec export --loop store --out DIR)" in done.stderr.replace(
        "\n", " "
    )
    done = run_cli(*EVALUATE, "--loop", "store", "--archive", str(out), cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    done = run_cli("forget-user", "u1", cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    message = " ".join(done.stderr.split())
    assert "Removed 2 decisions of user 'u1' from the live log" in message
    assert f"from the loops 'store': {N_DECISIONS['store'] // 2} from their live logs" in message
    assert not os.path.exists(tmp_path / "none.db")  # nothing fell back to SQLite
