"""Identity: the app as a user of quart_login, with its policies plugged in through hooks and signals.

- the store: quart_login's SQLAlchemy store on ``auth_sessions`` (sessions.py);
- the audit trail: a row for every login and logout (quart_login's signals);
- CSRF: a new token for every new identity (the anonymous token is dropped at login and logout);
- answers: 401 JSON for API clients, else Flask-Login's flash and redirect to the login page.
"""

from __future__ import annotations

from typing import Any

from quart import Quart, has_request_context, session

from quart_login import (
    AnonymousUserMixin,
    LoginManager,
    current_auth_session,
    current_user,
    exempt_from,
    fresh_login_required,
    login_required,
    login_user,
    logout_user,
    user_logged_in,
    user_logged_out,
)

from .. import speedups
from ..core.config import Settings
from ..core.csrf import SESSION_KEY as CSRF_SESSION_KEY
from ..db import Database
from ..errors import wants_json
from ..exceptions import HTTPError
from ..rendering import render
from .events import record
from .sessions import EXTENSION as STORE_EXTENSION
from .sessions import make_store

__all__ = [
    "AnonymousUser",
    "current_auth_session",
    "current_user",
    "exempt_from",
    "fresh_login_required",
    "init_app",
    "login_required",
    "login_user",
    "logout_user",
]


# The requirement QUART_APP_REQUIRE_VERIFIED_EMAIL adds (views that let a user meet it are exempt_from it).
VERIFIED_EMAIL = "verified_email"
EMAIL_NOT_VERIFIED = "Email address not verified."


class AnonymousUser(AnonymousUserMixin):
    """The user of a request without a valid session: every attribute a page reads is safe."""

    id = None
    username = ""
    email = ""
    email_verified = False

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<AnonymousUser>"


def init_app(app: Quart, settings: Settings, database: Database) -> LoginManager:
    """Install quart_login on ``app`` with the app's store, settings and policies."""
    app.config.update(
        QUART_LOGIN_COOKIE_NAME="quart_app_auth",
        QUART_LOGIN_COOKIE_SECURE=settings.COOKIE_SECURE,
        QUART_LOGIN_COOKIE_SAMESITE="Lax",
        QUART_LOGIN_SALT="quart_app.auth",
        QUART_LOGIN_REMEMBER_DURATION=settings.REMEMBER_COOKIE_DURATION,
        QUART_LOGIN_SESSION_IDLE_TIMEOUT=settings.SESSION_IDLE_TIMEOUT,
        QUART_LOGIN_SESSION_ABSOLUTE_TIMEOUT=settings.SESSION_ABSOLUTE_TIMEOUT,
        QUART_LOGIN_SESSION_TOUCH_INTERVAL=settings.SESSION_TOUCH_INTERVAL,
        QUART_LOGIN_FRESH_LOGIN_WINDOW=settings.FRESH_LOGIN_WINDOW,
        QUART_LOGIN_LOGIN_VIEW=settings.LOGIN_VIEW,
        QUART_LOGIN_LOGIN_MESSAGE=settings.LOGIN_MESSAGE,
        QUART_LOGIN_LOGIN_MESSAGE_CATEGORY="info",
        QUART_LOGIN_REFRESH_VIEW=settings.REFRESH_VIEW,
        QUART_LOGIN_NEEDS_REFRESH_MESSAGE=settings.NEEDS_REFRESH_MESSAGE,
        QUART_LOGIN_NEEDS_REFRESH_MESSAGE_CATEGORY="info",
    )
    store = make_store(database)
    app.extensions[STORE_EXTENSION] = store
    manager = LoginManager(store=store)
    manager.anonymous_user = AnonymousUser
    speedups.prepare_login_manager(manager, settings)
    manager.init_app(app)

    @manager.unauthorized_handler
    async def _unauthorized() -> Any:
        if wants_json():
            raise HTTPError(401, "Authentication required.")
        return await manager.redirect_to_login()

    @manager.needs_refresh_handler
    async def _needs_refresh() -> Any:
        if wants_json():
            raise HTTPError(401, settings.NEEDS_REFRESH_MESSAGE)
        return await manager.redirect_to_refresh()

    if settings.REQUIRE_VERIFIED_EMAIL:

        @manager.requirement(VERIFIED_EMAIL)
        def _verified(user: Any) -> bool:
            return bool(getattr(user, "email_verified", False))

        @manager.requirement_failed_handler
        async def _requirement_failed(name: str) -> Any:
            # Answered like a missing login: 403 JSON, or a page that says so (with a resend button).
            if not has_request_context() or wants_json():
                raise HTTPError(403, EMAIL_NOT_VERIFIED)
            return await render("email_unverified.html", message=EMAIL_NOT_VERIFIED), 403

    user_logged_in.connect(_on_login, sender=app)
    user_logged_out.connect(_on_logout, sender=app)
    return manager


async def _on_login(app: Quart, *, user: Any, auth_session: Any, **_: Any) -> None:
    # A new identity gets a new CSRF token (no token fixation across logins).
    session.pop(CSRF_SESSION_KEY, None)
    await record("login", user, detail="remember" if auth_session.remember else None)


async def _on_logout(app: Quart, *, user: Any, **_: Any) -> None:
    session.pop(CSRF_SESSION_KEY, None)
    await record("logout", user)
