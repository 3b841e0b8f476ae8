"""Flask-Login's API made async, on top of Quart-Auth's signed cookie.

The user is resolved once per request (and per websocket), before the view,
by awaiting the registered ``user_loader``; after that ``current_user`` is a
plain proxy that views and templates read without ``await``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlencode

from itsdangerous import BadSignature
from quart import (
    Quart,
    current_app,
    g,
    has_request_context,
    has_websocket_context,
    redirect,
    request,
    session,
    url_for,
)
from quart import flash as _flash
from quart_auth import Action, AuthUser, QuartAuth
from werkzeug.local import LocalProxy

from ..core.config import Settings
from ..core.signing import PlainPayload, SerializerCache
from ..db import commit_pending, get_db
from ..errors import HTTPError
from . import sessions
from .events import audit, event_row
from .events import send as send_event

P = ParamSpec("P")
T = TypeVar("T")
UserLoader = Callable[[str], Awaitable[Any]]

_EXTENSION = "quart_app.login_manager"


class AnonymousUser:
    """The user of a request without a valid session: every attribute is safe to read."""

    is_authenticated = False
    is_active = False
    is_anonymous = True
    id = None
    username = ""
    email = ""

    def get_id(self) -> None:
        return None

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<AnonymousUser>"


ANONYMOUS = AnonymousUser()
# Verified auth cookies remembered per worker process (see _CookieAuth.load_token).
VERIFIED_COOKIES = 4096


class _AuthCookieSerializer(PlainPayload, QuartAuth.serializer_class):
    """Quart-Auth's own serializer (SHA-512 signatures), without payload compression."""


class _CookieAuth(QuartAuth):
    """Quart-Auth with its serializer cached, and templates given our resolved ``current_user``."""

    serializer_class = _AuthCookieSerializer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._serializers = SerializerCache(lambda keys: self.serializer_class(keys, self.salt))
        # Cookies whose signature checked out: token -> (auth id, signing time, serializer).
        self._verified: dict[str, tuple[str, float, Any]] = {}
        super().__init__(*args, **kwargs)

    def dump_token(self, auth_id: str, app: Quart | None = None) -> str:
        return self._serializers.get(app or current_app).dumps(auth_id)

    def load_token(self, token: str, app: Quart | None = None) -> str | None:
        # A browser sends the same cookie with every page, and checking its
        # HMAC each time is a measurable share of a protected request: a
        # cookie that verified is remembered (per worker, at most
        # VERIFIED_COOKIES of them) with its signing time, so that its max age
        # still applies, and against the serializer of the keys that verified
        # it, so that a change of keys forgets it. Revocation is unaffected:
        # the session row is read on every request.
        serializer = self._serializers.get(app or current_app)
        known = self._verified.get(token)
        if known is not None and known[2] is serializer and time.time() - known[1] <= self.duration:
            return known[0]
        try:
            auth_id, signed_at = serializer.loads(token, max_age=self.duration, return_timestamp=True)
        except BadSignature:  # SignatureExpired is one
            return None
        if len(self._verified) >= VERIFIED_COOKIES:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified[token] = (auth_id, signed_at.timestamp(), serializer)
        return auth_id

    async def _template_context(self) -> dict[str, Any]:
        # async: Quart runs a sync context processor on a thread, on every render.
        return {"current_user": current_user._get_current_object()}


class LoginManager:
    """Flask-Login's LoginManager: ``init_app``, ``user_loader``, ``login_view``, ``login_message``."""

    def __init__(self) -> None:
        self._user_loader: UserLoader | None = None
        self.login_view = "pages.login"
        self.login_message = "Please log in first."
        self.refresh_view = "pages.reauthenticate"
        self.needs_refresh_message = "Please reauthenticate to access this page."
        self._cookie: _CookieAuth | None = None
        self._settings: Settings | None = None

    def init_app(self, app: Quart, settings: Settings) -> None:
        self._settings = settings
        self.login_view = settings.LOGIN_VIEW
        self.login_message = settings.LOGIN_MESSAGE
        self.refresh_view = settings.REFRESH_VIEW
        self.needs_refresh_message = settings.NEEDS_REFRESH_MESSAGE
        self._cookie = _CookieAuth(
            app,
            cookie_name="quart_app_auth",
            cookie_secure=settings.COOKIE_SECURE,
            cookie_samesite="Lax",
            cookie_http_only=True,
            # The signature's max age; the server-side row decides the real
            # lifetime of each session.
            duration=settings.REMEMBER_COOKIE_DURATION,
            salt="quart_app.auth",
        )
        app.extensions[_EXTENSION] = self
        app.before_request(self._load_request_user)
        app.before_websocket(self._load_websocket_user)

    def user_loader(self, loader: UserLoader) -> UserLoader:
        """Register ``async def loader(session_token) -> user | None`` (decorator)."""
        self._user_loader = loader
        return loader

    # -- per-request resolution ---------------------------------------------

    def session_token(self) -> str | None:
        """The (signature-checked) session secret carried by this request's cookie, if any."""
        assert self._cookie is not None
        return self._cookie.load_user().auth_id

    async def _resolve(self) -> Any:
        assert self._cookie is not None
        token = self.session_token()
        user = None
        if token is not None:
            if self._user_loader is None:
                raise RuntimeError("no user_loader registered on the LoginManager")
            user = await self._user_loader(token)
        if user is None:
            if has_request_context() and self._cookie.cookie_name in request.cookies:
                # Tampered, revoked, expired or deactivated: ask the browser to drop it.
                self._cookie.logout_user()
            return ANONYMOUS
        g._session_secret = token
        return user

    async def _load_request_user(self) -> None:
        if request.endpoint == "static":
            return
        g._login_user = await self._resolve()

    async def _load_websocket_user(self) -> None:
        g._login_user = await self._resolve()

    # -- login_required's answer -------------------------------------------

    async def needs_refresh(self):
        """What ``fresh_login_required`` gives a stale session: 401 JSON, or the re-auth page."""
        if wants_json():
            raise HTTPError(401, self.needs_refresh_message)
        await _flash(self.needs_refresh_message, "info")
        return self._redirect_to(self.refresh_view)

    async def unauthorized(self):
        """What ``login_required`` gives an anonymous client: 401 JSON, or the login page."""
        if wants_json():
            raise HTTPError(401, "Authentication required.")
        await _flash(self.login_message, "info")
        return self._redirect_to(self.login_view)

    def _redirect_to(self, view: str):
        target = request.path
        if request.query_string:
            target += "?" + request.query_string.decode("latin-1")
        return redirect(url_for(view) + "?" + urlencode({"next": target}))


