"""The JSON API's OpenAPI document (/openapi.json, by Quart-Schema) and its Swagger UI (/docs), served offline.

Quart-Schema's own doc pages load Swagger UI from a CDN and start it with an
inline script; both break under this app's Content-Security-Policy and
without a network. So its pages are turned off, and /docs is a template of
ours: Swagger UI's files come from the flask-swagger-ui package (a copy of
the upstream ``dist`` folder, used here only for its files) and are served
by this app, and the start-up code is a static file.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import flask_swagger_ui
from quart import Blueprint, Quart, render_template, send_from_directory
from quart_schema import APIKeySecurityScheme, Info, OpenAPIProvider, QuartSchema, snake_to_camel
from werkzeug.routing import IntegerConverter, Rule

from ..exceptions import HTTPError
from .schemas import COOKIE_AUTH

OPENAPI_PATH = "/openapi.json"
# The JSON API contract's version: bump it when a change breaks clients.
API_VERSION = "1.0"
SWAGGER_UI_DIST = Path(flask_swagger_ui.__file__).with_name("dist")
# Only these of the package's files are served.
SWAGGER_UI_FILES = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"})

DESCRIPTIONS = {
    204: "Done; no body.",
    400: "Invalid input: malformed JSON, a body that is not an object, or invalid fields (each named in `fields`).",
    401: "Not logged in; at login, wrong credentials (`Incorrect username or password.`, user or not).",
    403: "A cross-site request (foreign `Origin`, or `Sec-Fetch-Site: cross-site`): refused, nothing changed.",
    404: "Not found (for a session: not one of this user's).",
    409: "`Username already taken.` or `Email already registered.`",
    413: "The body is over the size limit (`QUART_APP_MAX_CONTENT_LENGTH`).",
    415: "The body is not `application/json`.",
    429: "Too many failed logins: try again after `Retry-After` seconds.",
    503: "Busy (password hashing saturated, or the database unavailable): retry after `Retry-After` seconds.",
}
# What each error says, most often (the document's example of each).
EXAMPLES = {
    400: {"error": "Please correct the highlighted fields.", "fields": {"password": "This field is required."}},
    401: {"error": "Authentication required."},
    403: {"error": "Cross-site requests are not allowed."},
    404: {"error": "No such session."},
    409: {"error": "Username already taken."},
    413: {"error": "Request body too large."},
    415: {"error": "Content-Type must be application/json."},
    429: {"error": "Too many failed login attempts. Try again in 60 seconds."},
    503: {"error": "The server is busy checking passwords; try again shortly."},
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer", "minimum": 0}}}

bp = Blueprint("api_docs", __name__)


@dataclass
class CookieSecurityScheme(APIKeySecurityScheme):
    """Quart-Schema's API key scheme, with the description its dataclass leaves out."""

    description: str | None = None


class ApiDocumentation(OpenAPIProvider):
    """Quart-Schema's generator, limited to /api/ and completed where it leaves gaps."""

    def generate_rules(self) -> Iterator[Rule]:
        for rule in super().generate_rules():
            if rule.rule.startswith("/api/"):
                yield rule

    def build_path_parameter(self, name: str, converter: Any) -> dict[str, Any]:
        parameter = super().build_path_parameter(name, converter)
        if isinstance(converter, IntegerConverter):
            # The bounds the route really accepts (anything else is a 404 from the router).
            for key, bound in (("minimum", converter.min), ("maximum", converter.max)):
                if bound is not None:
                    parameter["schema"][key] = bound
        return parameter

    def build_request_body(self, model: Any, source: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        request_body, components = _by_reference(*super().build_request_body(model, source))
        request_body["required"] = True  # no body is a 415, not an empty object
        return request_body, components

    def build_response_object(self, model: Any, headers_model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        if model is None:  # a 204
            return {"description": DESCRIPTIONS[204]}, {}
        response, components = _by_reference(*super().build_response_object(model, headers_model))
        if get_origin(model) is list:  # not list's own docstring
            response["description"] = "A list, each item: " + inspect.getdoc(get_args(model)[0])
        return response, components

    def build_paths(self, rule: Rule) -> tuple[dict, dict]:
        paths, components = super().build_paths(rule)
        for operations in paths.values():
            for operation in operations.values():
                if not operation.get("description"):
                    operation.pop("description", None)
                responses = operation["responses"]
                for status, response in responses.items():
                    if status >= 400:
                        response["description"] = DESCRIPTIONS[status]
                        response["content"]["application/json"]["example"] = EXAMPLES[status]
                    if status in {429, 503}:
                        response["headers"] = RETRY_AFTER
                operation["responses"] = dict(sorted(responses.items()))
        return paths, components

    def operation_id(self, method: str, path: str, func: Any) -> str:
        # The view's name (one method each): registerUser-style names for client generators.
        return snake_to_camel(func.__name__)


def _by_reference(owner: dict[str, Any], components: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Move a model's schema into components and point at it, so the document names each model once."""
    for media in owner["content"].values():
        schema = media["schema"]
        if schema.get("type") == "object" and "title" in schema:
            components = {**components, schema["title"]: schema}
            media["schema"] = {"$ref": f"#/components/schemas/{schema['title']}"}
    return owner, components


def init_app(app: Quart) -> None:
    """Serve /openapi.json for the JSON API, and Swagger UI at /docs."""
    QuartSchema(
        app,
        openapi_path=OPENAPI_PATH,
        # Their pages load from a CDN with inline scripts: ours is below.
        swagger_ui_path=None,
        redoc_ui_path=None,
        scalar_ui_path=None,
        info=Info(
            title="Quart Login JSON API",
            version=API_VERSION,
            description=(
                "Registration, login and sessions as JSON. Bodies are `application/json`; errors are "
                '`{"error": message}`, with `fields` for invalid input. Log in (or register) to get the '
                "`quart_app_auth` cookie, which every route marked with the lock needs."
            ),
        ),
        security_schemes={
            COOKIE_AUTH: CookieSecurityScheme(
                name="quart_app_auth",
                in_="cookie",
                description=(
                    "HttpOnly, SameSite=Lax cookie set by POST /api/login and POST /api/register; "
                    "it names a server-side session, so logout and a password change revoke it."
                ),
            )
        },
        openapi_provider_class=ApiDocumentation,
    )
    app.register_blueprint(bp)


@bp.get("/docs")
async def swagger_ui():
    """Swagger UI on /openapi.json, every file from this server."""
    return await render_template("api_docs.html", openapi_path=OPENAPI_PATH)


@bp.get("/docs/swagger-ui/<path:filename>")
async def swagger_ui_file(filename: str):
    """Swagger UI's own files, from the installed package."""
    if filename not in SWAGGER_UI_FILES:
        raise HTTPError(404, "Not found.")
    return await send_from_directory(SWAGGER_UI_DIST, filename)
