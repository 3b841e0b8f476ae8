"""``LoginManager``: Flask-Login's object and callbacks, with sessions kept by a store.

The user is resolved once per request (and per websocket), before the view:
the cookie's secret is looked up in the store, which yields the session and,
for the SQLAlchemy store, the app's own user in the same query. After that,
``current_user`` is a plain proxy that views and templates read without
``await``. What the extension keeps per request is one ``LoginState`` on ``g``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from quart import (
    Quart,
    Response,
    current_app,
    flash,
    g,
    has_request_context,
    json,
    redirect,
    request,
    url_for,
)
from werkzeug.exceptions import Forbidden, Unauthorized

from . import signals
from .config import Lifetimes, lifetimes, read_config
from .cookie import AuthCookie
from .mixins import AnonymousUserMixin
from .store import AuthSession, AuthSessionStore

EXTENSION = "quart_login"
_STATE = "_quart_login"

Callback = Callable[..., Any]


@dataclass
class LoginState:
    """What the extension knows of this request: its user, and its session (record and secret) if any."""

    user: Any
    auth_session: AuthSession | None = None
    token: str | None = None


@dataclass
class AppLogin:
    """The manager's settings and parts for one app (``app.extensions["quart_login"]``)."""

    manager: LoginManager
    config: dict[str, Any]
    lifetimes: Lifetimes
    cookie: AuthCookie
    store: AuthSessionStore
    extra: dict[str, Any] = field(default_factory=dict)

    def setting(self, name: str) -> Any:
        # A manager attribute set in code wins, as in Flask-Login.
        value = getattr(self.manager, name.lower(), None)
        return self.config[name] if value is None else value


async def _call(callback: Callback, *args: Any) -> Any:
    result = callback(*args)
    return await result if inspect.isawaitable(result) else result


