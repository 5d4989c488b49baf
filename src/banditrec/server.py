"""The HTTP server's connection limits: what one client may hold before it is cut off.

`banditrec serve` runs uvicorn with httptools. Out of the box nothing there bounds what an
unauthenticated client can hold: a header of any size is read into memory (httptools gathers
a header value until it ends), a request that is half sent waits forever, and every accepted
connection keeps a file descriptor until the client leaves. uvicorn's own knobs do not cover
this on httptools (`h11_max_incomplete_event_size` is h11's, `timeout_keep_alive` runs only
between requests, `limit_concurrency` answers 503 only once the headers are complete).

`LimitedHttpToolsProtocol` adds three bounds, each a setting (`banditrec.config.Settings`):

- ``max_header_bytes``: the request line and headers of one request; beyond it the client
  gets 431 and the connection is closed.
- ``request_timeout_seconds``: from a connection's first byte (or from the connection itself
  for its first request) until the request, headers and body, is complete; on expiry the
  client gets 408 if nothing was answered yet, and the connection is closed.
- ``max_connections``: open connections per worker process; one more is answered 503 and
  closed at once, so file descriptors stay bounded.

The per-request cost is one counter and one timer handle: the hot path stays uvicorn's.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Sequence
from functools import cache
from typing import Any, NamedTuple

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

__all__ = ["LimitedHttpToolsProtocol", "ServerLimits", "port_problem", "server_limits"]


class ServerLimits(NamedTuple):
    """The bounds of one worker process (see the module docstring)."""

    max_header_bytes: int
    request_timeout_seconds: float
    max_connections: int


@cache
def server_limits() -> ServerLimits:
    """The limits configured in this process's environment (``BANDITREC_*``), read once.

    The protocol is built by uvicorn in every worker process, which reads its settings from
    the environment that `banditrec serve` exported, like the app itself.
    """
    from banditrec.config import Settings  # the settings import the policies: not at import

    settings = Settings()
    return ServerLimits(
        settings.max_header_bytes, settings.request_timeout_seconds, settings.max_connections
    )


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header-size limit, a request timeout and a cap
    on open connections (checked against uvicorn's own set of this process's connections)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = server_limits()
        self.refused = False
        # Bytes received since the current request began, counted until its headers are
        # complete. The count is per received chunk, so that a chunk that ends the headers
        # and carries the body as well is not mistaken for a long header: see data_received.
        self.in_head = True
        self.head_bytes = 0
        self.mid_message = False
        self.request_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            # Refused before uvicorn registers it: closed at once, its descriptor is freed.
            self.refused = True
            self.transport = transport
            transport.write(_response(503, "The server has too many open connections.\n"))
            transport.close()
            return
        super().connection_made(transport)
        # A connection that never sends its first request is cut off like a half-sent one.
        self.request_timer = self.loop.call_later(
            self.limits.request_timeout_seconds, self.request_timed_out
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_request_timer()
        if self.refused:
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused or self.transport.is_closing():
            return
        if self.in_head:
            self.head_bytes += len(data)
        super().data_received(data)
        if self.mid_message and not self.transport.is_closing():
            if self.in_head and self.head_bytes > self.limits.max_header_bytes:
                # Checked after feeding: the chunk that completes the headers may carry the
                # body too. Memory stays bounded by the limit plus one read (at most 256 KiB).
                self.refuse(431, "The request headers are too large.\n")
            elif self.request_timer is None:
                self.request_timer = self.loop.call_later(
                    self.limits.request_timeout_seconds, self.request_timed_out
                )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.mid_message = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.mid_message, self.in_head, self.head_bytes = False, True, 0
        self.cancel_request_timer()

    def cancel_request_timer(self) -> None:
        if self.request_timer is not None:
            self.request_timer.cancel()
            self.request_timer = None

    def request_timed_out(self) -> None:
        """The request did not arrive in time: 408 when nothing was answered, then close."""
        self.request_timer = None
        if not self.transport.is_closing():
            self.refuse(408, "The request was not received in time.\n")

    def refuse(self, status: int, message: str) -> None:
        """Answer `status` and close; only close when another answer is already under way
        (a response started for this request, or a pipelined earlier one still being sent):
        bytes of ours must not land in the middle of it."""
        self.cancel_request_timer()
        cycle = self.cycle
        if self.in_head:  # this request has no cycle yet; an earlier one may still answer
            busy = cycle is not None and not cycle.response_complete
        else:
            busy = cycle is not None and cycle.response_started
        if cycle is not None:
            cycle.keep_alive = False
        if not busy:
            self.transport.write(_response(status, message, self.server_state.default_headers))
        self.transport.close()


def _response(status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    body = message.encode()
    lines = [STATUS_LINE[status]]
    lines += [b"%s: %s\r\n" % header for header in headers]
    lines.append(
        b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % len(body)
    )
    return b"".join([*lines, body])


def port_problem(host: str, port: int) -> str | None:
    """Why `port` cannot be bound on `host` (one sentence), or None when it is free.

    Bound the way uvicorn binds (SO_REUSEADDR), so a port in TIME_WAIT counts as free.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"Port {port} on {host} is already in use by another process."
            return f"Cannot listen on {host}:{port}: {exc.strerror or exc}."
    return None
