"""Links mailed to a user: password reset, address verification, change of address.

A token (tokens.py) is 256 random bits in the link; the database keeps only
its SHA-256 (``email_tokens.digest``), with its purpose, the address it was
sent to and its expiry. It is consumed by a POST only (mail
scanners follow links with GET) in one conditional UPDATE, so that two
requests racing with one link cannot both use it. The message is queued in
the outbox in the same transaction as the token (quart_app.mail).

Every flow is throttled: reset requests per address and per client IP,
resends per user, and tokens that fail a check per client IP. A reset request
answers the same, in about the same time, for known and unknown addresses.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from quart import request
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from quart_login import token_digest, utcnow

from ..core.config import get_settings, parse_limit
from ..core.security import get_hasher
from ..db import commit_pending, get_db
from ..exceptions import MESSAGES, HTTPError, ValidationError
from ..mail import mail_enabled, queue_mail
from ..models import EmailToken, User
from .events import audit
from .passwords import check_new_password
from .sessions import get_store
from .throttle import RateLimited, check, hit, limit_key
from .tokens import EMAIL_CHANGE, RESET, VERIFY, end_tokens, expires_in, mail_link, queue_verification
from .validation import email_key, password_problem, text_field, valid_email

P = ParamSpec("P")
T = TypeVar("T")

LINK_DEAD = "This link is invalid or has expired."
RESET_SENT = "If an account uses that address, a link to reset its password is on its way."
ALREADY_VERIFIED = "Your email address is already verified."
SAME_ADDRESS = "That is already your email address."
EMAIL_TAKEN = "Email already registered."

# What new_token gives (token_urlsafe(32): 43 characters); anything else is
# refused before the database is asked.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{32,64}", re.ASCII)


def mail_required(view: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """The email features answer 404 while QUART_APP_MAIL_URL is off (the contract's "off")."""

    @wraps(view)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        if not mail_enabled():
            raise HTTPError(404, MESSAGES[404])
        return await view(*args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class Link:
    """A live token and its user, as a GET of the link finds them (nothing consumed)."""

    token: EmailToken
    user: User


def _throttled(error: RateLimited, what: str) -> HTTPError:
    wait = error.retry_after
    return HTTPError(429, f"Too many {what}. Try again in {wait} seconds.", headers={"Retry-After": str(wait)})


# -- the links ---------------------------------------------------------------------


def _token_ip_key() -> str:
    return limit_key("token-ip", request.remote_addr or "unknown")


async def _token_guard() -> None:
    """429 while this client has failed too many token checks."""
    try:
        await check(_token_ip_key(), _limit("TOKEN_RATE_LIMIT"))
    except RateLimited as error:
        raise _throttled(error, "invalid links") from None


async def _token_failed() -> None:
    try:
        await hit(_token_ip_key(), _limit("TOKEN_RATE_LIMIT"))
    except RateLimited:
        pass  # (this failure is answered 400; the next check answers 429)


async def find_link(token: str, *purposes: str) -> Link | None:
    """The live token ``token`` of one of ``purposes`` with its (active) user, or None; throttled per client IP."""
    await _token_guard()
    link = None
    if isinstance(token, str) and _TOKEN_RE.fullmatch(token):
        db = get_db()
        row = (
            await db.execute(
                select(EmailToken, User)
                .join(User, User.id == EmailToken.user_id)
                .where(
                    EmailToken.digest == token_digest(token),
                    EmailToken.purpose.in_(purposes),
                    EmailToken.used_at.is_(None),
                    EmailToken.expires_at > utcnow(),
                    User.is_active.is_(True),
                )
            )
        ).first()
        await db.commit()
        if row is not None:
            link = Link(*row)
    if link is None:
        await _token_failed()
    return link


async def _consume(db: AsyncSession, link: Link, now: datetime) -> bool:
    """Mark the token used, unless another request used it (or it expired) first."""
    result = await db.execute(
        update(EmailToken)
        .where(EmailToken.id == link.token.id, EmailToken.used_at.is_(None), EmailToken.expires_at > now)
        .values(used_at=now)
    )
    return result.rowcount == 1


# -- password reset ------------------------------------------------------------------


def _email_field(data: Mapping[str, Any], name: str) -> str:
    errors: dict[str, str] = {}
    value = text_field(data, name, errors, strip=True)
    if not errors:
        value = valid_email(value, name, errors)
    if errors:
        raise ValidationError(errors)
    return value


async def request_reset(data: Mapping[str, Any]) -> None:
    """Mail a reset link if an active account uses the address; the same answer and time either way."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    settings = get_settings()
    address = _email_field(data, "email")
    key = email_key(address)
    try:
        await hit(limit_key("reset-ip", request.remote_addr or "unknown"), _limit("FORGOT_PASSWORD_IP_RATE_LIMIT"))
        await hit(limit_key("reset", key), _limit("FORGOT_PASSWORD_RATE_LIMIT"))
    except RateLimited as error:
        raise _throttled(error, "password reset requests") from None
    db = get_db()
    user = (await db.execute(select(User).where(User.email_key == key))).scalar_one_or_none()
    if user is not None and user.is_active:
        await mail_link(db, user, RESET, to=user.email, template="reset_password")
        audit("reset_requested", user)
    else:
        # The same writes as for a known address (an audit row), without the account.
        audit("reset_requested", None, detail="no active account uses the address")
    await db.commit()
    # The rest of the minimum time, whichever way it went.
    await asyncio.sleep(max(0.0, started + settings.FORGOT_PASSWORD_MIN_TIME - loop.time()))


def _limit(name: str):
    return parse_limit(getattr(get_settings(), name), name)


def _new_password(data: Mapping[str, Any]) -> str:
    errors: dict[str, str] = {}
    password = text_field(data, "new_password", errors, strip=False)
    if not errors and (problem := password_problem(password)):
        errors["new_password"] = problem
    if errors:
        raise ValidationError(errors)
    return password


async def reset_password(token: str, data: Mapping[str, Any]) -> User:
    """Set a new password by a reset link: every session and every other reset token of the user ends."""
    link = await find_link(token, RESET)
    if link is None:
        raise HTTPError(400, LINK_DEAD)
    user = link.user
    password = _new_password(data)
    await check_new_password(password, username=user.username, email=user.email, field="new_password")
    await commit_pending()  # no transaction stays open while the hash runs
    password_hash = await get_hasher().hash(password)
    db = get_db()
    now = utcnow()
    if not await _consume(db, link, now):
        await db.rollback()
        await _token_failed()
        raise HTTPError(400, LINK_DEAD)
    await db.execute(update(User).where(User.id == user.id).values(password_hash=password_hash))
    # Every other reset link dies, and a pending change of address with it.
    await end_tokens(db, user.id, RESET, EMAIL_CHANGE, now=now)
    revoked = await get_store().revoke_user(user.id, db=db)
    await queue_mail(
        db,
        to=user.email,
        template="password_reset",
        context={"username": user.username},
        user_id=user.id,
    )
    audit("password_reset", user, detail=f"{revoked} session(s) revoked")
    await db.commit()
    user.password_hash = password_hash
    return user


# -- verification and change of address -------------------------------------------------


async def resend_verification(user: User) -> None:
    """A new verification link (earlier ones die); 409 when the address is already verified; throttled."""
    if user.email_verified:
        raise HTTPError(409, ALREADY_VERIFIED)
    try:
        await hit(limit_key("resend", str(user.id)), _limit("EMAIL_RESEND_RATE_LIMIT"))
    except RateLimited as error:
        raise _throttled(error, "verification emails") from None
    db = get_db()
    await end_tokens(db, user.id, VERIFY)
    await queue_verification(db, user)
    await db.commit()


async def verify_email(token: str) -> User:
    """Confirm an address by its link: a verification, or a change of address (which takes effect now)."""
    link = await find_link(token, VERIFY, EMAIL_CHANGE)
    if link is None:
        raise HTTPError(400, LINK_DEAD)
    user, record = link.user, link.token
    db = get_db()
    now = utcnow()
    if record.purpose == VERIFY:
        if email_key(record.email) != user.email_key:  # sent to an address the account no longer has
            await _token_failed()
            raise HTTPError(400, LINK_DEAD)
        if not await _consume(db, link, now):
            await db.rollback()
            raise HTTPError(400, LINK_DEAD)
        await db.execute(update(User).where(User.id == user.id).values(email_verified=True))
        await end_tokens(db, user.id, VERIFY, now=now)
        audit("email_verified", user)
        await db.commit()
        user.email_verified = True
        return user
    old_email, new_email = user.email, record.email
    if not await _consume(db, link, now):
        await db.rollback()
        raise HTTPError(400, LINK_DEAD)
    try:
        await db.execute(
            update(User)
            .where(User.id == user.id)
            .values(email=new_email, email_key=email_key(new_email), email_verified=True)
        )
        await db.flush()
    except IntegrityError:
        await db.rollback()
        raise HTTPError(409, EMAIL_TAKEN) from None
    # Links sent to the old address (reset, verification) and other pending changes die.
    await end_tokens(db, user.id, RESET, VERIFY, EMAIL_CHANGE, now=now)
    await queue_mail(
        db,
        to=old_email,
        template="email_changed",
        context={"username": user.username, "new_email": new_email},
        user_id=user.id,
    )
    audit("email_changed", user)
    try:
        await db.commit()
    except IntegrityError:
        await db.rollback()
        raise HTTPError(409, EMAIL_TAKEN) from None
    user.email, user.email_key, user.email_verified = new_email, email_key(new_email), True
    return user


async def _address_taken(address: str) -> bool:
    db = get_db()
    found = (await db.execute(select(User.id).where(User.email_key == email_key(address)))).first()
    await db.commit()
    return found is not None


async def request_email_change(user: User, data: Mapping[str, Any]) -> str:
    """Check the password, then mail a confirmation link to the new address and a notice to the old one."""
    from .service import check_password

    errors: dict[str, str] = {}
    current = text_field(data, "current_password", errors, strip=False)
    new_email = text_field(data, "new_email", errors, strip=True)
    if "new_email" not in errors:
        new_email = valid_email(new_email, "new_email", errors)
    if errors:
        raise ValidationError(errors)
    await check_password(user, current, field="current_password", purpose="email change")
    if email_key(new_email) == user.email_key:
        raise HTTPError(400, SAME_ADDRESS, fields={"new_email": SAME_ADDRESS})
    if await _address_taken(new_email):
        raise HTTPError(409, EMAIL_TAKEN, fields={"new_email": EMAIL_TAKEN})
    db = get_db()
    await end_tokens(db, user.id, EMAIL_CHANGE)  # only the latest request stands
    await mail_link(db, user, EMAIL_CHANGE, to=new_email, template="email_change_confirm", new_email=new_email)
    await queue_mail(
        db,
        to=user.email,
        template="email_change_notice",
        context={"username": user.username, "new_email": new_email},
        user_id=user.id,
    )
    audit("email_change_requested", user)
    await db.commit()
    return new_email


async def mark_verified(user: User) -> None:
    """An administrator's verification (``users verify-email``): no link needed."""
    db = get_db()
    await db.execute(update(User).where(User.id == user.id).values(email_verified=True))
    await end_tokens(db, user.id, VERIFY)
    audit("email_verified", user, detail="by an administrator")
    await db.commit()
    user.email_verified = True


__all__ = [
    "ALREADY_VERIFIED",
    "EMAIL_CHANGE",
    "RESET",
    "VERIFY",
    "expires_in",
    "mail_required",
    "LINK_DEAD",
    "RESET_SENT",
    "end_tokens",
    "find_link",
    "mark_verified",
    "queue_verification",
    "request_email_change",
    "request_reset",
    "resend_verification",
    "reset_password",
    "verify_email",
]
