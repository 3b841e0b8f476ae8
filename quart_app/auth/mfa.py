"""Second factors: TOTP (authenticator apps) and recovery codes, as service functions (no routes).

**TOTP** (RFC 6238 through pyotp: SHA-1, 6 digits, 30-second steps). A setup
(``begin_totp_setup``) is an unconfirmed ``user_factors`` row holding a new
160-bit secret, encrypted at rest (``mfa_cipher``: Fernet, the key derived
from QUART_APP_MFA_KEY, or from the secret key, with the label
``quart_app.mfa``); it counts for nothing until ``confirm_totp`` gets a right
code. A code is accepted for the current step and one step either side
(clock drift), and only once: the step it matched is stored in ``last_step``
by a conditional UPDATE (``last_step IS NULL OR last_step < step``), so a
code replayed within its step, an older code after a newer one, and two
requests racing with one code (on one or many workers) get at most one
success. A secret read with a fallback key is written again under the
current key on its next successful use.

**Recovery codes**: 10 per account, each 50 random bits as ``xxxxx-xxxxx``
(lowercase Crockford base32: no i, l, o or u, so that nothing reads as
something else), shown once. The database keeps only
HMAC-SHA256(key, user id + code), the key derived from the same key material
with its own label: a copy of the database alone neither gives a code nor
lets one test guesses offline (a plain hash of 50 bits could be searched), and
a digest is never the same for two users. Input is normalised first (case,
dashes, spaces; ``o`` read as ``0``, ``i`` and ``l`` as ``1``). Each is used
once, by a conditional UPDATE (``used_at IS NULL``).

Every function takes the caller's AsyncSession (``db``; the request's,
``get_db()``, by default) and does not commit: the caller commits, with
whatever else the change brings (a revoked session, a notice, an audit row).
Those that change an account's factors take a lock on the user's row first
(PostgreSQL: ``FOR NO KEY UPDATE``; SQLite: the write lock), so that two of
them for one user run one after the other. Times come from ``clock()``
(Unix seconds), or the ``now`` argument: tests move them to the clock's edges.
"""

from __future__ import annotations

import hmac
import io
import re
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from hashlib import sha256
from typing import Protocol

import pyotp
import segno
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.config import get_settings
from ..core.crypto import CannotDecrypt, Cipher, derive_bytes
from ..db import get_db
from ..exceptions import HTTPError, ValidationError
from ..models import RecoveryCode, User, UserFactor

__all__ = [
    "RECOVERY_CODE_COUNT",
    "TOTP",
    "AlreadyEnabled",
    "NoSecondFactor",
    "NoSetupPending",
    "WrongCode",
    "begin_totp_setup",
    "clock",
    "confirm_totp",
    "factors_of",
    "has_second_factor",
    "mfa_cipher",
    "new_recovery_code",
    "normalise_recovery_code",
    "otpauth_uri",
    "qr_svg",
    "recovery_codes_left",
    "regenerate_recovery_codes",
    "remove_all_factors",
    "use_recovery_code",
    "verify_totp",
]

TOTP = "totp"
INFO = b"quart_app.mfa"
RECOVERY_INFO = b"quart_app.mfa.recovery-codes"

STEP = 30  # seconds (RFC 6238's default, what every authenticator app uses)
WINDOW = 1  # steps accepted either side of the current one
DIGITS = 6
SECRET_LENGTH = 32  # base32 characters: 160 bits (RFC 4226's recommendation)

