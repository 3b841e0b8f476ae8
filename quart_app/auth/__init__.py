"""Identity: the app as a user of quart_login, with its policies plugged in through hooks and signals.

- the store: quart_login's SQLAlchemy store on ``auth_sessions`` (sessions.py);
- the audit trail: a row for every login and logout (quart_login's signals);
- CSRF: a new token for every new identity (the anonymous token is dropped at login and logout);
- answers: 401 JSON for API clients, else Flask-Login's flash and redirect to the login page.
"""

from __future__ import annotations

from typing import Any

from quart import Quart, flash, has_request_context, redirect, session, url_for

from quart_login import (
    AnonymousUserMixin,
    LoginManager,
    aal_required,
    current_aal,
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
from . import mfa
from .events import record
from .sessions import EXTENSION as STORE_EXTENSION
from .sessions import make_store

__all__ = [
    "AnonymousUser",
    "SECOND_FACTOR",
    "VERIFIED_EMAIL",
    "WAYS_OUT",
    "current_auth_session",
    "current_user",
    "exempt_from",
    "fresh_login_required",
    "init_app",
    "login_required",
    "login_user",
    "logout_user",
    "required_aal",
    "sensitive",
]


# The requirement QUART_APP_REQUIRE_VERIFIED_EMAIL adds (views that let a user meet it are exempt_from it).
VERIFIED_EMAIL = "verified_email"
EMAIL_NOT_VERIFIED = "Email address not verified."
# The requirement QUART_APP_MFA_REQUIRED adds: an account without a second factor is sent to /account/2fa.
SECOND_FACTOR = "second_factor"
SECOND_FACTOR_REQUIRED = "Second factor required."
# Every requirement: the views that let a user meet one (or leave) are exempt from them all, so
# that meeting one is never blocked by another (an unverified address while enrolling, say).
WAYS_OUT = (VERIFIED_EMAIL, SECOND_FACTOR)
STEP_UP_NEEDED = "Confirm it is you with your second factor to do this."


async def required_aal(user: Any) -> int:
    """The level a sensitive action needs of ``user``'s session: 2 with a second factor, else 1."""
    return 2 if await mfa.has_second_factor(user) else 1


def sensitive(view: Any) -> Any:
    """For the actions that change how an account is protected (password, address, factors, sessions).

    A factor presented within FRESH_LOGIN_WINDOW (``fresh_login_required``:
    else /reauthenticate, or 401 JSON) and, for an account with a second
    factor, a session that presented it (``aal_required``: AAL 2).
    """
    return fresh_login_required(aal_required(required_aal)(view))


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
        # Another factor is asked for by logging in again, with it (/reauthenticate).
        QUART_LOGIN_STEP_UP_VIEW=settings.REFRESH_VIEW,
        QUART_LOGIN_STEP_UP_MESSAGE=STEP_UP_NEEDED,
        QUART_LOGIN_STEP_UP_MESSAGE_CATEGORY="info",
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

    @manager.needs_step_up_handler
    async def _needs_step_up(aal: int | None = None, max_age: float | None = None) -> Any:
        if wants_json():
            raise HTTPError(401, STEP_UP_NEEDED)
        return await manager.redirect_to_step_up()

    if settings.REQUIRE_VERIFIED_EMAIL:

        @manager.requirement(VERIFIED_EMAIL)
        def _verified(user: Any) -> bool:
            return bool(getattr(user, "email_verified", False))

    if settings.MFA_REQUIRED:

        @manager.requirement(SECOND_FACTOR)
        async def _enrolled(user: Any) -> bool:
            # A session that presented a second factor needs no query: while MFA_REQUIRED is on,
            # the last factor cannot be removed from a live session (enrolment.disable refuses;
            # support's users reset-2fa revokes every session).
            return current_aal() >= 2 or await mfa.has_second_factor(user)

    @manager.requirement_failed_handler
    async def _requirement_failed(name: str) -> Any:
        # 403 JSON; a browser is shown the way to meet it.
        json = not has_request_context() or wants_json()
        if name == SECOND_FACTOR:
            if json:
                raise HTTPError(403, SECOND_FACTOR_REQUIRED)
            await flash("Set up two-factor authentication to continue.", "info")
            return redirect(url_for("mfa_pages.account_2fa"))
        if json:
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
