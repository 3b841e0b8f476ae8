"""The database: one async engine per worker process, one AsyncSession per request.

SQLite is a library, not a server: aiosqlite hands every call (cursor,
execute, fetch, close, commit) to its connection thread and back, several
round trips per query. Units of work instead run in one trip to a small
thread pool with a plain (sync) SQLAlchemy session; on a server database the
same unit runs on an AsyncSession. The SQLite threads also keep a plain
sqlite3 connection each (``run_sqlite``), and ``asyncpg_connection`` lends a
pooled asyncpg connection, for the per-request lookup's faster paths
(quart_app/speedups.py).

A database that cannot be reached or does not answer in time is a 503 with
Retry-After (quart_app/errors.py): ``DatabaseUnavailable`` raised here for
the paths that bypass SQLAlchemy (asyncpg's connection errors and timeouts, a
SQLite file busy past busy_timeout on the SQLite threads' own connections);
the socket errors and timeouts SQLAlchemy passes on unwrapped, when
``raised_by_database`` says so; and SQLAlchemy's own ``DBAPIError`` when it
means a lost or unusable connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from quart import Quart, current_app, g
from sqlalchemy import Engine, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session

from .core.config import Settings
from .exceptions import DatabaseUnavailable

_EXTENSION = "quart_app.db"
T = TypeVar("T")

# What a driver raises when the server is unreachable or silent: the socket's
# own errors, and asyncio's timeout (asyncpg's timeout and command_timeout).
# SQLAlchemy passes them on unwrapped (on connect, on the pool's pre-ping, on
# a statement), so they are recognised by where they were raised.
_UNREACHABLE = (OSError, TimeoutError)
_DATABASE_CODE = ("sqlalchemy.", "asyncpg.", "quart_login.sqlalchemy_store", __name__)


def raised_by_database(error: BaseException) -> bool:
    """Whether ``error`` came out of the database layer (SQLAlchemy, asyncpg or this module)."""
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith(_DATABASE_CODE):
            return True
        tb = tb.tb_next
    return False


def create_engine(settings: Settings) -> AsyncEngine:
    url = make_url(settings.DATABASE_URL)
    pool = {
        "pool_size": settings.DB_POOL_SIZE,
        "max_overflow": settings.DB_MAX_OVERFLOW,
        "pool_timeout": settings.DB_POOL_TIMEOUT,
    }
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, **pool)
        _configure_sqlite(engine, settings.SQLITE_BUSY_TIMEOUT_MS)
        return engine
    connect_args = {}
    if url.get_driver_name() == "asyncpg":
        # asyncpg's own timeouts: a connection attempt, and every statement.
        connect_args = {"timeout": settings.DB_CONNECT_TIMEOUT, "command_timeout": settings.DB_COMMAND_TIMEOUT}
    # pre_ping: a pooled connection the server dropped (restart, failover) is
    # replaced before use instead of failing the request.
    return create_async_engine(url, pool_pre_ping=True, connect_args=connect_args, **pool)


def _is_sqlite_file(url: str) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and bool(parsed.database) and parsed.database != ":memory:"


def _create_sqlite_thread_engine(settings: Settings) -> Engine:
    """A sync (pysqlite) engine on the same file, for units of work run on the SQLite threads."""
    url = make_url(settings.DATABASE_URL).set(drivername="sqlite")
    engine = create_sync_engine(
        url, pool_size=settings.SQLITE_THREADS, max_overflow=0, pool_timeout=settings.DB_POOL_TIMEOUT
    )
    _configure_sqlite(engine, settings.SQLITE_BUSY_TIMEOUT_MS)
    return engine


def _configure_sqlite(engine: AsyncEngine | Engine, busy_timeout_ms: int) -> None:
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        _sqlite_pragmas(dbapi_connection, busy_timeout_ms)


def _sqlite_pragmas(connection, busy_timeout_ms: int) -> None:
    cursor = connection.cursor()
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

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: AsyncEngine | None = None
        self.sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._thread_engine: Engine | None = None
        self._threads: ThreadPoolExecutor | None = None
        # Each SQLite thread's own sqlite3 connection (autocommit), for run_sqlite.
        self._local = threading.local()
        self._raw_connections: list[sqlite3.Connection] = []

    def init_app(self, app: Quart) -> None:
        app.extensions[_EXTENSION] = self
        app.before_serving(self.connect)
        app.after_serving(self.dispose)
        app.teardown_appcontext(self._close_request_session)

    def get_sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        if self.sessionmaker is None:
            raise RuntimeError("database not connected: serve the app (or use app.test_app())")
        return self.sessionmaker

    async def run_own_unit(self, work: Callable[[Session], T]) -> T:
        """Run ``work(db)`` (sync code that commits) in a transaction of its own, never the request's.

        On a SQLite file: one trip to the SQLite threads. Elsewhere: on a new AsyncSession.
        """
        if self._threads is not None:
            return await asyncio.get_running_loop().run_in_executor(self._threads, self._run_in_thread, work)
        async with self.get_sessionmaker()() as db:
            return await db.run_sync(work)

    async def connect(self) -> None:
        self.engine = create_engine(self.settings)
        # expire_on_commit=False: objects stay readable after commit without
        # an implicit reload, which would be a lazy load (not allowed in asyncio).
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        if _is_sqlite_file(self.settings.DATABASE_URL):
            self._thread_engine = _create_sqlite_thread_engine(self.settings)
            self._threads = ThreadPoolExecutor(
                max_workers=self.settings.SQLITE_THREADS,
                thread_name_prefix="sqlite",
                initializer=self._open_raw_connection,
            )

    async def dispose(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            self._threads = None
        for connection in self._raw_connections:
            connection.close()
        self._raw_connections.clear()
        if self._thread_engine is not None:
            self._thread_engine.dispose()
            self._thread_engine = None
        if self.engine is not None:
            await self.engine.dispose()
            self.engine = None
            self.sessionmaker = None

    def _open_raw_connection(self) -> None:
        path = make_url(self.settings.DATABASE_URL).database
        # isolation_level=None: each statement commits on its own (the fast
        # path's statements are single reads and single-row updates);
        # check_same_thread=False only so that dispose() can close it.
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        _sqlite_pragmas(connection, self.settings.SQLITE_BUSY_TIMEOUT_MS)
        self._local.connection = connection
        self._raw_connections.append(connection)

    def _run_raw(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return work(self._local.connection)
        except sqlite3.OperationalError as error:
            # Another process holds the file past busy_timeout: transient.
            # (Other operational errors, "no such table" say, are bugs.)
            if error.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise DatabaseUnavailable(f"SQLite file busy: {error}") from error
            raise

    def _run_in_thread(self, work: Callable[[Session], T]) -> T:
        with Session(self._thread_engine, expire_on_commit=False) as db:
            return work(db)

    async def _close_request_session(self, _exc: BaseException | None) -> None:
        db = g.pop("_db", None)
        if db is not None:
            await db.close()


def get_database() -> Database:
    """The running app's Database."""
    return current_app.extensions[_EXTENSION]


