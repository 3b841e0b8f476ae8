"""The audit trail and its signals: each auth event is a row in ``auth_events`` and a blinker signal.

Applications subscribe like they do to Flask-Login's signals::

    from quart_app.auth.events import user_logged_in

    @user_logged_in.connect
    def on_login(app, user, **extra): ...

Receivers get the app as sender and keyword arguments; never a password,
hash or session secret.
"""

from __future__ import annotations

from typing import Any

from blinker import Namespace
from quart import current_app, has_request_context, request

from ..db import get_db
from ..models import AuthEvent
from .sessions import utcnow

_signals = Namespace()

# Flask-Login's names...
user_logged_in = _signals.signal("user-logged-in")
user_logged_out = _signals.signal("user-logged-out")
user_login_failed = _signals.signal("user-login-failed")
# ...and the port's own.
user_registered = _signals.signal("user-registered")
password_changed = _signals.signal("password-changed")
session_revoked = _signals.signal("session-revoked")
login_throttled = _signals.signal("login-throttled")
user_deactivated = _signals.signal("user-deactivated")
user_activated = _signals.signal("user-activated")

SIGNALS = {
    "login": user_logged_in,
    "logout": user_logged_out,
    "login_failed": user_login_failed,
    "registered": user_registered,
    "password_changed": password_changed,
    "session_revoked": session_revoked,
    "throttled": login_throttled,
    "deactivated": user_deactivated,
    "activated": user_activated,
}


def event_row(event: str, user: Any = None, *, detail: str | None = None, ip: str | None = None) -> AuthEvent:
    """The ``auth_events`` row for an event (not yet added to any session)."""
    if ip is None and has_request_context():
        ip = request.remote_addr
    return AuthEvent(
        created_at=utcnow(),
        event=event,
        user_id=getattr(user, "id", None),
        ip=(ip or "")[:45] or None,
        detail=(detail or "")[:200] or None,
    )


def send(row: AuthEvent, user: Any = None) -> None:
    """Send the event's signal to subscribers."""
    SIGNALS[row.event].send(current_app._get_current_object(), user=user, detail=row.detail, ip=row.ip)


def audit(event: str, user: Any = None, *, detail: str | None = None, ip: str | None = None) -> None:
    """Add the event to this request's transaction (the caller commits) and send its signal."""
    row = event_row(event, user, detail=detail, ip=ip)
    get_db().add(row)
    send(row, user)
