"""Server-side sessions behind a small protocol: the extension knows nothing of where they are kept.

A login is a random secret in the cookie and a record in the store, found by
the secret's SHA-256 (the store never keeps the secret). Revoking the record
kills the cookie on every worker and instance at once.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from .config import Lifetimes


def utcnow() -> datetime:
    """Naive UTC, as stored: SQLite keeps no time zone, and SQL compares the same representation."""
    return datetime.now(UTC).replace(tzinfo=None)


def new_token() -> str:
    """A session's secret, for the cookie: 256 random bits."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What a store keeps of a secret: its SHA-256 in hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class AuthSession:
    """One logged-in browser or client, as the store keeps it (the id is public, the secret is not)."""

    id: Any
    user_id: Any
    remember: bool
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    # When a credential was last presented (None: never in this session, e.g. fresh=False).
    auth_time: datetime | None = None
    ip: str | None = None
    user_agent: str | None = None

    def with_changes(self, **changes: Any) -> AuthSession:
        return replace(self, **changes)


@dataclass(frozen=True)
class NewSession:
    """What ``login_user`` asks a store to keep."""

    user_id: Any
    remember: bool
    fresh: bool
    ip: str | None
    user_agent: str | None
    # A remembered session's lifetime, when not the configured one (seconds).
    duration: float | None = None


@dataclass(frozen=True)
class Resolved:
    """A live session and, when the store loads it in the same query, its user (else None)."""

    auth_session: AuthSession
    user: Any = None


@runtime_checkable
class AuthSessionStore(Protocol):
    """Where sessions live. Every method runs its own short transaction."""

    async def start(
        self, new: NewSession, lifetimes: Lifetimes, *, replaces: str | None = None
    ) -> tuple[str, AuthSession]:
        """Keep a new session (ending the one ``replaces`` opens); returns its secret and record."""

    async def resolve(self, token: str, lifetimes: Lifetimes) -> Resolved | None:
        """The live session this secret opens (touched when TOUCH_INTERVAL has passed), or None."""

    async def is_live(self, token: str) -> bool:
        """Whether the secret still opens a session, without touching it."""

    async def is_open(self, session_id: Any) -> bool:
        """Whether the session with this id still opens (not revoked, expired or of an inactive user)."""

    async def rotate(self, auth_session: AuthSession) -> str | None:
        """Give the session a new secret (the old one opens nothing from now on); None if it is gone."""

    async def confirm(self, auth_session: AuthSession) -> AuthSession:
        """Record that a credential was presented again now (``confirm_login``)."""

    async def revoke(self, token: str) -> bool:
        """End the session this secret opens; False if there was none."""

    async def revoke_id(self, user_id: Any, session_id: Any) -> bool:
        """End one of the user's sessions by its public id; False if it is not theirs."""

    async def revoke_user(self, user_id: Any, *, keep: Any = None) -> int:
        """End every session of the user (but the one with id ``keep``); returns how many."""

    async def list_user(self, user_id: Any) -> list[AuthSession]:
        """The user's live sessions, most recently active first."""