def get_db() -> AsyncSession:
    """The AsyncSession of the current request (opened on first use, closed at teardown)."""
    db = g.get("_db")
    if db is None:
        db = get_database().get_sessionmaker()()
        g._db = db
    return db


async def commit_pending() -> None:
    """Commit this request's AsyncSession, if it was used (a no-op otherwise)."""
    db = g.get("_db")
    if db is not None:
        await db.commit()


async def run_unit(work: Callable[[Session], T]) -> T:
    """Run ``work(db)`` (sync SQLAlchemy code that commits what it changes) as one unit.

    On a SQLite file: one trip to the SQLite thread pool (bounded by
    SQLITE_THREADS), never on the event loop. Elsewhere: on the request's
    AsyncSession, through ``run_sync``.
    """
    database = get_database()
    if database._threads is not None:
        return await asyncio.get_running_loop().run_in_executor(database._threads, database._run_in_thread, work)
    return await get_db().run_sync(work)


def sqlite_threads() -> Database | None:
    """This app's Database when it runs SQLite units on its own threads (a SQLite file), else None."""
    database = get_database()
    return database if database._threads is not None else None


async def run_sqlite(database: Database, work: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``work(connection)`` on one of ``database``'s SQLite threads, with that thread's sqlite3 connection."""
    return await asyncio.get_running_loop().run_in_executor(database._threads, database._run_raw, work)


def uses_asyncpg() -> bool:
    """Whether this app's database is PostgreSQL through asyncpg."""
    database = get_database()
    return database.engine is not None and database.engine.dialect.driver == "asyncpg"


@asynccontextmanager
async def asyncpg_connection() -> AsyncIterator:
    """A pooled connection's asyncpg connection, outside any transaction (each statement commits).

    Checked out like any other (pre-pinged, bounded by the pool's timeout)
    and returned to the pool on the way out.
    """
    database = get_database()
    async with database.engine.connect() as connection:
        raw = await connection.get_raw_connection()
        try:
            yield raw.driver_connection
        except (*_UNREACHABLE, *_asyncpg_connection_errors()) as error:
            # Statements here bypass SQLAlchemy: a lost connection, a server
            # shutting down, or a statement past DB_COMMAND_TIMEOUT arrive as
            # asyncpg raises them. The pool pre-pings before the next use.
            raise DatabaseUnavailable(f"no answer: {type(error).__name__}") from error


def _asyncpg_connection_errors() -> tuple[type[Exception], ...]:
    from asyncpg.exceptions import ConnectionDoesNotExistError, OperatorInterventionError, PostgresConnectionError

    return (ConnectionDoesNotExistError, OperatorInterventionError, PostgresConnectionError)
