"""quart_login: Flask-Login's API for Quart, async where it touches storage, with server-side sessions.

::

    login_manager = LoginManager(store=SQLAlchemyAuthSessionStore(AuthSession, User, sessionmaker=...))
    login_manager.init_app(app)

    @app.get("/dashboard")
    @login_required
    async def dashboard():
        return f"Hello {current_user.username}"

It imports nothing of any application: the app hands it a store (and,
optionally, a ``user_loader``) and plugs its policies in through the
callbacks and the signals.
"""

from .config import DEFAULTS, Lifetimes
from .login_manager import LoginManager, LoginState, login_url, wants_json
from .mixins import AnonymousUserMixin, UserMixin
from .signals import (
    user_accessed,
    user_loaded_from_request,
    user_logged_in,
    user_logged_out,
    user_login_confirmed,
    user_needs_refresh,
    user_needs_step_up,
    user_stepped_up,
    user_unauthorized,
)
from .store import (
    AuthSession,
    AuthSessionStore,
    NewSession,
    Resolved,
    assurance_level,
    new_token,
    token_digest,
    utcnow,
)
from .utils import (
    aal_required,
    app_login,
    auth_age,
    confirm_login,
    current_aal,
    current_auth_session,
    current_user,
    exempt_from,
    factor_within,
    fresh_login_required,
    login_fresh,
    login_required,
    login_state,
    login_user,
    logout_user,
    rotate_session,
    session_token,
    step_up,
)

__all__ = [
    "DEFAULTS",
    "AnonymousUserMixin",
    "AuthSession",
    "AuthSessionStore",
    "Lifetimes",
    "LoginManager",
    "LoginState",
    "NewSession",
    "Resolved",
    "UserMixin",
    "aal_required",
    "app_login",
    "assurance_level",
    "auth_age",
    "confirm_login",
    "current_aal",
    "current_auth_session",
    "current_user",
    "exempt_from",
    "factor_within",
    "fresh_login_required",
    "login_fresh",
    "login_required",
    "login_state",
    "login_url",
    "login_user",
    "logout_user",
    "new_token",
    "rotate_session",
    "session_token",
    "step_up",
    "token_digest",
    "user_accessed",
    "user_loaded_from_request",
    "user_logged_in",
    "user_logged_out",
    "user_login_confirmed",
    "user_needs_refresh",
    "user_needs_step_up",
    "user_stepped_up",
    "user_unauthorized",
    "utcnow",
    "wants_json",
]
