"""The server-side session store: a row per login, found by the SHA-256 of the cookie's secret."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update

from ..core.config import Settings
from ..core.security import new_session_token, token_digest
from ..db import get_db
from ..models import AuthSession, User


def utcnow() -> datetime:
    # Naive UTC throughout: SQLite keeps no time zone, and comparisons in SQL
    # must see the same representation on both sides.
    return datetime.now(UTC).replace(tzinfo=None)


def _expiry(settings: Settings, *, remember: bool, created_at: datetime, now: datetime) -> datetime:
    if remember:
        return created_at + timedelta(seconds=settings.REMEMBER_COOKIE_DURATION)
    return min(
        created_at + timedelta(seconds=settings.SESSION_ABSOLUTE_TIMEOUT),
        now + timedelta(seconds=settings.SESSION_IDLE_TIMEOUT),
    )


async def start(
    user: User, *, remember: bool, ip: str | None, user_agent: str | None, settings: Settings
) -> str:
    """Store a new session for ``user``; returns the secret for the cookie (never stored)."""
    token = new_session_token()
    now = utcnow()
    db = get_db()
    db.add(
        AuthSession(
            token_hash=token_digest(token),
            user_id=user.id,
            remember=remember,
            created_at=now,
            last_seen_at=now,
            expires_at=_expiry(settings, remember=remember, created_at=now, now=now),
            ip=(ip or "")[:45] or None,
            user_agent=(user_agent or "")[:256] or None,
        )
    )
    await db.commit()
    return token


async def resolve(token: str, settings: Settings) -> User | None:
    """The active user whose unexpired session this token opens, in one indexed query."""
    now = utcnow()
    db = get_db()
    row = (
        await db.execute(
            select(User, AuthSession.id, AuthSession.remember, AuthSession.created_at, AuthSession.last_seen_at)
            .join(AuthSession, AuthSession.user_id == User.id)
            .where(
                AuthSession.token_hash == token_digest(token),
                AuthSession.expires_at > now,
                User.is_active.is_(True),
            )
        )
    ).first()
    if row is None:
        await db.commit()
        return None
    user, session_id, remember, created_at, last_seen_at = row
    if (now - last_seen_at).total_seconds() >= settings.SESSION_TOUCH_INTERVAL:
        # At most one write per session per interval: it records activity and
        # slides the idle expiry of a plain login forward.
        await db.execute(
            update(AuthSession)
            .where(AuthSession.id == session_id)
            .values(
                last_seen_at=now,
                expires_at=_expiry(settings, remember=remember, created_at=created_at, now=now),
            )
        )
    # End the transaction now: the connection goes back to the pool before
    # the view runs, instead of being held until the response is sent.
    await db.commit()
    return user


async def revoke(token: str) -> None:
    """Delete the session this token opens: its cookie is refused from now on, by every worker."""
    db = get_db()
    await db.execute(delete(AuthSession).where(AuthSession.token_hash == token_digest(token)))
    await db.commit()
