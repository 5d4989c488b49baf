"""`RequestGuard`: bodies over the size limit and bodies that are not JSON stop here.

It is the innermost middleware and the one that reads the request body, so it also hands
that body to the hot path (`HotRoutes`) before FastAPI sees the request.
"""

from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from banditrec.responses import error_body, send_json

__all__ = ["BodyHandler", "RequestGuard"]

#: Called with the scope, the whole body and `send`; returns whether it answered the request
#: (`HotRoutes` is one).
BodyHandler = Callable[[Scope, bytes, Send], Awaitable[bool]]


class RequestGuard:
    """Pure ASGI middleware: 413 for bodies over the limit, 415 for non-JSON bodies.

    Pure ASGI (not `BaseHTTPMiddleware`) so the body is counted as it streams in, also when
    the client sends no Content-Length, and reading stops at the limit.
    """

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, hot_routes: BodyHandler | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.hot_routes = hot_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await _error(send, 413, "payload_too_large", self._too_large)
            return
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if (length is None or length != b"0") and not (
            content_type == b"application/json" or content_type.endswith(b"+json")
        ):
            reason = "The request body must be JSON (Content-Type: application/json)."
            await _error(send, 415, "unsupported_media_type", reason)
            return

        # Read the body here, up to the limit, then hand it to the app: an error raised from
        # inside the app's `receive` would become FastAPI's 400, not a 413.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_body_bytes:
                await _error(send, 413, "payload_too_large", self._too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
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

    @property
    def _too_large(self) -> str:
        return f"The request body is larger than {self.max_body_bytes} bytes."


async def _error(send: Send, status: int, error: str, message: str) -> None:
    await send_json(send, status, error_body(error, message))
