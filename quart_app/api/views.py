"""The JSON API: the same auth service as the pages, JSON in and out."""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

from quart import Blueprint, Response, request

from ..auth import (
    WAYS_OUT,
    current_user,
    exempt_from,
    login_required,
    logout_user,
    pending,
    recovery,
    sensitive,
    service,
)
from ..exceptions import HTTPError
from ..models import MAX_ID
from .schemas import (
    Accepted,
    EmailChangeRequest,
    ForgotPasswordRequest,
    LoginAnswer,
    LoginRequest,
    Me,
    PasswordChangeRequest,
    PublicUser,
    RegisterRequest,
    ResetPasswordRequest,
    SecondFactorLogin,
    SecondFactorRequest,
    SessionInfo,
    VerifyEmailRequest,
    body,
    errors,
    needs_login,
    no_content,
    returns,
)

bp = Blueprint("api", __name__, url_prefix="/api")


# The deepest nesting of arrays and objects a body may have (its own object
# counts as one). The API's bodies are flat; the bound keeps json's recursive
# parser, and whatever walks its result, far from Python's recursion limit
# (about 1,000 levels, a 500 with a traceback), whatever MAX_CONTENT_LENGTH is.
MAX_JSON_DEPTH = 32
# The longest integer taken: Python's own bound (4,300 digits) is a process
# setting anything may lift, and int() is quadratic in the digits beyond it.
MAX_JSON_INT_DIGITS = 100
TOO_DEEP = "The JSON body is nested too deeply."
NOT_JSON = "The body is not valid JSON."

# Everything but the brackets outside strings: whole JSON strings (escapes
# included, brackets in them do not count), other text, a quote left open.
_NOT_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"|[^\[\]{}"]+|"', re.DOTALL)
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# Where a \uD800-\uDFFF escape may be (a surrogate that no valid pair completed).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Malformed(ValueError):
    """The body is refused (400) for this reason, worded for the client (and, if known, per field)."""

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields


def _too_deep(text: str) -> bool:
    """Whether ``text`` nests arrays and objects deeper than MAX_JSON_DEPTH (brackets in strings do not count)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:  # most bodies: too few brackets to be too deep
        return False
    brackets = _NOT_BRACKETS.sub("", text)
    # The running depth after each bracket, all in C (no Python loop per
    # character: about as long as json.loads takes over the same body).
    # Past a closer with nothing open the count is off, but the parser stops
    # there anyway.
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > MAX_JSON_DEPTH


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which of two equal keys wins (first, last, error):
    # a body that means different things to different readers is refused.
    body = dict(pairs)
    if len(body) != len(pairs):
        raise _Malformed("The JSON body has a duplicate key.")
    return body


def _constant(name: str) -> Any:
    raise _Malformed(f"The JSON body holds {name}, which is not JSON.")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 would be read as infinity
        raise _Malformed("A number in the JSON body is too large.")
    return value


def _int(text: str) -> int:
    if len(text) - text.startswith("-") > MAX_JSON_INT_DIGITS:
        raise _Malformed("A number in the JSON body is too long.")
    return int(text)


def _has_lone_surrogate(value: Any) -> bool:
    # The text was strict UTF-8, so a surrogate in a parsed string came from
    # a \uD8xx escape that no valid pair completed: it is no character, and
    # cannot be stored, hashed or echoed as UTF-8. (Depth is bounded: no recursion.)
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _parse(data: bytes) -> Any:
    """The JSON value of ``data``, or ``_Malformed`` for anything RFC 8259 or the bounds above do not allow."""
    try:
        text = data.decode("utf-8")  # strict: JSON between systems is UTF-8 (RFC 8259, 8.1)
    except UnicodeDecodeError:
        raise _Malformed("The JSON body must be UTF-8 text.") from None
    if text.startswith("\ufeff"):
        raise _Malformed("The JSON body must be UTF-8 text without a byte order mark.")
    if _too_deep(text):
        raise _Malformed(TOO_DEEP)
    try:
        value = json.loads(
            text, object_pairs_hook=_object, parse_constant=_constant, parse_float=_float, parse_int=_int
        )
    except _Malformed:
        raise
    except RecursionError:  # (cannot happen below MAX_JSON_DEPTH; kept as the last line of defence)
        raise _Malformed(TOO_DEEP) from None
    except ValueError:
        raise _Malformed(NOT_JSON) from None
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        # Named per field where the field's name is itself plain text, like validation's own message.
        fields = {
            key: "Contains characters that are not valid text."
            for key, item in (value.items() if isinstance(value, dict) else ())
            if _has_lone_surrogate(item) and not _has_lone_surrogate(key)
        }
        raise _Malformed(
            "The JSON body holds a \\u escape of a lone surrogate, which is not a character.", fields or None
        )
    return value


async def json_body(*, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object; 415 for another content type, 400 for malformed JSON or anything but an object.

    Malformed covers every way a body can fail to be one plain JSON object:
    not UTF-8 (or with a BOM), nested deeper than MAX_JSON_DEPTH, NaN or
    Infinity, a number too large for a double or longer than
    MAX_JSON_INT_DIGITS, a lone surrogate escape, a duplicate key. Each is a
    400 ``{"error": ...}`` before anything is done. (Over MAX_CONTENT_LENGTH,
    reading the body is a 413.)
    """
    data = await request.get_data()
    if optional and not data:
        return {}
    if request.mimetype != "application/json":
        raise HTTPError(415, "Content-Type must be application/json.")
    try:
        body = _parse(data)
    except _Malformed as error:
        raise HTTPError(400, str(error), fields=error.fields) from None
    if not isinstance(body, dict):
        raise HTTPError(400, "The JSON body must be an object.")
    return body


