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
SQLite file busy or out of service on the SQLite threads' own connections);
the socket errors and timeouts SQLAlchemy passes on unwrapped, when
``raised_by_database`` says so; and SQLAlchemy's own ``DBAPIError`` when
``is_outage`` says it means a lost or unusable connection or storage.

A SQLite file's storage can fail under a running server: the file unlinked,
renamed or replaced, made unwritable, its disk full or failing. Every
connection to it (the threads' own, the thread engine's, aiosqlite's) is a
``FileConnection``: opened only on a writable file already at the path (never
created), it records which file that is, ``(st_dev, st_ino)``, and checks with
an ``os.stat`` of the path, on the thread that runs the statements, that this
file is still there before a statement that starts a transaction (or a read
outside one) and after every commit of a write. Open descriptors keep working
on a file unlinked or renamed, and in WAL mode SQLite itself does not notice
(SQLITE_READONLY_DBMOVED is only raised in rollback-journal mode), so without
these checks reads would be served from, and writes acknowledged to, a file
no longer at the path. A failed check is SQLITE_READONLY_DBMOVED, raised here.
Storage errors (``_SQLITE_STORAGE``) are 503s and drop the connection, so that
the next use opens the file at the path anew: service resumes by itself once
the file is back.

Guarantees, for the file at the configured path: a read is served only from a
connection that found its file at the path just before (the read is ordered
before a move that races it); a write is acknowledged only if, after its
commit, the connection's file was still at the path: the commit is then in
that file's WAL (durable as ``synchronous=NORMAL`` makes it: through a crash of
the process, not of the machine). A file moved between a transaction's first
statement and its commit gets the write (SQLite wrote through its open
descriptors) and the client a 503: the write is in the moved file (found again
if that same file is put back, gone with it if it was unlinked), never
acknowledged. Not covered: the -wal or -shm alone deleted or replaced under a
running server (SQLite's own hazard: restore the database with its -wal and
-shm, or a checkpointed copy alone with neither), and a file swapped for
another one and back between two checks.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from quart import Quart, current_app, g
from sqlalchemy import Engine, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
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


# SQLite's result codes (the primary code: the low byte of an extended one)
# that mean the file cannot be used now, an outage (503, retry later). Any
# other (SQLITE_ERROR: no such table, a syntax error; SQLITE_CONSTRAINT,
# SQLITE_MISMATCH, SQLITE_RANGE, SQLITE_TOOBIG, SQLITE_MISUSE) is the app's bug: a 500.
# Another connection holds the file: transient, the connection is sound.
_SQLITE_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
# The storage failed: the connection is dropped and the file opened anew at
# its path on the next use.
_SQLITE_STORAGE = frozenset(
    {
        sqlite3.SQLITE_PERM,  # the access asked for is refused
        # Cannot write: permissions, a read-only mount or directory, the file moved
        # (READONLY_DBMOVED: SQLite's in rollback-journal mode, this module's in WAL mode).
        sqlite3.SQLITE_READONLY,
        # The OS failed a read, write, fsync, lock or map: EIO, EROFS, EPERM (chattr +i), EFBIG.
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,  # no space left for the file or its -wal
        sqlite3.SQLITE_CANTOPEN,  # no file at the path (never created here), or a directory it cannot open
        sqlite3.SQLITE_PROTOCOL,  # a race in the WAL's locking: transient
        # What is at the path is not a sound database: replaced or truncated under
        # the server, or damaged media. No statement of the app's makes it, and a
        # sound file put back ends it: an outage for an operator, not a bug.
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_NOTADB,
    }
)
_SQLITE_UNAVAILABLE = _SQLITE_BUSY | _SQLITE_STORAGE


