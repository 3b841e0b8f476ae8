"""The database: one async engine per worker process, one AsyncSession per request."""

from __future__ import annotations

from pathlib import Path

from quart import Quart, current_app, g
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from .core.config import Settings

_EXTENSION = "quart_app.db"


def create_engine(settings: Settings) -> AsyncEngine:
    url = make_url(settings.DATABASE_URL)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, pool_size=settings.DB_POOL_SIZE, pool_timeout=settings.DB_POOL_TIMEOUT)
        _configure_sqlite(engine, settings.SQLITE_BUSY_TIMEOUT_MS)
        return engine
    return create_async_engine(
        url,
        pool_size=settings.DB_POOL_SIZE,
        pool_timeout=settings.DB_POOL_TIMEOUT,
        pool_pre_ping=True,
    )


def _configure_sqlite(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets readers run beside the one writer; busy_timeout makes a
        # writer wait for the lock (across worker processes) instead of
        # failing with "database is locked"; foreign keys are off by default.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


class Database:
    """Owns the engine of this worker; created in before_serving, disposed in after_serving."""

    def __init__(self, app: Quart, settings: Settings) -> None:
        self.settings = settings
        self.engine: AsyncEngine | None = None
        self.sessionmaker: async_sessionmaker[AsyncSession] | None = None
        app.extensions[_EXTENSION] = self
        app.before_serving(self.connect)
        app.after_serving(self.dispose)
        app.teardown_appcontext(self._close_request_session)

    async def connect(self) -> None:
        self.engine = create_engine(self.settings)
        # expire_on_commit=False: objects stay readable after commit without
        # an implicit reload, which would be a lazy load (not allowed in asyncio).
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    async def dispose(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()
            self.engine = None
            self.sessionmaker = None

    async def _close_request_session(self, _exc: BaseException | None) -> None:
        session = g.pop("_db_session", None)
        if session is not None:
            await session.close()


def get_db() -> AsyncSession:
    """The AsyncSession of the current request (opened on first use, closed at teardown)."""
    session = g.get("_db_session")
    if session is None:
        database: Database = current_app.extensions[_EXTENSION]
        if database.sessionmaker is None:
            raise RuntimeError("database not connected: serve the app (or use app.test_app())")
        session = database.sessionmaker()
        g._db_session = session
    return session
