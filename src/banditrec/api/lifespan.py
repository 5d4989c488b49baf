"""Start-up and shutdown of an app: the model, the event log, the learner; one-line failures.

`lifespan` opens the default loop (`banditrec.runtime.open_runtime`: the event log, the model
recovered from the newest valid snapshot + the log tail, or the base model, or the prior,
the warmed-up decision path), starts its learner, and opens the named loops.
`StartupFailure` turns the failures an operator causes (a model file for another schema, an
event log of another schema, a model path that does not exist) into one log line instead of
a traceback.
"""

import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from banditrec.auth import log_auth_mode
from banditrec.config import Settings
from banditrec.features import SchemaError
from banditrec.loops import LoopError, LoopRegistry
from banditrec.runtime import DEFAULT_MODEL_PATH, base_model, open_runtime
from banditrec.snapshot import ModelFileError
from banditrec.store import StoreError

__all__ = ["DEFAULT_MODEL_PATH", "StartupFailure", "base_model", "lifespan"]

logger = logging.getLogger("banditrec")

#: Failures of configuration or data, told in one line (anything else keeps its traceback).
STARTUP_ERRORS: tuple[type[Exception], ...] = (ModelFileError, SchemaError, StoreError, LoopError)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Recover the model and run the learner while the app serves (`app.state` holds
    ``settings``, ``metrics`` and ``serving``, set by `banditrec.api.create_app`); open the
    named loops (`banditrec.loops`) beside it."""
    state = app.state
    settings: Settings = state.settings
    log_auth_mode(settings.api_keys, logger)
    runtime = open_runtime(settings, state.metrics, require_file=state.serving)
    engine, lifecycle = runtime.engine, runtime.lifecycle
    state.engine, state.learner, state.model_loaded = engine, runtime.learner, runtime.model_loaded
    state.lifecycle = lifecycle  # its gauges are on the metrics (`open_runtime`)
    loops = LoopRegistry(settings, state.metrics, runtime.store, serving=state.serving)
    try:
        loops.open()
    except BaseException:
        await runtime.stop()
        raise
    state.loops = loops
    if state.serving:
        # Move everything loaded so far (FastAPI, numba, the model) out of the collector's
        # sight: it lives as long as the process, and full collections walking it paused
        # every request in flight for tens of milliseconds. Only a server process may do
        # this: an app built in a test or a script would leak what it froze.
        gc.collect()
        gc.freeze()
    runtime.start()
    loops.start()
    try:
        yield
    finally:
        await loops.stop()
        await runtime.stop()


class StartupFailure:
    """Pure ASGI middleware: a start-up that fails for a reason in `STARTUP_ERRORS` is
    reported as one line, ``Cannot start banditrec (ModelFileError): <sentence>``.

    Starlette reports a failed lifespan with the traceback as its message, which the server
    logs; the operator needs the sentence, not the stack. Other exceptions (bugs) keep
    their traceback.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_one_line(message: Message) -> None:
            # Starlette sends this from inside its `except` block, so the exception is the
            # one being handled.
            exc = sys.exc_info()[1]
            if message["type"] == "lifespan.startup.failed" and isinstance(exc, STARTUP_ERRORS):
                line = f"Cannot start banditrec ({type(exc).__name__}): {exc}"
                message = {**message, "message": line}
            await send(message)

        await self.app(scope, receive, send_one_line)
