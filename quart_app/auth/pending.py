"""Logins waiting for their second factor: a right password opens one, a right code finishes it.

For an account with a confirmed second factor (``mfa.has_second_factor``),
``service.authenticate`` gives no session: it calls ``start``, which stores
an ``mfa_pending`` row (the user, when it expires, remember-me and ``next``)
and gives this client a random secret in its own cookie, ``quart_app_mfa``
(HttpOnly, SameSite=Lax, Secure with COOKIE_SECURE, for
QUART_APP_MFA_PENDING_TTL seconds), distinct from the auth cookie. The
database keeps only the secret's SHA-256: a copy of the table opens nothing.

``complete`` (``/login/2fa``, ``POST /api/login/2fa``) takes a code: a right
TOTP code (``mfa.verify_totp``: each code once) or an unused recovery code
(``mfa.use_recovery_code``: a notice is mailed, with how many are left)
ends the pending login and starts the session, with ``amr`` ``pwd,otp`` or
``pwd,rec`` (AAL 2). A wrong code counts toward the login throttle of the
account (``user:<id>``, the key a wrong password counts on) and of the IP,
so 429 once over the limit, and after ``MAX_FAILURES`` wrong codes the
pending login dies. Without a live pending login (none, expired, finished,
killed, or another client without the cookie): 401.

The right password itself settles its throttle reservation as neither a
failure nor a success (``cancelled``): only the right code clears the
account's failures, so a password known to an attacker does not reset the
count of wrong codes.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from quart import Response, after_this_request, request
from sqlalchemy import delete, or_, select, update

from quart_login import login_user, utcnow

from ..core.config import get_settings
from ..db import get_db
from ..exceptions import HTTPError, ValidationError
from ..mail import queue_mail
from ..models import MfaPending, User
from . import mfa, passkeys
from .attempts import begin_attempt
from .events import audit
from .throttle import get_throttle

__all__ = [
    "COOKIE",
    "MAX_FAILURES",
    "METHODS",
    "Completed",
    "MfaRequired",
    "complete",
    "discard",
    "is_waiting",
    "start",
]

COOKIE = "quart_app_mfa"
MAX_FAILURES = 5  # wrong codes a pending login takes before it dies
METHODS = ("totp", "recovery_code")
# What each kind of factor offers at the second step (a passkey: "webauthn").
_METHOD_OF_KIND = {"totp": "totp", "webauthn": "webauthn"}
NEXT_MAX = 2048  # the column's length; a longer ``next`` is not kept

NO_PENDING = "No login is waiting for a second factor: log in again."
WRONG_CODE = "That code is not right. Enter the code your authenticator app shows now, or an unused recovery code."
TOO_MANY_WRONG = "Too many wrong codes: log in again."
CODE_REQUIRED = "Enter the code from your authenticator app, or a recovery code."
PASSKEY_REFUSED = "That passkey could not be verified. Try again, or enter a code."


@dataclass(frozen=True)
class MfaRequired:
    """``service.authenticate``'s answer for an account with a second factor: a pending login, no session."""

    user: User
    methods: tuple[str, ...] = METHODS

    def public(self) -> dict[str, object]:
        """The JSON answer: ``{"mfa_required": true, "methods": [...]}`` (nothing about the account)."""
        return {"mfa_required": True, "methods": list(self.methods)}


@dataclass(frozen=True)
class Completed:
    """A finished login: the user (now logged in), where to go, and recovery codes left when one was used."""

    user: User
    next: str | None
    method: str  # "otp", "rec" or "webauthn"
    recovery_codes_left: int | None = None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii", "replace")).hexdigest()


def _cookie_secret() -> str | None:
    value = request.cookies.get(COOKIE)
    # token_urlsafe(32) gives 43 characters; anything far from that is no secret of ours.
    if not value or len(value) > 128 or not value.isascii():
        return None
    return value


def _set_cookie(secret: str, max_age: int) -> None:
    secure = get_settings().COOKIE_SECURE

    @after_this_request
    async def write(response: Response) -> Response:
        response.set_cookie(COOKIE, secret, max_age=max_age, path="/", secure=secure, httponly=True, samesite="Lax")
        return response


def _clear_cookie() -> None:
    secure = get_settings().COOKIE_SECURE

    @after_this_request
    async def clear(response: Response) -> Response:
        response.delete_cookie(COOKIE, path="/", secure=secure, httponly=True, samesite="Lax")
        return response


async def start(user: User, *, remember: bool, next_page: str | None = None) -> MfaRequired:
    """Open a pending login for ``user`` bound to this client (its cookie); commits. Replaces this client's last one."""
    settings = get_settings()
    ttl = settings.MFA_PENDING_TTL
    now = utcnow()
    secret = secrets.token_urlsafe(32)
    db = get_db()
    stale = [MfaPending.expires_at <= now]  # anyone's, expired: housekeeping, on the index
    if (old := _cookie_secret()) is not None:
        stale.append(MfaPending.secret_hash == _digest(old))
    await db.execute(delete(MfaPending).where(or_(*stale)), execution_options={"synchronize_session": False})
    db.add(
        MfaPending(
            user_id=user.id,
            secret_hash=_digest(secret),
            created_at=now,
            expires_at=now + timedelta(seconds=ttl),
            remember=bool(remember),
            next=next_page if next_page and len(next_page) <= NEXT_MAX else None,
            failures=0,
        )
    )
    methods = await _methods(db, user)
    await db.commit()
    _set_cookie(secret, ttl)
    return MfaRequired(user, methods)


