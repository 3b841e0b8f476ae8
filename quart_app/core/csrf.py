"""Cross-site request forgery: a token per browser session on every form, and no foreign Origin.

A foreign ``Origin`` (another site, a sibling subdomain, ``null``) is refused
on every unsafe request and on the ``/ws/session`` handshake (403, before the
socket is accepted): a WebSocket is not bound by the same-origin policy, so
without this any page could open one with the user's cookie. Origins named
in ``QUART_APP_TRUSTED_ORIGINS`` are let in by both checks. A request with no
``Origin`` at all (a non-browser client) is allowed.

Logged in, the token is derived from the auth session's secret (an HMAC
under the app's key): it changes with every login, dies with the session,
and needs no cookie of its own, so protected pages neither read nor write
Quart's session cookie for it. Anonymous forms (log in, register) keep a
random token in Quart's signed session cookie.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from quart import Quart, current_app, request, session, websocket
from werkzeug.datastructures import Headers

from quart_login import session_token

from ..exceptions import HTTPError
from .config import get_settings, origin_of
from .security import new_csrf_token, tokens_match

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SESSION_KEY = "_csrf"
FORM_FIELD = "csrf_token"
CROSS_SITE = "Cross-site requests are not allowed."


def _expected_token() -> str | None:
    secret = session_token()  # this request's live session, if any
    if secret is not None:
        key = current_app.secret_key
        key = key.encode() if isinstance(key, str) else key
        return hmac.new(key, b"csrf:" + secret.encode(), hashlib.sha256).hexdigest()
    return session.get(SESSION_KEY)


def csrf_token() -> str:
    """The token of this browser session, for the hidden ``csrf_token`` field."""
    token = _expected_token()
    if not token:
        token = new_csrf_token()
        session[SESSION_KEY] = token
    return token


async def require_csrf_token() -> None:
    """Refuse a form POST whose ``csrf_token`` is not this browser session's (403)."""
    form = await request.form
    if not tokens_match(_expected_token(), form.get(FORM_FIELD)):
        raise HTTPError(403, "The form has expired or did not come from this site; reload and try again.")


def is_foreign(headers: Headers, host: str) -> bool:
    """Whether a request (or WebSocket handshake) with these headers, sent to ``host``, comes from another site."""
    origin = headers.get("Origin")
    if origin is not None:
        trusted = get_settings().trusted_origins
        if trusted and origin_of(origin) in trusted:
            return False
    if headers.get("Sec-Fetch-Site") == "cross-site":
        return True
    if origin is None:  # not a browser: nothing to forge
        return False
    if origin == "null":  # sandboxed frames, file: pages, some redirects
        return True
    # Compare host and port only: behind a TLS-terminating proxy the app sees
    # http while the browser's Origin says https.
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:  # not even a URL ("http://[")
        return True
    return netloc.lower() != host.lower()


async def _refuse_foreign_origin() -> None:
    # async on purpose: Quart would run a sync hook on a thread, per request.
    if request.method in UNSAFE_METHODS and is_foreign(request.headers, request.host):
        raise HTTPError(403, CROSS_SITE)


async def _refuse_foreign_websocket_origin():
    # Before the handshake is accepted (and before the login lookup): the
    # answer is a plain HTTP 403 instead of the 101.
    if is_foreign(websocket.headers, websocket.host):
        return {"error": CROSS_SITE}, 403
    return None


def init_app(app: Quart) -> None:
    app.before_request(_refuse_foreign_origin)
    # Registered before quart_login's own hook (create_app's order), so a
    # foreign handshake is refused before its session is looked up.
    app.before_websocket(_refuse_foreign_websocket_origin)
    app.jinja_env.globals["csrf_token"] = csrf_token
