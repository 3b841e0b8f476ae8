"""The second factor's pages: /account/2fa (an authenticator app, recovery codes), over auth/enrolment.py.

Recovery codes are shown once, on the page that answers the POST that made
them (never stored in a form the server could show again); the page's
"Download as a text file" button posts them back (CSRF-checked) and gets
them as an attachment.
"""

from __future__ import annotations

import re

from quart import Blueprint, Response, flash, redirect, request, url_for

from ..auth import WAYS_OUT, current_user, enrolment, exempt_from, fresh_login_required, login_required, mfa, sensitive
from ..core.config import get_settings
from ..core.csrf import UNSAFE_METHODS, require_csrf_token
from ..exceptions import HTTPError
from ..rendering import render

bp = Blueprint("mfa_pages", __name__)

# A recovery code as shown (auth/mfa.py: lowercase Crockford base32, two groups of five).
_SHOWN_CODE_RE = re.compile(r"[0-9a-hjkmnp-tv-z]{5}-[0-9a-hjkmnp-tv-z]{5}")


@bp.before_request
async def _protect_forms() -> None:
    if request.method in UNSAFE_METHODS:
        await require_csrf_token()


async def _page(status: int = 200, headers=None, **context):
    user = current_user._get_current_object()
    if "setup" not in context:
        context["setup"] = None
    context.setdefault("errors", {})
    state = await enrolment.second_factor_state(user)
    return await render("account_2fa.html", state=state, **context), status, headers or {}


async def _codes_page(codes: list[str], *, new: bool):
    return await render("recovery_codes.html", codes=codes, new=new, issuer=get_settings().MFA_ISSUER)


@bp.get("/account/2fa")
@fresh_login_required
@exempt_from(*WAYS_OUT)
async def account_2fa():
    """The second factors: whether an authenticator app is on, the recovery codes left; set up, turn off, regenerate."""
    return await _page()


@bp.post("/account/2fa/totp/setup")
@fresh_login_required
@exempt_from(*WAYS_OUT)
async def totp_setup():
    """A new secret (not active yet): its QR code, the secret to type by hand, and the form for its first code."""
    try:
        setup = await enrolment.begin_setup(current_user._get_current_object())
    except HTTPError as exc:
        return await _page(exc.status, exc.headers, message=exc.message)
    return await _page(setup=setup)


@bp.post("/account/2fa/totp/confirm")
@fresh_login_required
@exempt_from(*WAYS_OUT)
async def totp_confirm():
    """A right code turns the authenticator app on: the 10 recovery codes, shown this once."""
    user = current_user._get_current_object()
    try:
        codes = await enrolment.enable_totp(user, await request.form)
    except HTTPError as exc:
        setup = await enrolment.pending_setup(user) if isinstance(exc, mfa.WrongCode | mfa.NoSetupPending) else None
        if isinstance(exc, mfa.WrongCode) and setup is not None:
            return await _page(exc.status, exc.headers, setup=setup, errors=exc.fields or {}, message=exc.message)
        return await _page(exc.status, exc.headers, message=exc.message)
    await flash("Two-factor authentication is on. Every other session has been logged out.", "success")
    return await _codes_page(codes, new=True)


@bp.post("/account/2fa/disable")
@sensitive
async def disable():
    """The current password and a code (authenticator app or recovery code) turn every second factor off."""
    try:
        await enrolment.disable(current_user._get_current_object(), await request.form)
    except HTTPError as exc:
        if not current_user.is_authenticated:  # too many wrong codes or passwords ended this session
            await flash(exc.message, "error")
            return redirect(url_for("pages.login"))
        return await _page(exc.status, exc.headers, errors=exc.fields or {}, message=exc.message)
    await flash("Two-factor authentication is off. Every other session has been logged out.", "info")
    return redirect(url_for("mfa_pages.account_2fa"))


@bp.post("/account/2fa/recovery-codes")
@sensitive
async def regenerate_recovery_codes():
    """10 new recovery codes, shown this once; the old ones stop working."""
    try:
        codes = await enrolment.regenerate_codes(current_user._get_current_object())
    except HTTPError as exc:
        return await _page(exc.status, exc.headers, message=exc.message)
    await flash("New recovery codes: the old ones no longer work. Every other session has been logged out.", "success")
    return await _codes_page(codes, new=False)


@bp.post("/account/2fa/recovery-codes/download")
@login_required
@exempt_from(*WAYS_OUT)
async def download_recovery_codes():
    """The codes the page just showed, posted back, as a text file (only code-shaped values are taken)."""
    form = await request.form
    codes = [code for code in form.getlist("code")[: mfa.RECOVERY_CODE_COUNT] if _SHOWN_CODE_RE.fullmatch(code)]
    if not codes:
        raise HTTPError(400, "No recovery codes to download.")
    issuer = get_settings().MFA_ISSUER
    lines = [
        f"{issuer}: recovery codes for {current_user.username}",
        "",
        "Each code works once, in place of a code from your authenticator app.",
        "Keep them somewhere safe, away from this device.",
        "",
        *codes,
        "",
    ]
    return Response(
        "\n".join(lines),
        mimetype="text/plain",
        headers={"Content-Disposition": 'attachment; filename="recovery-codes.txt"'},
    )
