"""Passkeys (WebAuthn): the ceremonies, with py_webauthn, on the factor model of auth/mfa.py.

A passkey is a ``user_factors`` row of kind ``webauthn``: credential id,
COSE public key, signature counter, the user handle it was registered with.
It serves three ways:

- **added** from a fresh session (``registration_options`` then ``register``):
  resident key preferred, user verification required, the account's own
  credentials excluded;
- **passwordless sign-in** (``login_options`` then ``authenticate``): a
  discoverable credential, so no username is asked and nothing tells who has
  an account; it counts as two factors (``amr`` webauthn, AAL 2);
- **the second step** of a pending login (``second_factor_options`` then
  ``verify_second_factor``), for an account that has one.

Every challenge is 32 random bytes kept server-side as its SHA-256
(``webauthn_challenges``) for WEBAUTHN_CHALLENGE_TTL, and consumed by one
conditional DELETE: it works once, whichever worker hands it out or takes
the answer. The relying party is WEBAUTHN_RP_ID, the expected origin
PUBLIC_URL's. A signature counter that does not move forward (unless the
authenticator keeps none: 0 both times) is refused and audited. Failed
assertions count per client IP (TOKEN_RATE_LIMIT) like bad mailed links.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from quart import request
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import options_to_json_dict
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from quart_login import utcnow

from ..core.config import Limit, get_settings, parse_limit
from ..core.crypto import derive_bytes
from ..db import get_db
from ..exceptions import HTTPError, ValidationError
from ..models import User, UserFactor, WebauthnChallenge
from . import mfa
from .events import audit
from .throttle import RateLimited, check, hit, limit_key

WEBAUTHN = "webauthn"
HANDLE_INFO = b"quart_app.webauthn.user-handle"
REGISTER, LOGIN, SECOND = "register", "login", "second"
NAME_MAX = 64
_NO_SYNC = {"synchronize_session": False}
CREDENTIAL_MAX = 16_384  # characters of a credential's JSON; a real one is well under 2 kB

NOT_ENABLED = "Passkeys are not set up on this site."
REFUSED = "That passkey could not be verified. Try again."
SIGN_IN_REFUSED = "That passkey did not sign you in. Try again, or log in with your password."
COUNTER_WENT_BACK = "That passkey could not be verified: its signature counter went backwards."
ALREADY_REGISTERED = "That passkey is already registered."
CREDENTIAL_REQUIRED = "Send the credential the browser gave (PublicKeyCredential.toJSON())."
NAME_INVALID = f"A name of at most {NAME_MAX} characters, without control characters."
LAST_FACTOR = (
    "This site requires two-factor authentication: add another passkey or an authenticator app before removing it."
)
NO_SUCH_PASSKEY = "No such passkey."
TOO_MANY = "Too many passkey attempts that failed. Try again in {wait} seconds."


class PasskeyRefused(HTTPError):
    """A ceremony's answer that does not verify: 400 for adding one, 401 for signing in."""

    def __init__(self, status: int = 400, message: str = REFUSED) -> None:
        super().__init__(status, message)


# -- small helpers -----------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _digest(challenge: bytes) -> str:
    return hashlib.sha256(challenge).hexdigest()


def enabled() -> bool:
    return get_settings().webauthn_enabled


def require_enabled() -> None:
    if not enabled():
        raise HTTPError(404, NOT_ENABLED)


def user_handle(user: User) -> bytes:
    """The WebAuthn user handle of ``user``: 32 bytes keyed from the MFA key, nothing of the account in it."""
    return hmac.new(_handle_key(get_settings().mfa_keys[0]), str(user.id).encode(), hashlib.sha256).digest()


@lru_cache(maxsize=8)
def _handle_key(key_material: str) -> bytes:
    return derive_bytes(key_material, HANDLE_INFO)


def _descriptor(factor: UserFactor) -> PublicKeyCredentialDescriptor:
    transports = []
    for name in (factor.transports or "").split(","):
        try:
            transports.append(AuthenticatorTransport(name))
        except ValueError:
            continue
    return PublicKeyCredentialDescriptor(id=factor.credential_id or b"", transports=transports or None)


async def passkeys_of(user: User, *, db: AsyncSession | None = None) -> list[UserFactor]:
    """The user's passkeys, oldest first."""
    db = get_db() if db is None else db
    result = await db.execute(
        select(UserFactor)
        .where(UserFactor.user_id == user.id, UserFactor.kind == WEBAUTHN)
        .order_by(UserFactor.id)
        .execution_options(populate_existing=True)
    )
    return list(result.scalars())


