"""The OpenAPI document and the /docs page, served from the package (no CDN).

Routes validate their own bodies (`banditrec.api.route`), so FastAPI does not see the
request models: this module adds their schemas to the document's components, and the
security schemes when API keys are configured (none in open mode, where no key is needed).
Swagger UI and ReDoc load their scripts from ``fastapi-offline``'s bundled files, so /docs
works on a machine without internet access.
"""

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from banditrec.auth import SECURITY_SCHEMES

__all__ = ["STATIC_URL", "docs_app", "install_openapi"]

#: Where the Swagger UI and ReDoc assets are served.
STATIC_URL = "/static/docs"


def docs_app(**kwargs: Any) -> FastAPI:
    """A FastAPI app whose /docs and /redoc pages load their assets from `STATIC_URL`."""
    app: FastAPI = FastAPIOffline(static_url=STATIC_URL, **kwargs)
    return app


def install_openapi(
    app: FastAPI, request_models: Iterable[type[BaseModel]], keys_configured: bool
) -> None:
    """Make `app.openapi` document `request_models` and, with keys, the security schemes."""
    models = list(request_models)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {})
            _, defs = models_json_schema(
                [(model, "validation") for model in models],
                ref_template="#/components/schemas/{model}",
            )
            components.setdefault("schemas", {}).update(defs.get("$defs", {}))
            if keys_configured:
                components["securitySchemes"] = SECURITY_SCHEMES
            app.openapi_schema = schema
        return app.openapi_schema

    setattr(app, "openapi", openapi)  # noqa: B010 - FastAPI's documented way to replace it
