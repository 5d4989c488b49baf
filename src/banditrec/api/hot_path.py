"""`HotRoutes`: the decision and reward routes, answered without FastAPI's machinery.

FastAPI spends more time per request (routing, request objects, exception middleware) than
deciding and logging take. `RequestGuard` therefore hands every POST body it has read to
`HotRoutes`, which answers a request to a route declared ``hot`` itself: it calls the same
`BoundRoute.call` as the FastAPI route (key check, validation, work) and renders errors
with the same `banditrec.errors.error_answer`, so both paths answer every request alike
(``tests/test_hot_path.py`` checks it). Anything else goes on to FastAPI.
"""

import re

from starlette.routing import compile_path
from starlette.types import Scope, Send

from banditrec.api.route import BoundRoute
from banditrec.errors import ANSWERED_ERRORS, error_answer
from banditrec.responses import send_json

__all__ = ["HotRoutes"]


class HotRoutes:
    """The hot routes of one app, called by `RequestGuard` with each POST body it has read.

    The matching FastAPI route object and the path parameters are put in the scope, as
    the router would, so metrics label the request by its route template.
    """

    def __init__(self) -> None:
        self._exact: dict[str, BoundRoute] = {}
        self._patterns: list[tuple[re.Pattern[str], BoundRoute]] = []

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
        await send_json(send, status, content, headers)
        return True
