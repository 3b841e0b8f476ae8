"""What registering and logging in do, shared by the HTML pages and the JSON API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

from ..core.security import get_hasher
from ..db import get_db
from ..errors import HTTPError
from ..models import User
from .login_manager import login_user
from .sessions import utcnow
from .validation import validate_credentials, validate_registration

LOGIN_FAILED = "Incorrect username or password."
USERNAME_TAKEN = "Username already taken."
EMAIL_TAKEN = "Email already registered."


async def _taken_message(username: str, email: str) -> str | None:
    db = get_db()
    taken = (
        await db.execute(
            select(func.lower(User.username) == func.lower(username)).where(
                or_(
                    func.lower(User.username) == func.lower(username),
                    func.lower(User.email) == func.lower(email),
                )
            )
        )
    ).scalars().all()
    await db.commit()
    if not taken:
        return None
    return USERNAME_TAKEN if any(taken) else EMAIL_TAKEN


async def register(data: Mapping[str, Any]) -> User:
    """Validate, hash off the loop, store, and log the new user in (400 / 409 on failure)."""
    form = validate_registration(data)
    # A cheap pre-check spares a hash for names that are obviously taken; the
    # unique indexes below remain the authority when two requests race.
    if message := await _taken_message(form.username, form.email):
        raise HTTPError(409, message)
    password_hash = await get_hasher().hash(form.password)
    db = get_db()
    user = User(
        username=form.username,
        email=form.email,
        password_hash=password_hash,
        is_active=True,
        created_at=utcnow(),
    )
    db.add(user)
    try:
        await db.commit()
    except IntegrityError:
        await db.rollback()
        raise HTTPError(409, await _taken_message(form.username, form.email) or USERNAME_TAKEN) from None
    await login_user(user, remember=False)
    return user


async def authenticate(data: Mapping[str, Any]) -> User:
    """Check the credentials (username or email) and log in; the same 401 for every failure."""
    creds = validate_credentials(data)
    db = get_db()
    ident = creds.identifier
    user = (
        await db.execute(
            select(User).where(
                or_(func.lower(User.username) == func.lower(ident), func.lower(User.email) == func.lower(ident))
            )
        )
    ).scalars().first()
    # No transaction stays open while the (slow) hash runs.
    await db.commit()

    hasher = get_hasher()
    # An unknown user is verified against a dummy hash: same status, same
    # message and about the same time as a wrong password.
    verdict = await hasher.verify(user.password_hash if user is not None else None, creds.password)
    if user is None or not verdict.ok or not user.is_active:
        raise HTTPError(401, LOGIN_FAILED)
    if verdict.needs_rehash:
        await _upgrade_hash(user, creds.password)
    await login_user(user, remember=creds.remember)
    return user


async def _upgrade_hash(user: User, password: str) -> None:
    """Replace a Werkzeug or outdated argon2 hash by a current argon2id one."""
    old_hash = user.password_hash
    new_hash = await get_hasher().hash(password)
    db = get_db()
    # Only if nobody changed the password meanwhile.
    await db.execute(
        update(User).where(User.id == user.id, User.password_hash == old_hash).values(password_hash=new_hash)
    )
    await db.commit()
    user.password_hash = new_hash
