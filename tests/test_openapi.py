"""The JSON API's OpenAPI document: served, complete, with offline docs, and true to what the routes answer.

The last part is schemathesis: for every operation it generates requests
from the document (valid ones, and invalid ones), sends them to the app in
process, and checks that no answer is a 5xx and that each answer's status,
content type, headers and body are the ones the document promises.
"""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
import schemathesis
from conftest import register_api
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

PASSWORD = "correct horse battery"
BASE_URL = "http://testserver"
# The contract's JSON API and account tables.
OPERATIONS = [
    "POST /api/register",
    "POST /api/login",
    "POST /api/login/2fa",
    "POST /api/logout",
    "GET /api/me",
    "POST /api/password",
    "GET /api/sessions",
    "DELETE /api/sessions/{session_id}",
    "POST /api/sessions/revoke-others",
    "POST /api/password/forgot",
    "POST /api/password/reset",
    "POST /api/email/verify",
    "POST /api/email/resend",
    "POST /api/email",
    "POST /api/2fa/totp/setup",
    "POST /api/2fa/totp/confirm",
    "POST /api/2fa/disable",
    "POST /api/2fa/recovery-codes",
    "POST /api/webauthn/register/options",
    "POST /api/webauthn/register/verify",
    "GET /api/webauthn/credentials",
    "DELETE /api/webauthn/credentials/{passkey_id}",
    "POST /api/webauthn/login/options",
    "POST /api/webauthn/login/verify",
    "POST /api/login/2fa/webauthn",
]
PUBLIC = {
    "POST /api/register",
    "POST /api/login",
    "POST /api/login/2fa",
    "POST /api/password/forgot",
    "POST /api/password/reset",
    "POST /api/email/verify",
    "POST /api/webauthn/login/options",
    "POST /api/webauthn/login/verify",
    "POST /api/login/2fa/webauthn",
}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Bounded and repeatable: the same examples on every run, no time limit per example.
EXAMPLES = settings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def label(method: str, rule: str) -> str:
    """``DELETE /api/sessions/{session_id}`` for the rule ``/api/sessions/<int:session_id>``."""
    return method + " " + re.sub(r"<(?:[^:>]*:)?([^>]+)>", r"{\1}", rule)


async def openapi(client) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return await response.get_json()


# -- the document ----------------------------------------------------------------


async def test_openapi_json_is_a_valid_openapi_3_document(client):
    """/openapi.json is an OpenAPI 3 document that schemathesis loads and finds valid."""
    document = await openapi(client)
    assert document["openapi"].startswith("3.")
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()
    assert sorted(f"{op.method.upper()} {op.path}" for op in (r.ok() for r in schema.get_all_operations())) == sorted(
        OPERATIONS
    )


