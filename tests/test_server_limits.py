"""The HTTP server's bounds, against a real `banditrec serve` over raw sockets.

One unauthenticated client must not exhaust the server: a header larger than
BANDITREC_MAX_HEADER_BYTES gets 431, a request not complete within
BANDITREC_REQUEST_TIMEOUT_SECONDS gets 408, and connections beyond BANDITREC_MAX_CONNECTIONS
are refused at once (503); the server keeps serving everyone else.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest

from conftest import SEED_CONTEXT
from serving import Server, running_server

HEALTH = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"
RANK_BODY = json.dumps({"context": SEED_CONTEXT}).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("limits")
    with running_server(
        root, max_header_bytes="4096", request_timeout_seconds="1", max_connections="30"
    ) as server:
        yield server


def connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=20)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the test times out if
    it never does: the socket's timeout is 20 s, far beyond every limit used here)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def decisions(server: Server) -> int:
    with sqlite3.connect(f"file:{server.log_path.parent / 'events.db'}?mode=ro", uri=True) as db:
        count: int = db.execute("SELECT count(*) FROM decisions").fetchone()[0]
        return count


def still_serving(server: Server) -> None:
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200


def test_a_header_over_the_limit_gets_431_and_the_connection_is_closed(server: Server) -> None:
    with connect(server) as sock:
        # One header value of 8 KB, never ended: refused, and the connection closed.
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Pad: " + b"a" * 8192)
        response = read_until_closed(sock)
    assert status(response) == 431
    assert response.endswith(b"The request headers are too large.\n")
    still_serving(server)


def test_headers_under_the_limit_with_a_long_body_in_one_write_are_served(
    server: Server,
) -> None:
    # The limit counts the headers only: a 20 KB body arriving in the same packet as
    # 3.5 KB of headers is not a long header. The body is padded with JSON whitespace.
    body = RANK_BODY[:-1] + b" " * 20_000 + b"}"
    head = (
        b"POST /v1/rank HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nX-Pad: " + b"b" * 3500 + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    assert len(head) < 4096 < len(head + body)
    with connect(server) as sock:
        sock.sendall(head + body)
        response = read_until_closed(sock)
    assert status(response) == 200, response[:300]
    assert b'"action_id"' in response


def test_half_sent_headers_get_408_after_the_timeout(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n")  # no blank line: never ends
        response = read_until_closed(sock)
    assert status(response) == 408
    assert b"The request was not received in time." in response
    still_serving(server)


def test_a_half_sent_body_gets_408_and_nothing_is_logged(server: Server) -> None:
    before = decisions(server)
    with connect(server) as sock:
        sock.sendall(
            b"POST /v1/rank HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(RANK_BODY) + RANK_BODY[:20]
        )
        response = read_until_closed(sock)
    assert status(response) == 408
    assert decisions(server) == before
    still_serving(server)


def test_a_pipelined_half_request_after_a_whole_one_gets_its_408_after_the_answer(
    server: Server,
) -> None:
    with connect(server) as sock:
        sock.sendall(HEALTH + b"GET /health HTTP/1.1\r\nHost: te")
        response = read_until_closed(sock)
    first, _, rest = response.partition(b"HTTP/1.1 408 ")
    assert status(first) == 200 and b'"status"' in first  # the whole request, answered
    assert rest.endswith(b"The request was not received in time.\n")


def test_a_connection_that_never_sends_is_closed(server: Server) -> None:
    with connect(server) as sock:
        assert status(read_until_closed(sock)) == 408


@pytest.mark.serial
def test_a_slow_but_steady_request_within_the_timeout_is_served(server: Server) -> None:
    with connect(server) as sock:
        for line in (b"GET /health HTTP/1.1\r\n", b"Host: test\r\n", b"Connection: close\r\n"):
            sock.sendall(line)
            time.sleep(0.2)
        sock.sendall(b"\r\n")
        assert status(read_until_closed(sock)) == 200


def test_connections_beyond_the_cap_are_refused_at_once(server: Server) -> None:
    held: list[socket.socket] = []
    try:
        # Fill the cap (30) with connections that each completed a request and stay open
        # (keep-alive), so the server has registered all of them. Re-sent every half
        # second they would stay; uvicorn's keep-alive timeout (5 s) is far away.
        while True:
            sock = connect(server)
            held.append(sock)
            sock.sendall(HEALTH)
            first = sock.recv(65536)
            if status(first) == 503:  # the cap is reached: this one was refused
                break
            assert status(first) == 200
            assert len(held) <= 30, "more connections than the cap were accepted"
        # The answer is written in one piece before the close (the request sent on this
        # connection is never read, so reading on may meet a reset).
        assert b"The server has too many open connections." in first
        held.pop().close()
        assert len(held) == 30
        # One held connection leaves: a new client is served again.
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:
            with connect(server) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                answer = sock.recv(65536)  # the whole answer: a few hundred bytes
            if status(answer) == 200:
                break
            assert status(answer) == 503  # the server has not yet seen the other one leave
            assert time.monotonic() < deadline, "no connection was accepted after one left"
            time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()
