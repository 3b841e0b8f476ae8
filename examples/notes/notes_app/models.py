"""The tables: the app's own users and notes, and quart_login's sessions (the app declares the foreign key)."""

from __future__ import annotations

from datetime import datetime

from quart_login import UserMixin
from quart_login.sqlalchemy_store import AuthSessionMixin
from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, MetaData, String, Text, false, true
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    # Named constraints, so that Alembic can alter them later (SQLite's batch mode needs the names).
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class User(UserMixin, Base):
    """A user: ``current_user`` is an instance of this class, every column loaded, on every request."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(50), unique=True, nullable=False)
    email: Mapped[str] = mapped_column(String(120), unique=True, nullable=False)
    password_hash: Mapped[str] = mapped_column(String(256), nullable=False)
    display_name: Mapped[str] = mapped_column(String(100), nullable=False)
    is_admin: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())
    # A column in place of UserMixin's property: the store opens no session of an inactive user.
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)

    def public(self) -> dict[str, object]:
        """What the JSON API shows of a user (never the hash)."""
        return {
            "id": self.id,
            "username": self.username,
            "display_name": self.display_name,
            "is_admin": self.is_admin,
        }


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)

    def public(self) -> dict[str, object]:
        return {"id": self.id, "title": self.title, "body": self.body, "created_at": self.created_at.isoformat()}


class AuthSession(AuthSessionMixin, Base):
    """One logged-in browser: quart_login's columns, plus the owner's foreign key."""

    __tablename__ = "auth_sessions"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
