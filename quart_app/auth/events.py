"""The audit trail and the app's signals: each auth event is a row in ``auth_events`` and a blinker signal.

Applications subscribe like they do to Flask-Login's signals (quart_login
sends those: ``user_logged_in``, ``user_logged_out``, ...)::

    from quart_app.auth.events import user_registered

    @user_registered.connect
    def on_register(app, user, **extra): ...

Receivers get the app as sender and keyword arguments; never a password,
hash or session secret.
"""

from __future__ import annotations

from typing import Any

from blinker import Namespace
from quart import current_app, has_request_context, request
from sqlalchemy import insert
from sqlalchemy.orm import Session

from quart_login import user_logged_in, user_logged_out, utcnow

from ..db import get_db, run_unit
from ..models import AuthEvent

_signals = Namespace()

# The app's own events (quart_login sends user_logged_in and user_logged_out).
user_login_failed = _signals.signal("user-login-failed")
user_registered = _signals.signal("user-registered")
password_changed = _signals.signal("password-changed")
session_revoked = _signals.signal("session-revoked")
login_throttled = _signals.signal("login-throttled")
user_deactivated = _signals.signal("user-deactivated")
user_activated = _signals.signal("user-activated")
# Mailed links (auth/recovery.py) and the outbox (quart_app/mail/).
password_reset_requested = _signals.signal("password-reset-requested")
password_reset = _signals.signal("password-reset")
verification_sent = _signals.signal("verification-sent")
email_verified = _signals.signal("email-verified")
email_change_requested = _signals.signal("email-change-requested")
email_changed = _signals.signal("email-changed")
mail_failed = _signals.signal("mail-failed")
# The second factor (auth/mfa.py; the views in pages/mfa.py and api/mfa.py, the CLI's users reset-2fa).
mfa_enabled = _signals.signal("mfa-enabled")
mfa_disabled = _signals.signal("mfa-disabled")
recovery_codes_regenerated = _signals.signal("recovery-codes-regenerated")
recovery_code_used = _signals.signal("recovery-code-used")
mfa_reset = _signals.signal("mfa-reset")
# Passkeys (auth/passkeys.py).
passkey_added = _signals.signal("passkey-added")
passkey_used = _signals.signal("passkey-used")
passkey_removed = _signals.signal("passkey-removed")
passkey_counter_regression = _signals.signal("passkey-counter-regression")

__all__ = [
    "audit",
    "email_change_requested",
    "email_changed",
    "email_verified",
    "login_throttled",
    "mail_failed",
    "mfa_disabled",
    "mfa_enabled",
    "mfa_reset",
    "passkey_added",
    "passkey_counter_regression",
    "passkey_removed",
    "passkey_used",
    "password_changed",
    "password_reset",
    "password_reset_requested",
    "record",
    "recovery_code_used",
    "recovery_codes_regenerated",
    "session_revoked",
    "user_activated",
    "user_deactivated",
    "user_logged_in",
    "user_logged_out",
    "user_login_failed",
    "user_registered",
    "verification_sent",
]

SIGNALS = {
    "login_failed": user_login_failed,
    "registered": user_registered,
    "password_changed": password_changed,
    "session_revoked": session_revoked,
    "throttled": login_throttled,
    "deactivated": user_deactivated,
    "activated": user_activated,
    "reset_requested": password_reset_requested,
    "password_reset": password_reset,
    "verification_sent": verification_sent,
    "email_verified": email_verified,
    "email_change_requested": email_change_requested,
    "email_changed": email_changed,
    "mail_failed": mail_failed,
    "mfa_enabled": mfa_enabled,
    "mfa_disabled": mfa_disabled,
    "recovery_codes_regenerated": recovery_codes_regenerated,
    "recovery_code_used": recovery_code_used,
    "mfa_reset": mfa_reset,
    "passkey_added": passkey_added,
    "passkey_used": passkey_used,
    "passkey_removed": passkey_removed,
    "passkey_counter_regression": passkey_counter_regression,
    # A wrong second factor at login is a failed login too (its detail says which).
    "mfa_login_failed": user_login_failed,
}


def event_values(event: str, user: Any = None, *, detail: str | None = None, ip: str | None = None) -> dict[str, Any]:
    """The ``auth_events`` row for an event, as column values."""
    if ip is None and has_request_context():
        ip = request.remote_addr
    return {
        "created_at": utcnow(),
        "event": event,
        "user_id": getattr(user, "id", None),
        "ip": (ip or "")[:45] or None,
        "detail": (detail or "")[:200] or None,
    }


def audit(event: str, user: Any = None, *, detail: str | None = None, ip: str | None = None) -> None:
    """Add the event to this request's transaction (the caller commits) and send its signal."""
    values = event_values(event, user, detail=detail, ip=ip)
    get_db().add(AuthEvent(**values))
    if (signal := SIGNALS.get(event)) is not None and signal.receivers:
        signal.send(current_app._get_current_object(), user=user, detail=values["detail"], ip=values["ip"])


_INSERT_EVENT = insert(AuthEvent)


async def record(event: str, user: Any = None, *, detail: str | None = None) -> None:
    """Write the event at once, in a unit of its own (for events that quart_login signals)."""
    values = event_values(event, user, detail=detail)

    def work(db: Session) -> None:
        db.connection().execute(_INSERT_EVENT, values)
        db.commit()

    await run_unit(work)