RECOVERY_CODE_COUNT = 10
# Crockford's base32 in lower case: 0-9 and the letters but i, l, o, u.
RECOVERY_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
RECOVERY_GROUP, RECOVERY_GROUPS = 5, 2  # "xxxxx-xxxxx": 10 characters, 50 bits
_RECOVERY_LENGTH = RECOVERY_GROUP * RECOVERY_GROUPS
_RECOVERY_READ_AS = str.maketrans({"o": "0", "i": "1", "l": "1"})
_RECOVERY_RE = re.compile(f"[{RECOVERY_ALPHABET}]{{{_RECOVERY_LENGTH}}}")
_SEPARATORS_RE = re.compile(r"[\s-]+")
_TOTP_CODE_RE = re.compile(f"[0-9]{{{DIGITS}}}")
_LONGEST_INPUT = 64  # characters; anything longer is refused before any work
# Bulk UPDATE and DELETE leave the session's objects alone: reads here load rows afresh (populate_existing).
_NO_SYNC = {"synchronize_session": False}

WRONG_CODE = "That code is not right. Enter the code your authenticator app shows now."
NO_SETUP = "No authenticator app is waiting to be confirmed: set it up again."
ALREADY_ENABLED = "An authenticator app is already set up: turn two-factor authentication off first."
NO_SECOND_FACTOR = "Set up two-factor authentication first."


class WrongCode(ValidationError):
    """400: the code does not match the authenticator app's secret (``code`` is the field)."""

    def __init__(self) -> None:
        super().__init__({"code": WRONG_CODE})


class NoSetupPending(HTTPError):
    """400: there is no unconfirmed TOTP setup to confirm (never begun, replaced, or already confirmed)."""

    def __init__(self) -> None:
        super().__init__(400, NO_SETUP)


class AlreadyEnabled(HTTPError):
    """409: the user already has a confirmed authenticator app."""

    def __init__(self) -> None:
        super().__init__(409, ALREADY_ENABLED)


class NoSecondFactor(HTTPError):
    """409: recovery codes are for accounts with a second factor."""

    def __init__(self) -> None:
        super().__init__(409, NO_SECOND_FACTOR)


class _Account(Protocol):
    id: int
    username: str


def clock() -> float:
    """Now, in Unix seconds: the time source of every function here without a ``now`` (tests replace it)."""
    return time.time()


def _now(now: float | None) -> float:
    return clock() if now is None else now


def _stamp(now: float) -> datetime:
    """``now`` as the database keeps times: naive UTC (quart_login.utcnow's form)."""
    return datetime.fromtimestamp(now, UTC).replace(tzinfo=None)


# -- keys ------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _cipher(keys: tuple[str, ...]) -> Cipher:
    return Cipher(keys, INFO)


def mfa_cipher() -> Cipher:
    """The cipher of the factors' secrets: MFA_KEY and its fallbacks, else the secret key and its fallbacks."""
    return _cipher(tuple(get_settings().mfa_keys))


@lru_cache(maxsize=8)
def _recovery_keys(keys: tuple[str, ...]) -> tuple[bytes, ...]:
    return tuple(derive_bytes(key, RECOVERY_INFO) for key in keys)


def _recovery_digests(user_id: int, code: str) -> list[str]:
    """The digest of the normalised ``code`` of ``user_id`` under each key, the current key's first."""
    message = f"{user_id}:{code}".encode("ascii")
    return [hmac.new(key, message, sha256).hexdigest() for key in _recovery_keys(tuple(get_settings().mfa_keys))]


async def _lock_user(db: AsyncSession, user_id: int) -> None:
    """Hold the user's row until the caller's transaction ends: changes to one account's factors queue."""
    if db.get_bind().dialect.name == "sqlite":
        # SQLite locks the whole file for writing; taking it now (a write that
        # changes nothing) makes what the caller reads next current.
        await db.execute(
            update(User).where(User.id == user_id).values(is_active=User.is_active), execution_options=_NO_SYNC
        )
    else:
        # NO KEY: rows that only refer to the user (a new session) are not held up.
        await db.execute(select(User.id).where(User.id == user_id).with_for_update(key_share=True))


# -- TOTP ------------------------------------------------------------------------------------


