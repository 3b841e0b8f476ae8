"""Flask-Login's signals, by the same names; receivers get the app as sender and keyword arguments.

Receivers may be plain functions (called inline) or ``async def`` (awaited)::

    @user_logged_in.connect
    async def on_login(app, user, auth_session, **extra): ...
"""

from __future__ import annotations

from typing import Any

from blinker import Namespace, Signal
from quart import current_app

_signals = Namespace()

#: ``login_user`` started a session: ``user``, ``auth_session`` (its record).
user_logged_in = _signals.signal("logged-in")
#: ``logout_user`` ended one: ``user``, ``auth_session``.
user_logged_out = _signals.signal("logged-out")
#: ``confirm_login`` made the session fresh again: ``user``.
user_login_confirmed = _signals.signal("login-confirmed")
#: ``login_required`` turned an anonymous client away.
user_unauthorized = _signals.signal("unauthorized")
#: ``fresh_login_required`` asked a stale session to log in again.
user_needs_refresh = _signals.signal("needs-refresh")
#: ``step_up`` recorded a factor presented in the session: ``user``, ``auth_session`` (updated), ``methods``.
user_stepped_up = _signals.signal("stepped-up")
#: ``aal_required`` or ``factor_within`` asked for another (or a recent) factor: ``aal``, ``max_age``.
user_needs_step_up = _signals.signal("needs-step-up")
#: A request was resolved to a logged-in user: ``user``.
user_accessed = _signals.signal("accessed")
#: The ``request_loader`` gave the user: ``user``.
user_loaded_from_request = _signals.signal("loaded-from-request")


async def send(signal: Signal, **kwargs: Any) -> None:
    """Send ``signal`` from the current app: sync receivers run inline, async ones are awaited."""
    if signal.receivers:
        await signal.send_async(current_app._get_current_object(), _sync_wrapper=_inline, **kwargs)


def _inline(func):
    # blinker's default for send_async refuses sync receivers; these are
    # called directly (Quart's ensure_async would move each to a thread).
    async def call(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return call
