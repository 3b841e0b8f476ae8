"""The tables: the seed's ``users`` (plus what the port adds), server-side ``auth_sessions``, the audit trail."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, LargeBinary, String, false, func, true
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from quart_login import UserMixin
from quart_login.sqlalchemy_store import AuthSessionMixin


class Base(DeclarativeBase):
    pass


def column_values(obj: Base) -> dict[str, object]:
    """A new (unsaved) row's column values, by column name, for a Core insert (unset ones left out)."""
    table = type(obj).__table__
    return {column.key: value for column in table.columns if (value := getattr(obj, column.key)) is not None}


# Ids are INTEGER columns: 32-bit on PostgreSQL (64 on SQLite). Routes taking
# an id refuse a larger number as an unknown one (404) instead of passing the
# database a value it cannot compare.
MAX_ID = 2**31 - 1


class User(UserMixin, Base):
    __tablename__ = "users"

    # The seed's columns, exactly as the sync Flask version creates them.
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(50), unique=True, nullable=False)
    email: Mapped[str] = mapped_column(String(120), unique=True, nullable=False)
    password_hash: Mapped[str] = mapped_column(String(256), nullable=False)
    # Added by the port (revision "port_sessions").
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True, server_default=true())
    created_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # Added by revision "email_key": the email as uniqueness and login compare
    # it (quart_app.auth.validation.email_key: Unicode forms, IDNA domain,
    # case folded), computed in Python and set on every insert.
    email_key: Mapped[str] = mapped_column(String(255), nullable=False)
    # Added by revision "email_flows": whether the address was confirmed by a
    # link mailed to it. Accounts adopted from the Flask database start unverified.
    email_verified: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())

    __table_args__ = (
        # Uniqueness without regard to case is the database's job, so that two
        # racing registrations cannot both succeed.
        Index("uq_users_username_lower", func.lower(username), unique=True),
        Index("uq_users_email_lower", func.lower(email), unique=True),
        # lower() folds ASCII only (SQLite) and knows no Unicode forms: this is
        # the uniqueness of an email whatever its case and Unicode spelling.
        Index("uq_users_email_key", email_key, unique=True),
    )

    def public(self) -> dict[str, object]:
        """The only view of a user that responses carry (never the hash)."""
        return {"id": self.id, "username": self.username, "email": self.email}

    def __repr__(self) -> str:
        return f"<User {self.id} {self.username!r}>"


class AuthSession(AuthSessionMixin, Base):
    """One logged-in browser or client (quart_login's columns). The cookie holds a secret; this row its SHA-256."""

    __tablename__ = "auth_sessions"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)


class AuthEvent(Base):
    """The audit trail: who did what to an account, when and from where (never a secret)."""

    __tablename__ = "auth_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, index=True)
    event: Mapped[str] = mapped_column(String(32), nullable=False)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True, index=True)
    ip: Mapped[str | None] = mapped_column(String(45))
    detail: Mapped[str | None] = mapped_column(String(200))


class LoginThrottle(Base):
    """Password-check counters shared by every worker and instance, one row per account, client or pair."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, nullable=False)
    last_failure_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # Attempts reserved before their password is verified, not yet decided.
    pending: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    pending_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class EmailToken(Base):
    """A link mailed to a user (reset, verify, email change): only its SHA-256 is kept; single-use, short-lived."""

    __tablename__ = "email_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    # "reset", "verify" or "email_change" (quart_app/auth/recovery.py).
    purpose: Mapped[str] = mapped_column(String(16), nullable=False)
    digest: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    # The address the link went to: a verify token proves that one address,
    # an email-change token carries the new one.
    email: Mapped[str] = mapped_column(String(120), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    # Set when the token is used, or killed (a newer reset, a password change).
    used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class OutboxMessage(Base):
    """A message to send (the transactional outbox, quart_app/mail/): written with the change that causes it.

    ``content`` (subject and parts) is encrypted with a key derived from the
    secret key, since a link in it is a live token, and erased once sent.
    """

    __tablename__ = "mail_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    # The template that made it ("reset_password", ...): for `mail status`.
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    recipient: Mapped[str] = mapped_column(String(255), nullable=False)
    # The account it concerns, for the audit trail ("mail_failed").
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    content: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # "pending", "sent" or "failed" (gave up after MAIL_MAX_ATTEMPTS tries).
    status: Mapped[str] = mapped_column(String(8), nullable=False, default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    # A sender's lease on the row while it sends: another sender skips it until it lapses.
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(200), nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    __table_args__ = (Index("ix_mail_outbox_due", "status", "next_attempt_at"),)


class UserFactor(Base):
    """A second factor of a user: an authenticator app ("totp") or a passkey ("webauthn").

    A TOTP factor's ``secret`` is the base32 secret encrypted (quart_app.core.crypto,
    the MFA key), never plain; ``last_step`` is the last 30-second step a code
    was accepted for, so that no code is accepted twice. A factor whose
    ``confirmed_at`` is NULL is a setup not yet confirmed by a right code: it
    counts for nothing. A passkey (quart_app/auth/passkeys.py, revision
    "passkeys") has its credential id, COSE public key (not a secret), the
    signature counter last seen and the user handle it was registered with.
    """

    __tablename__ = "user_factors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    # "totp" (quart_app/auth/mfa.py), later "webauthn".
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    # What the user calls it ("Phone"), if anything.
    name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    secret: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    last_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    confirmed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # Passkeys only.
    credential_id: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    public_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    sign_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    user_handle: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    transports: Mapped[str | None] = mapped_column(String(200), nullable=True)

    __table_args__ = (Index("uq_user_factors_credential_id", credential_id, unique=True),)

    def __repr__(self) -> str:  # never the secret
        return f"<UserFactor {self.id} {self.kind!r} of user {self.user_id}>"


class WebauthnChallenge(Base):
    """A challenge handed out for a WebAuthn ceremony: its SHA-256 only, consumed once (quart_app/auth/passkeys.py).

    ``purpose``: "register" (adding a passkey; ``user_id`` set), "login"
    (passwordless sign-in; no user: nothing tells who has an account) or
    "second" (a passkey as the second step of a pending login; ``user_id`` set).
    """

    __tablename__ = "webauthn_challenges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    purpose: Mapped[str] = mapped_column(String(16), nullable=False)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, index=True)


class RecoveryCode(Base):
    """One of a user's single-use recovery codes: only its keyed SHA-256 digest is kept (quart_app/auth/mfa.py)."""

    __tablename__ = "recovery_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    digest: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class MfaPending(Base):
    """A login waiting for its second factor: the password was right, no session yet (quart_app/auth/pending.py).

    Its client holds a random secret in the ``quart_app_mfa`` cookie; only the
    secret's SHA-256 is kept here. It ends with a right code, after
    ``pending.MAX_FAILURES`` wrong ones, at logout, or at ``expires_at``
    (``QUART_APP_MFA_PENDING_TTL`` after the password).
    """

    __tablename__ = "mfa_pending"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    secret_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, index=True)
    # What the final session gets: a persistent cookie, and where the browser goes.
    remember: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())
    next: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")

    def __repr__(self) -> str:  # never the digest
        return f"<MfaPending {self.id} of user {self.user_id}>"
