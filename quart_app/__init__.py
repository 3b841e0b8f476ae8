"""The async Quart port of the Flask-Login application: ``create_app`` builds everything."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from hypercorn.middleware import ProxyFixMiddleware
from quart import Quart

from . import auth, mail, serving, speedups
from .api import docs as api_docs
from .api.mfa import bp as mfa_api_bp
from .api.passkeys import bp as passkeys_api_bp
from .api.views import bp as api_bp
from .auth import passwords
from .auth.passkeys import enabled as passkeys_enabled
from .auth.throttle import Throttle
from .cli import register_cli
from .core import csrf, headers, security
from .core.config import EXTENSION as SETTINGS_EXTENSION
from .core.config import INSTANCE_PATH, load_settings
from .db import Database
from .errors import register_error_handlers
from .live import bp as live_bp
from .mail import mail_enabled
from .mail.cli import register_mail_cli
from .pages.mfa import bp as mfa_pages_bp
from .pages.views import bp as pages_bp
from .session_events import SessionEvents

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(config: Mapping[str, Any] | None = None) -> Quart:
    """Build the app from ``QUART_APP_*`` settings, with ``config`` (unprefixed names) on top.

    Every component is set up here, in order, with ``init_app``; each is
    reached afterwards through its typed getter (``get_settings``,
    ``get_database``/``get_db``, ``get_hasher``, ``get_store``, ``get_throttle``).
    """
    settings = load_settings(config)
    speedups.parse(settings.SPEEDUPS)  # an unknown name stops the start
    app = Quart(__name__, instance_path=str(INSTANCE_PATH))
    app.config.update(
        SECRET_KEY=settings.SECRET_KEY,
        SECRET_KEY_FALLBACKS=settings.secret_key_fallbacks,
        MAX_CONTENT_LENGTH=settings.MAX_CONTENT_LENGTH,
        TESTING=settings.ENV == "testing",
        # Quart's own session cookie carries the anonymous CSRF token and flash messages.
        SESSION_COOKIE_NAME="quart_app_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.COOKIE_SECURE,
    )
    app.extensions[SETTINGS_EXTENSION] = settings
    if settings.is_production and not settings.COOKIE_SECURE:
        log.warning("QUART_APP_COOKIE_SECURE is off: serve over HTTPS and turn it on in production")

    database = Database(settings)
    database.init_app(app)
    mail.init_app(app, settings, database)
    passwords.init_app(app)
    security.init_app(app, settings)
    csrf.init_app(app)
    login_manager = auth.init_app(app, settings, database)
    Throttle(settings).init_app(app)
    register_error_handlers(app)
    app.jinja_env.globals["mail_enabled"] = mail_enabled
    app.jinja_env.globals["passkeys_enabled"] = passkeys_enabled
    app.register_blueprint(pages_bp)
    app.register_blueprint(mfa_pages_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(mfa_api_bp)
    app.register_blueprint(passkeys_api_bp)
    api_docs.init_app(app)
    SessionEvents(settings).init_app(app, login_manager.store)
    app.register_blueprint(live_bp)
    headers.init_app(app)
    register_cli(app)
    register_mail_cli(app)
    serving.install(app)
    speedups.install(app, settings, database=database, store=login_manager.store)
    if settings.PROXY_HOPS:
        app.asgi_app = ProxyFixMiddleware(app.asgi_app, mode="legacy", trusted_hops=settings.PROXY_HOPS)
    return app
