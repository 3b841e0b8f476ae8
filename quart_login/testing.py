"""Test helpers: log a test client in as a user without a login form (Flask-Login's ``FlaskLoginClient``).

::

    client = app.test_client()
    await login_client(client, user)           # a real server-side session, its cookie on the client
    assert (await client.get("/dashboard")).status_code == 200
    await logout_client(client)                # the session revoked, the cookie gone
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .store import DEFAULT_AMR, AuthSession, NewSession, assurance_level, normalize_amr
from .utils import app_login


async def login_client(
    client: Any,
    user: Any,
    *,
    remember: bool = False,
    fresh: bool = True,
    amr: Iterable[str] | str = DEFAULT_AMR,
    aal: int | None = None,
) -> AuthSession:
    """Start a session for ``user`` in ``client.app``'s store and give ``client`` its cookie.

    ``amr`` and ``aal`` as for ``login_user`` (``amr=("pwd", "otp")`` for a session at level 2).
    """
    app = client.app
    methods = normalize_amr(amr)
    async with app.app_context():
        login = app_login()
        new = NewSession(
            user_id=user.id,
            remember=remember,
            fresh=fresh,
            ip="127.0.0.1",
            user_agent="quart_login.testing",
            amr=methods,
            aal=assurance_level(methods) if aal is None else aal,
        )
        token, record = await login.store.start(new, login.lifetimes)
        cookie = login.cookie
        client.set_cookie(
            cookie.cookie_domain or "localhost",
            cookie.cookie_name,
            cookie.dump_token(token, app=app),
            path=cookie.cookie_path,
            domain=cookie.cookie_domain,
            secure=cookie.cookie_secure,
            httponly=cookie.cookie_http_only,
            samesite=cookie.cookie_samesite,
        )
        client._quart_login_token = token
    return record


async def logout_client(client: Any) -> None:
    """Revoke the session ``login_client`` started and drop its cookie from ``client``."""
    token = getattr(client, "_quart_login_token", None)
    app = client.app
    async with app.app_context():
        cookie = app_login().cookie
        if token is not None:
            await app_login().store.revoke(token)
        client.delete_cookie(cookie.cookie_domain or "localhost", cookie.cookie_name, path=cookie.cookie_path)
    client._quart_login_token = None