def otpauth_uri(secret: str, username: str) -> str:
    """The ``otpauth://totp/Issuer:username?secret=...&issuer=...`` URI an authenticator app reads."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP).provisioning_uri(
        name=username, issuer_name=get_settings().MFA_ISSUER
    )


def qr_svg(uri: str) -> str:
    """``uri`` as a QR code in SVG: only paths (no script, link, style or event handler).

    With its namespace and without an XML declaration: fit to put inline in a
    page or to serve as ``image/svg+xml`` under the strict CSP.
    """
    buffer = io.BytesIO()
    segno.make(uri, error="m").save(
        buffer,
        kind="svg",
        scale=4,
        border=4,
        dark="#000",
        light="#fff",
        xmldecl=False,
        svgns=True,
        nl=False,
        title="QR code for your authenticator app",
    )
    return buffer.getvalue().decode("utf-8")


def _steps_matched(secret: str, code: object, now: float) -> list[int]:
    """The steps within the window, newest first, whose code is ``code`` (6 digits; spaces, dashes ignored)."""
    if not isinstance(code, str) or len(code) > _LONGEST_INPUT:
        return []
    code = _SEPARATORS_RE.sub("", code)
    if not _TOTP_CODE_RE.fullmatch(code):
        return []
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP)
    current = int(now // STEP)
    matched = []
    for step in range(current + WINDOW, current - WINDOW - 1, -1):
        # compare_digest for every step (no early exit): the time tells nothing about which matched.
        if hmac.compare_digest(totp.generate_otp(step), code):
            matched.append(step)
    return matched


def _read_secret(factor: UserFactor) -> str | None:
    """The factor's base32 secret, or None when no key (current or fallback) opens it."""
    if factor.secret is None:
        return None
    try:
        return mfa_cipher().decrypt(factor.secret).decode("ascii")
    except CannotDecrypt:
        return None


async def _totp_factors(db: AsyncSession, user_id: int, *, confirmed: bool) -> list[UserFactor]:
    confirmed_clause = UserFactor.confirmed_at.is_not(None) if confirmed else UserFactor.confirmed_at.is_(None)
    result = await db.execute(
        select(UserFactor)
        .where(UserFactor.user_id == user_id, UserFactor.kind == TOTP, confirmed_clause)
        .order_by(UserFactor.id.desc())
        .execution_options(populate_existing=True)
    )
    return list(result.scalars())


async def begin_totp_setup(
    user: _Account, *, db: AsyncSession | None = None, now: float | None = None
) -> tuple[str, str]:
    """A new, unconfirmed authenticator app for ``user`` (an earlier unconfirmed one is dropped).

    Returns the base32 secret and its otpauth:// URI, to show (the QR code:
    ``qr_svg``) and never to keep anywhere else; the database gets the secret
    encrypted. AlreadyEnabled (409) when an authenticator app is on already.
    """
    db = get_db() if db is None else db
    at = _stamp(_now(now))
    await _lock_user(db, user.id)
    if await _totp_factors(db, user.id, confirmed=True):
        raise AlreadyEnabled()
    await db.execute(
        delete(UserFactor).where(
            UserFactor.user_id == user.id, UserFactor.kind == TOTP, UserFactor.confirmed_at.is_(None)
        ),
        execution_options=_NO_SYNC,
    )
    secret = pyotp.random_base32(SECRET_LENGTH)
    db.add(UserFactor(user_id=user.id, kind=TOTP, secret=mfa_cipher().encrypt(secret.encode("ascii")), created_at=at))
    await db.flush()
    return secret, otpauth_uri(secret, user.username)


async def pending_totp_secret(user: _Account, *, db: AsyncSession | None = None) -> str | None:
    """The secret of the setup still waiting for its first code (to show again after a wrong code), or None."""
    db = get_db() if db is None else db
    pending = await _totp_factors(db, user.id, confirmed=False)
    return _read_secret(pending[0]) if pending else None


