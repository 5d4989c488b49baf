"""`RequestGuard`: bodies over the size limit and non-empty bodies that are not JSON stop here.

It runs in front of FastAPI (`banditrec.api.hot_path.FrontDoorApp`), inside the metrics
middleware, and is the only one that reads the request body: it leaves the body in the
scope (`BODY_KEY`) for the routes, and hands it to the hot path (`HotRoutes`) before FastAPI
sees the request. The content type is read here and nowhere else.
"""

from collections.abc import Awaitable, Callable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from banditrec.api.route import BODY_KEY, header
from banditrec.responses import error_body, send_json

__all__ = ["BodyHandler", "RequestGuard", "is_json"]

#: Called with the scope, the whole body and `send`; returns whether it answered the request
#: (`HotRoutes` is one).
BodyHandler = Callable[[Scope, bytes, Send], Awaitable[bool]]

_NOT_JSON = (
    "The request body must be JSON (Content-Type: application/json); "
    "a route without a body accepts an empty one with any content type."
)


def is_json(content_type: str) -> bool:
    """Whether a Content-Type value names JSON: ``application/json`` or ``application/*+json``.

    >>> is_json("application/json; charset=utf-8"), is_json("application/ld+json")
    (True, True)
    >>> is_json("text/plain"), is_json("")
    (False, False)
    """
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class RequestGuard:
    """Pure ASGI middleware: 413 for bodies over the limit, 415 for non-JSON bodies.

    Pure ASGI (not `BaseHTTPMiddleware`) so the body is counted as it streams in, also when
    the client sends no Content-Length, and reading stops at the limit. An empty body is
    always let through (whatever its content type): routes without a body take it, and
    routes with one answer 422 "body: Field required".
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        hot_routes: BodyHandler | None = None,
        path_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.hot_routes = hot_routes
        #: Paths with a limit of their own (``POST /v1/rank/batch`` carries many contexts);
        #: a key ``*<suffix>`` is every path ending so (a named loop's batch route).
        self.path_limits = {k: v for k, v in (path_limits or {}).items() if k[:1] != "*"}
        self.suffix_limits = [(k[1:], v) for k, v in (path_limits or {}).items() if k[:1] == "*"]

    def limit(self, path: str) -> int:
        """The largest body accepted on `path`, in bytes."""
        limit = self.path_limits.get(path, self.max_body_bytes)
        for suffix, suffix_limit in self.suffix_limits:
            if path.endswith(suffix):
                limit = suffix_limit
        return limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["path"])
        length = header(scope, b"content-length")
        if length and (not length.isdigit() or int(length) > limit):
            await _error(send, 413, "payload_too_large", _too_large(limit))
            return
        # The first Content-Type header, as Starlette and FastAPI read it.
        json_body = is_json(header(scope, b"content-type"))
        if not json_body and length not in ("", "0"):
            await _error(send, 415, "unsupported_media_type", _NOT_JSON)
            return

        # Read the body here, up to the limit, then hand it to the app: an error raised from
        # inside the app's `receive` would become a 400, not a 413.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                await _error(send, 413, "payload_too_large", _too_large(limit))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if body and not json_body:  # streamed without a Content-Length
            await _error(send, 415, "unsupported_media_type", _NOT_JSON)
            return
        scope[BODY_KEY] = body
        if self.hot_routes is not None and await self.hot_routes(scope, body, send):
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _too_large(limit: int) -> str:
    return f"The request body is larger than {limit} bytes."


async def _error(send: Send, status: int, error: str, message: str) -> None:
    await send_json(send, status, error_body(error, message))