async def test_every_api_route_is_documented(app, client):
    """Every /api route of the app's url_map is in the document, with its methods; nothing else is."""
    document = await openapi(client)
    routes = {
        label(method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item}
    assert routes == documented == set(OPERATIONS)


async def test_protected_routes_declare_the_cookie_and_401(client):
    """Routes behind login_required name the quart_app_auth cookie scheme and document 401; the others don't."""
    document = await openapi(client)
    scheme = document["components"]["securitySchemes"]["cookieAuth"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "cookie", "quart_app_auth")
    for name in OPERATIONS:
        method, path = name.split(" ")
        operation = document["paths"][path][method.lower()]
        if name in PUBLIC:
            assert "security" not in operation, name
        else:
            assert operation["security"] == [{"cookieAuth": []}], name
            assert "401" in operation["responses"], name


async def test_errors_are_documented_in_the_contract_shape(client):
    """Every documented 4xx/5xx answer is the {"error", "fields"?} body; POSTs document 403, 413 and 415."""
    document = await openapi(client)
    error = document["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["error"]
    assert set(error["properties"]) == {"error", "fields"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
            if method == "post":
                assert {"400", "403", "413", "415"} <= set(operation["responses"]), path


async def test_no_documented_response_carries_a_password(client):
    """The public user and session bodies have no password or hash field."""
    schemas = (await openapi(client))["components"]["schemas"]
    assert set(schemas["PublicUser"]["properties"]) == {"id", "username", "email"}
    session_fields = {"id", "created_at", "last_seen_at", "ip", "user_agent", "current", "amr", "auth_time", "aal"}
    assert set(schemas["SessionInfo"]["properties"]) == session_fields


# -- the interactive docs ------------------------------------------------------------


ASSET_RE = re.compile(r'<(?:script|link|img)\b[^>]*?\b(?:src|href)="([^"]+)"')


async def test_docs_page_is_served_with_local_assets_only(client):
    """/docs is Swagger UI on /openapi.json; every script, style and icon comes from this server."""
    response = await client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = await response.get_data(as_text=True)
    assert 'data-openapi-url="/openapi.json"' in page
    assets = ASSET_RE.findall(page)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    assert any(a.endswith("swagger-ui.css") for a in assets)
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), asset
        served = await client.get(asset)
        assert served.status_code == 200, asset
        assert len(await served.get_data()) > 0


async def test_docs_page_keeps_the_strict_content_security_policy(client):
    """No inline script or style on /docs, so the site's CSP (scripts and styles from 'self' only) stands."""
    response = await client.get("/docs")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "style-src 'self';" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    page = await response.get_data(as_text=True)
    assert not re.search(r"<script(?![^>]*\bsrc=)", page), "inline script"
    assert "<style" not in page and " style=" not in page


async def test_docs_serve_only_swagger_ui_files(client):
    """The docs' file route serves Swagger UI's files, nothing else of the package or the disk."""
    for path in ["/docs/swagger-ui/index.html", "/docs/swagger-ui/../__init__.py", "/docs/swagger-ui/%2e%2e/LICENSE"]:
        assert (await client.get(path)).status_code == 404, path


# -- schemathesis --------------------------------------------------------------------------


def request_for(case, cookie: str | None) -> dict[str, Any]:
    """httpx arguments for a schemathesis case (it serializes the case; we send it in process)."""
    sent = case.as_transport_kwargs(base_url=BASE_URL)
    assert not sent.get("files"), "the API takes JSON only"
    request: dict[str, Any] = {
        "method": sent["method"],
        "url": sent["url"],
        "params": sent.get("params"),
        "headers": {name: str(value) for name, value in (sent.get("headers") or {}).items()},
    }
    if "json" in sent:
        request["content"] = json.dumps(sent["json"]).encode()
    elif sent.get("data") is not None:
        data = sent["data"]
        request["content"] = data if isinstance(data, bytes | str) else httpx.QueryParams(data).encode()
    cookies = dict(sent.get("cookies") or {})
    if cookie is not None:
        cookies["quart_app_auth"] = cookie
    if cookies:
        request["headers"]["Cookie"] = "; ".join(f"{name}={value}" for name, value in cookies.items())
    return request


@pytest.mark.parametrize("logged_in", [False, True], ids=["anonymous", "logged-in"])
@pytest.mark.parametrize("operation", OPERATIONS)
def test_schemathesis_finds_no_5xx_and_no_answer_off_the_document(make_app, operation, logged_in):
    """Generated requests (valid and invalid) to each operation: no 5xx; status, type and body as documented."""
    method, path = operation.split(" ")
    with asyncio.Runner() as runner:
        app = make_app()
        stack = AsyncExitStack()
        runner.run(stack.enter_async_context(app.test_app()))
        try:
            client = runner.run(
                stack.enter_async_context(httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL))
            )
            # Sessions are opened from another address, so the fuzzed logins' per-IP throttle never blocks them.
            owner = runner.run(
                stack.enter_async_context(
                    httpx.AsyncClient(
                        transport=httpx.ASGITransport(app=app, client=("192.0.2.10", 40000)), base_url=BASE_URL
                    )
                )
            )

            async def setup() -> dict[str, Any]:
                registered = await register_api(app.test_client(), "owner", password=PASSWORD)
                assert registered.status_code == 201
                return (await client.get("/openapi.json")).json()

            async def new_session() -> str:
                # A fresh session for every example: one may log out, revoke itself or change the password.
                response = await owner.post("/api/login", json={"username": "owner", "password": PASSWORD})
                assert response.status_code == 200, response.text
                return response.cookies["quart_app_auth"]

            schema = schemathesis.openapi.from_dict(runner.run(setup()))
            target = schema[path][method]

            def check(case) -> None:
                cookie = runner.run(new_session()) if logged_in else None
                client.cookies.clear()  # nothing carried over from an earlier example's Set-Cookie
                response = runner.run(client.request(**request_for(case, cookie)))
                case.validate_response(response, checks=CHECKS)

            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                EXAMPLES(given(case=target.as_strategy(generation_mode=mode))(check))()
        finally:
            runner.run(stack.aclose())