class LoginManager:
    """Holds the callbacks; ``init_app`` attaches it to an app (one manager may serve many apps)."""

    #: The cookie's class: Quart-Auth's, configured from ``QUART_LOGIN_*``.
    cookie_class: type[AuthCookie] = AuthCookie

    def __init__(self, app: Quart | None = None, *, store: AuthSessionStore | None = None) -> None:
        self.store = store
        #: The class (or factory) of ``current_user`` without a session; a new one per request.
        self.anonymous_user: Callable[[], Any] = AnonymousUserMixin
        # Flask-Login's attributes; None defers to QUART_LOGIN_* (config.py).
        self.login_view: str | None = None
        self.login_message: str | None = None
        self.login_message_category: str | None = None
        self.refresh_view: str | None = None
        self.needs_refresh_message: str | None = None
        self.needs_refresh_message_category: str | None = None
        self.step_up_view: str | None = None
        self.step_up_message: str | None = None
        self.step_up_message_category: str | None = None
        #: Blueprint name -> login view, for blueprints with their own login page.
        self.blueprint_login_views: dict[str, str] = {}
        self._user_callback: Callback | None = None
        self._request_callback: Callback | None = None
        self._unauthorized_callback: Callback | None = None
        self._needs_refresh_callback: Callback | None = None
        self._needs_step_up_callback: Callback | None = None
        self._requirements: dict[str, Callback] = {}
        self._requirement_failed_callback: Callback | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart, *, store: AuthSessionStore | None = None) -> None:
        """Attach to ``app``: its ``QUART_LOGIN_*`` settings, the cookie, and the per-request loader."""
        store = store or self.store
        if store is None:
            raise RuntimeError(
                "LoginManager needs a session store: LoginManager(store=...) or init_app(app, store=...)"
            )
        config = read_config(app.config)
        session_lifetimes = lifetimes(config)
        cookie = self.cookie_class(
            app,
            attribute_name="_quart_login_cookie",
            cookie_name=config["COOKIE_NAME"],
            cookie_domain=config["COOKIE_DOMAIN"],
            cookie_path=config["COOKIE_PATH"],
            cookie_secure=config["COOKIE_SECURE"],
            cookie_samesite=config["COOKIE_SAMESITE"],
            cookie_http_only=config["COOKIE_HTTPONLY"],
            # The signature's max age: the longest a session may live. The
            # store decides each session's real lifetime.
            duration=int(max(session_lifetimes.remember, session_lifetimes.absolute)),
            salt=config["SALT"],
        )
        app.extensions[EXTENSION] = AppLogin(self, config, session_lifetimes, cookie, store)
        app.before_request(self._load_request_user)
        app.before_websocket(self._load_websocket_user)

    # -- callbacks (decorators, as in Flask-Login) -------------------------------

    def user_loader(self, callback: Callback) -> Callback:
        """``(user_id: str) -> user | None``, sync or async: replaces the store's joined user when set."""
        self._user_callback = callback
        return callback

    def request_loader(self, callback: Callback) -> Callback:
        """``(request) -> user | None``: for requests without a session (an API key header, say)."""
        self._request_callback = callback
        return callback

    def unauthorized_handler(self, callback: Callback) -> Callback:
        """What ``login_required`` returns to an anonymous client instead of the default."""
        self._unauthorized_callback = callback
        return callback

    def needs_refresh_handler(self, callback: Callback) -> Callback:
        """What ``fresh_login_required`` returns to a stale session instead of the default."""
        self._needs_refresh_callback = callback
        return callback

    def needs_step_up_handler(self, callback: Callback) -> Callback:
        """``(aal, max_age) -> response``, sync or async: what ``aal_required`` and ``factor_within`` return.

        Called with keyword arguments: ``aal`` (the level asked, or None) and
        ``max_age`` (the seconds within which a factor is asked, or None).
        """
        self._needs_step_up_callback = callback
        return callback

    def requirement(self, name: str) -> Callable[[Callback], Callback]:
        """Register a check that ``login_required`` makes of every logged-in user: ``(user) -> bool``, sync or async.

        A user who fails it is answered ``requirement_failed(name)`` instead of
        the view (a verified address, a second factor, accepted terms...);
        views decorated with ``@exempt_from(name)`` skip it (the page that
        lets the user meet it, logging out). Checks run in the order registered.
        """

        def register(check: Callback) -> Callback:
            self._requirements[name] = check
            return check

        return register

    def requirement_failed_handler(self, callback: Callback) -> Callback:
        """``(name) -> response``: the answer to a logged-in user who fails the requirement ``name``."""
        self._requirement_failed_callback = callback
        return callback

    @property
    def has_requirements(self) -> bool:
        return bool(self._requirements)

    async def unmet_requirement(self, user: Any, exempt: frozenset[str] = frozenset()) -> str | None:
        """The name of the first requirement ``user`` fails (those in ``exempt`` skipped), or None."""
        for name, check in self._requirements.items():
            if name not in exempt and not await _call(check, user):
                return name
        return None

    async def requirement_failed(self, name: str) -> Any:
        """The handler's answer to a user who fails ``name``; without one, 403."""
        if self._requirement_failed_callback is not None:
            return await _call(self._requirement_failed_callback, name)
        raise Forbidden()

    # -- per-request resolution --------------------------------------------------

    async def _resolve(self) -> LoginState:
        login = current_app.extensions[EXTENSION]
        token = login.cookie.load_user().auth_id
        state = None
        if token is not None:
            found = await login.store.resolve(token, login.lifetimes)
            if found is not None:
                user = found.user
                if self._user_callback is None and user is None:
                    raise RuntimeError("the session store gives no user: register a user_loader on the LoginManager")
                if self._user_callback is not None:
                    user = await _call(self._user_callback, str(found.auth_session.user_id))
                if user is not None:
                    state = LoginState(user, found.auth_session, token)
        if state is None and has_request_context() and login.cookie.cookie_name in request.cookies:
            # Tampered, revoked, expired or deactivated: the browser drops it.
            login.cookie.logout_user()
        if state is None and self._request_callback is not None and has_request_context():
            user = await _call(self._request_callback, request._get_current_object())
            if user is not None:
                state = LoginState(user)
                await signals.send(signals.user_loaded_from_request, user=user)
        if state is None:
            return LoginState(self.anonymous_user())
        await signals.send(signals.user_accessed, user=state.user)
        return state

    async def _load_request_user(self) -> None:
        if request.endpoint != "static":
            setattr(g, _STATE, await self._resolve())

    async def _load_websocket_user(self) -> None:
        setattr(g, _STATE, await self._resolve())

    # -- answers to anonymous and stale clients -------------------------------------

    async def unauthorized(self) -> Any:
        """``login_required``'s answer: the handler's, else 401 (no login view, or a JSON client), else a redirect."""
        await signals.send(signals.user_unauthorized)
        if self._unauthorized_callback is not None:
            return await _call(self._unauthorized_callback)
        if not has_request_context():  # a websocket: no flash, no redirect, the handshake is refused
            raise Unauthorized()
        if self._login_view() is None or wants_json():
            raise _unauthorized("Authentication required.")
        return await self.redirect_to_login()

    async def needs_refresh(self) -> Any:
        """``fresh_login_required``'s answer to a stale session: the handler's, else 401, else a redirect."""
        await signals.send(signals.user_needs_refresh)
        if self._needs_refresh_callback is not None:
            return await _call(self._needs_refresh_callback)
        if not has_request_context():  # a websocket: no flash, no redirect, the handshake is refused
            raise Unauthorized()
        login = current_app.extensions[EXTENSION]
        if login.setting("REFRESH_VIEW") is None or wants_json():
            raise _unauthorized(login.setting("NEEDS_REFRESH_MESSAGE") or "Authentication required.")
        return await self.redirect_to_refresh()

    async def needs_step_up(self, *, aal: int | None = None, max_age: float | None = None) -> Any:
        """The answer to a session below level ``aal``, or without a factor within ``max_age`` seconds.

        The handler's (``needs_step_up_handler``), else 401 (no STEP_UP_VIEW, or
        a JSON client: ``{"error": STEP_UP_MESSAGE}``), else a flash and a
        redirect to STEP_UP_VIEW with ``next``. Sends ``user_needs_step_up``.
        """
        await signals.send(signals.user_needs_step_up, aal=aal, max_age=max_age)
        if self._needs_step_up_callback is not None:
            result = self._needs_step_up_callback(aal=aal, max_age=max_age)
            return await result if inspect.isawaitable(result) else result
        if not has_request_context():  # a websocket: no flash, no redirect, the handshake is refused
            raise Unauthorized()
        login = current_app.extensions[EXTENSION]
        if login.setting("STEP_UP_VIEW") is None or wants_json():
            raise _unauthorized(login.setting("STEP_UP_MESSAGE") or "Authentication required.")
        return await self.redirect_to_step_up()

    async def redirect_to_login(self) -> Any:
        """The default browser answer of ``unauthorized``: flash LOGIN_MESSAGE, redirect to LOGIN_VIEW?next=."""
        login = current_app.extensions[EXTENSION]
        view = self._login_view()
        if view is None:
            raise Unauthorized()
        return await self._redirect_with_message(
            view, login.setting("LOGIN_MESSAGE"), login.setting("LOGIN_MESSAGE_CATEGORY")
        )

    async def redirect_to_refresh(self) -> Any:
        """The default browser answer of ``needs_refresh``."""
        login = current_app.extensions[EXTENSION]
        view = login.setting("REFRESH_VIEW")
        if view is None:
            raise Unauthorized()
        return await self._redirect_with_message(
            view, login.setting("NEEDS_REFRESH_MESSAGE"), login.setting("NEEDS_REFRESH_MESSAGE_CATEGORY")
        )

    async def redirect_to_step_up(self) -> Any:
        """The default browser answer of ``needs_step_up``: flash STEP_UP_MESSAGE, redirect to STEP_UP_VIEW?next=."""
        login = current_app.extensions[EXTENSION]
        view = login.setting("STEP_UP_VIEW")
        if view is None:
            raise Unauthorized()
        return await self._redirect_with_message(
            view, login.setting("STEP_UP_MESSAGE"), login.setting("STEP_UP_MESSAGE_CATEGORY")
        )

    def _login_view(self) -> str | None:
        login = current_app.extensions[EXTENSION]
        return self.blueprint_login_views.get(request.blueprint or "") or login.setting("LOGIN_VIEW")

    async def _redirect_with_message(self, view: str, message: str | None, category: str) -> Any:
        if message:
            await flash(message, category)
        return redirect(login_url(view, next_url=next_path()))