async def confirm_totp(
    user: _Account, code: object, *, db: AsyncSession | None = None, now: float | None = None
) -> list[str]:
    """Turn the pending authenticator app on with a right ``code``; its 10 new recovery codes (shown once).

    WrongCode (400) for a wrong code, NoSetupPending (400) without a setup,
    AlreadyEnabled (409) if another one was turned on meanwhile. The code that
    confirms counts as used: it does not log in afterwards.
    """
    db = get_db() if db is None else db
    when = _now(now)
    pending = await _totp_factors(db, user.id, confirmed=False)
    if not pending:
        raise NoSetupPending()
    factor = pending[0]
    secret = _read_secret(factor)
    steps = [] if secret is None else _steps_matched(secret, code, when)
    if not steps:
        raise WrongCode()
    at = _stamp(when)
    await _lock_user(db, user.id)
    if await _totp_factors(db, user.id, confirmed=True):
        raise AlreadyEnabled()
    result = await db.execute(
        update(UserFactor)
        .where(UserFactor.id == factor.id, UserFactor.confirmed_at.is_(None))
        .values(confirmed_at=at, last_step=steps[0], last_used_at=at),
        execution_options=_NO_SYNC,
    )
    if result.rowcount != 1:  # replaced by a new setup, or removed, since it was read
        raise NoSetupPending()
    await db.execute(
        delete(UserFactor).where(
            UserFactor.user_id == user.id,
            UserFactor.kind == TOTP,
            UserFactor.confirmed_at.is_(None),
            UserFactor.id != factor.id,
        ),
        execution_options=_NO_SYNC,
    )
    return await _replace_recovery_codes(db, user.id, at)


async def verify_totp(
    user: _Account, code: object, *, db: AsyncSession | None = None, now: float | None = None
) -> bool:
    """Whether ``code`` is a right code of the user's authenticator app, not used before (it is used now).

    The step it matched is stored (in the caller's transaction): a step at or
    before the last one used is refused, and of two requests racing with one
    code, only one gets True (the other's conditional UPDATE finds the step
    taken, after waiting for the first's transaction to end).
    """
    db = get_db() if db is None else db
    when = _now(now)
    cipher = mfa_cipher()
    for factor in await _totp_factors(db, user.id, confirmed=True):
        secret = _read_secret(factor)
        if secret is None:
            continue
        steps = [
            step for step in _steps_matched(secret, code, when) if factor.last_step is None or step > factor.last_step
        ]
        if not steps:
            continue
        at = _stamp(when)
        values: dict[str, object] = {"last_step": steps[0], "last_used_at": at}
        if not cipher.is_current(factor.secret):
            values["secret"] = cipher.encrypt(secret.encode("ascii"))  # read with a fallback key: rotate it
        result = await db.execute(
            update(UserFactor)
            .where(
                UserFactor.id == factor.id,
                UserFactor.confirmed_at.is_not(None),
                or_(UserFactor.last_step.is_(None), UserFactor.last_step < steps[0]),
            )
            .values(**values),
            execution_options=_NO_SYNC,
        )
        if result.rowcount == 1:
            return True
    return False


# -- recovery codes --------------------------------------------------------------------------


def new_recovery_code() -> str:
    """A fresh code as shown: ``xxxxx-xxxxx`` (50 bits from ``secrets``)."""
    raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(_RECOVERY_LENGTH))
    return "-".join(raw[i : i + RECOVERY_GROUP] for i in range(0, _RECOVERY_LENGTH, RECOVERY_GROUP))


def normalise_recovery_code(code: object) -> str | None:
    """``code`` as digested (lower case, no dashes or spaces, o as 0, i and l as 1), or None if it is none."""
    if not isinstance(code, str) or len(code) > _LONGEST_INPUT:
        return None
    text = _SEPARATORS_RE.sub("", code).lower().translate(_RECOVERY_READ_AS)
    return text if _RECOVERY_RE.fullmatch(text) else None


