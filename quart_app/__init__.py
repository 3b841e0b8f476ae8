"""The async Quart port of the Flask-Login application: ``create_app`` builds everything."""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping
from typing import Any

from flask.templating import _default_template_ctx_processor as flask_default_context_processor
from hypercorn.middleware import ProxyFixMiddleware
from quart import Quart, Response, request

from . import auth
from .api import docs as api_docs
from .api.views import bp as api_bp
from .auth.throttle import Throttle
from .cli import register_cli
from .core import csrf
from .core.config import INSTANCE_PATH, Settings, load_settings
from .core.security import PasswordHasher
from .core.signing import CachedSessionInterface
from .db import Database
from .errors import register_error_handlers
from .live import bp as live_bp
from .pages.views import bp as pages_bp

__all__ = ["create_app"]

log = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def create_app(config: Mapping[str, Any] | None = None) -> Quart:
    """Build the app from ``QUART_APP_*`` settings, with ``config`` (unprefixed names) on top."""
    settings = load_settings(config)
    app = Quart(__name__, instance_path=str(INSTANCE_PATH))
    app.config.update(
        SECRET_KEY=settings.SECRET_KEY,
        SECRET_KEY_FALLBACKS=settings.secret_key_fallbacks,
        MAX_CONTENT_LENGTH=settings.MAX_CONTENT_LENGTH,
        TESTING=settings.ENV == "testing",
        # Quart's own session cookie carries the CSRF token and flash messages.
        SESSION_COOKIE_NAME="quart_app_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.COOKIE_SECURE,
    )
    app.session_interface = CachedSessionInterface()
    app.extensions["quart_app.settings"] = settings
    if settings.is_production and not settings.COOKIE_SECURE:
        log.warning("QUART_APP_COOKIE_SECURE is off: serve over HTTPS and turn it on in production")

    Database(app, settings)
    _init_hasher(app, settings)
    csrf.init_app(app)
    auth.init_app(app, settings)
    Throttle(settings).init_app(app)
    register_error_handlers(app)
    app.register_blueprint(pages_bp)
    app.register_blueprint(api_bp)
    api_docs.init_app(app)
    app.register_blueprint(live_bp)
    _drop_sync_blueprint_context_processors(app)
    app.after_request(_security_headers)
    register_cli(app)
    _freeze_startup_objects(app)
    if settings.PROXY_HOPS:
        app.asgi_app = ProxyFixMiddleware(app.asgi_app, mode="legacy", trusted_hops=settings.PROXY_HOPS)
    return app


def _freeze_startup_objects(app: Quart) -> None:
    # Registered last, so it runs once everything is built: what exists at
    # startup (modules, the app, its engine) lives as long as the worker, and
    # Python's full garbage collections would otherwise walk all of it again
    # and again, pausing the event loop for tens of milliseconds each time
    # (the tail of a protected page's latency). Frozen, those collections
    # only look at what serving created.
    @app.before_serving
    async def _freeze() -> None:
        gc.collect()
        gc.freeze()

    @app.after_serving
    async def _unfreeze() -> None:
        gc.unfreeze()


def _drop_sync_blueprint_context_processors(app: Quart) -> None:
    # Quart's blueprints inherit Flask's sync default context processor, which
    # Quart then runs on a thread for every render of a blueprint's page. The
    # app's own (async) default processor already provides the same names.
    for name, processors in app.template_context_processors.items():
        if name is not None:
            processors[:] = [p for p in processors if p is not flask_default_context_processor]


def _init_hasher(app: Quart, settings: Settings) -> None:
    hasher = PasswordHasher(
        time_cost=settings.ARGON2_TIME_COST,
        memory_cost=settings.ARGON2_MEMORY_COST,
        parallelism=settings.ARGON2_PARALLELISM,
        workers=settings.HASH_WORKERS,
        max_pending=settings.HASH_QUEUE_LIMIT,
    )
    app.extensions["quart_app.hasher"] = hasher

    @app.before_serving
    async def _start_hasher() -> None:
        hasher.start()

    @app.after_serving
    async def _stop_hasher() -> None:
        hasher.shutdown()


# Added to every response that does not set them itself.
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
)


async def _security_headers(response: Response) -> Response:
    headers = response.headers
    # One pass over what the response has (werkzeug's Headers.setdefault
    # raises and catches a KeyError for every header it adds).
    present = {name.lower() for name, _ in headers.items()}
    for name, value in SECURITY_HEADERS:
        if name.lower() not in present:
            headers.add(name, value)
    if "cache-control" not in present and request.endpoint != "static":
        # Pages and API answers depend on who is logged in: never from a
        # cache, so the back button after logout shows no account data.
        headers.add("Cache-Control", "no-store")
    return response
