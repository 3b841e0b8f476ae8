"""The server-side session store: a row per login, found by the SHA-256 of the cookie's secret."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from quart import g
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.orm import Session

from ..core.config import Settings
from ..core.security import new_session_token, token_digest
from ..db import asyncpg_connection, get_db, run_sqlite, run_unit, sqlite_threads, uses_asyncpg
from ..models import AuthEvent, AuthSession, User, column_values


def utcnow() -> datetime:
    # Naive UTC throughout: SQLite keeps no time zone, and comparisons in SQL
    # must see the same representation on both sides.
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class CurrentSession:
    """The server-side session behind this request (its row id is public; the secret is not)."""

    id: int
    created_at: datetime
    remember: bool


def current_session() -> CurrentSession | None:
    """The session the loader resolved for this request, if any."""
    return g.get("_auth_session")


def _expiry(settings: Settings, *, remember: bool, created_at: datetime, now: datetime) -> datetime:
    if remember:
        return created_at + timedelta(seconds=settings.REMEMBER_COOKIE_DURATION)
    return min(
        created_at + timedelta(seconds=settings.SESSION_ABSOLUTE_TIMEOUT),
        now + timedelta(seconds=settings.SESSION_IDLE_TIMEOUT),
    )


async def start(
    user: User,
    *,
    remember: bool,
    ip: str | None,
    user_agent: str | None,
    settings: Settings,
    replaces: str | None = None,
    event: AuthEvent | None = None,
) -> str:
    """Store a new session for ``user`` (and ``event``, ending session ``replaces``) in one unit of work.

    Returns the secret for the cookie; the database keeps only its digest.
    """
    token = new_session_token()
    now = utcnow()
    row = {
        "token_hash": token_digest(token),
        "user_id": user.id,
        "remember": remember,
        "created_at": now,
        "last_seen_at": now,
        "expires_at": _expiry(settings, remember=remember, created_at=now, now=now),
        "ip": (ip or "")[:45] or None,
        "user_agent": (user_agent or "")[:256] or None,
    }
    event_values = None if event is None else column_values(event)

    def work(session: Session) -> int:
        # Core statements on the unit's connection: two inserts need no ORM flush.
        connection = session.connection()
        if replaces is not None:
            connection.execute(_END_REPLACED, {"digest": token_digest(replaces)})
        if event_values is not None:
            connection.execute(_INSERT_EVENT, event_values)
        session_id = connection.execute(_INSERT_SESSION, row).inserted_primary_key[0]
        session.commit()
        return session_id

    session_id = await run_unit(work)
    g._auth_session = CurrentSession(session_id, now, remember)
    return token


_END_REPLACED = delete(AuthSession).where(AuthSession.token_hash == bindparam("digest"))
_INSERT_EVENT = insert(AuthEvent)
_INSERT_SESSION = insert(AuthSession)


# Built once: the protected hot path only binds two values (the statement's
# construction would otherwise cost more Python than its execution). Plain
# columns, not entities: no identity map or ORM loading for one row.
_RESOLVE = (
    select(
        User.id,
        User.username,
        User.email,
        User.password_hash,
        User.created_at,
        AuthSession.id.label("session_id"),
        AuthSession.remember,
        AuthSession.created_at.label("session_created_at"),
        AuthSession.last_seen_at,
    )
    .join(AuthSession, AuthSession.user_id == User.id)
    .where(
        AuthSession.token_hash == bindparam("digest"),
        AuthSession.expires_at > bindparam("now"),
        User.is_active.is_(True),
    )
)


def _lookup(digest: str, now: datetime, settings: Settings):
    """The unit of work of one protected request: the lookup, and at most once a minute a touch."""

    def work(session: Session):
        row = session.execute(_RESOLVE, {"digest": digest, "now": now}).first()
        if row is not None and _needs_touch(row, now, settings):
            session.execute(_TOUCH, _touch_values(row, now, settings))
        session.commit()
        return row

    return work


# The same statements as SQL for the SQLite threads' own sqlite3 connections
# (see quart_app/db.py): compiled once here, so SQLAlchemy stays their source.
_TOUCH = (
    update(AuthSession)
    .where(AuthSession.id == bindparam("session_id"))
    .values(last_seen_at=bindparam("seen"), expires_at=bindparam("expires"))
)
_SQLITE = sqlite_dialect()
_RESOLVE_SQLITE = _RESOLVE.compile(dialect=_SQLITE)
_TOUCH_SQLITE = _TOUCH.compile(dialect=_SQLITE)
_ASYNCPG = asyncpg_dialect()
_RESOLVE_ASYNCPG = _RESOLVE.compile(dialect=_ASYNCPG)
_TOUCH_ASYNCPG = _TOUCH.compile(dialect=_ASYNCPG)


def _bound(compiled, **params) -> tuple:
    """``params`` in the order of ``compiled``'s positional placeholders."""
    return tuple(params[name] for name in compiled.positiontup)


class _Resolved(NamedTuple):
    id: int
    username: str
    email: str
    password_hash: str
    created_at: datetime | None
    session_id: int
    remember: bool
    session_created_at: datetime
    last_seen_at: datetime