@bp.post("/register")
@body(RegisterRequest)
@returns(PublicUser, 201)
@errors(400, 403, 409, 413, 415, 503)
async def register():
    """Create an account and log it in: 201 with the public user."""
    user = await service.register(await json_body())
    return user.public(), 201


@bp.post("/login")
@body(LoginRequest)
@returns(LoginAnswer, 200)
@errors(400, 401, 403, 413, 415, 429, 503)
async def login():
    """Log in by username or email: 200 with the public user, or 401.

    For an account with a second factor, the right password gives no session:
    200 `{"mfa_required": true, "methods": [...]}` and a pending login bound
    to this client (the `quart_app_mfa` cookie), finished by `POST /api/login/2fa`.
    """
    answer = await service.authenticate(await json_body())
    return answer.public(), 200


@bp.post("/login/2fa")
@body(SecondFactorRequest)
@returns(SecondFactorLogin, 200)
@errors(400, 401, 403, 413, 415, 429, 503)
async def login_2fa():
    """Finish a pending login with a code: 200 with the public user (logged in, AAL 2).

    A code of the authenticator app (each works once) or an unused recovery
    code (a notice is mailed; `recovery_codes_left` says how many remain).
    401 without a pending login for this client (none, expired, finished, or
    ended by too many wrong codes) and for a wrong code; 429 (`Retry-After`)
    once the login throttle refuses this account or client.
    """
    done = await pending.complete(await json_body())
    return {**done.user.public(), "recovery_codes_left": done.recovery_codes_left}, 200


@bp.post("/logout")
@needs_login
@no_content
@errors(400, 401, 403, 413, 415, 503)
@login_required
@exempt_from(*WAYS_OUT)
async def logout():
    """End this session on the server: 204."""
    await json_body(optional=True)
    await pending.discard()
    await logout_user()
    return Response(status=204)


@bp.get("/me")
@needs_login
@returns(Me, 200)
@errors(401, 403, 503)
@login_required
async def me():
    """The logged-in user, and whether the address is verified."""
    return {**current_user.public(), "email_verified": current_user.email_verified}, 200


