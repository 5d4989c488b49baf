"""The ceiling of `bench_http`: a bare ASGI app that scores the same model, logging nothing.

No framework, no validation, no event log, no metrics: the body is parsed, encoded by the
same feature schema (`FeatureSchema.vectorize`), scored by the same policy
(`Policy.distribution` with its exploration), an action drawn (`sample_action`) and an
answer of ``/recommend_action``'s shape rendered by orjson. What banditrec adds on top of
this (validation, keys, metrics, durable logging, routing) is what the ratio to this app
measures. ``POST /recommend_action`` takes the flat body, ``POST /v1/rank`` the context under
``"context"``; anything else is 404.

Run under the server `banditrec serve` uses, with as many workers::

    python -m benchmarks.http_ceiling --model model.npz --port 8030 --workers 2
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from banditrec.engine import new_event_id
from banditrec.exploration import sample_action
from banditrec.features import load_default_schema
from banditrec.snapshot import load_model

_HEADERS = [(b"content-type", b"application/json")]
_MODEL_ENV = "BENCH_CEILING_MODEL"


class CeilingApp:
    """The bare ASGI app: one model, decisions without anything around them."""

    def __init__(self, model_path: str | Path) -> None:
        schema = load_default_schema()
        model = load_model(model_path, schema)
        self.schema, self.policy = schema, model.policy
        self.actions = list(model.actions)
        self.eligible = np.ones(len(self.actions), dtype=bool)
        self.rng = np.random.default_rng()
        self.version = model.version
        self.decide(_ANY_CONTEXT, "/v1/rank")  # numba kernels compiled now

    def decide(self, data: dict[str, Any], path: str) -> dict[str, Any]:
        context = data["context"] if path == "/v1/rank" else data
        x = self.schema.vectorize(context)
        scores, probabilities = self.policy.distribution(x, self.eligible, self.rng)
        index = sample_action(probabilities, self.rng)
        action, score_list = self.actions[index], scores.score.tolist()
        return {
            "recommended_action": action,
            "ucb_score": score_list[index],
            "scores": dict(zip(self.actions, score_list, strict=True)),
            "event_id": new_event_id(),
            "probability": float(probabilities[index]),
            "probabilities": dict(zip(self.actions, probabilities.tolist(), strict=True)),
            "model_version": self.version,
        }

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        path = scope["path"]
        if scope["method"] == "POST" and path in ("/recommend_action", "/v1/rank"):
            status, payload = 200, orjson.dumps(self.decide(orjson.loads(body), path))
        elif path == "/health":
            status, payload = 200, b'{"status":"ok"}'
        else:
            status, payload = 404, b'{"error":"not_found"}'
        headers = [(b"content-length", str(len(payload)).encode()), *_HEADERS]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


# A context of the default schema, for the warm-up decision.
_ANY_CONTEXT: dict[str, Any] = {
    "context": {
        "country": "US", "device": "ios", "segment": "new", "n_sessions": 3,
        "days_since_install": 1, "recent_engagement": 1, "avg_session_length": 10.0,
    }
}  # fmt: skip


def create_app() -> CeilingApp:
    """The app of one worker process (the model path comes from the environment)."""
    return CeilingApp(os.environ[_MODEL_ENV])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn")
    args = parser.parse_args(argv)
    os.environ[_MODEL_ENV] = str(args.model.resolve())
    import uvicorn

    from banditrec.server import LimitedHttpToolsProtocol

    uvicorn.run(
        "benchmarks.http_ceiling:create_app", factory=True, host="127.0.0.1", port=args.port,
        workers=args.workers, http=LimitedHttpToolsProtocol, log_level="warning",
        access_log=False,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
