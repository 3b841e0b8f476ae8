"""The app's server-side sessions: quart_login's SQLAlchemy store on the ``auth_sessions`` table."""

from __future__ import annotations

from datetime import datetime

from quart import current_app

from quart_login import AuthSession, current_auth_session
from quart_login.sqlalchemy_store import SQLAlchemyAuthSessionStore

from ..db import Database
from ..models import AuthSession as AuthSessionRow
from ..models import User

EXTENSION = "quart_app.auth_sessions"


def make_store(database: Database) -> SQLAlchemyAuthSessionStore:
    """The store: its units of work run on the SQLite threads, or on AsyncSessions of their own."""
    return SQLAlchemyAuthSessionStore(
        AuthSessionRow,
        User,
        sessionmaker=database.get_sessionmaker,
        active_column="is_active",
        run_unit=database.run_own_unit,
    )


def get_store() -> SQLAlchemyAuthSessionStore:
    """The running app's session store."""
    return current_app.extensions[EXTENSION]


def describe(record: AuthSession) -> dict[str, object]:
    """A session as the account page and the API show it (the id is not the cookie's secret).

    ``amr``, ``auth_time`` and ``aal``: how it was authenticated (the methods, in
    the order first presented), when a factor was last presented in it (None:
    never, since it began), and the assurance level those methods reach.
    """
    current = current_auth_session()

    def iso(moment: datetime) -> str:
        return moment.replace(microsecond=0).isoformat() + "Z"

    return {
        "id": record.id,
        "created_at": iso(record.created_at),
        "last_seen_at": iso(record.last_seen_at),
        "ip": record.ip,
        "user_agent": record.user_agent,
        "current": current is not None and current.id == record.id,
        "amr": list(record.amr),
        "auth_time": None if record.auth_time is None else iso(record.auth_time),
        "aal": record.aal,
    }
