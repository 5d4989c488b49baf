"""API keys with roles: open without keys, 401 without a valid key, 403 below the role."""

from __future__ import annotations

import logging

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, ValidationError

from banditrec.auth import (
    Admin,
    ApiKeys,
    AuthError,
    Role,
    auth_error_handler,
    log_auth_mode,
    require,
)

KEYS = {
    "reader-key-0123456789": Role.reader,
    "writer-key-0123456789": Role.writer,
    "admin-key-01234567890": Role.admin,
}
KEY_OF = {role: key for key, role in KEYS.items()}
GUARDED = {"/read": Role.reader, "/write": Role.writer, "/admin": Role.admin}


def make_app(api_keys: dict[str, Role] | None) -> FastAPI:
    """A public route and one route per role; `None` leaves `app.state.api_keys` unset."""
    app = FastAPI()
    if api_keys is not None:
        app.state.api_keys = api_keys
    app.add_exception_handler(AuthError, auth_error_handler)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/read", dependencies=[Depends(require(Role.reader))])
    async def read() -> dict[str, str]:
        return {"route": "read"}

    @app.post("/write")
    async def write(role: Role = Depends(require(Role.writer))) -> dict[str, str]:  # noqa: B008
        return {"route": "write", "role": role}

    @app.post("/admin")
    async def admin(role: Admin) -> dict[str, str]:
        return {"route": "admin", "role": role}

    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(make_app(KEYS))


def call(client: TestClient, path: str, headers: dict[str, str] | None = None) -> int:
    method = client.get if path in ("/health", "/read") else client.post
    return int(method(path, headers=headers or {}).status_code)


def test_roles_are_ordered_and_cumulative() -> None:
    assert sorted([Role.admin, Role.reader, Role.writer]) == [Role.reader, Role.writer, Role.admin]
    assert Role.writer.includes(Role.reader) and not Role.writer.includes(Role.admin)
    assert all(Role.admin.includes(role) for role in Role)
    assert [role.rank for role in Role] == [0, 1, 2]


def test_without_keys_every_route_is_open() -> None:
    open_client = TestClient(make_app({}))
    for path in ("/health", *GUARDED):
        assert call(open_client, path) == 200, path
    # Open mode grants everything, so a handler asking for the role sees admin.
    assert open_client.post("/admin").json()["role"] == "admin"


def test_public_route_needs_no_key(client: TestClient) -> None:
    assert call(client, "/health") == 200
    assert call(client, "/health", {"X-API-Key": "not a key"}) == 200


