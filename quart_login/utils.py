"""``current_user``, ``login_user``, ``logout_user`` and the decorators: Flask-Login's API, async where it stores."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from quart import current_app, g, has_request_context, has_websocket_context, request
from quart_auth import Action, AuthUser
from werkzeug.local import LocalProxy

from . import signals
from .login_manager import _STATE, EXTENSION, AppLogin, LoginState
from .store import AuthSession, NewSession, utcnow

P = ParamSpec("P")
T = TypeVar("T")


def app_login() -> AppLogin:
    """The current app's login settings, cookie and store (``init_app`` made them)."""
    try:
        return current_app.extensions[EXTENSION]
    except KeyError:
        raise RuntimeError("quart_login is not set up on this app: LoginManager(store=...).init_app(app)") from None


def login_state() -> LoginState:
    """This request's (or websocket's) login state; anonymous outside one."""
    if has_request_context() or has_websocket_context():
        state = g.get(_STATE)
        if state is None:  # a static file, or before the loader ran
            state = LoginState(app_login().manager.anonymous_user())
            setattr(g, _STATE, state)
        return state
    return LoginState(app_login().manager.anonymous_user())


def _get_user() -> Any:
    return login_state().user


#: The logged-in user, or an anonymous user: read it without ``await``.
current_user: Any = LocalProxy(_get_user)


def current_auth_session() -> AuthSession | None:
    """The record of this request's session, if it has one."""
    return login_state().auth_session


def session_token() -> str | None:
    """The secret of this request's live session (for deriving per-session values such as a CSRF token)."""
    return login_state().token


async def login_user(
    user: Any,
    remember: bool = False,
    duration: timedelta | None = None,
    force: bool = False,
    fresh: bool = True,
) -> bool:
    """Start a server-side session for ``user`` and set its cookie on this response.

    As in Flask-Login: an inactive user is refused (False) unless ``force``;
    ``remember`` makes the cookie persistent; ``duration`` shortens a
    remembered session's server-side lifetime (the cookie keeps
    REMEMBER_DURATION as its max age); ``fresh=False`` starts a session
    that ``fresh_login_required`` does not accept until ``confirm_login()``.
    Logging in again (or as someone else) replaces this browser's session.
    """
    if not force and not user.is_active:
        return False
    login = app_login()
    state = login_state()
    new = NewSession(
        user_id=user.id if hasattr(user, "id") else user.get_id(),
        remember=remember,
        fresh=fresh,
        ip=request.remote_addr,
        user_agent=request.headers.get("User-Agent"),
        # At most REMEMBER_DURATION: the cookie's signature is not accepted for longer.
        duration=min(duration.total_seconds(), login.lifetimes.remember) if duration is not None else None,
    )
    token, record = await login.store.start(new, login.lifetimes, replaces=state.token)
    login.cookie.login_user(AuthUser(token, Action.WRITE_PERMANENT if remember else Action.WRITE))
    setattr(g, _STATE, LoginState(user, record, token))
    await signals.send(signals.user_logged_in, user=user, auth_session=record)
    return True


async def logout_user() -> bool:
    """End this request's session on the server (its cookie is dead everywhere from now on) and clear it."""
    login = app_login()
    state = login_state()
    if state.token is not None:
        await login.store.revoke(state.token)
    login.cookie.logout_user()
    setattr(g, _STATE, LoginState(login.manager.anonymous_user()))
    if state.auth_session is not None:
        await signals.send(signals.user_logged_out, user=state.user, auth_session=state.auth_session)
    return True


async def rotate_session() -> bool:
    """Give this request's session a new secret and cookie: a copy of the old cookie opens nothing.

    The session itself goes on (its id, age, freshness and live channels):
    what to do after a password change, say, for the browser that made it.
    False when there is no session (or it was revoked meanwhile).
    """
    login = app_login()
    state = login_state()
    if state.auth_session is None:
        return False
    token = await login.store.rotate(state.auth_session)
    if token is None:
        return False
    action = Action.WRITE_PERMANENT if state.auth_session.remember else Action.WRITE
    login.cookie.login_user(AuthUser(token, action))
    state.token = token
    return True


async def confirm_login() -> None:
    """Mark this session fresh again (after the user re-entered a credential)."""
    state = login_state()
    if state.auth_session is None:
        return
    state.auth_session = await app_login().store.confirm(state.auth_session)
    await signals.send(signals.user_login_confirmed, user=state.user)


def login_fresh() -> bool:
    """True when a credential was presented in this session within FRESH_LOGIN_WINDOW."""
    record = current_auth_session()
    if record is None or record.auth_time is None:
        return False
    window = app_login().config["FRESH_LOGIN_WINDOW"]
    window = window.total_seconds() if isinstance(window, timedelta) else window
    return (utcnow() - record.auth_time).total_seconds() <= window


def _exempt() -> bool:
    config = app_login().config
    # A websocket has no request.method (nor an exempt one).
    exempt_method = has_request_context() and request.method in config["EXEMPT_METHODS"]
    return exempt_method or bool(config["LOGIN_DISABLED"])


_EXEMPT_ATTR = "_quart_login_exempt_from"


def exempt_from(*names: str) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Let a ``login_required`` view skip the requirements ``names`` (``LoginManager.requirement``).

    For the views that let a user meet a requirement, or leave::

        @bp.post("/account/email/resend")
        @login_required
        @exempt_from("verified_email")
        async def resend(): ...
    """

    def mark(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        setattr(func, _EXEMPT_ATTR, frozenset(getattr(func, _EXEMPT_ATTR, ())) | frozenset(names))
        return func

    return mark


async def _unmet(manager: Any, wrapper: Callable[..., Any]) -> str | None:
    return await manager.unmet_requirement(current_user, getattr(wrapper, _EXEMPT_ATTR, frozenset()))


def login_required(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Run the view only for a logged-in user who meets every requirement.

    Anonymous clients get ``LoginManager.unauthorized()``; a user who fails a
    requirement (``LoginManager.requirement``) gets ``requirement_failed(name)``.
    """

    @wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        if not _exempt():
            manager = app_login().manager
            if not current_user.is_authenticated:
                return await manager.unauthorized()
            # (has_requirements first: the common case awaits nothing more)
            if manager.has_requirements and (name := await _unmet(manager, wrapper)) is not None:
                return await manager.requirement_failed(name)
        return await current_app.ensure_async(func)(*args, **kwargs)

    return wrapper


def fresh_login_required(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Like ``login_required``, and the session must be fresh (``login_fresh()``), else ``needs_refresh()``."""

    @wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        if not _exempt():
            manager = app_login().manager
            if not current_user.is_authenticated:
                return await manager.unauthorized()
            if manager.has_requirements and (name := await _unmet(manager, wrapper)) is not None:
                return await manager.requirement_failed(name)
            if not login_fresh():
                return await manager.needs_refresh()
        return await current_app.ensure_async(func)(*args, **kwargs)

    return wrapper