async def _methods(db, user: User) -> tuple[str, ...]:
    """What the second step offers this account: its kinds of factor, and recovery codes while any is unused."""
    kinds = {factor.kind for factor in await mfa.factors_of(user, db=db)}
    offered = [method for kind, method in _METHOD_OF_KIND.items() if kind in kinds]
    if await mfa.recovery_codes_left(user, db=db):
        offered.append("recovery_code")
    return tuple(offered) or METHODS


async def pending_user() -> User | None:
    """The user of this client's live pending login (for the passkey options of the second step), or None."""
    found = await _find()
    return None if found is None else found[1]


async def _find() -> tuple[MfaPending, User] | None:
    """This client's live pending login and its (active) user, or None; the read is ended at once."""
    secret = _cookie_secret()
    if secret is None:
        return None
    db = get_db()
    row = (
        await db.execute(
            select(MfaPending, User)
            .join(User, User.id == MfaPending.user_id)
            .where(MfaPending.secret_hash == _digest(secret), MfaPending.expires_at > utcnow(), User.is_active)
            .execution_options(populate_existing=True)
        )
    ).first()
    await db.commit()
    return None if row is None else (row[0], row[1])


@dataclass(frozen=True)
class Waiting:
    """What the second step's page shows: the methods the account offers, and where the login goes after."""

    methods: tuple[str, ...]
    next: str | None


async def waiting() -> Waiting | None:
    """This client's live pending login as the page needs it, or None."""
    found = await _find()
    if found is None:
        return None
    pending, user = found
    db = get_db()
    methods = await _methods(db, user)
    await db.commit()
    return Waiting(methods, pending.next)


async def is_waiting() -> bool:
    """Whether this client has a live pending login (the code page is shown, else 401)."""
    return await _find() is not None


async def discard() -> None:
    """End this client's pending login, if any (at logout), and clear its cookie."""
    secret = _cookie_secret()
    if secret is None:
        return
    db = get_db()
    await db.execute(
        delete(MfaPending).where(MfaPending.secret_hash == _digest(secret)),
        execution_options={"synchronize_session": False},
    )
    await db.commit()
    _clear_cookie()


def _no_pending() -> HTTPError:
    if request.cookies.get(COOKIE) is not None:
        _clear_cookie()
    return HTTPError(401, NO_PENDING)


async def _check(user: User, code: str) -> tuple[str, int | None] | None:
    """("otp", None) for a right TOTP code, ("rec", left) for an unused recovery code (used now), else None."""
    if await mfa.verify_totp(user, code):
        return "otp", None
    left = await mfa.use_recovery_code(user, code)
    if left is not None:
        return "rec", left
    return None


async def complete(data: Mapping[str, Any], *, passkey: bool = False) -> Completed:
    """Finish this client's pending login with ``data["code"]`` and log in (see the module's docstring).

    With ``passkey``, ``data["credential"]`` instead: a passkey of the
    account's answering ``passkeys.second_factor_options``. 401 without a
    live pending login, or for a wrong code or passkey; 400 without a code
    (or credential); 429 (``Retry-After``) once this account or client is
    over the login throttle's limit. A refused passkey counts like a wrong code.
    """
    found = await _find()
    if found is None:
        raise _no_pending()
    pending, user = found
    code = data.get("code")
    if passkey:
        passkeys._credential(data)  # a 400 for no credential, before anything counts
    elif not isinstance(code, str) or not code.strip():
        raise ValidationError({"code": CODE_REQUIRED})

    throttle = get_throttle()
    attempt = await begin_attempt(f"user:{user.id}", user)
    db = get_db()
    try:
        if passkey:
            try:
                matched = ("webauthn", None) if await passkeys.verify_second_factor(user, data) else None
            except passkeys.PasskeyRefused:
                matched = None
        else:
            matched = await _check(user, code)
        if matched is not None:
            # Ended here, in the transaction that used the code: of two requests
            # racing on one pending login, one logs in, the other's code stays unused.
            ended = await db.execute(
                delete(MfaPending).where(MfaPending.id == pending.id), execution_options={"synchronize_session": False}
            )
            if ended.rowcount != 1:
                await db.rollback()
                if attempt is not None:
                    await throttle.cancelled(attempt)
                raise _no_pending()
    except HTTPError:
        raise
    except BaseException:
        await db.rollback()
        if attempt is not None:
            await throttle.cancelled(attempt)
        raise

    if matched is None:
        await db.execute(
            update(MfaPending).where(MfaPending.id == pending.id).values(failures=MfaPending.failures + 1),
            execution_options={"synchronize_session": False},
        )
        dead = await db.execute(
            delete(MfaPending).where(MfaPending.id == pending.id, MfaPending.failures >= MAX_FAILURES),
            execution_options={"synchronize_session": False},
        )
        killed = dead.rowcount == 1
        what = "passkey refused" if passkey else "wrong code"
        audit("mfa_login_failed", user, detail=what + ("; pending login ended" if killed else ""))
        await db.commit()
        if attempt is not None:
            await throttle.failed(attempt)
        if killed:
            _clear_cookie()
            raise HTTPError(401, TOO_MANY_WRONG)
        if passkey:
            raise HTTPError(401, PASSKEY_REFUSED)
        raise HTTPError(401, WRONG_CODE, fields={"code": WRONG_CODE})

    method, left = matched
    if method == "rec":
        context = {"username": user.username, "remaining": left}
        await queue_mail(db, to=user.email, template="recovery_code_used", context=context, user_id=user.id)
        audit("recovery_code_used", user, detail=f"{left} left")
    await db.commit()
    if attempt is not None:
        await throttle.succeeded(attempt)
    _clear_cookie()
    await login_user(user, remember=pending.remember, amr=("pwd", method))
    return Completed(user=user, next=pending.next, method=method, recovery_codes_left=left)