@pytest.mark.parametrize("path", list(GUARDED))
def test_missing_key_is_401_with_www_authenticate(client: TestClient, path: str) -> None:
    method = client.get if path == "/read" else client.post
    response = method(path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {
        "error": "missing_api_key",
        "message": "This route needs an API key: send it as "
        "'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
        "detail": [],
    }


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer"},  # a scheme without a key
        {"Authorization": "Basic d3JpdGVyOmtleQ=="},  # not a bearer key
        {"X-API-Key": ""},
    ],
)
def test_empty_or_other_scheme_counts_as_missing(
    client: TestClient, headers: dict[str, str]
) -> None:
    response = client.post("/write", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "missing_api_key"


@pytest.mark.parametrize("path", list(GUARDED))
@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong-key"},
        {"X-API-Key": "wrong-key"},
        {"X-API-Key": "admin-key-0123456789"},  # a prefix of a real key
        {"X-API-Key": "admin-key-01234567890x"},  # a real key plus one character
        {"X-API-Key": "clé-non-ascii".encode()},  # header bytes beyond ASCII
    ],
)
def test_unknown_key_is_401(client: TestClient, path: str, headers: dict[str, str | bytes]) -> None:
    method = client.get if path == "/read" else client.post
    response = method(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json() == {
        "error": "invalid_api_key",
        "message": "The API key is not valid.",
        "detail": [],
    }


@pytest.mark.parametrize("style", ["bearer", "x-api-key"])
@pytest.mark.parametrize("key_role", list(Role))
@pytest.mark.parametrize("path", list(GUARDED))
def test_every_role_against_every_route(
    client: TestClient, style: str, key_role: Role, path: str
) -> None:
    key = KEY_OF[key_role]
    headers = {"Authorization": f"Bearer {key}"} if style == "bearer" else {"X-API-Key": key}
    method = client.get if path == "/read" else client.post
    response = method(path, headers=headers)
    needed = GUARDED[path]
    if key_role >= needed:
        assert response.status_code == 200
    else:
        assert response.status_code == 403
        assert "www-authenticate" not in response.headers
        assert response.json() == {
            "error": "insufficient_role",
            "message": f"This route needs the '{needed}' role; "
            f"the API key has the '{key_role}' role.",
            "detail": [],
        }


def test_handler_receives_the_callers_role(client: TestClient) -> None:
    response = client.post("/write", headers={"X-API-Key": KEY_OF[Role.admin]})
    assert response.json() == {"route": "write", "role": "admin"}


def test_bearer_scheme_is_case_insensitive(client: TestClient) -> None:
    assert call(client, "/write", {"Authorization": f"bearer {KEY_OF[Role.writer]}"}) == 200


def test_bearer_wins_over_x_api_key(client: TestClient) -> None:
    headers = {"Authorization": f"Bearer {KEY_OF[Role.reader]}", "X-API-Key": KEY_OF[Role.admin]}
    assert call(client, "/admin", headers) == 403


def test_unset_key_table_fails_closed() -> None:
    # A forgotten `app.state.api_keys` must not open the routes.
    with pytest.raises(RuntimeError, match=r"app\.state\.api_keys is not set"):
        TestClient(make_app(None)).get("/read")


def test_the_schemes_are_documented_in_openapi(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    # /docs gets an "Authorize" button that sends `Authorization: Bearer <key>`.
    assert schema["components"]["securitySchemes"] == {
        "APIKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key, as `Authorization: Bearer <key>` or `X-API-Key: <key>`.",
        }
    }
    assert "security" not in schema["paths"]["/health"]["get"]
    assert schema["paths"]["/admin"]["post"]["security"] == [{"APIKey": []}]


def test_log_says_open_mode(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("banditrec.test_auth")
    with caplog.at_level(logging.INFO, logger=logger.name):
        log_auth_mode({}, logger)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "No API keys are configured: every route is open (development mode).")
    ]


def test_log_counts_keys_per_role_and_never_shows_a_key(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("banditrec.test_auth")
    keys = {**KEYS, "tiny-k3y": Role.writer}
    with caplog.at_level(logging.INFO, logger=logger.name):
        log_auth_mode(keys, logger)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == (
        "API keys are required on protected routes (1 admin, 2 writer, 1 reader keys configured)."
    )
    assert caplog.records[1].levelno == logging.WARNING
    assert messages[1].startswith("1 API key(s) are shorter than 16 characters")
    assert not any(key in caplog.text for key in keys)


class KeySettings(BaseModel):
    """Stands in for banditrec's Settings, configured as recommended."""

    model_config = ConfigDict(hide_input_in_errors=True)

    api_keys: ApiKeys = {}


def test_key_table_parses_roles_from_json() -> None:
    parsed = KeySettings.model_validate_json('{"api_keys": {"secret-1": "writer"}}')
    assert parsed.api_keys == {"secret-1": Role.writer}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"secret-1": "owner"}, "Unknown API key role(s) 'owner'; the roles are 'reader', "),
        ({"secret-1": ["admin"]}, "Unknown API key role(s) ['admin']"),
        ({" secret-1": "admin"}, "non-empty strings without surrounding whitespace"),
        ({"": "admin"}, "non-empty strings without surrounding whitespace"),
        ({"secret-1€": "admin"}, "must be printable ASCII text"),
        ({"secret-1\u2603": "writer"}, "might never authenticate"),
        ({"secret-1é": "writer"}, "must be printable ASCII text"),
        ({"secret-1\x07": "reader"}, "must be printable ASCII text"),
    ],
)
def test_key_table_errors_never_show_a_key(table: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        KeySettings.model_validate({"api_keys": table})
    assert message in str(caught.value)
    assert "secret-1" not in str(caught.value)


def test_settings_refuse_a_key_outside_latin_1_at_start_up() -> None:
    from banditrec.config import Settings

    with pytest.raises(ValidationError) as caught:
        Settings(api_keys={"writer-key-0123456789": "writer", "clé-€-0123456789": "admin"})
    assert "API keys must be printable ASCII text" in str(caught.value)
    assert "0123456789" not in str(caught.value)