@bp.post("/password")
@needs_login
@body(PasswordChangeRequest)
@no_content
@errors(400, 401, 403, 413, 415, 429, 503)
@sensitive
async def change_password():
    """Change the password: 204; every other session is revoked and this one re-issued."""
    await service.change_password(current_user._get_current_object(), await json_body())
    return Response(status=204)


@bp.get("/sessions")
@needs_login
@returns(list[SessionInfo], 200)
@errors(401, 503)
@login_required
async def list_sessions():
    """This user's active sessions."""
    return await service.list_sessions(current_user._get_current_object()), 200


@bp.delete(f"/sessions/<int(max={MAX_ID}):session_id>")
@needs_login
@no_content
@errors(401, 403, 404, 503)
@sensitive
async def revoke_session(session_id: int):
    """Revoke one of this user's sessions: 204, or 404 if it is not theirs."""
    if not await service.revoke_session(current_user._get_current_object(), session_id):
        raise HTTPError(404, "No such session.")
    return Response(status=204)


@bp.post("/sessions/revoke-others")
@needs_login
@no_content
@errors(400, 401, 403, 413, 415, 503)
@sensitive
async def revoke_other_sessions():
    """Revoke every other session of this user: 204."""
    await json_body(optional=True)
    await service.revoke_other_sessions(current_user._get_current_object())
    return Response(status=204)


# -- mailed links (auth/recovery.py); 404 while QUART_APP_MAIL_URL is off ----------------


@bp.post("/password/forgot")
@body(ForgotPasswordRequest)
@returns(Accepted, 202)
@errors(400, 403, 404, 413, 415, 429, 503)
@recovery.mail_required
async def forgot_password():
    """Ask for a reset link: 202 whether an account uses the address or not (only an active one gets mail)."""
    await recovery.request_reset(await json_body())
    return {}, 202


@bp.post("/password/reset")
@body(ResetPasswordRequest)
@no_content
@errors(400, 403, 404, 413, 415, 429, 503)
@recovery.mail_required
async def reset_password():
    """Set a new password with a reset link's token: 204; every session of the user ends."""
    data = await json_body()
    token = data.get("token")
    if not isinstance(token, str) or not token:
        raise HTTPError(400, recovery.LINK_DEAD, fields={"token": "This field is required."})
    await recovery.reset_password(token, data)
    if current_user.is_authenticated:
        await logout_user()  # (its session was revoked with every other)
    return Response(status=204)


@bp.post("/email/verify")
@body(VerifyEmailRequest)
@no_content
@errors(400, 403, 404, 409, 413, 415, 429, 503)
@recovery.mail_required
async def verify_email():
    """Confirm an address with a verification (or change-of-address) link's token: 204."""
    token = (await json_body()).get("token")
    if not isinstance(token, str) or not token:
        raise HTTPError(400, recovery.LINK_DEAD, fields={"token": "This field is required."})
    await recovery.verify_email(token)
    return Response(status=204)


@bp.post("/email/resend")
@needs_login
@returns(Accepted, 202)
@errors(400, 401, 403, 404, 409, 413, 415, 429, 503)
@recovery.mail_required
@login_required
@exempt_from(*WAYS_OUT)
async def resend_verification():
    """Mail a new verification link: 202; 409 when the address is already verified."""
    await json_body(optional=True)
    await recovery.resend_verification(current_user._get_current_object())
    return {}, 202


@bp.post("/email")
@needs_login
@body(EmailChangeRequest)
@returns(Accepted, 202)
@errors(400, 401, 403, 404, 409, 413, 415, 429, 503)
@recovery.mail_required
@sensitive
@exempt_from(*WAYS_OUT)
async def change_email():
    """Ask to change the address: 202; a link goes to the new address, a notice to the old one."""
    await recovery.request_email_change(current_user._get_current_object(), await json_body())
    return {}, 202
