"""`HotLane`: the requests that make up the load, timed and read in one step; every other
request goes the general way (metrics middleware, `RequestGuard`) and is answered as before.

The app is the real one (`create_app`, its lifespan, a SQLite log in a file), driven at the
ASGI level so a body can arrive in pieces with a Content-Length, as a slow client sends it.
"""

import asyncio
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from banditrec.api import create_app
from banditrec.api.hot_path import FrontDoorApp, HotLane
from banditrec.config import Settings
from test_metrics import request_count

REQUEST = {
    "user_id": "u1", "country": "US", "device": "ios", "segment": "new", "n_sessions": 3,
    "days_since_install": 1, "recent_engagement": 1, "avg_session_length": 10.0,
}  # fmt: skip
BODY = json.dumps(REQUEST).encode()
JSON = (b"content-type", b"application/json")


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("BANDITREC_")]:
        monkeypatch.delenv(name)


def settings(tmp_path: Path) -> Settings:
    return Settings(db_path=tmp_path / "events.db", snapshot_dir=tmp_path / "snapshots", seed=0)


def n_logged(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "events.db") as db:
        count: int = db.execute("SELECT count(*) FROM decisions").fetchone()[0]
    return count


@asynccontextmanager
async def started(tmp_path: Path) -> AsyncIterator[Any]:
    """The app with its lifespan run (log opened, model loaded), shut down afterwards."""
    app = create_app(settings(tmp_path))
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.ensure_future(app({"type": "lifespan", "state": {}}, inbox.get, outbox.put))
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        yield app
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task


def scope(headers: list[tuple[bytes, bytes]], path: str = "/recommend_action") -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2), "state": {},
    }  # fmt: skip


async def request(
    app: Any, headers: list[tuple[bytes, bytes]], pieces: list[bytes]
) -> tuple[int, Any]:
    """POST `pieces` (one receive message each) to /recommend_action; the answer."""
    messages = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope(headers), receive, send)
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], json.loads(body)


def length(body: bytes) -> tuple[bytes, bytes]:
    return (b"content-length", str(len(body)).encode())


def test_the_lane_is_the_front_of_the_served_app(tmp_path: Path) -> None:
    served, fastapi_only = (
        create_app(settings(tmp_path)),
        create_app(settings(tmp_path), hot_path=False),
    )
    assert isinstance(served, FrontDoorApp) and isinstance(fastapi_only, FrontDoorApp)
    assert isinstance(served.front, HotLane)
    assert not isinstance(fastapi_only.front, HotLane)


@pytest.mark.parametrize(
    "split",
    [lambda b: [b], lambda b: [b[:10], b[10:]], lambda b: [b[:1], b[1:-1], b[-1:]]],
    ids=["one piece", "two pieces", "three pieces"],
)
def test_a_body_in_pieces_is_decided_and_logged_once(
    tmp_path: Path, split: Callable[[bytes], list[bytes]]
) -> None:
    async def run() -> tuple[int, Any]:
        async with started(tmp_path) as app:
            return await request(app, [JSON, length(BODY)], split(BODY))

    status, answer = asyncio.run(run())
    assert status == 200, answer
    assert answer["user_id"] == "u1" and answer["probability"] > 0
    assert n_logged(tmp_path) == 1


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        ([JSON, (b"content-length", b"70000")], 413, "payload_too_large"),
        ([JSON, (b"content-length", b"12x")], 413, "payload_too_large"),
        ([(b"content-type", b"text/plain"), length(BODY)], 415, "unsupported_media_type"),
        ([length(BODY)], 415, "unsupported_media_type"),
    ],
    ids=["over the limit", "not a number", "text", "no content type"],
)
def test_what_the_guard_refuses_is_refused_as_before(
    tmp_path: Path, headers: list[tuple[bytes, bytes]], status: int, error: str
) -> None:
    async def run() -> tuple[int, Any]:
        async with started(tmp_path) as app:
            return await request(app, headers, [BODY])

    answered, answer = asyncio.run(run())
    assert (answered, answer["error"]) == (status, error)
    assert answer["message"].endswith(".")
    assert n_logged(tmp_path) == 0


def test_requests_of_the_lane_are_timed_by_route_and_status(tmp_path: Path) -> None:
    bad = json.dumps({**REQUEST, "n_sessions": -1}).encode()
    with TestClient(create_app(settings(tmp_path))) as client:
        headers = {"content-type": "application/json"}
        for _ in range(3):
            assert client.post("/recommend_action", content=BODY, headers=headers).is_success
        assert client.post("/recommend_action", content=bad, headers=headers).status_code == 422
        too_large = client.post("/recommend_action", content=b"x" * 70_000, headers=headers)
        assert too_large.status_code == 413
        scraped = client.get("/metrics").content
    assert request_count(scraped, "/recommend_action", "POST", 200) == 3
    assert request_count(scraped, "/recommend_action", "POST", 422) == 1
    assert request_count(scraped, "/recommend_action", "POST", 413) == 1  # the general way
    assert n_logged(tmp_path) == 3