def describe(factor: UserFactor) -> dict[str, Any]:
    """What the API shows of a passkey (never its key or credential id)."""

    def stamp(value: datetime | None) -> str | None:
        return None if value is None else value.replace(microsecond=0).isoformat() + "Z"

    return {
        "id": factor.id,
        "name": factor.name or "Passkey",
        "created_at": stamp(factor.created_at),
        "last_used_at": stamp(factor.last_used_at),
    }


# -- challenges ----------------------------------------------------------------------------------------


async def _new_challenge(db: AsyncSession, purpose: str, user_id: int | None) -> bytes:
    now = utcnow()
    challenge = secrets.token_bytes(32)
    # Housekeeping on the index: anyone's expired challenges go.
    await db.execute(
        delete(WebauthnChallenge).where(WebauthnChallenge.expires_at <= now),
        execution_options={"synchronize_session": False},
    )
    db.add(
        WebauthnChallenge(
            digest=_digest(challenge),
            purpose=purpose,
            user_id=user_id,
            created_at=now,
            expires_at=now + timedelta(seconds=get_settings().WEBAUTHN_CHALLENGE_TTL),
        )
    )
    return challenge


def _challenge_in(credential: Mapping[str, Any]) -> bytes | None:
    """The challenge the browser signed, read from clientDataJSON (checked again by the verification)."""
    response = credential.get("response")
    if not isinstance(response, Mapping) or not isinstance(response.get("clientDataJSON"), str):
        return None
    try:
        client_data = json.loads(_unb64url(response["clientDataJSON"]))
        challenge = _unb64url(client_data["challenge"])
    except (ValueError, KeyError, TypeError):
        return None
    return challenge if len(challenge) == 32 else None


async def _consume(db: AsyncSession, challenge: bytes | None, purpose: str, user_id: int | None) -> bool:
    """Take the challenge: True once for a live one of this purpose (and user), never again."""
    if challenge is None:
        return False
    clauses = [
        WebauthnChallenge.digest == _digest(challenge),
        WebauthnChallenge.purpose == purpose,
        WebauthnChallenge.expires_at > utcnow(),
    ]
    clauses.append(WebauthnChallenge.user_id.is_(None) if user_id is None else WebauthnChallenge.user_id == user_id)
    taken = await db.execute(
        delete(WebauthnChallenge).where(*clauses), execution_options={"synchronize_session": False}
    )
    return taken.rowcount == 1


def _credential(data: Mapping[str, Any]) -> dict[str, Any]:
    """The ``credential`` field: an object of modest size, else 400."""
    credential = data.get("credential")
    if not isinstance(credential, dict) or len(json.dumps(credential)) > CREDENTIAL_MAX:
        raise ValidationError({"credential": CREDENTIAL_REQUIRED})
    for name in ("id", "rawId", "type"):
        if not isinstance(credential.get(name), str):
            raise ValidationError({"credential": CREDENTIAL_REQUIRED})
    if not isinstance(credential.get("response"), dict):
        raise ValidationError({"credential": CREDENTIAL_REQUIRED})
    return credential


def _name(data: Mapping[str, Any], taken: int) -> str:
    name = data.get("name")
    if name is None or (isinstance(name, str) and not name.strip()):
        return f"Passkey {taken + 1}"
    if not isinstance(name, str) or len(name.strip()) > NAME_MAX or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ValidationError({"name": NAME_INVALID})
    return name.strip()


def _ip_key() -> str:
    return limit_key("webauthn", request.remote_addr or "unknown")


def _ip_limit() -> Limit | None:
    return parse_limit(get_settings().TOKEN_RATE_LIMIT, "TOKEN_RATE_LIMIT")


def _too_many(error: RateLimited) -> HTTPError:
    wait = error.retry_after
    return HTTPError(429, TOO_MANY.format(wait=wait), headers={"Retry-After": str(wait)})


async def _check_allowed() -> None:
    """429 while this client has failed too many passkey sign-ins (TOKEN_RATE_LIMIT, per IP)."""
    try:
        await check(_ip_key(), _ip_limit())
    except RateLimited as error:
        raise _too_many(error) from None


async def _count_failure() -> None:
    try:
        await hit(_ip_key(), _ip_limit())
    except RateLimited as error:
        raise _too_many(error) from None


def _transports(value: object) -> str | None:
    """The transports the browser reported, as kept (a comma-separated list), or None."""
    if not isinstance(value, list):
        return None
    return ",".join(t for t in value if isinstance(t, str) and t.isascii() and "," not in t)[:200] or None