async def _replace_recovery_codes(db: AsyncSession, user_id: int, at: datetime) -> list[str]:
    await db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id), execution_options=_NO_SYNC)
    codes: list[str] = []
    while len(codes) < RECOVERY_CODE_COUNT:
        code = new_recovery_code()
        if code not in codes:
            codes.append(code)
    for code in codes:
        digest = _recovery_digests(user_id, normalise_recovery_code(code))[0]
        db.add(RecoveryCode(user_id=user_id, digest=digest, created_at=at))
    await db.flush()
    return codes


async def regenerate_recovery_codes(
    user: _Account, *, db: AsyncSession | None = None, now: float | None = None
) -> list[str]:
    """10 new recovery codes for ``user`` (shown once); every earlier one, used or not, dies.

    NoSecondFactor (409) for an account without a confirmed second factor.
    """
    db = get_db() if db is None else db
    at = _stamp(_now(now))
    await _lock_user(db, user.id)
    if not await has_second_factor(user, db=db):
        raise NoSecondFactor()
    return await _replace_recovery_codes(db, user.id, at)


async def use_recovery_code(
    user: _Account, code: object, *, db: AsyncSession | None = None, now: float | None = None
) -> int | None:
    """Use one of the user's recovery codes: how many are left after it, or None when ``code`` is refused.

    Refused: not one of the user's codes, or used already. Of two requests
    racing with one code, one gets the count, the other None.
    """
    db = get_db() if db is None else db
    normalised = normalise_recovery_code(code)
    if normalised is None:
        return None
    result = await db.execute(
        update(RecoveryCode)
        .where(
            RecoveryCode.user_id == user.id,
            RecoveryCode.digest.in_(_recovery_digests(user.id, normalised)),
            RecoveryCode.used_at.is_(None),
        )
        .values(used_at=_stamp(_now(now))),
        execution_options=_NO_SYNC,
    )
    if result.rowcount != 1:
        return None
    return await recovery_codes_left(user, db=db)


async def recovery_codes_left(user: _Account, *, db: AsyncSession | None = None) -> int:
    """How many of the user's recovery codes are still unused."""
    db = get_db() if db is None else db
    result = await db.execute(
        select(func.count())
        .select_from(RecoveryCode)
        .where(RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))
    )
    return int(result.scalar_one())


# -- the factors -----------------------------------------------------------------------------


async def factors_of(user: _Account, *, db: AsyncSession | None = None) -> Sequence[UserFactor]:
    """The user's confirmed second factors, oldest first (never a setup still waiting for its code)."""
    db = get_db() if db is None else db
    result = await db.execute(
        select(UserFactor)
        .where(UserFactor.user_id == user.id, UserFactor.confirmed_at.is_not(None))
        .order_by(UserFactor.id)
        .execution_options(populate_existing=True)
    )
    return list(result.scalars())


def has_factor_statement(user_id: int):
    """The query of ``has_second_factor`` (an index lookup on ix_user_factors_user_id: scripts/query_plans.py)."""
    return select(UserFactor.id).where(UserFactor.user_id == user_id, UserFactor.confirmed_at.is_not(None)).limit(1)


async def has_second_factor(user: _Account, *, db: AsyncSession | None = None) -> bool:
    """Whether the user has a confirmed second factor (a login then asks for it)."""
    db = get_db() if db is None else db
    result = await db.execute(has_factor_statement(user.id))
    return result.first() is not None


async def remove_all_factors(user: _Account, *, db: AsyncSession | None = None) -> int:
    """Remove every factor of the user (setups included) and every recovery code; how many confirmed factors went."""
    db = get_db() if db is None else db
    await _lock_user(db, user.id)
    confirmed = len(await factors_of(user, db=db))
    await db.execute(delete(UserFactor).where(UserFactor.user_id == user.id), execution_options=_NO_SYNC)
    await db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id), execution_options=_NO_SYNC)
    return confirmed
