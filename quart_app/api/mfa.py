"""The second factor's JSON API: set up, confirm and turn off an authenticator app; new recovery codes."""

from __future__ import annotations

from pydantic import BaseModel, Field
from quart import Blueprint, Response

from ..auth import WAYS_OUT, current_user, enrolment, exempt_from, fresh_login_required, mfa, sensitive
from .schemas import body, errors, needs_login, no_content, returns
from .views import json_body

bp = Blueprint("mfa_api", __name__, url_prefix="/api")


# -- bodies ------------------------------------------------------------------------------------


class TotpSetup(BaseModel):
    """A new authenticator-app secret, not active until a code of it is confirmed."""

    secret: str = Field(description="The base32 secret, to type into the app by hand.", examples=["JBSWY3DPEHPK3PXP"])
    otpauth_uri: str = Field(
        description="The `otpauth://totp/...` URI an app reads (what the QR code holds).",
        examples=["otpauth://totp/Quart%20App:alice?secret=JBSWY3DPEHPK3PXP&issuer=Quart%20App"],
    )


class TotpConfirmRequest(BaseModel):
    """The code the authenticator app shows now (6 digits, 30-second steps)."""

    code: str = Field(min_length=1, max_length=64, examples=["123456"])


class RecoveryCodes(BaseModel):
    """The account's recovery codes: shown this once (only their digests are kept), each usable once."""

    recovery_codes: list[str] = Field(
        min_length=mfa.RECOVERY_CODE_COUNT, max_length=mfa.RECOVERY_CODE_COUNT, examples=[["7hq2m-0c9vx"]]
    )


class DisableRequest(BaseModel):
    """The current password and a code: one of the authenticator app's or an unused recovery code."""

    current_password: str = Field(min_length=1)
    code: str = Field(min_length=1, max_length=64, examples=["123456"])


# -- routes ------------------------------------------------------------------------------------


@bp.post("/2fa/totp/setup")
@needs_login
@returns(TotpSetup, 200)
@errors(400, 401, 403, 409, 413, 415, 503)
@fresh_login_required
@exempt_from(*WAYS_OUT)
async def totp_setup():
    """A new authenticator-app secret (any earlier unconfirmed one is dropped): 200; 409 if one is on already."""
    await json_body(optional=True)
    setup = await enrolment.begin_setup(current_user._get_current_object())
    return {"secret": setup.secret, "otpauth_uri": setup.uri}, 200


@bp.post("/2fa/totp/confirm")
@needs_login
@body(TotpConfirmRequest)
@returns(RecoveryCodes, 200)
@errors(400, 401, 403, 409, 413, 415, 503)
@fresh_login_required
@exempt_from(*WAYS_OUT)
async def totp_confirm():
    """A right code turns the authenticator app on: 200 with 10 recovery codes; every other session is revoked."""
    codes = await enrolment.enable_totp(current_user._get_current_object(), await json_body())
    return {"recovery_codes": codes}, 200


@bp.post("/2fa/disable")
@needs_login
@body(DisableRequest)
@no_content
@errors(400, 401, 403, 409, 413, 415, 429, 503)
@sensitive
async def disable():
    """The current password and a code turn every second factor off: 204; every other session is revoked."""
    await enrolment.disable(current_user._get_current_object(), await json_body())
    return Response(status=204)


@bp.post("/2fa/recovery-codes")
@needs_login
@returns(RecoveryCodes, 200)
@errors(400, 401, 403, 409, 413, 415, 503)
@sensitive
async def regenerate_recovery_codes():
    """10 new recovery codes, the old ones dead: 200; every other session is revoked. 409 without a second factor."""
    await json_body(optional=True)
    codes = await enrolment.regenerate_codes(current_user._get_current_object())
    return {"recovery_codes": codes}, 200