def _options_json(options: Any) -> dict[str, Any]:
    return options_to_json_dict(options)


# -- adding a passkey ------------------------------------------------------------------------------------


async def registration_options(user: User) -> dict[str, Any]:
    """``PublicKeyCredentialCreationOptions`` for ``user`` (JSON-ready); the challenge kept server-side."""
    require_enabled()
    settings = get_settings()
    db = get_db()
    try:
        existing = await passkeys_of(user, db=db)
        challenge = await _new_challenge(db, REGISTER, user.id)
    except BaseException:
        await db.rollback()
        raise
    await db.commit()
    options = generate_registration_options(
        rp_id=settings.webauthn_rp_id,
        rp_name=settings.MFA_ISSUER,
        user_id=user_handle(user),
        user_name=user.username,
        user_display_name=user.username,
        challenge=challenge,
        timeout=settings.WEBAUTHN_CHALLENGE_TTL * 1000,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=[_descriptor(factor) for factor in existing],
    )
    return _options_json(options)


async def register(user: User, data: Mapping[str, Any]) -> UserFactor:
    """Verify the browser's answer to ``registration_options`` and keep the passkey (the caller commits).

    400 (nothing stored) for a bad attestation, a wrong origin or RP ID, a
    reused, expired or other user's challenge, user verification missing, or
    a credential registered already.
    """
    require_enabled()
    credential = _credential(data)
    settings = get_settings()
    db = get_db()
    existing = await passkeys_of(user, db=db)
    name = _name(data, len(existing))
    challenge = _challenge_in(credential)
    if not await _consume(db, challenge, REGISTER, user.id):
        await db.commit()  # (nothing consumed; ends the read)
        raise PasskeyRefused()
    try:
        verified = verify_registration_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=settings.webauthn_rp_id,
            expected_origin=settings.webauthn_origin,
            require_user_verification=True,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError):
        await db.commit()  # the challenge stays used
        raise PasskeyRefused() from None
    now = utcnow()
    transports = credential["response"].get("transports")
    factor = UserFactor(
        user_id=user.id,
        kind=WEBAUTHN,
        name=name,
        created_at=now,
        confirmed_at=now,
        credential_id=verified.credential_id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        user_handle=user_handle(user),
        transports=",".join(t for t in transports if isinstance(t, str))[:200]
        if isinstance(transports, list)
        else None,
    )
    taken = await db.execute(select(UserFactor.id).where(UserFactor.credential_id == verified.credential_id))
    if taken.first() is not None:
        await db.commit()  # the challenge stays used
        raise HTTPError(400, ALREADY_REGISTERED)
    db.add(factor)
    try:
        await db.flush()
    except IntegrityError:
        # Registered by a racing request meanwhile: the rollback gave the challenge back; use it up again.
        await db.rollback()
        await _consume(db, challenge, REGISTER, user.id)
        await db.commit()
        raise HTTPError(400, ALREADY_REGISTERED) from None
    return factor


# -- signing in with one -----------------------------------------------------------------------------------


