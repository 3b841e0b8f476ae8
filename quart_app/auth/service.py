"""What registering and logging in do, shared by the HTML pages and the JSON API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Row, Select, bindparam, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from quart_login import confirm_login, current_auth_session, login_user, logout_user, rotate_session, utcnow

from ..core.security import Verdict, get_hasher
from ..db import commit_pending, get_db, run_unit
from ..exceptions import HTTPError
from ..mail import queue_mail
from ..models import User, UserFactor
from . import pending, tokens
from .attempts import begin_attempt
from .events import audit
from .passwords import check_new_password
from .sessions import describe, get_store
from .throttle import Attempt, get_throttle
from .validation import email_key, login_key, validate_credentials, validate_password_change, validate_registration

LOGIN_FAILED = "Incorrect username or password."
USERNAME_TAKEN = "Username already taken."
EMAIL_TAKEN = "Email already registered."
WRONG_CURRENT_PASSWORD = "Current password is incorrect."
SESSION_ENDED = "Too many wrong passwords: this session has been logged out. Log in again."


# The username lower()ed on both sides by the database (usernames are
# ASCII), the email by its key (validation.email_key, computed here), so that
# the unique indexes uq_users_username_lower and uq_users_email_key serve the
# lookup. Built once, columns rather than the entity: a login's lookup needs
# no identity map or ORM loading (the user is rebuilt from the row).
#
# Whether the account has a confirmed second factor comes in the same trip (a
# correlated lookup on ix_user_factors_user_id): a login asks nothing more
# before it answers. A LIMIT 1 scalar subquery rather than EXISTS: PostgreSQL
# may run an EXISTS as a hashed subplan over the whole table, a scan on every login.
_WHERE_IDENT = or_(
    func.lower(User.username) == func.lower(bindparam("ident")),
    User.email_key == bindparam("email_key"),
)
_HAS_FACTOR = (
    select(UserFactor.id)
    .where(UserFactor.user_id == User.id, UserFactor.confirmed_at.is_not(None))
    .limit(1)
    .scalar_subquery()
    .is_not(None)
    .label("has_second_factor")
)
_BY_USERNAME_OR_EMAIL = select(*User.__table__.c).where(_WHERE_IDENT)
_FOR_LOGIN = select(*User.__table__.c, _HAS_FACTOR).where(_WHERE_IDENT)


async def _lookup(ident: str, statement: Select) -> Row | None:
    params = {"ident": ident, "email_key": email_key(ident)}

    def work(db: Session) -> Row | None:
        row = db.connection().execute(statement, params).first()
        db.commit()  # ends the read at once (on a server database, the request's session)
        return row

    return await run_unit(work)


async def _find(ident: str) -> User | None:
    row = await _lookup(ident, _BY_USERNAME_OR_EMAIL)
    return None if row is None else User(**row._mapping)


async def _find_for_login(ident: str) -> tuple[User | None, bool]:
    """The user (or None) and whether a login for it asks for a second factor."""
    row = await _lookup(ident, _FOR_LOGIN)
    if row is None:
        return None, False
    values = dict(row._mapping)
    has_factor = bool(values.pop("has_second_factor"))
    return User(**values), has_factor


async def _taken_message(username: str, email: str) -> str | None:
    db = get_db()
    taken = (
        (
            await db.execute(
                select(func.lower(User.username) == func.lower(username)).where(
                    or_(
                        func.lower(User.username) == func.lower(username),
                        # The key decides; lower() as the other unique index does.
                        User.email_key == email_key(email),
                        func.lower(User.email) == func.lower(email),
                    )
                )
            )
        )
        .scalars()
        .all()
    )
    await db.commit()
    if not taken:
        return None
    return USERNAME_TAKEN if any(taken) else EMAIL_TAKEN


async def create_user(data: Mapping[str, Any]) -> User:
    """Validate, hash off the loop and store a new user (400 / 409 on failure); the caller audits."""
    form = validate_registration(data)
    await check_new_password(form.password, username=form.username, email=form.email, field="password")
    # A cheap pre-check spares a hash for names that are obviously taken; the
    # unique indexes below remain the authority when two requests race.
    if message := await _taken_message(form.username, form.email):
        raise HTTPError(409, message)
    password_hash = await get_hasher().hash(form.password)
    db = get_db()
    user = User(
        username=form.username,
        email=form.email,
        email_key=email_key(form.email),
        password_hash=password_hash,
        is_active=True,
        created_at=utcnow(),
    )
    db.add(user)
    try:
        await db.flush()
        # The verification link is queued with the account, in its transaction.
        await tokens.queue_verification(db, user)
        await db.commit()
    except IntegrityError:
        await db.rollback()
        raise HTTPError(409, await _taken_message(form.username, form.email) or USERNAME_TAKEN) from None
    return user


async def register(data: Mapping[str, Any]) -> User:
    """Create the account and log it in."""
    user = await create_user(data)
    audit("registered", user)
    await get_db().commit()
    await login_user(user, remember=False)
    return user


async def _verify(attempt: Attempt | None, stored_hash: str | None, password: str) -> Verdict:
    """The hasher's verdict; a check that could not run gives its reservation back."""
    try:
        return await get_hasher().verify(stored_hash, password)
    except BaseException:
        if attempt is not None:
            await get_throttle().cancelled(attempt)
        raise


