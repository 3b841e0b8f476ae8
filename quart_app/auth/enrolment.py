"""Turning a second factor on and off from the account: what the pages, the API and the CLI share.

Each change runs as one transaction of the request's AsyncSession: the
factor's rows (auth/mfa.py), the user's other sessions revoked, the notice
queued and the audit row; nothing of it is kept if any part fails. Then this
session (it stays logged in) gets a new secret, so a copy of its cookie
taken before the change opens nothing, and records the factor just presented
(``step_up``: ``amr``, ``auth_time``, ``aal``).

Wrong codes on turning the factor off are throttled per account and per
client like passwords (their own account key, ``mfa:<id>``: a right password
does not clear it), and the failure that reaches the limit ends the session.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quart import request

from quart_login import current_auth_session, logout_user, rotate_session, step_up

from ..core.config import get_settings
from ..db import commit_pending, get_db
from ..exceptions import HTTPError, ValidationError
from ..mail import queue_mail
from ..models import User
from . import mfa, passkeys
from .events import audit
from .service import SESSION_ENDED, check_password
from .sessions import get_store
from .throttle import Throttled, get_throttle, keys_for
from .validation import text_field

__all__ = [
    "TOO_MANY_CODES",
    "TotpSetup",
    "begin_setup",
    "disable",
    "enable_totp",
    "pending_setup",
    "regenerate_codes",
    "reset_factors",
    "second_factor_state",
]

TOO_MANY_CODES = "Too many wrong codes. Try again in {wait} seconds."
CANNOT_TURN_OFF = (
    "This site requires two-factor authentication, so it cannot be turned off. "
    "If you lost your authenticator app, sign in with a recovery code and ask support to reset it."
)


class TotpSetup:
    """A setup waiting for its first code: what the page shows (QR code, secret) and the API answers."""

    __slots__ = ("secret", "uri")

    def __init__(self, secret: str, uri: str) -> None:
        self.secret = secret
        self.uri = uri

    @property
    def qr_svg(self) -> str:
        return mfa.qr_svg(self.uri)

    @property
    def grouped_secret(self) -> str:
        """The secret in groups of four, easier to type into an app by hand."""
        return " ".join(self.secret[i : i + 4] for i in range(0, len(self.secret), 4))


async def second_factor_state(user: User) -> dict[str, Any]:
    """What /account/2fa shows: whether an authenticator app is on (since when), and the recovery codes left."""
    db = get_db()
    factors = await mfa.factors_of(user, db=db)
    totp = next((factor for factor in factors if factor.kind == mfa.TOTP), None)
    state = {
        "enabled": bool(factors),
        "totp": totp is not None,
        "totp_since": totp.confirmed_at.isoformat(timespec="seconds") + "Z" if totp and totp.confirmed_at else None,
        "codes_left": await mfa.recovery_codes_left(user, db=db) if factors else 0,
        "codes_total": mfa.RECOVERY_CODE_COUNT,
        "required": get_settings().MFA_REQUIRED,
    }
    await db.commit()  # end the read
    return state


async def begin_setup(user: User) -> TotpSetup:
    """A new secret for an authenticator app, not active until ``enable_totp`` gets one of its codes."""
    db = get_db()
    try:
        secret, uri = await mfa.begin_totp_setup(user, db=db)
    except BaseException:
        await db.rollback()
        raise
    await db.commit()
    return TotpSetup(secret, uri)


async def pending_setup(user: User) -> TotpSetup | None:
    """The setup still waiting for its code (to show its QR code again after a wrong code), or None."""
    db = get_db()
    secret = await mfa.pending_totp_secret(user, db=db)
    await db.commit()
    return None if secret is None else TotpSetup(secret, mfa.otpauth_uri(secret, user.username))


def _code(data: Mapping[str, Any]) -> str:
    errors: dict[str, str] = {}
    code = text_field(data, "code", errors, strip=True)
    if errors:
        raise ValidationError(errors)
    return code


async def _keep_this_session(*methods: str) -> None:
    """After a change to the factors: a new secret for this session, and the ``methods`` presented now recorded."""
    if current_auth_session() is None:
        return
    await rotate_session()
    if methods:
        await step_up(methods)


async def _revoke_others(user: User) -> int:
    current = current_auth_session()
    return await get_store().revoke_user(user.id, keep=current.id if current else None, db=get_db())


async def enable_totp(user: User, data: Mapping[str, Any]) -> list[str]:
    """Confirm the pending setup with a right ``code``: it is on; its 10 recovery codes (show them once).

    Every other session of the user is revoked and a notice mailed; this
    session has presented the new factor (``otp``: AAL 2). WrongCode or
    NoSetupPending (400), AlreadyEnabled (409).
    """
    code = _code(data)
    db = get_db()
    try:
        codes = await mfa.confirm_totp(user, code, db=db)
        revoked = await _revoke_others(user)
        notice = {"username": user.username}
        await queue_mail(db, to=user.email, template="mfa_enabled", context=notice, user_id=user.id)
    except BaseException:
        await db.rollback()
        raise
    audit("mfa_enabled", user, detail=f"authenticator app; {revoked} other session(s) revoked")
    await db.commit()
    await _keep_this_session("otp")
    return codes


async def regenerate_codes(user: User) -> list[str]:
    """10 new recovery codes (show them once), every earlier one dead; other sessions revoked, a notice mailed.

    NoSecondFactor (409) for an account without a second factor.
    """
    db = get_db()
    try:
        codes = await mfa.regenerate_recovery_codes(user, db=db)
        revoked = await _revoke_others(user)
        notice = {"username": user.username, "count": len(codes)}
        await queue_mail(db, to=user.email, template="recovery_codes_regenerated", context=notice, user_id=user.id)
    except BaseException:
        await db.rollback()
        raise
    audit("recovery_codes_regenerated", user, detail=f"{revoked} other session(s) revoked")
    await db.commit()
    await _keep_this_session()
    return codes


async def _begin_code_attempt(user: User):
    throttle = get_throttle()
    if not throttle.enabled:
        return None
    try:
        return await throttle.begin(keys_for(f"mfa:{user.id}", request.remote_addr))
    except Throttled as refused:
        audit("throttled", user, detail=f"second factor; retry after {refused.retry_after}s")
        await get_db().commit()
        wait = refused.retry_after
        raise HTTPError(429, TOO_MANY_CODES.format(wait=wait), headers={"Retry-After": str(wait)}) from None


async def disable(user: User, data: Mapping[str, Any]) -> None:
    """Turn every second factor off with the current password and a code (authenticator app or recovery code).

    Both must be right: a wrong password is a 400 on ``current_password``
    (throttled like a login), a wrong code a 400 on ``code`` (throttled per
    account and client; the failure that reaches the limit ends this
    session: 401). NoSecondFactor (409) when there is nothing to turn off;
    409 as well while MFA_REQUIRED is on (an account must keep a factor:
    support's ``users reset-2fa`` is the way to start again).
    Every factor and recovery code goes, other sessions are revoked, a notice mailed.
    """
    if get_settings().MFA_REQUIRED:
        raise HTTPError(409, CANNOT_TURN_OFF)
    errors: dict[str, str] = {}
    password = text_field(data, "current_password", errors, strip=False)
    code = text_field(data, "code", errors, strip=True)
    if errors:
        raise ValidationError(errors)
    db = get_db()
    has_factor = await mfa.has_second_factor(user, db=db)
    await db.commit()
    if not has_factor:
        raise mfa.NoSecondFactor()
    await check_password(user, password, field="current_password", purpose="turning off two-factor authentication")
    await commit_pending()
    attempt = await _begin_code_attempt(user)
    throttle = get_throttle()
    try:
        method = "otp"
        right = await mfa.verify_totp(user, code, db=db)
        if not right and await mfa.use_recovery_code(user, code, db=db) is not None:
            right, method = True, "rec"
        if right:
            removed = await mfa.remove_all_factors(user, db=db)
            revoked = await _revoke_others(user)
            notice = {"username": user.username, "by_support": False}
            await queue_mail(db, to=user.email, template="mfa_disabled", context=notice, user_id=user.id)
    except BaseException:
        await db.rollback()
        if attempt is not None:
            await throttle.cancelled(attempt)
        raise
    if not right:
        # No write lock held while the throttle (its own transaction) counts the failure.
        await db.rollback()
        locked = attempt is not None and await throttle.failed(attempt)
        audit("login_failed", user, detail="wrong code on turning off two-factor authentication")
        await db.commit()
        if locked:
            await logout_user()
            raise HTTPError(401, SESSION_ENDED)
        raise mfa.WrongCode()
    if method == "rec":
        audit("recovery_code_used", user, detail="to turn off two-factor authentication")
    audit("mfa_disabled", user, detail=f"{removed} factor(s) removed; {revoked} other session(s) revoked")
    await db.commit()
    if attempt is not None:
        await throttle.succeeded(attempt)
    await _keep_this_session("pwd", method)


async def reset_factors(user: User) -> tuple[int, int]:
    """Support's reset (``users reset-2fa``): every factor and recovery code removed, every session revoked.

    Returns (factors removed, sessions revoked); a notice is mailed when there was a factor.
    """
    db = get_db()
    try:
        removed = await mfa.remove_all_factors(user, db=db)
        revoked = await get_store().revoke_user(user.id, db=db)
        if removed:
            notice = {"username": user.username, "by_support": True}
            await queue_mail(db, to=user.email, template="mfa_disabled", context=notice, user_id=user.id)
    except BaseException:
        await db.rollback()
        raise
    audit("mfa_reset", user, detail=f"{removed} factor(s) removed; {revoked} session(s) revoked")
    await db.commit()
    return removed, revoked


# -- passkeys (auth/passkeys.py) ---------------------------------------------------------------------


async def add_passkey(user: User, data: Mapping[str, Any]) -> dict[str, Any]:
    """Keep the passkey the browser made for ``registration_options``: ``{id, name, created_at}``.

    As turning a factor on: every other session revoked, a notice mailed, an
    audit row; this session has presented the new passkey (AAL 2).
    """
    db = get_db()
    try:
        factor = await passkeys.register(user, data)
        revoked = await _revoke_others(user)
        notice = {"username": user.username, "name": factor.name}
        await queue_mail(db, to=user.email, template="passkey_added", context=notice, user_id=user.id)
    except BaseException:
        await db.rollback()
        raise
    audit("passkey_added", user, detail=f"passkey {factor.id}; {revoked} other session(s) revoked")
    await db.commit()
    await _keep_this_session(passkeys.WEBAUTHN)
    described = passkeys.describe(factor)
    return {key: described[key] for key in ("id", "name", "created_at")}


async def remove_passkey(user: User, passkey_id: int, *, by_support: bool = False) -> None:
    """Remove one of ``user``'s passkeys: 404 for another's, 409 for the last factor while MFA_REQUIRED is on.

    Every other session is revoked (support's removal: every session) and a notice mailed.
    """
    db = get_db()
    try:
        factor = await passkeys.remove(user, passkey_id, db=db)
        if by_support:
            revoked = await get_store().revoke_user(user.id, db=db)
        else:
            revoked = await _revoke_others(user)
        notice = {"username": user.username, "name": factor.name, "by_support": by_support}
        await queue_mail(db, to=user.email, template="passkey_removed", context=notice, user_id=user.id)
    except BaseException:
        await db.rollback()
        raise
    audit("passkey_removed", user, detail=f"passkey {factor.id}; {revoked} session(s) revoked")
    await db.commit()
    if not by_support:
        await _keep_this_session()
