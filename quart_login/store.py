"""Server-side sessions behind a small protocol: the extension knows nothing of where they are kept.

A login is a random secret in the cookie and a record in the store, found by
the secret's SHA-256 (the store never keeps the secret). Revoking the record
kills the cookie on every worker and instance at once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
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


# -- how a session was authenticated ---------------------------------------------------

#: The methods ``login_user`` records when none are given: a password.
DEFAULT_AMR: tuple[str, ...] = ("pwd",)
#: Methods that are a second kind of factor next to a password (something you have).
SECOND_FACTORS = frozenset({"otp", "rec", "webauthn"})
#: Methods that are two factors on their own: a passkey with user verification.
MULTI_FACTOR_METHODS = frozenset({"webauthn"})
#: A method's name: short, lower case, no comma (the SQLAlchemy store keeps them comma-separated).
METHOD_RE = re.compile(r"[a-z][a-z0-9_-]{0,15}")
#: The longest list a store must keep, joined by commas.
AMR_MAX = 64


def normalize_amr(methods: Iterable[str] | str) -> tuple[str, ...]:
    """``methods`` as a store keeps them: each once, in the order first presented; ValueError for a bad name.

    A single name may be given as a string (``"otp"``).
    """
    if isinstance(methods, str):
        methods = (methods,)
    names = tuple(dict.fromkeys(methods))
    for name in names:
        if not isinstance(name, str) or not METHOD_RE.fullmatch(name):
            raise ValueError(f"not an authentication method name: {name!r}")
    if len(",".join(names)) > AMR_MAX:
        raise ValueError(f"too many authentication methods: {names!r}")
    return names


def assurance_level(amr: Iterable[str]) -> int:
    """The authenticator assurance level the methods ``amr`` reach: 2 for two kinds of factor, else 1.

    Two: a password and a second factor (``otp``, ``rec`` or ``webauthn``), or
    a passkey (``webauthn``) alone, which this extension takes as one with user
    verification (a caller whose passkey was used without it passes ``aal=1``).
    Anything else (a password alone, a code alone, no method) is 1.
    """
    methods = set(amr)
    if methods & MULTI_FACTOR_METHODS:
        return 2
    return 2 if "pwd" in methods and methods & SECOND_FACTORS else 1


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
    # How the user authenticated in this session (RFC 8176 names: "pwd", "otp", ...; "rec" a recovery
    # code), in the order first presented, and the assurance level that reached (1 or 2).
    amr: tuple[str, ...] = DEFAULT_AMR
    aal: int = 1

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
    # The methods presented to log in, and the assurance level they give (``login_user`` computes it).
    amr: tuple[str, ...] = DEFAULT_AMR
    aal: int = 1


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

    async def confirm(
        self, auth_session: AuthSession, *, amr: tuple[str, ...] | None = None, aal: int | None = None
    ) -> AuthSession:
        """Record that a credential was presented again now (``auth_time``; ``confirm_login``, ``step_up``).

        ``amr`` and ``aal``, when given, replace the session's methods and level
        (the extension has merged them already: the store writes them as given).
        """

    async def revoke(self, token: str) -> bool:
        """End the session this secret opens; False if there was none."""

    async def revoke_id(self, user_id: Any, session_id: Any) -> bool:
        """End one of the user's sessions by its public id; False if it is not theirs."""

    async def revoke_user(self, user_id: Any, *, keep: Any = None) -> int:
        """End every session of the user (but the one with id ``keep``); returns how many."""

    async def list_user(self, user_id: Any) -> list[AuthSession]:
        """The user's live sessions, most recently active first."""
