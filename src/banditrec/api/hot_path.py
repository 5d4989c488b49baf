"""`HotRoutes`: the decision and reward routes, answered without FastAPI's machinery.

FastAPI spends more time per request (routing, request objects, exception middleware) than
deciding and logging take. `RequestGuard` therefore hands every POST body it has read to
`HotRoutes`, which answers a request to a route declared ``hot`` itself: it calls the same
`BoundRoute.call` as the FastAPI route (key check, validation, work) and renders errors
with the same `banditrec.errors.error_answer`, so both paths answer every request alike
(``tests/test_hot_path.py`` checks it). Anything else goes on to FastAPI.

`FrontDoorApp` is the app itself: its HTTP requests enter through the middleware that
every request needs (metrics, then `RequestGuard`) *in front of* FastAPI, so a hot request
never passes through FastAPI's and Starlette's own layers (telemetry checks, error and
exception middleware, each with its wrapper around ``send``): about a tenth of a decision's
CPU (docs/benchmarks.md, "HTTP at the ceiling"). Every other request goes on to FastAPI
(`FrontDoorApp.framework`) as before.

`HotLane` goes one step further for the requests that make up the load: a POST to a hot
route's exact path, with a JSON content type and a Content-Length within the limit, whose
body arrives in one piece. It does what the metrics middleware and `RequestGuard` would do
for such a request (time it, read the body) in one coroutine and hands it to `HotRoutes`,
without their per-request closures and generic checks. Any other request, including every
one those two would refuse, goes through them as before, so they alone write 413 and 415.
"""

import re
import time
from typing import Any

from fastapi import FastAPI
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from banditrec.api.guard import RequestGuard, is_json
from banditrec.api.route import BODY_KEY, BoundRoute
from banditrec.errors import ANSWERED_ERRORS, error_answer, handle_server_error
from banditrec.metrics import Metrics
from banditrec.responses import send_json

__all__ = ["FrontDoorApp", "HotLane", "HotRoutes"]

#: Where `HotRoutes` leaves the status it answered, in the ASGI scope (for `HotLane`).
STATUS_KEY = "banditrec.status"


class FrontDoorApp(FastAPI):
    """A FastAPI app whose HTTP requests go through `front` (set once the app is built).

    `front` is the chain of middleware every HTTP request passes (``MetricsMiddleware``
    around `RequestGuard`), ending in `framework`: FastAPI's own handling. Lifespan (and
    any other scope type) goes straight to FastAPI.
    """

    front: ASGIApp | None = None

    @classmethod
    def adopt(cls, app: FastAPI) -> "FrontDoorApp":
        """`app` (built by a factory such as ``fastapi_offline``'s) as a `FrontDoorApp`:
        the same object, whose class only adds the front door (no state of its own)."""
        app.__class__ = cls
        assert isinstance(app, cls)
        return app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        front = self.front
        if front is None or scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        # What FastAPI and Starlette set before their middleware runs.
        if self.root_path:
            scope["root_path"] = self.root_path
        scope["app"] = self
        await front(scope, receive, send)

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's handling of a request (routing, its middleware, error handlers)."""
        await super().__call__(scope, receive, send)


class HotRoutes:
    """The hot routes of one app, called by `RequestGuard` with each POST body it has read.

    The matching FastAPI route object and the path parameters are put in the scope, as
    the router would, so metrics label the request by its route template.
    """

    def __init__(self) -> None:
        self._exact: dict[str, BoundRoute] = {}
        self._patterns: list[tuple[re.Pattern[str], BoundRoute]] = []

    def exact(self, path: str) -> BoundRoute | None:
        """The hot route whose path (without parameters) is `path`, if any."""
        return self._exact.get(path)

    def add(self, bound: BoundRoute) -> None:
        """Answer POST requests to `bound`'s path here (after `BoundRoute.add_to`)."""
        if bound.route.method != "POST" or bound.api_route is None:
            raise ValueError(f"{bound.route.path}: only POST routes added to an app can be hot.")
        if bound.route.params:
            regex, _, _ = compile_path(bound.route.path)
            self._patterns.append((regex, bound))
        else:
            self._exact[bound.route.path] = bound

    async def __call__(self, scope: Scope, body: bytes, send: Send) -> bool:
        """Answer the request if it is for a hot route; return whether it was."""
        if scope["method"] != "POST" or scope.get("root_path"):
            return False
        path: str = scope["path"]
        bound = self._exact.get(path)
        if bound is None:
            for regex, candidate in self._patterns:
                match = regex.match(path)
                if match is not None:
                    scope["path_params"] = match.groupdict()
                    bound = candidate
                    break
            else:
                return False
        scope["route"] = bound.api_route
        headers = None
        try:
            status, content = bound.route.status_code, await bound.call(scope, body)
        except ANSWERED_ERRORS as exc:
            status, content, headers = error_answer(exc)
        except Exception as exc:
            # A bug: answered 500 as FastAPI's error middleware would (the body of
            # `handle_server_error`), then raised on for the server to log its traceback.
            scope[STATUS_KEY] = 500
            await handle_server_error(None, exc)(scope, _no_body, send)  # type: ignore[arg-type]
            raise
        scope[STATUS_KEY] = status
        await send_json(send, status, content, headers)
        return True


class HotLane:
    """The way in of the requests that make up the load (see the module's docstring).

    Parameters
    ----------
    routes
        The app's hot routes; the lane takes the POSTs to their exact paths.
    guard
        The app's `RequestGuard` (for its body limits).
    metrics
        Where each request the lane answers is timed, as the metrics middleware would.
    general
        The way in of every other request (the metrics middleware around the guard).
    """

    def __init__(
        self, routes: HotRoutes, guard: RequestGuard, metrics: Metrics, general: ASGIApp
    ) -> None:
        self.routes = routes
        self.guard = guard
        self.metrics = metrics
        self.general = general

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        path: str = scope["path"]
        bound = self.routes.exact(path) if scope["method"] == "POST" else None
        if bound is None or scope.get("root_path"):
            await self.general(scope, receive, send)
            return
        length = content_type = b""
        for key, value in scope["headers"]:  # the first of each, as the guard reads them
            if key == b"content-length":
                length = length or value
            elif key == b"content-type":
                content_type = content_type or value
        if not (
            length.isdigit()
            and int(length) <= self.guard.limit(path)
            and is_json(content_type.decode("latin-1"))
        ):
            await self.general(scope, receive, send)  # the guard answers 413 and 415
            return
        message = await receive()
        if message["type"] != "http.request" or message.get("more_body", False):
            await self.general(scope, _replay(message, receive), send)  # in pieces
            return
        body: bytes = message.get("body", b"")
        scope[BODY_KEY] = body
        try:
            await self.routes(scope, body, send)
        finally:
            assert bound.api_route is not None  # hot routes are added to the app first
            self.metrics.observe_request(
                bound.api_route.path_format,
                "POST",
                scope.get(STATUS_KEY, 500),
                time.perf_counter() - start,
            )


def _replay(first: Message, receive: Receive) -> Receive:
    """`receive`, giving `first` (already received) once first."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return first
        return await receive()

    return replay


async def _no_body() -> dict[str, Any]:
    return {"type": "http.disconnect"}
