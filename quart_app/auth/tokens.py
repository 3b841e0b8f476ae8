"""Mailed tokens: issued in the caller's transaction, ended in bulk (auth/recovery.py has the flows).

A token is 256 random bits (``quart_login.new_token``) in the link; the
database keeps only its SHA-256, its purpose, the address it went to and its
expiry. service.py (registration, password change) and recovery.py share these.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from quart_login import new_token, token_digest, utcnow

from ..core.config import Settings, get_settings
from ..mail import mail_enabled, queue_mail
from ..models import EmailToken, User
from .events import audit

RESET, VERIFY, EMAIL_CHANGE = "reset", "verify", "email_change"


def expires_in(seconds: int) -> str:
    """A lifetime as a message says it: "30 minutes", "24 hours", "2 days"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and (seconds % size == 0 or unit == "minute"):
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


def link_to(path: str) -> str:
    """An absolute link for a message: QUART_APP_PUBLIC_URL, never the request's Host."""
    return get_settings().PUBLIC_URL + path


def _ttl(settings: Settings, purpose: str) -> int:
    return settings.RESET_TOKEN_TTL if purpose == RESET else settings.VERIFY_TOKEN_TTL


async def issue(db: AsyncSession, user: User, purpose: str, email: str) -> str:
    """A new token for ``user`` in ``db``'s transaction; returns the secret for the link (never stored)."""
    token = new_token()
    now = utcnow()
    db.add(
        EmailToken(
            user_id=user.id,
            purpose=purpose,
            digest=token_digest(token),
            email=email,
            created_at=now,
            expires_at=now + timedelta(seconds=_ttl(get_settings(), purpose)),
        )
    )
    return token


async def end_tokens(db: AsyncSession, user_id: int, *purposes: str, now: datetime | None = None) -> None:
    """Kill every live token of ``user_id`` with one of ``purposes`` (in ``db``'s transaction)."""
    await db.execute(
        update(EmailToken)
        .where(EmailToken.user_id == user_id, EmailToken.purpose.in_(purposes), EmailToken.used_at.is_(None))
        .values(used_at=now or utcnow())
    )


# The page each purpose's link opens.
_PATHS = {RESET: "/reset-password/", VERIFY: "/verify-email/", EMAIL_CHANGE: "/verify-email/"}


async def mail_link(db: AsyncSession, user: User, purpose: str, *, to: str, template: str, **context: Any) -> None:
    """Issue a ``purpose`` token and queue ``template`` to ``to`` with its link, in ``db``'s transaction.

    The template gets ``username``, ``link`` and ``expires_in`` besides ``context``.
    """
    token = await issue(db, user, purpose, to)
    await queue_mail(
        db,
        to=to,
        template=template,
        context={
            "username": user.username,
            "link": link_to(_PATHS[purpose] + token),
            "expires_in": expires_in(_ttl(get_settings(), purpose)),
            **context,
        },
        user_id=user.id,
    )


async def queue_verification(db: AsyncSession, user: User) -> None:
    """Queue a verification link for the user's address (in ``db``'s transaction; the caller commits)."""
    if not mail_enabled():
        return
    await mail_link(db, user, VERIFY, to=user.email, template="verify_email")
    audit("verification_sent", user)