async def authenticate(data: Mapping[str, Any], *, next_page: str | None = None) -> User | pending.MfaRequired:
    """Check the credentials (username or email) and log in; the same 401 for every failure.

    For an account with a second factor, a right password logs nobody in: it
    opens a pending login bound to this client (``pending.start``, keeping
    remember-me and ``next_page``) and answers ``pending.MfaRequired``; the
    code finishes it (``pending.complete``). That costs about what a wrong
    password does (the same hash verification, then one small write).
    """
    creds = validate_credentials(data)
    ident = creds.identifier
    user, second_factor = await _find_for_login(ident)
    # Keyed by the account when it exists (username and email count
    # together), else by what was typed, an email by its key (login_key):
    # both behave the same outside. The attempt is counted before the (slow)
    # verification, so that parallel guesses cannot all pass a check made
    # before any of them failed.
    attempt = await begin_attempt(f"user:{user.id}" if user else f"name:{login_key(ident)}", user)
    # No transaction stays open while the (slow) hash runs.
    await commit_pending()

    # An unknown user is verified against a dummy hash: same status, same
    # message and about the same time as a wrong password.
    verdict = await _verify(attempt, user.password_hash if user is not None else None, creds.password)
    if user is None or not verdict.ok or not user.is_active:
        reason = "unknown user" if user is None else "inactive" if verdict.ok else "wrong password"
        if attempt is not None:
            await get_throttle().failed(attempt)
        audit("login_failed", user, detail=reason)
        await get_db().commit()
        raise HTTPError(401, LOGIN_FAILED)
    if verdict.needs_rehash:
        await _upgrade_hash(user, creds.password)
    if second_factor:
        # Neither a success nor a failure yet: only the right code clears the
        # account's failures (the password alone must not reset wrong codes).
        if attempt is not None:
            await get_throttle().cancelled(attempt)
        return await pending.start(user, remember=creds.remember, next_page=next_page)
    if attempt is not None:
        await get_throttle().succeeded(attempt)
    await commit_pending()
    await login_user(user, remember=creds.remember)
    return user


