"""The browser pages: thin views over the auth service, rendered with Jinja."""

from __future__ import annotations

from urllib.parse import urlsplit

from quart import Blueprint, flash, redirect, request, url_for

from ..auth import (
    WAYS_OUT,
    current_auth_session,
    current_user,
    exempt_from,
    login_required,
    logout_user,
    pending,
    recovery,
    sensitive,
    service,
)
from ..auth.validation import ValidationError
from ..core.config import get_settings
from ..core.csrf import UNSAFE_METHODS, require_csrf_token
from ..exceptions import HTTPError
from ..models import MAX_ID
from ..rendering import render

bp = Blueprint("pages", __name__)


@bp.before_request
async def _protect_forms() -> None:
    if request.method not in UNSAFE_METHODS:
        return
    # An anonymous logout changes nothing, so it needs no token (it just
    # lands on the login page); every other form POST does.
    if request.endpoint == "pages.logout" and not current_user.is_authenticated:
        return
    await require_csrf_token()


def safe_next(target: str | None) -> str:
    """``target`` if it is a path on this site, else ``/`` (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    if "\\" in target or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


@bp.get("/")
async def index():
    """Home: links to log in or register, or the username and a log-out button."""
    return await render("index.html")


@bp.route("/register", methods=["GET", "POST"])
async def register():
    """Create an account and log it in; errors show the form again with what was typed."""
    if current_user.is_authenticated:
        return redirect(url_for("pages.index"))
    if request.method == "GET":
        return await render("register.html", values={}, errors={})
    form = await request.form
    values = {"username": form.get("username", ""), "email": form.get("email", "")}
    try:
        user = await service.register(form)
    except ValidationError as exc:
        return await render("register.html", values=values, errors=exc.fields, message=exc.message), 400
    except HTTPError as exc:
        return await render("register.html", values=values, errors={}, message=exc.message), exc.status
    await flash(f"Registration successful, welcome {user.username}!", "success")
    return redirect(url_for("pages.index"))


@bp.route("/login", methods=["GET", "POST"])
async def login():
    """Log in by username or email; success goes to a same-site ``next``, else home."""
    if current_user.is_authenticated:
        return redirect(url_for("pages.index"))
    next_page = request.args.get("next")
    if request.method == "GET":
        return await render("login.html", values={}, errors={}, next=next_page)
    form = await request.form
    values = {"username": form.get("username", ""), "remember": bool(form.get("remember"))}
    try:
        user = await service.authenticate(form, next_page=next_page)
    except ValidationError as exc:
        return (
            await render("login.html", values=values, errors=exc.fields, message=exc.message, next=next_page),
            400,
        )
    except HTTPError as exc:
        return (
            await render("login.html", values=values, errors={}, message=exc.message, next=next_page),
            exc.status,
            exc.headers,
        )
    if isinstance(user, pending.MfaRequired):  # the password was right; the code is asked next (``next`` kept)
        return redirect(url_for("pages.login_2fa"))
    await flash(f"Welcome back, {user.username}!", "success")
    return redirect(safe_next(next_page))


@bp.route("/login/2fa", methods=["GET", "POST"])
async def login_2fa():
    """The second step of a login with a second factor: a code finishes the pending login (else 401)."""
    if request.method == "GET":
        found = await pending.waiting()
        if found is None:
            return await render("login_2fa.html", waiting=False, errors={}, message=pending.NO_PENDING), 401
        return await render(
            "login_2fa.html", waiting=True, errors={}, methods=found.methods, next=safe_next(found.next)
        )
    form = await request.form
    try:
        done = await pending.complete(form)
    except HTTPError as exc:
        # A wrong code or the throttle leave the pending login on: the form again; else, back to the login.
        waiting = exc.status in (400, 429) or bool(exc.fields)
        page = await render("login_2fa.html", waiting=waiting, errors=exc.fields or {}, message=exc.message)
        return page, exc.status, exc.headers
    if done.recovery_codes_left is not None:
        left = done.recovery_codes_left
        advice = " Generate new ones on your account page." if left < 3 else ""
        await flash(f"You used a recovery code: {left} left.{advice}", "info")
    await flash(f"Welcome back, {done.user.username}!", "success")
    return redirect(safe_next(done.next))


@bp.post("/logout")
@exempt_from(*WAYS_OUT)
async def logout():
    """End the session on the server and clear the cookie (POST only, CSRF-checked)."""
    await pending.discard()  # a login waiting for its code ends too
    if not current_user.is_authenticated:
        return redirect(url_for("pages.login"))
    await logout_user()
    await flash("Logged out successfully.", "info")
    return redirect(url_for("pages.index"))


@bp.get("/dashboard")
@login_required
async def dashboard():
    """The protected page: greets the logged-in user."""
    return await render("dashboard.html")


@bp.route("/reauthenticate", methods=["GET", "POST"])
@login_required
@exempt_from(*WAYS_OUT)
async def reauthenticate():
    """Re-enter the password to make this session fresh (for ``fresh_login_required`` views)."""
    next_page = request.args.get("next")
    if request.method == "GET":
        return await render("reauthenticate.html", errors={}, next=next_page)
    form = await request.form
    current = current_auth_session()
    try:
        answer = await service.authenticate(
            {
                "username": current_user.username,
                "password": form.get("password", ""),
                "remember": bool(current and current.remember),
            },
            next_page=next_page,
        )
    except ValidationError as exc:
        return await render("reauthenticate.html", errors=exc.fields, message=exc.message, next=next_page), 400
    except HTTPError as exc:
        page = await render("reauthenticate.html", errors={}, message=exc.message, next=next_page)
        return page, exc.status, exc.headers
    if isinstance(answer, pending.MfaRequired):  # with a second factor, the code too (a new session at AAL 2)
        return redirect(url_for("pages.login_2fa"))
    return redirect(safe_next(next_page))


async def _account_page(status: int = 200, **context):
    listed = await service.list_sessions(current_user._get_current_object())
    context.setdefault("errors", {})
    return await render("account.html", sessions=listed, **context), status


@bp.get("/account")
@login_required
async def account():
    """The address (verified or not, a form to change it), the change-password form, the active sessions."""
    return await _account_page()


@bp.post("/account/password")
@sensitive
async def change_password():
    """Change the password; every other session is revoked, this one stays logged in."""
    form = await request.form
    try:
        await service.change_password(current_user._get_current_object(), form)
    except HTTPError as exc:
        if not current_user.is_authenticated:  # too many wrong passwords ended this session
            await flash(exc.message, "error")
            return redirect(url_for("pages.login"))
        page = await render(
            "account.html",
            sessions=await service.list_sessions(current_user._get_current_object()),
            errors=exc.fields or {},
            message=exc.message,
        )
        return page, exc.status, exc.headers
    await flash("Password changed. Every other session has been logged out.", "success")
    return redirect(url_for("pages.account"))


@bp.post(f"/account/sessions/<int(max={MAX_ID}):session_id>/revoke")
@sensitive
async def revoke_session(session_id: int):
    """Log out one session of this user (this one included)."""
    if not await service.revoke_session(current_user._get_current_object(), session_id):
        raise HTTPError(404, "No such session.")
    await flash("Session revoked.", "info")
    return redirect(url_for("pages.account"))


@bp.post("/account/sessions/revoke-others")
@sensitive
async def revoke_other_sessions():
    """Log out everywhere else."""
    count = await service.revoke_other_sessions(current_user._get_current_object())
    await flash(f"Logged out {count} other session(s).", "info")
    return redirect(url_for("pages.account"))


# -- mailed links: password reset, verification, change of address (auth/recovery.py) --------


@bp.route("/forgot-password", methods=["GET", "POST"])
@recovery.mail_required
async def forgot_password():
    """Ask for a reset link: the same page, known address or not (a link goes only to an active account)."""
    expires_in = recovery.expires_in(get_settings().RESET_TOKEN_TTL)
    if request.method == "GET":
        return await render("forgot_password.html", values={}, errors={}, expires_in=expires_in)
    form = await request.form
    values = {"email": form.get("email", "")}
    try:
        await recovery.request_reset(form)
    except HTTPError as exc:
        page = await render(
            "forgot_password.html", values=values, errors=exc.fields or {}, message=exc.message, expires_in=expires_in
        )
        return page, exc.status, exc.headers
    return await render("forgot_password.html", values={}, errors={}, sent=recovery.RESET_SENT, expires_in=expires_in)


async def _dead_link(template: str, status: int = 400, message: str = recovery.LINK_DEAD, headers=None):
    return await render(template, dead=message), status, headers or {}


@bp.route("/reset-password/<token>", methods=["GET", "POST"])
@recovery.mail_required
async def reset_password(token: str):
    """The new-password form of a live reset link; the POST sets it, ends every session, goes to the login."""
    try:
        link = await recovery.find_link(token, recovery.RESET)
    except HTTPError as exc:  # throttled
        return await _dead_link("reset_password.html", exc.status, exc.message, exc.headers)
    if link is None:
        return await _dead_link("reset_password.html")
    if request.method == "GET":
        return await render("reset_password.html", token=token, username=link.user.username, errors={})
    form = await request.form
    try:
        await recovery.reset_password(token, form)
    except HTTPError as exc:
        if exc.fields:
            page = await render(
                "reset_password.html", token=token, username=link.user.username, errors=exc.fields, message=exc.message
            )
            return page, exc.status, exc.headers
        return await _dead_link("reset_password.html", exc.status, exc.message, exc.headers)
    if current_user.is_authenticated:
        await logout_user()  # (its session was revoked with every other)
    await flash("Your password has been changed. Log in with the new one.", "success")
    return redirect(url_for("pages.login"))


@bp.route("/verify-email/<token>", methods=["GET", "POST"])
@recovery.mail_required
async def verify_email(token: str):
    """A confirm button for a live verification (or change-of-address) link; the POST confirms the address."""
    if request.method == "GET":
        try:
            link = await recovery.find_link(token, recovery.VERIFY, recovery.EMAIL_CHANGE)
        except HTTPError as exc:
            return await _dead_link("verify_email.html", exc.status, exc.message, exc.headers)
        if link is None:
            return await _dead_link("verify_email.html")
        return await render("verify_email.html", token=token, email=link.token.email, username=link.user.username)
    try:
        user = await recovery.verify_email(token)
    except HTTPError as exc:
        return await _dead_link("verify_email.html", exc.status, exc.message, exc.headers)
    await flash(f"Thank you: {user.email} is verified.", "success")
    return redirect(url_for("pages.index"))


@bp.post("/account/email/resend")
@recovery.mail_required
@login_required
@exempt_from(*WAYS_OUT)
async def resend_verification():
    """Mail a new verification link (throttled); 409 when the address is already verified."""
    try:
        await recovery.resend_verification(current_user._get_current_object())
    except HTTPError as exc:
        return await _account_page(exc.status, message=exc.message)
    await flash(f"A new link is on its way to {current_user.email}.", "info")
    return redirect(url_for("pages.account"))


@bp.post("/account/email")
@recovery.mail_required
@sensitive
@exempt_from(*WAYS_OUT)
async def change_email():
    """Ask to change the address: it changes when the new address's link is confirmed."""
    form = await request.form
    try:
        new_email = await recovery.request_email_change(current_user._get_current_object(), form)
    except HTTPError as exc:
        if not current_user.is_authenticated:  # too many wrong passwords ended this session
            await flash(exc.message, "error")
            return redirect(url_for("pages.login"))
        page, status = await _account_page(
            exc.status,
            email_errors=exc.fields or {},
            values={"new_email": form.get("new_email", "")},
            message=exc.message,
        )
        return page, status, exc.headers
    await flash(f"Open the link we mailed to {new_email} to make it your address.", "info")
    return redirect(url_for("pages.account"))