def _manager() -> LoginManager:
    return current_app.extensions[_EXTENSION]


def _get_user() -> Any:
    if has_request_context() or has_websocket_context():
        return g.get("_login_user", ANONYMOUS)
    return ANONYMOUS


current_user: Any = LocalProxy(_get_user)


def wants_json() -> bool:
    """True for API calls and for clients that prefer JSON over HTML (Flask-Login's AJAX case)."""
    # The path, not the blueprint: a 404 or 405 under /api/ has no blueprint.
    if request.path == "/api" or request.path.startswith("/api/"):
        return True
    if request.headers.get("X-Requested-With", "").lower() == "xmlhttprequest":
        return True
    accept = request.accept_mimetypes
    return accept.best_match(["text/html", "application/json"]) == "application/json" and (
        accept["application/json"] > accept["text/html"]
    )


def login_required(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Let the view run only for a logged-in user; others get 401 JSON or the login page."""

    @wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        if not current_user.is_authenticated:
            return await _manager().unauthorized()  # type: ignore[return-value]
        return await current_app.ensure_async(func)(*args, **kwargs)

    return wrapper


async def login_user(user: Any, remember: bool = False) -> None:
    """Start a server-side session for ``user`` and set its cookie on this response."""
    manager = _manager()
    assert manager._cookie is not None and manager._settings is not None
    # Whatever this request changed before (a registration, a new password)
    # lands first; the login itself is then one unit of work.
    await commit_pending()
    event = event_row("login", user, detail="remember" if remember else None)
    token = await sessions.start(
        user,
        remember=remember,
        ip=request.remote_addr,
        user_agent=request.headers.get("User-Agent"),
        settings=manager._settings,
        # Logging in again (or as someone else) replaces this browser's session.
        replaces=manager.session_token(),
        event=event,
    )
    send_event(event, user)
    action = Action.WRITE_PERMANENT if remember else Action.WRITE
    manager._cookie.login_user(AuthUser(token, action))
    g._login_user = user
    g._session_secret = token
    # A new identity gets a new CSRF token (no token fixation across logins).
    session.pop("_csrf", None)


async def logout_user() -> None:
    """End this request's session on the server (the cookie is dead from now on) and clear it."""
    manager = _manager()
    assert manager._cookie is not None
    token = manager.session_token()
    if token is not None:
        await sessions.revoke(token)
    if current_user.is_authenticated:
        audit("logout", current_user._get_current_object())
    await get_db().commit()
    manager._cookie.logout_user()
    g._login_user = ANONYMOUS
    g._auth_session = None
    g._session_secret = None
    session.pop("_csrf", None)


def is_fresh() -> bool:
    """True when this request's session began (with a password) within FRESH_LOGIN_WINDOW."""
    current = sessions.current_session()
    settings = _manager()._settings
    assert settings is not None
    if current is None:
        return False
    age = (sessions.utcnow() - current.created_at).total_seconds()
    return age <= settings.FRESH_LOGIN_WINDOW


def fresh_login_required(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Like ``login_required``, and the password must have been entered recently (Flask-Login's name)."""

    @wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        manager = _manager()
        if not current_user.is_authenticated:
            return await manager.unauthorized()  # type: ignore[return-value]
        if not is_fresh():
            return await manager.needs_refresh()  # type: ignore[return-value]
        return await current_app.ensure_async(func)(*args, **kwargs)

    return wrapper


def session_secret() -> str | None:
    """The secret of this request's (or websocket's) live session, if it has one."""
    if has_request_context() or has_websocket_context():
        return g.get("_session_secret")
    return None