async def login_options() -> dict[str, Any]:
    """Options for a discoverable credential: no account named, nothing about who has one."""
    require_enabled()
    settings = get_settings()
    db = get_db()
    challenge = await _new_challenge(db, LOGIN, None)
    await db.commit()
    options = generate_authentication_options(
        rp_id=settings.webauthn_rp_id,
        challenge=challenge,
        timeout=settings.WEBAUTHN_CHALLENGE_TTL * 1000,
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    return _options_json(options)


async def second_factor_options(user: User) -> dict[str, Any]:
    """Options for the pending login of ``user``: its own passkeys allowed."""
    require_enabled()
    settings = get_settings()
    db = get_db()
    existing = await passkeys_of(user, db=db)
    challenge = await _new_challenge(db, SECOND, user.id)
    await db.commit()
    options = generate_authentication_options(
        rp_id=settings.webauthn_rp_id,
        challenge=challenge,
        timeout=settings.WEBAUTHN_CHALLENGE_TTL * 1000,
        allow_credentials=[_descriptor(factor) for factor in existing],
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    return _options_json(options)


def _raw_id(credential: Mapping[str, Any]) -> bytes | None:
    try:
        raw = _unb64url(credential["rawId"])
    except (ValueError, KeyError, TypeError):
        return None
    return raw if 0 < len(raw) <= 1023 else None


async def _assert(
    db: AsyncSession, credential: Mapping[str, Any], purpose: str, user: User | None
) -> tuple[UserFactor, User] | None:
    """Verify an assertion: the passkey and its (active) user, or None (the challenge is used either way)."""
    settings = get_settings()
    challenge = _challenge_in(credential)
    consumed = await _consume(db, challenge, purpose, None if user is None else user.id)
    raw_id = _raw_id(credential)
    if not consumed or raw_id is None:
        return None
    clauses = [UserFactor.credential_id == raw_id, UserFactor.kind == WEBAUTHN, User.is_active]
    if user is not None:
        clauses.append(UserFactor.user_id == user.id)
    row = (
        await db.execute(
            select(UserFactor, User)
            .join(User, User.id == UserFactor.user_id)
            .where(*clauses)
            .execution_options(populate_existing=True)
        )
    ).first()
    if row is None:
        return None
    factor, owner = row
    handle = credential["response"].get("userHandle")
    if isinstance(handle, str) and handle and factor.user_handle is not None:
        try:
            if not hmac.compare_digest(_unb64url(handle), factor.user_handle):
                return None
        except ValueError:
            return None
    stored = factor.sign_count or 0
    try:
        # The signature first (against a count of 0, which any count passes): only a signed
        # assertion can tell of a counter that went backwards.
        verified = verify_authentication_response(
            credential=dict(credential),
            expected_challenge=challenge,
            expected_rp_id=settings.webauthn_rp_id,
            expected_origin=settings.webauthn_origin,
            credential_public_key=factor.public_key or b"",
            credential_current_sign_count=0,
            require_user_verification=True,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError):
        return None
    signed = verified.new_sign_count
    if (signed or stored) and signed <= stored:
        # A signed answer whose counter did not move: a copy of the authenticator (or a replay of one).
        audit("passkey_counter_regression", owner, detail=f"passkey {factor.id}: counter {signed} after {stored}")
        raise PasskeyRefused(401, COUNTER_WENT_BACK)
    # Moved forward only from the count this check read: of two answers racing, one wins.
    moved = await db.execute(
        update(UserFactor)
        .where(UserFactor.id == factor.id, func.coalesce(UserFactor.sign_count, 0) == stored)
        .values(sign_count=verified.new_sign_count, last_used_at=utcnow()),
        execution_options={"synchronize_session": False},
    )
    if moved.rowcount != 1:
        return None
    return factor, owner


async def authenticate(data: Mapping[str, Any]) -> User:
    """Passwordless sign-in: the user whose passkey signed the challenge of ``login_options`` (the caller logs in).

    401 (one message) for an unknown credential, a wrong origin or RP ID, a
    reused or expired challenge, a counter that went back, user
    verification missing, or an inactive account; 429 past the per-IP limit.
    """
    require_enabled()
    credential = _credential(data)
    await _check_allowed()
    db = get_db()
    try:
        found = await _assert(db, credential, LOGIN, None)
    except PasskeyRefused:
        await db.commit()  # the challenge used, the regression audited
        await _count_failure()
        raise
    except BaseException:
        await db.rollback()
        raise
    if found is None:
        await db.commit()
        await _count_failure()
        raise PasskeyRefused(401, SIGN_IN_REFUSED)
    factor, user = found
    audit("passkey_used", user, detail=f"passkey {factor.id}: signed in without a password")
    await db.commit()
    return user


async def verify_second_factor(user: User, data: Mapping[str, Any]) -> bool:
    """Whether a passkey of ``user`` answered ``second_factor_options`` (the caller's transaction; it commits)."""
    require_enabled()
    credential = _credential(data)
    db = get_db()
    found = await _assert(db, credential, SECOND, user)
    if found is None:
        return False
    audit("passkey_used", user, detail=f"passkey {found[0].id}: second factor")
    return True


# -- the account's list ----------------------------------------------------------------------------------------


async def remove(user: User, passkey_id: int, *, db: AsyncSession | None = None) -> UserFactor:
    """Remove one of ``user``'s passkeys (the caller commits). 404 for another's; 409 for the last required factor."""
    db = get_db() if db is None else db
    await mfa._lock_user(db, user.id)
    factors: Sequence[UserFactor] = await mfa.factors_of(user, db=db)
    target = next((f for f in factors if f.id == passkey_id and f.kind == WEBAUTHN), None)
    if target is None:
        raise HTTPError(404, NO_SUCH_PASSKEY)
    if get_settings().MFA_REQUIRED and len(factors) == 1:
        raise HTTPError(409, LAST_FACTOR)
    await db.execute(
        delete(UserFactor).where(UserFactor.id == target.id, UserFactor.user_id == user.id),
        execution_options={"synchronize_session": False},
    )
    return target