def _sqlite_code(error: BaseException) -> int | None:
    """The primary SQLite result code of a sqlite3 error (None for others, or one SQLite did not raise)."""
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def is_outage(error: DBAPIError) -> bool:
    """Whether SQLAlchemy's ``error`` means the database cannot be used now (503) rather than a bug (500).

    A connection SQLAlchemy found lost or unusable (storage trouble on a SQLite
    file counts, see ``_configure_sqlite``); a SQLite error by its code; on
    other databases, the driver's OperationalError or InterfaceError.
    """
    if error.connection_invalidated:
        return True
    if isinstance(error.orig, sqlite3.Error):
        return _sqlite_code(error.orig) in _SQLITE_UNAVAILABLE
    return isinstance(error, OperationalError | InterfaceError)


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` means the database cannot be used now (what the app answers with 503), not a bug."""
    if isinstance(error, DatabaseUnavailable | PoolTimeout):
        return True
    if isinstance(error, DBAPIError):
        return is_outage(error)
    return isinstance(error, _UNREACHABLE) and raised_by_database(error)


def _sqlite_error(code: int, name: str, message: str) -> sqlite3.OperationalError:
    """A sqlite3 error as SQLite would raise it, with its result code."""
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code
    error.sqlite_errorname = name
    return error


def _moved(path: str) -> sqlite3.OperationalError:
    return _sqlite_error(
        sqlite3.SQLITE_READONLY_DBMOVED, "SQLITE_READONLY_DBMOVED", f"the database file is no longer at {path}"
    )


def _file_at(path: str) -> tuple[int, int]:
    """``(st_dev, st_ino)`` of the file at ``path``, or the sqlite3 error of a file that is not there."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        raise _sqlite_error(sqlite3.SQLITE_CANTOPEN, "SQLITE_CANTOPEN", f"no database file at {path}") from None
    except OSError as error:
        raise _sqlite_error(sqlite3.SQLITE_IOERR, "SQLITE_IOERR", f"{path}: {error.strerror}") from None
    return found.st_dev, found.st_ino


class FileConnection(sqlite3.Connection):
    """A sqlite3 connection to the database file at ``path`` (a subclass per file sets it).

    Opened only on a writable file already there (connect it with a
    ``mode=rw`` URI: never created; and never read-only, which SQLite falls
    back to silently, for good); ``opened`` is that file, ``(st_dev, st_ino)``.
    """

    path: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        opened = _file_at(self.path)
        super().__init__(*args, **kwargs)
        try:
            if not os.access(self.path, os.W_OK):
                raise _sqlite_error(
                    sqlite3.SQLITE_READONLY, "SQLITE_READONLY", f"the database file at {self.path} is not writable"
                )
            if _file_at(self.path) != opened:
                raise _moved(self.path)
        except BaseException:
            self.close()
            raise
        self.opened = opened

    def at_path(self) -> bool:
        """Whether the file this connection opened is still the one at its path (one ``os.stat``)."""
        try:
            found = os.stat(self.path)
        except OSError:
            return False
        return (found.st_dev, found.st_ino) == self.opened

    def check(self) -> None:
        """SQLITE_READONLY_DBMOVED unless the file this connection opened is still at its path."""
        if not self.at_path():
            raise _moved(self.path)


class CheckedConnection(FileConnection):
    """A ``FileConnection`` for SQLAlchemy (pysqlite, aiosqlite), on the thread that runs its statements.

    Before a statement outside a transaction (a read, or the write that will
    begin one), and after the commit of a transaction that wrote, the file
    must still be at the path (``check``). sqlite3's ``execute`` goes through
    ``cursor`` too.
    """

    def cursor(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        if not self.in_transaction:
            self.check()
        return super().cursor(*args, **kwargs)

    def commit(self) -> None:
        wrote = self.in_transaction
        super().commit()
        if wrote:
            self.check()


def _sqlite_file(url: URL) -> str | None:
    """The absolute path of a SQLite file URL (None for memory, or a URL already in SQLite's URI form)."""
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:" or "uri" in url.query:
        return None
    return os.path.abspath(url.database)


def _connect_to_file(url: URL, path: str, connection_class: type[FileConnection]) -> tuple[URL, dict[str, Any]]:
    """The URL and connect arguments that open ``path`` as ``connection_class``: a ``mode=rw`` URI, never created."""
    watched = url.set(database="file:" + quote(path), query={**url.query, "mode": "rw", "uri": "true"})
    return watched, {"factory": type(connection_class.__name__, (connection_class,), {"path": path})}


def create_engine(settings: Settings) -> AsyncEngine:
    url = make_url(settings.DATABASE_URL)
    pool = {
        "pool_size": settings.DB_POOL_SIZE,
        "max_overflow": settings.DB_MAX_OVERFLOW,
        "pool_timeout": settings.DB_POOL_TIMEOUT,
    }
    if url.get_backend_name() == "sqlite":
        connect_args: dict[str, Any] = {}
        if path := _sqlite_file(url):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            url, connect_args = _connect_to_file(url, path, CheckedConnection)
        engine = create_async_engine(url, connect_args=connect_args, **pool)
        _configure_sqlite(engine, settings.SQLITE_BUSY_TIMEOUT_MS)
        return engine
    connect_args = {}
    if url.get_driver_name() == "asyncpg":
        # asyncpg's own timeouts: a connection attempt, and every statement.
        connect_args = {"timeout": settings.DB_CONNECT_TIMEOUT, "command_timeout": settings.DB_COMMAND_TIMEOUT}
    # pre_ping: a pooled connection the server dropped (restart, failover) is
    # replaced before use instead of failing the request.
    return create_async_engine(url, pool_pre_ping=True, connect_args=connect_args, **pool)


def _create_sqlite_thread_engine(settings: Settings, path: str) -> Engine:
    """A sync (pysqlite) engine on the same file, for units of work run on the SQLite threads."""
    url, connect_args = _connect_to_file(
        make_url(settings.DATABASE_URL).set(drivername="sqlite"), path, CheckedConnection
    )
    engine = create_sync_engine(
        url,
        connect_args=connect_args,
        pool_size=settings.SQLITE_THREADS,
        max_overflow=0,
        pool_timeout=settings.DB_POOL_TIMEOUT,
    )
    _configure_sqlite(engine, settings.SQLITE_BUSY_TIMEOUT_MS)

    @event.listens_for(engine, "checkout")
    def _still_at_path(dbapi_connection, _record, _proxy) -> None:
        # On the SQLite thread that checks it out: a pooled connection to a file
        # no longer at the path is replaced by one to the file there now, if any.
        if not dbapi_connection.at_path():
            raise DisconnectionError(f"the database file is no longer at {path}")

    return engine


def _configure_sqlite(engine: AsyncEngine | Engine, busy_timeout_ms: int) -> None:
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        _sqlite_pragmas(dbapi_connection, busy_timeout_ms)

    @event.listens_for(sync_engine, "handle_error")
    def _storage_failed(context) -> None:
        # The pool's connections are replaced (they may be on a file moved away,
        # or opened before the trouble began); the error is a 503 (is_outage).
        if _sqlite_code(context.original_exception) in _SQLITE_STORAGE:
            context.is_disconnect = True


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


class _ThreadConnection(threading.local):
    """A SQLite thread's own sqlite3 connection (autocommit), for run_sqlite: opened on first use, and
    again after storage trouble."""

    connection: FileConnection | None = None


class Database:
    """Owns the engine of this worker; created in before_serving, disposed in after_serving."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: AsyncEngine | None = None
        self.sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._thread_engine: Engine | None = None
        self._threads: ThreadPoolExecutor | None = None
        self._local = _ThreadConnection()
        self._raw_connections: set[FileConnection] = set()
        self._raw_connection_class: type[FileConnection] | None = None
        self._raw_uri = ""

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
        if path := _sqlite_file(make_url(self.settings.DATABASE_URL)):
            self._thread_engine = _create_sqlite_thread_engine(self.settings, path)
            self._raw_uri = "file:" + quote(path) + "?mode=rw"
            self._raw_connection_class = type("RawConnection", (FileConnection,), {"path": path})
            self._threads = ThreadPoolExecutor(max_workers=self.settings.SQLITE_THREADS, thread_name_prefix="sqlite")

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

    def _open_raw_connection(self) -> FileConnection:
        # isolation_level=None: each statement commits on its own (the fast
        # path's statements are single reads and single-row updates);
        # check_same_thread=False only so that dispose() can close it.
        connection = sqlite3.connect(
            self._raw_uri,
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            factory=self._raw_connection_class,
        )
        try:
            _sqlite_pragmas(connection, self.settings.SQLITE_BUSY_TIMEOUT_MS)
        except BaseException:
            connection.close()
            raise
        self._local.connection = connection
        self._raw_connections.add(connection)
        return connection

    def _drop_raw_connection(self) -> None:
        connection, self._local.connection = self._local.connection, None
        if connection is not None:
            self._raw_connections.discard(connection)
            connection.close()

    def _run_raw(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            connection = self._local.connection
            if connection is not None and not connection.at_path():
                # The file moved: never read from it; open the one at the path now, if any.
                self._drop_raw_connection()
                connection = None
            if connection is None:
                connection = self._open_raw_connection()
            changes = connection.total_changes
            result = work(connection)
            if connection.total_changes != changes:
                # It wrote (each statement commits): acknowledged only if that was the file at the path.
                connection.check()
            return result
        except sqlite3.Error as error:
            code = _sqlite_code(error)
            if code in _SQLITE_BUSY:
                # Another process holds the file past busy_timeout: transient.
                raise DatabaseUnavailable(f"SQLite file busy: {error}") from error
            if code in _SQLITE_STORAGE:
                self._drop_raw_connection()
                raise DatabaseUnavailable(f"SQLite file out of service: {error}") from error
            raise  # "no such table" and the like: bugs

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


# What asyncpg raises when a connection it had is gone (the server ended it:
# a restart, a failover, pg_terminate_backend), as opposed to a refused or
# silent server: a statement that failed this way on a pooled connection is
# tried once more on a new one.
def _connection_lost_errors() -> tuple[type[Exception], ...]:
    from asyncpg.exceptions import (
        AdminShutdownError,
        ConnectionDoesNotExistError,
        CrashShutdownError,
        InternalClientError,
    )
    from asyncpg.exceptions import InterfaceError as AsyncpgInterfaceError

    return (
        AdminShutdownError,  # terminating connection due to administrator command (a restart, pg_terminate_backend)
        CrashShutdownError,
        ConnectionDoesNotExistError,
        AsyncpgInterfaceError,
        ConnectionResetError,
        BrokenPipeError,
        # The server's "terminating connection" arrived while the connection sat in
        # the pool: asyncpg refuses the next statement ("another operation is in progress").
        InternalClientError,
    )


def _discard(connection: Any) -> None:
    """Close a pooled connection found broken, so that the pool opens a new one in its place."""
    try:
        connection.terminate()
    except Exception:  # already released: the pool saw it closed and drops it itself
        pass


async def _keep_state(_connection: Any) -> None:
    """asyncpg's reset on release, for connections that only run single autocommit statements: nothing to undo."""


class StatementPool:
    """A pool of plain asyncpg connections for the hot path's single statements (speed-up ``asyncpg_pool``).

    Checking a connection out of SQLAlchemy's pool costs a greenlet switch
    and, with ``pool_pre_ping``, three round trips (asyncpg's ping is
    ``BEGIN; SELECT; ROLLBACK``) before the one statement the request needs;
    and its overflow connections, opened and closed with every burst, each
    cost a TLS negotiation and a login. This pool keeps up to
    ``DB_POOL_SIZE`` connections open (opened on demand, closed after five
    idle minutes), releases them without asyncpg's reset query (nothing here
    changes session state) and does not ping: instead a statement that finds
    its pooled connection ended by the server is run once more on a new one
    (and every other connection open then is replaced at its next checkout,
    as a restart or failover ends them all), which is safe because every
    caller's work is a read or an idempotent update. The timeouts are the engine's: ``DB_POOL_TIMEOUT`` for a
    connection, ``DB_CONNECT_TIMEOUT`` to open one, ``DB_COMMAND_TIMEOUT``
    per statement; past them, or with the server refusing, the request is a
    503 (``DatabaseUnavailable``).
    """

    NAME = "quart_app statements"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: Any = None

    async def open(self, engine: AsyncEngine) -> None:
        """Ready to open connections to ``engine``'s database (an asyncpg engine), none opened yet."""
        import asyncpg

        options = connect_options(engine.dialect, engine.url, self.NAME)
        self._pool = asyncpg.create_pool(
            min_size=0,
            max_size=self.settings.DB_POOL_SIZE,
            max_inactive_connection_lifetime=300.0,
            reset=_keep_state,
            timeout=self.settings.DB_CONNECT_TIMEOUT,
            command_timeout=self.settings.DB_COMMAND_TIMEOUT,
            **options,
        )
        await self._pool  # min_size=0: opens nothing yet

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=self.settings.DB_CONNECT_TIMEOUT)
            except (TimeoutError, *_UNREACHABLE):
                pool.terminate()

    async def run(self, work: Callable[[Any], Any]) -> Any:
        """``await work(connection)`` on a pooled asyncpg connection; once more on a new one if it was lost."""
        lost = _connection_lost_errors()
        for attempt in (1, 2):
            try:
                async with self._pool.acquire(timeout=self.settings.DB_POOL_TIMEOUT) as connection:
                    try:
                        return await work(connection)
                    except lost:
                        if attempt == 2:
                            raise
                        # Its siblings are likely gone too (a restart ends them all): every
                        # connection open now is replaced at its next checkout.
                        _discard(connection)
                        await self._pool.expire_connections()
                continue
            except (*_UNREACHABLE, *_asyncpg_connection_errors(), *lost) as error:
                raise DatabaseUnavailable(f"no answer: {type(error).__name__}") from error
        raise AssertionError("unreachable")


# The keyword arguments of asyncpg.connect that a SQLAlchemy URL can give.
_ASYNCPG_CONNECT_OPTIONS = frozenset({"host", "port", "user", "password", "database", "ssl", "server_settings"})


def connect_options(dialect: Any, url: URL, name: str) -> dict[str, Any]:
    """asyncpg.connect's keyword arguments for a SQLAlchemy asyncpg ``url``, the connection named ``name``.

    The name shows in ``pg_stat_activity.application_name``, which tells the
    app's own connections (the engine's, ``StatementPool``'s, the session
    events' listener) apart.
    """
    _args, options = dialect.create_connect_args(url)
    options = {key: value for key, value in options.items() if key in _ASYNCPG_CONNECT_OPTIONS}
    options["server_settings"] = {**(options.get("server_settings") or {}), "application_name": name}
    return options
