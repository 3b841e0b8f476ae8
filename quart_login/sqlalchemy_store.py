"""The SQLAlchemy (asyncio) session store: the app's own table and user model, any backend SQLAlchemy serves.

The app declares the table with the mixin and its own foreign key, and owns
the migration (as with fastapi-users' token tables)::

    class AuthSession(AuthSessionMixin, Base):
        __tablename__ = "auth_sessions"
        user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)

    store = SQLAlchemyAuthSessionStore(AuthSession, User, sessionmaker=lambda: app_sessionmaker)

Resolving a request is one indexed query that joins the user, so that
``current_user`` is the app's own ``User`` with every mapped column loaded
(as a detached instance: ``db.add(user)`` attaches it to a session).
Each method runs its own short transaction, or joins the caller's when given
``db=`` (an ``AsyncSession`` the caller then commits).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Boolean, DateTime, Integer, String, bindparam, delete, insert, inspect, select, true, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, Session, make_transient_to_detached, mapped_column
from sqlalchemy.types import TypeDecorator

from .config import Lifetimes
from .store import AMR_MAX, DEFAULT_AMR, AuthSession, NewSession, Resolved, new_token, token_digest, utcnow

T = TypeVar("T")
Unit = Callable[[Session], T]  # sync SQLAlchemy code given a Session (called ``db``)
UnitRunner = Callable[[Unit], Awaitable[Any]]
# A replacement for the resolve query (a faster path for one backend): given
# the digest, the time and the lifetimes, it returns the row of
# ``SQLAlchemyAuthSessionStore.columns`` as Python values (or None), and
# touches the session when ``touch_values`` says so.
Lookup = Callable[[str, datetime, Lifetimes], Awaitable[tuple | None]]
# The same for ``open_until``: given a session's id and the time, when it expires if it still opens, else None.
OpenLookup = Callable[[Any, datetime], Awaitable[datetime | None]]
# Told of sessions ended, inside the unit of work that ends them (so that what
# it records commits or rolls back with them): the Session, then ``"session"``
# and a session's id, or ``"user"`` and the id of a user some of whose sessions ended.
EndHook = Callable[[Session, str, Any], None]

IP_MAX, USER_AGENT_MAX = 45, 256


class MethodList(TypeDecorator):
    """A tuple of authentication method names, kept as one comma-separated string (``"pwd,otp"``)."""

    impl = String(AMR_MAX)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None or isinstance(value, str):
            return value
        return ",".join(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> tuple[str, ...]:
        return tuple(name for name in (value or "").split(",") if name)


class AuthSessionMixin:
    """The columns of a session table; the app adds ``user_id`` with its foreign key."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # SHA-256 of the cookie's secret, never the secret.
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    remember: Mapped[bool] = mapped_column(Boolean, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    # Idle and absolute lifetimes folded into one column: the per-request
    # check is one comparison.
    expires_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    auth_time: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    ip: Mapped[str | None] = mapped_column(String(IP_MAX))
    user_agent: Mapped[str | None] = mapped_column(String(USER_AGENT_MAX))
    # How the session was authenticated (``AuthSession.amr``, "pwd,otp" in the column) and the level
    # reached. The server defaults give rows from before these columns what they were: password logins.
    amr: Mapped[tuple[str, ...]] = mapped_column(
        MethodList(), nullable=False, default=DEFAULT_AMR, server_default=",".join(DEFAULT_AMR)
    )
    aal: Mapped[int] = mapped_column(Integer, nullable=False, default=1, server_default="1")


# The record's fields, in the order the resolve query selects them.
SESSION_FIELDS = (
    "id",
    "user_id",
    "remember",
    "created_at",
    "last_seen_at",
    "expires_at",
    "auth_time",
    "ip",
    "user_agent",
    "amr",
    "aal",
)


@dataclass(frozen=True)
class RawStatement:
    """A statement compiled for one dialect, for a driver's own connection (see ``Lookup``)."""

    sql: str
    _names: tuple[str, ...]
    _binds: tuple[Callable[[Any], Any] | None, ...]
    _results: tuple[Callable[[Any], Any] | None, ...]

    def params(self, **values: Any) -> tuple:
        """``values`` in the order of the positional placeholders, as the driver takes them."""
        return tuple(
            value if convert is None else convert(value)
            for convert, value in zip(self._binds, (values[name] for name in self._names), strict=True)
        )

    def decode(self, row: Any) -> tuple:
        """A row as the driver returns it, as the Python values SQLAlchemy would give."""
        return tuple(
            value if convert is None else convert(value) for convert, value in zip(self._results, row, strict=True)
        )


def compile_raw(statement: Any, dialect: Dialect) -> RawStatement:
    compiled = statement.compile(dialect=dialect)
    names = tuple(compiled.positiontup or ())
    binds = tuple(compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names)
    columns = statement.selected_columns if hasattr(statement, "selected_columns") else ()
    results = tuple(column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns)
    return RawStatement(compiled.string, names, binds, results)


class SQLAlchemyAuthSessionStore:
    """Sessions in the app's table (``AuthSessionMixin``), users from its model: one query per request."""

    def __init__(
        self,
        session_model: type,
        user_model: type,
        *,
        sessionmaker: async_sessionmaker[AsyncSession] | Callable[[], async_sessionmaker[AsyncSession]],
        active_column: str | None = "is_active",
        run_unit: UnitRunner | None = None,
    ) -> None:
        """``sessionmaker``: the app's, or a function returning it (when the engine is made at startup).

        ``active_column``: a boolean column of the user model that must be true for its sessions to open
        (None: every user's). ``run_unit``: runs ``work(session)`` (sync SQLAlchemy code that commits)
        somewhere other than on an ``AsyncSession`` of ``sessionmaker`` (a thread pool, say).
        """
        self.session_model = session_model
        self.user_model = user_model
        self._sessionmaker = sessionmaker
        self._run_unit = run_unit or self._run_on_async_session
        #: Faster paths for one backend, set by the app (None: the statements run through SQLAlchemy).
        self.lookup: Lookup | None = None
        self.open_lookup: OpenLookup | None = None
        #: Told of every session this store ends (a publisher of session events, say), or None.
        self.on_end: EndHook | None = None

        user_mapper = inspect(user_model)
        self._user_mapper = user_mapper
        self.user_keys = tuple(prop.key for prop in user_mapper.column_attrs)
        user_columns = [getattr(user_model, key) for key in self.user_keys]
        session_columns = [getattr(session_model, name) for name in SESSION_FIELDS]
        #: What the resolve query selects: the session's fields, then every column of the user.
        self.columns = (*session_columns, *user_columns)
        [primary_key] = user_mapper.primary_key
        conditions = [
            session_model.token_hash == bindparam("digest"),
            session_model.expires_at > bindparam("now"),
        ]
        if active_column is not None:
            conditions.append(getattr(user_model, active_column).is_(true()))
        # Built once: a request only binds two values.
        self.resolve_statement = (
            select(*self.columns).join(user_model, session_model.user_id == primary_key).where(*conditions)
        )
        self.live_statement = (
            select(session_model.id).join(user_model, session_model.user_id == primary_key).where(*conditions)
        )
        self.open_statement = (
            select(session_model.expires_at)
            .join(user_model, session_model.user_id == primary_key)
            .where(session_model.id == bindparam("session_id"), *conditions[1:])
        )
        self.touch_statement = (
            update(session_model)
            .where(session_model.id == bindparam("session_id"))
            .values(last_seen_at=bindparam("seen"), expires_at=bindparam("expires"))
        )
        self._insert = insert(session_model)
        self._delete_by_digest = delete(session_model).where(session_model.token_hash == bindparam("digest"))
        self._delete_by_digest_returning = self._delete_by_digest.returning(session_model.id)
        self._session_count = len(SESSION_FIELDS)

    # -- running units of work ---------------------------------------------

    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        maker = self._sessionmaker
        return maker if isinstance(maker, async_sessionmaker) else maker()

    async def _run_on_async_session(self, work: Unit) -> Any:
        async with self.sessionmaker()() as db:
            return await db.run_sync(work)

    async def _run(self, work: Callable[[Session], T], db: AsyncSession | None = None) -> T:
        if db is not None:  # the caller's transaction: the caller commits
            return await db.run_sync(work)

        def unit(db: Session) -> T:
            result = work(db)
            db.commit()
            return result

        return await self._run_unit(unit)

    # -- rows to objects -----------------------------------------------------

    def build(self, row: tuple) -> Resolved:
        """The record and the user (detached, every column loaded) from a row of ``columns``."""
        count = self._session_count
        record = AuthSession(*row[:count])
        user = self._user_mapper.class_manager.new_instance()
        user.__dict__.update(zip(self.user_keys, row[count:], strict=True))
        make_transient_to_detached(user)
        return Resolved(record, user)

    def touch_values(self, row: tuple, now: datetime, lifetimes: Lifetimes) -> dict[str, Any] | None:
        """The touch statement's parameters when this row's session is due one, else None."""
        record = AuthSession(*row[: self._session_count])
        if not lifetimes.needs_touch(record.last_seen_at, now):
            return None
        expires = lifetimes.expiry(remember=record.remember, created_at=record.created_at, now=now)
        if record.remember:
            expires = record.expires_at  # fixed at login (its duration may be the caller's)
        return {"session_id": record.id, "seen": now, "expires": expires}

    def compile_for(self, dialect: Dialect) -> dict[str, RawStatement]:
        """The resolve, open and touch statements compiled for ``dialect`` (for a ``Lookup``/``OpenLookup``)."""
        return {
            "resolve": compile_raw(self.resolve_statement, dialect),
            "open": compile_raw(self.open_statement, dialect),
            "touch": compile_raw(self.touch_statement, dialect),
        }

    # -- the protocol ----------------------------------------------------------

    async def start(
        self,
        new: NewSession,
        lifetimes: Lifetimes,
        *,
        replaces: str | None = None,
        db: AsyncSession | None = None,
    ) -> tuple[str, AuthSession]:
        token = new_token()
        now = utcnow()
        values = {
            "user_id": new.user_id,
            "remember": new.remember,
            "created_at": now,
            "last_seen_at": now,
            "expires_at": lifetimes.expiry(remember=new.remember, created_at=now, now=now, duration=new.duration),
            "auth_time": now if new.fresh else None,
            "ip": (new.ip or "")[:IP_MAX] or None,
            "user_agent": (new.user_agent or "")[:USER_AGENT_MAX] or None,
            "amr": tuple(new.amr),
            "aal": new.aal,
        }

        def work(db: Session) -> Any:
            connection = db.connection()
            if replaces is not None:
                self._delete_digest(db, token_digest(replaces))
            return connection.execute(self._insert, {**values, "token_hash": token_digest(token)}).inserted_primary_key[
                0
            ]

        session_id = await self._run(work, db)
        return token, AuthSession(id=session_id, **values)

    async def resolve(self, token: str, lifetimes: Lifetimes) -> Resolved | None:
        digest, now = token_digest(token), utcnow()
        if self.lookup is not None:
            row = await self.lookup(digest, now, lifetimes)
        else:

            def work(db: Session) -> tuple | None:
                connection = db.connection()
                found = connection.execute(self.resolve_statement, {"digest": digest, "now": now}).first()
                if found is not None and (touch := self.touch_values(tuple(found), now, lifetimes)) is not None:
                    connection.execute(self.touch_statement, touch)
                return None if found is None else tuple(found)

            row = await self._run(work)
        return None if row is None else self.build(row)

    async def is_live(self, token: str) -> bool:
        digest, now = token_digest(token), utcnow()

        def work(db: Session) -> bool:
            return db.connection().execute(self.live_statement, {"digest": digest, "now": now}).first() is not None

        return await self._run(work)

    async def is_open(self, session_id: Any) -> bool:
        return await self.open_until(session_id) is not None

    async def open_until(self, session_id: Any) -> datetime | None:
        """When the session with this id expires, if it still opens (not revoked, expired or of an inactive
        user); else None. (A request that touches it moves the time on.)"""
        now = utcnow()
        if self.open_lookup is not None:
            return await self.open_lookup(session_id, now)

        def work(db: Session) -> datetime | None:
            return db.connection().execute(self.open_statement, {"session_id": session_id, "now": now}).scalar()

        return await self._run(work)

    async def rotate(self, auth_session: AuthSession, *, db: AsyncSession | None = None) -> str | None:
        token = new_token()
        model = self.session_model
        statement = update(model).where(model.id == auth_session.id).values(token_hash=token_digest(token))
        changed = await self._run(lambda db: db.connection().execute(statement).rowcount, db)
        return token if changed else None

    async def confirm(
        self,
        auth_session: AuthSession,
        *,
        amr: tuple[str, ...] | None = None,
        aal: int | None = None,
        db: AsyncSession | None = None,
    ) -> AuthSession:
        changes: dict[str, Any] = {"auth_time": utcnow()}
        if amr is not None:
            changes["amr"] = tuple(amr)
        if aal is not None:
            changes["aal"] = aal
        model = self.session_model
        statement = update(model).where(model.id == auth_session.id).values(**changes)
        await self._run(lambda db: db.connection().execute(statement), db)
        return auth_session.with_changes(**changes)

    def _delete_digest(self, db: Session, digest: str) -> bool:
        """Delete the session this digest opens (telling ``on_end``): whether there was one."""
        connection = db.connection()
        if self.on_end is None:
            return connection.execute(self._delete_by_digest, {"digest": digest}).rowcount > 0
        ended = connection.execute(self._delete_by_digest_returning, {"digest": digest})
        ids = ended.scalars().all()
        for session_id in ids:
            self.on_end(db, "session", session_id)
        return bool(ids)

    async def revoke(self, token: str, *, db: AsyncSession | None = None) -> bool:
        digest = token_digest(token)
        return await self._run(lambda db: self._delete_digest(db, digest), db)

    async def revoke_id(self, user_id: Any, session_id: Any, *, db: AsyncSession | None = None) -> bool:
        model = self.session_model
        statement = delete(model).where(model.id == session_id, model.user_id == user_id)

        def work(db: Session) -> bool:
            ended = db.connection().execute(statement).rowcount > 0
            if ended and self.on_end is not None:
                self.on_end(db, "session", session_id)
            return ended

        return await self._run(work, db)

    async def revoke_user(self, user_id: Any, *, keep: Any = None, db: AsyncSession | None = None) -> int:
        model = self.session_model
        statement = delete(model).where(model.user_id == user_id)
        if keep is not None:
            statement = statement.where(model.id != keep)

        def work(db: Session) -> int:
            count = db.connection().execute(statement).rowcount
            if count and self.on_end is not None:
                self.on_end(db, "user", user_id)
            return count

        return await self._run(work, db)

    async def list_user(self, user_id: Any, *, db: AsyncSession | None = None) -> list[AuthSession]:
        model = self.session_model
        statement = (
            select(*(getattr(model, name) for name in SESSION_FIELDS))
            .where(model.user_id == user_id, model.expires_at > utcnow())
            .order_by(model.last_seen_at.desc(), model.id.desc())
        )
        rows = await self._run(lambda db: db.connection().execute(statement).all(), db)
        return [AuthSession(*row) for row in rows]
