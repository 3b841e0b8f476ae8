"""A small notes app on quart_login: register, log in, keep notes; an admin page and a JSON API."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from quart import Quart
from quart_login import wants_json
from quart_login.sqlalchemy_store import SQLAlchemyAuthSessionStore
from werkzeug.exceptions import HTTPException

from .db import get_sessionmaker, init_db
from .extensions import login_manager
from .models import AuthSession, User

__all__ = ["create_app", "database_url"]

TESTING_SECRET_KEY = "notes-testing-secret-key"


def database_url(instance_path: str | os.PathLike[str] | None = None) -> str:
    """NOTES_DATABASE_URL, else a SQLite file in the app's instance folder (what Alembic uses too)."""
    url = os.environ.get("NOTES_DATABASE_URL")
    if url:
        return url
    folder = Path(instance_path if instance_path is not None else Quart(__name__).instance_path)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{folder / 'notes.db'}"


def create_app(config: dict[str, Any] | None = None) -> Quart:
    app = Quart(__name__)
    app.config.update(TESTING=False, DATABASE_URL=None, SECRET_KEY=os.environ.get("NOTES_SECRET_KEY"))
    app.config.update(config or {})
    if not app.config["SECRET_KEY"]:
        if not app.config["TESTING"]:
            raise RuntimeError("Set NOTES_SECRET_KEY (it signs the session and login cookies)")
        app.config["SECRET_KEY"] = TESTING_SECRET_KEY
    if not app.config["DATABASE_URL"]:
        app.config["DATABASE_URL"] = database_url(app.instance_path)

    init_db(app)
    store = SQLAlchemyAuthSessionStore(AuthSession, User, sessionmaker=get_sessionmaker)
    login_manager.init_app(app, store=store)

    from .auth import bp as auth_bp
    from .notes import bp as notes_bp

    app.register_blueprint(auth_bp)
    app.register_blueprint(notes_bp)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Any:
        # JSON clients get JSON errors (login_required's 401 among them); browsers get Quart's pages.
        if wants_json():
            return {"error": error.name}, error.code
        return error

    return app
