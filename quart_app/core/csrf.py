"""Cross-site request forgery: a token per browser session on every form, and no foreign Origin.

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

from quart import Quart, current_app, request, session

from quart_login import session_token

from ..exceptions import HTTPError
from .security import new_csrf_token, tokens_match

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SESSION_KEY = "_csrf"
FORM_FIELD = "csrf_token"


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


async def _refuse_foreign_origin() -> None:
    # async on purpose: Quart would run a sync hook on a thread, per request.
    if request.method not in UNSAFE_METHODS:
        return
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        raise HTTPError(403, "Cross-site requests are not allowed.")
    origin = request.headers.get("Origin")
    if origin is None:
        return
    # Compare host and port only: behind a TLS-terminating proxy the app sees
    # http while the browser's Origin says https.
    if origin == "null" or urlsplit(origin).netloc.lower() != request.host.lower():
        raise HTTPError(403, "Cross-site requests are not allowed.")


def init_app(app: Quart) -> None:
    app.before_request(_refuse_foreign_origin)
    app.jinja_env.globals["csrf_token"] = csrf_token