def _sqlite_time(moment: datetime) -> str:
    # As SQLAlchemy stores a DateTime in SQLite: comparisons in SQL are on this text.
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def _parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _lookup_sqlite(digest: str, now: datetime, settings: Settings):
    """``_lookup`` on a thread's sqlite3 connection: one indexed read; the touch when due, in autocommit."""
    values = _bound(_RESOLVE_SQLITE, digest=digest, now=_sqlite_time(now))

    def work(connection: sqlite3.Connection) -> _Resolved | None:
        found = connection.execute(_RESOLVE_SQLITE.string, values).fetchone()
        if found is None:
            return None
        user_id, username, email, password_hash, created, session_id, remember, session_created, seen = found
        row = _Resolved(
            user_id,
            username,
            email,
            password_hash,
            _parse_time(created),
            session_id,
            bool(remember),
            _parse_time(session_created),
            _parse_time(seen),
        )
        if _needs_touch(row, now, settings):
            touch = _touch_values(row, now, settings)
            touch = {**touch, "seen": _sqlite_time(touch["seen"]), "expires": _sqlite_time(touch["expires"])}
            connection.execute(_TOUCH_SQLITE.string, _bound(_TOUCH_SQLITE, **touch))
        return row

    return work


def _needs_touch(row, now: datetime, settings: Settings) -> bool:
    return (now - row.last_seen_at).total_seconds() >= settings.SESSION_TOUCH_INTERVAL


def _touch_values(row, now: datetime, settings: Settings) -> dict[str, object]:
    # Records activity and slides the idle expiry of a plain login.
    expires = _expiry(settings, remember=row.remember, created_at=row.session_created_at, now=now)
    return {"session_id": row.session_id, "seen": now, "expires": expires}


async def _lookup_asyncpg(digest: str, now: datetime, settings: Settings) -> _Resolved | None:
    """``_lookup`` on a pooled asyncpg connection: one prepared, indexed read; the touch when due."""
    async with asyncpg_connection() as connection:
        found = await connection.fetchrow(_RESOLVE_ASYNCPG.string, *_bound(_RESOLVE_ASYNCPG, digest=digest, now=now))
        if found is None:
            return None
        row = _Resolved(*found)
        if _needs_touch(row, now, settings):
            touch = _touch_values(row, now, settings)
            await connection.execute(_TOUCH_ASYNCPG.string, *_bound(_TOUCH_ASYNCPG, **touch))
    return row


async def _find(digest: str, now: datetime, settings: Settings):
    database = sqlite_threads()
    if database is not None:
        return await run_sqlite(database, _lookup_sqlite(digest, now, settings))
    if uses_asyncpg():
        return await _lookup_asyncpg(digest, now, settings)
    return await run_unit(_lookup(digest, now, settings))


async def resolve(token: str, settings: Settings) -> User | None:
    """The active user whose unexpired session this token opens, in one indexed query."""
    row = await _find(token_digest(token), utcnow(), settings)
    if row is None:
        return None
    g._auth_session = CurrentSession(row.session_id, row.session_created_at, row.remember)
    return User(
        id=row.id,
        username=row.username,
        email=row.email,
        password_hash=row.password_hash,
        is_active=True,
        created_at=row.created_at,
    )


async def revoke(token: str) -> None:
    """Delete the session this token opens: its cookie is refused from now on, by every worker.

    The caller commits (so the revocation lands with whatever goes with it).
    """
    await get_db().execute(delete(AuthSession).where(AuthSession.token_hash == token_digest(token)))


async def list_for(user_id: int) -> list[AuthSession]:
    """The user's unexpired sessions, newest activity first."""
    db = get_db()
    rows = (
        (
            await db.execute(
                select(AuthSession)
                .where(AuthSession.user_id == user_id, AuthSession.expires_at > utcnow())
                .order_by(AuthSession.last_seen_at.desc(), AuthSession.id.desc())
            )
        )
        .scalars()
        .all()
    )
    await db.commit()
    return list(rows)


async def revoke_id(user_id: int, session_id: int) -> bool:
    """Delete one of the user's sessions by its public id; False if it is not theirs. The caller commits."""
    result = await get_db().execute(
        delete(AuthSession).where(AuthSession.id == session_id, AuthSession.user_id == user_id)
    )
    return result.rowcount > 0


async def revoke_all(user_id: int, *, except_id: int | None = None) -> int:
    """Delete every session of the user (but ``except_id``); returns how many. The caller commits."""
    statement = delete(AuthSession).where(AuthSession.user_id == user_id)
    if except_id is not None:
        statement = statement.where(AuthSession.id != except_id)
    result = await get_db().execute(statement)
    return result.rowcount


def describe(row: AuthSession) -> dict[str, object]:
    """A session as the account page and the API show it (the id is not the cookie's secret)."""
    current = current_session()

    def iso(moment: datetime) -> str:
        return moment.replace(microsecond=0).isoformat() + "Z"

    return {
        "id": row.id,
        "created_at": iso(row.created_at),
        "last_seen_at": iso(row.last_seen_at),
        "ip": row.ip,
        "user_agent": row.user_agent,
        "current": current is not None and current.id == row.id,
    }


async def is_live(token: str) -> bool:
    """Whether this session still opens (not revoked, expired or deactivated), without touching it."""
    digest, now = token_digest(token), utcnow()
    database = sqlite_threads()
    if database is not None:
        values = _bound(_RESOLVE_SQLITE, digest=digest, now=_sqlite_time(now))
        return await run_sqlite(
            database, lambda connection: connection.execute(_RESOLVE_SQLITE.string, values).fetchone() is not None
        )

    def work(session: Session) -> bool:
        found = session.execute(_RESOLVE, {"digest": digest, "now": now}).first() is not None
        session.commit()
        return found

    return await run_unit(work)
