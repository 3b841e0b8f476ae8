"""One engine per app: made by ``create_app`` (it connects lazily), disposed when the app stops serving."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quart import Quart, current_app
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

EXTENSION = "notes_db"


@dataclass
class Database:
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]


def init_db(app: Quart) -> Database:
    engine = create_async_engine(app.config["DATABASE_URL"])
    if engine.dialect.name == "sqlite":
        # SQLite leaves foreign keys (and so ON DELETE CASCADE) off unless asked, per connection.
        @event.listens_for(engine.sync_engine, "connect")
        def _foreign_keys(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    # expire_on_commit=False: an object stays readable after commit (no lazy refresh, which async cannot do).
    database = Database(engine, async_sessionmaker(engine, expire_on_commit=False))
    app.extensions[EXTENSION] = database

    @app.after_serving
    async def _dispose() -> None:
        await engine.dispose()

    return database


def get_sessionmaker() -> async_sessionmaker[AsyncSession]:
    """The current app's sessionmaker (also what the quart_login store is given)."""
    return current_app.extensions[EXTENSION].sessionmaker
