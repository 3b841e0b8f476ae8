"""``current_user``, ``login_user``, ``logout_user`` and the decorators: Flask-Login's API, async where it stores."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from quart import current_app, g, has_request_context, has_websocket_context, request
from quart_auth import Action, AuthUser
from werkzeug.local import LocalProxy

from . import signals
from .login_manager import _STATE, EXTENSION, AppLogin, LoginState, _call
from .store import DEFAULT_AMR, AuthSession, NewSession, assurance_level, normalize_amr, utcnow

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
    amr: Iterable[str] | str = DEFAULT_AMR,
    aal: int | None = None,
) -> bool:
    """Start a server-side session for ``user`` and set its cookie on this response.

    As in Flask-Login: an inactive user is refused (False) unless ``force``;
    ``remember`` makes the cookie persistent; ``duration`` shortens a
    remembered session's server-side lifetime (the cookie keeps
    REMEMBER_DURATION as its max age); ``fresh=False`` starts a session
    that ``fresh_login_required`` does not accept until ``confirm_login()``.
    Logging in again (or as someone else) replaces this browser's session.

    ``amr``: the methods the user presented (``"pwd"``, ``"otp"``, ``"rec"``,
    ``"webauthn"``...), kept with the session; its level is
    ``assurance_level(amr)`` unless ``aal`` says otherwise (``aal=1`` for a
    passkey used without user verification, say).
    """
    if not force and not user.is_active:
        return False
    methods = normalize_amr(amr)
    level = assurance_level(methods) if aal is None else _level(aal)
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
        amr=methods,
        aal=level,
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


def _level(aal: int) -> int:
    if isinstance(aal, bool) or not isinstance(aal, int) or aal < 1:
        raise ValueError(f"an assurance level is an int from 1: {aal!r}")
    return aal


async def _present(methods: Iterable[str] | str, aal: int | None) -> tuple[LoginState, tuple[str, ...]] | None:
    """Record in this request's session that ``methods`` were presented now; None without a session."""
    state = login_state()
    record = state.auth_session
    presented = normalize_amr(methods)
    if record is None:
        return None
    amr = normalize_amr((*record.amr, *presented))
    # The level never drops within a session: a factor presented again adds nothing, takes nothing away.
    level = max(record.aal, assurance_level(amr), 0 if aal is None else _level(aal))
    store = app_login().store
    if amr == tuple(record.amr) and level == record.aal:
        state.auth_session = await store.confirm(record)  # only auth_time moves
    else:
        state.auth_session = await store.confirm(record, amr=amr, aal=level)
    return state, presented


async def confirm_login(methods: Iterable[str] | str = DEFAULT_AMR, *, aal: int | None = None) -> None:
    """Mark this session fresh again (after the user re-entered a credential: by default a password).

    As ``step_up``, with ``user_login_confirmed`` sent instead of ``user_stepped_up``.
    """
    done = await _present(methods, aal)
    if done is not None:
        await signals.send(signals.user_login_confirmed, user=done[0].user)


async def step_up(methods: Iterable[str] | str, *, aal: int | None = None) -> AuthSession | None:
    """Record that the user presented ``methods`` (``"otp"``, ``["webauthn"]``) in this session, now.

    ``auth_time`` moves to now, the methods join the session's ``amr`` and
    its ``aal`` is recomputed (``assurance_level``; ``aal`` raises it further,
    never lowers it). Returns the updated record, or None without a session.
    Sends ``user_stepped_up``.
    """
    done = await _present(methods, aal)
    if done is None:
        return None
    state, presented = done
    await signals.send(signals.user_stepped_up, user=state.user, auth_session=state.auth_session, methods=presented)
    return state.auth_session


def login_fresh() -> bool:
    """True when a credential was presented in this session within FRESH_LOGIN_WINDOW."""
    record = current_auth_session()
    if record is None or record.auth_time is None:
        return False
    window = app_login().config["FRESH_LOGIN_WINDOW"]
    window = window.total_seconds() if isinstance(window, timedelta) else window
    return (utcnow() - record.auth_time).total_seconds() <= window


def current_aal() -> int:
    """The assurance level of this request's session (``AuthSession.aal``); 0 without a session."""
    record = current_auth_session()
    return 0 if record is None else record.aal


def auth_age() -> float | None:
    """Seconds since a factor was last presented in this session (``auth_time``); None if never, or no session."""
    record = current_auth_session()
    if record is None or record.auth_time is None:
        return None
    return (utcnow() - record.auth_time).total_seconds()


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


# -- assurance: how, and how recently, the session was authenticated -------------------------

_PASS = object()
Check = Callable[[Any], Awaitable[Any]]


def _assured(func: Callable[P, Awaitable[T]], check: Check) -> Callable[P, Awaitable[T]]:
    """``login_required`` around ``func``, then ``check(manager)``: ``_PASS``, or the answer to give instead."""

    @wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        if not _exempt():
            manager = app_login().manager
            if not current_user.is_authenticated:
                return await manager.unauthorized()
            if manager.has_requirements and (name := await _unmet(manager, wrapper)) is not None:
                return await manager.requirement_failed(name)
            if (answer := await check(manager)) is not _PASS:
                return answer
        return await current_app.ensure_async(func)(*args, **kwargs)

    return wrapper


def aal_required(
    level: int | Callable[[Any], int | None | Awaitable[int | None]],
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Like ``login_required``, and the session must be at assurance level ``level`` or above.

    A session below it gets ``LoginManager.needs_step_up(aal=level)``.
    ``level`` may be a function of the user, sync or async (``lambda user: 2
    if user.has_second_factor else 1``; None or 0: no level asked). The level
    is the session's, however long ago it was reached: add ``factor_within``
    for a recent one::

        @app.post("/account/password")
        @aal_required(2)
        @factor_within(300)
        async def change_password(): ...
    """
    if not callable(level):
        _level(level)

    def decorate(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        async def check(manager: Any) -> Any:
            needed = await _call(level, current_user._get_current_object()) if callable(level) else level
            if needed and current_aal() < needed:
                return await manager.needs_step_up(aal=needed)
            return _PASS

        return _assured(func, check)

    return decorate


def factor_within(
    seconds: float | timedelta,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Like ``login_required``, and a factor must have been presented in this session within ``seconds``.

    A session whose ``auth_time`` is older (or unset) gets
    ``LoginManager.needs_step_up(max_age=seconds)``. ``fresh_login_required``
    is this with ``FRESH_LOGIN_WINDOW`` and Flask-Login's ``needs_refresh`` answer.
    """
    window = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
    if window < 0:
        raise ValueError(f"factor_within needs a number of seconds from 0: {seconds!r}")

    def decorate(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        async def check(manager: Any) -> Any:
            age = auth_age()
            if age is None or age > window:
                return await manager.needs_step_up(max_age=window)
            return _PASS

        return _assured(func, check)

    return decorate
