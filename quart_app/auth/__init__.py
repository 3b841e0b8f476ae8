"""Identity: Flask-Login's vocabulary (async where it touches the database) on Quart-Auth."""

from quart import Quart

from ..core.config import Settings
from ..models import User
from . import sessions
from .login_manager import (
    ANONYMOUS,
    AnonymousUser,
    LoginManager,
    current_user,
    fresh_login_required,
    login_required,
    login_user,
    logout_user,
    wants_json,
)

__all__ = [
    "ANONYMOUS",
    "AnonymousUser",
    "LoginManager",
    "current_user",
    "fresh_login_required",
    "login_required",
    "login_user",
    "logout_user",
    "wants_json",
]


def init_app(app: Quart, settings: Settings) -> LoginManager:
    """Attach the login manager to ``app`` with the loader that reads server-side sessions."""
    manager = LoginManager()
    manager.init_app(app, settings)

    @manager.user_loader
    async def load_user(session_token: str) -> User | None:
        return await sessions.resolve(session_token, settings)

    return manager