async def check_password(user: User, password: str, *, field: str, purpose: str) -> None:
    """Check the logged-in user's password before a sensitive change, throttled like a login.

    A wrong one is a 400 on ``field``; 429 once this account or client is
    over the limit; and the failure that reaches the limit also ends this
    session (a stolen session cannot keep guessing the real password).
    """
    attempt = await begin_attempt(f"user:{user.id}", user)
    verdict = await _verify(attempt, user.password_hash, password)
    if verdict.ok:
        if attempt is not None:
            await get_throttle().succeeded(attempt)
        return
    locked = attempt is not None and await get_throttle().failed(attempt)
    audit("login_failed", user, detail=f"wrong current password on {purpose}")
    await get_db().commit()
    if locked:
        await logout_user()
        raise HTTPError(401, SESSION_ENDED)
    raise HTTPError(400, WRONG_CURRENT_PASSWORD, fields={field: WRONG_CURRENT_PASSWORD})


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


async def change_password(user: User, data: Mapping[str, Any]) -> None:
    """Check the current password, store the new one, revoke every other session, re-issue this one."""
    change = validate_password_change(data)
    # The current password first: a wrong one says so, whatever the new one is.
    await check_password(user, change.current_password, field="current_password", purpose="password change")
    await check_new_password(change.new_password, username=user.username, email=user.email, field="new_password")
    hasher = get_hasher()
    new_hash = await hasher.hash(change.new_password)
    current = current_auth_session()
    db = get_db()
    await db.execute(update(User).where(User.id == user.id).values(password_hash=new_hash))
    user.password_hash = new_hash
    # Every other session dies with the change; this one goes on with a new
    # secret, so a copy of its cookie taken before the change is dead too.
    revoked = await get_store().revoke_user(user.id, keep=current.id if current else None, db=db)
    # Reset links mailed before the change die with it, and so does a pending change of address.
    await tokens.end_tokens(db, user.id, tokens.RESET, tokens.EMAIL_CHANGE)
    notice = {"username": user.username}
    await queue_mail(db, to=user.email, template="password_changed", context=notice, user_id=user.id)
    audit("password_changed", user, detail=f"{revoked} other session(s) revoked")
    await db.commit()
    if current is not None and await rotate_session():
        await confirm_login()  # the current password was just given
    else:
        await login_user(user, remember=current.remember if current else False)


async def list_sessions(user: User) -> list[dict[str, object]]:
    """The user's live sessions as the account page and the API show them, most recent first."""
    return [describe(record) for record in await get_store().list_user(user.id)]


async def revoke_session(user: User, session_id: int) -> bool:
    """Revoke one of the user's sessions by id; False (404) if it is not theirs."""
    db = get_db()
    if not await get_store().revoke_id(user.id, session_id, db=db):
        await db.commit()
        return False
    audit("session_revoked", user, detail=f"session {session_id}")
    await db.commit()
    current = current_auth_session()
    if current is not None and current.id == session_id:
        await logout_user()
    return True


async def revoke_other_sessions(user: User) -> int:
    """Revoke every session of the user but this one; returns how many."""
    current = current_auth_session()
    db = get_db()
    count = await get_store().revoke_user(user.id, keep=current.id if current else None, db=db)
    audit("session_revoked", user, detail=f"{count} other session(s)")
    await db.commit()
    return count


async def find_user(username: str) -> User | None:
    """The user with this username or email, without regard to case."""
    return await _find(username)


async def set_active(user: User, active: bool) -> None:
    """Deactivate (every session revoked at once) or reactivate an account."""
    db = get_db()
    await db.execute(update(User).where(User.id == user.id).values(is_active=active))
    if not active:
        await get_store().revoke_user(user.id, db=db)
    audit("activated" if active else "deactivated", user)
    await db.commit()
    user.is_active = active


async def revoke_all_sessions(user: User) -> int:
    """Log the user out everywhere; returns how many sessions ended."""
    db = get_db()
    count = await get_store().revoke_user(user.id, db=db)
    audit("session_revoked", user, detail=f"all {count} session(s)")
    await db.commit()
    return count


async def list_users() -> list[User]:
    db = get_db()
    users = (await db.execute(select(User).order_by(User.id))).scalars().all()
    await db.commit()
    return list(users)
