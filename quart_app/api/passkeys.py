"""Passkeys' JSON API: add, list and remove them; sign in with one; the second step of a pending login.

The ceremonies are auth/passkeys.py's; the options are py_webauthn's JSON
(``PublicKeyCredentialCreationOptions`` / ``...RequestOptions``, binary
fields in base64url), and a credential is what the browser's
``PublicKeyCredential.toJSON()`` gives. 404 everywhere while passkeys are
off (production without a real WEBAUTHN_RP_ID).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, RootModel
from quart import Blueprint, Response

from quart_login import login_user

from ..auth import WAYS_OUT, current_user, enrolment, exempt_from, fresh_login_required, passkeys, pending, sensitive
from ..exceptions import HTTPError
from ..models import MAX_ID
from .schemas import PublicUser, SecondFactorLogin, body, errors, needs_login, no_content, returns
from .views import json_body

bp = Blueprint("passkeys_api", __name__, url_prefix="/api")

Options = dict[str, Any]


class RegisterVerify(BaseModel):
    """The browser's answer to the creation options, and a name for the passkey."""

    credential: dict[str, Any] = Field(description="`PublicKeyCredential.toJSON()` of `navigator.credentials.create`.")
    name: str | None = Field(default=None, max_length=passkeys.NAME_MAX, examples=["Laptop"])


class PasskeyAdded(BaseModel):
    """The passkey kept."""

    id: int
    name: str
    created_at: str


class PasskeyInfo(PasskeyAdded):
    """One passkey of the account (never its key or credential id)."""

    last_used_at: str | None


class SignInVerify(BaseModel):
    """The browser's answer to the sign-in options."""

    credential: dict[str, Any] = Field(description="`PublicKeyCredential.toJSON()` of `navigator.credentials.get`.")
    remember: bool = False


class NoOptions(BaseModel):
    """An empty object: the sign-in options depend on nothing the client says."""


class SecondStepAnswer(RootModel[SecondFactorLogin | dict[str, Any]]):
    """The user, logged in at AAL 2; or, for `{}`, the `PublicKeyCredentialRequestOptions` for its passkeys."""


class SecondStep(BaseModel):
    """Without `credential`: the options for this pending login's passkeys; with it, the answer to them."""

    credential: dict[str, Any] | None = None


@bp.before_request
async def _passkeys_on() -> None:
    passkeys.require_enabled()


# -- the account's passkeys ------------------------------------------------------------------------


@bp.post("/webauthn/register/options")
@needs_login
@returns(Options, 200)
@errors(400, 401, 403, 404, 413, 415, 503)
@sensitive
@exempt_from(*WAYS_OUT)
async def register_options():
    """`PublicKeyCredentialCreationOptions` for a new passkey of this account (its challenge: one use, 5 minutes)."""
    await json_body(optional=True)
    return await passkeys.registration_options(current_user._get_current_object()), 200


@bp.post("/webauthn/register/verify")
@needs_login
@body(RegisterVerify)
@returns(PasskeyAdded, 201)
@errors(400, 401, 403, 404, 413, 415, 503)
@sensitive
@exempt_from(*WAYS_OUT)
async def register_verify():
    """Keep the passkey: 201; 400 for a bad attestation, wrong origin or RP ID, a used or expired challenge."""
    added = await enrolment.add_passkey(current_user._get_current_object(), await json_body())
    return added, 201


@bp.get("/webauthn/credentials")
@needs_login
@returns(list[PasskeyInfo], 200)
@errors(401, 403, 404, 503)
@fresh_login_required
async def list_credentials():
    """This account's passkeys: name, when added, when last used."""
    found = await passkeys.passkeys_of(current_user._get_current_object())
    return [passkeys.describe(factor) for factor in found], 200


@bp.delete(f"/webauthn/credentials/<int(max={MAX_ID}):passkey_id>")
@needs_login
@no_content
@errors(401, 403, 404, 409, 503)
@sensitive
async def delete_credential(passkey_id: int):
    """Remove one: 204; 404 for another account's; 409 for the last factor of an account that must keep one."""
    await enrolment.remove_passkey(current_user._get_current_object(), passkey_id)
    return Response(status=204)


# -- signing in ------------------------------------------------------------------------------------------


@bp.post("/webauthn/login/options")
@body(NoOptions)
@returns(Options, 200)
@errors(400, 403, 404, 413, 415, 503)
async def login_options():
    """Options for a discoverable credential: no username asked (nothing tells who has an account)."""
    await json_body(optional=True)
    return await passkeys.login_options(), 200


@bp.post("/webauthn/login/verify")
@body(SignInVerify)
@returns(PublicUser, 200)
@errors(400, 401, 403, 404, 413, 415, 429, 503)
async def login_verify():
    """A valid assertion logs its user in without a password (two factors: amr webauthn, AAL 2): 200 and the cookie."""
    data = await json_body()
    remember = data.get("remember", False)
    if not isinstance(remember, bool):
        raise HTTPError(400, "remember must be true or false.", fields={"remember": "Must be true or false."})
    user = await passkeys.authenticate(data)
    await login_user(user, remember=remember, amr=(passkeys.WEBAUTHN,))
    return user.public(), 200


@bp.post("/login/2fa/webauthn")
@body(SecondStep)
@returns(SecondStepAnswer, 200)
@errors(400, 401, 403, 404, 413, 415, 429, 503)
async def login_2fa_webauthn():
    """The pending login's second step with a passkey: `{}` gives the options; `{credential}` finishes it (AAL 2)."""
    data = await json_body(optional=True)
    if data.get("credential") is None:
        user = await pending.pending_user()
        if user is None:
            raise HTTPError(401, pending.NO_PENDING)
        return await passkeys.second_factor_options(user), 200
    done = await pending.complete(data, passkey=True)
    return {**done.user.public(), "recovery_codes_left": None}, 200