def _unauthorized(message: str) -> Unauthorized:
    # A JSON client gets a JSON body; the app's handlers for HTTPException still see a 401.
    if wants_json():
        body = json.dumps({"error": message})
        return Unauthorized(response=Response(body, 401, content_type="application/json"))
    return Unauthorized()


def next_path() -> str | None:
    """Where to come back to: this page for a GET; for a form's POST, the page the form was on.

    A POST cannot be replayed by a redirect, so ``next`` is the path of a
    same-origin ``Referer`` (the form's page), or None without one.
    """
    if request.method in ("GET", "HEAD"):
        return this_path()
    referrer = urlsplit(request.headers.get("Referer", ""))
    if referrer.scheme in ("http", "https") and referrer.netloc == request.host and referrer.path.startswith("/"):
        return referrer.path + (f"?{referrer.query}" if referrer.query else "")
    return None


def this_path() -> str:
    """This request's path and query string: what ``next`` carries (a path on this site)."""
    target = request.path
    if request.query_string:
        target += "?" + request.query_string.decode("latin-1")
    return target


def login_url(login_view: str, next_url: str | None = None, next_field: str = "next") -> str:
    """The URL of ``login_view`` (an endpoint, or a path/URL as is) with ``next`` in its query string."""
    base = login_view if login_view.startswith(("https://", "http://", "/")) else url_for(login_view)
    if next_url is None:
        return base
    return base + ("&" if "?" in base else "?") + urlencode({next_field: next_url})


def wants_json() -> bool:
    """True for clients that prefer JSON to HTML, or say they are scripts (``X-Requested-With``)."""
    if not has_request_context():  # a websocket has no Accept to negotiate
        return False
    if request.headers.get("X-Requested-With", "").lower() == "xmlhttprequest":
        return True
    accept = request.accept_mimetypes
    return accept.best_match(["text/html", "application/json"]) == "application/json" and (
        accept["application/json"] > accept["text/html"]
    )
