"""The browser pages: thin views over the auth service, rendered with Jinja."""

from __future__ import annotations

from urllib.parse import urlsplit

from quart import Blueprint, flash, redirect, request, url_for

from ..auth import current_auth_session, current_user, login_required, logout_user, service
from ..auth.validation import ValidationError
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
        user = await service.authenticate(form)
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
    await flash(f"Welcome back, {user.username}!", "success")
    return redirect(safe_next(next_page))


@bp.post("/logout")
async def logout():
    """End the session on the server and clear the cookie (POST only, CSRF-checked)."""
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
async def reauthenticate():
    """Re-enter the password to make this session fresh (for ``fresh_login_required`` views)."""
    next_page = request.args.get("next")
    if request.method == "GET":
        return await render("reauthenticate.html", errors={}, next=next_page)
    form = await request.form
    current = current_auth_session()
    try:
        await service.authenticate(
            {
                "username": current_user.username,
                "password": form.get("password", ""),
                "remember": bool(current and current.remember),
            }
        )
    except ValidationError as exc:
        return await render("reauthenticate.html", errors=exc.fields, message=exc.message, next=next_page), 400
    except HTTPError as exc:
        page = await render("reauthenticate.html", errors={}, message=exc.message, next=next_page)
        return page, exc.status, exc.headers
    return redirect(safe_next(next_page))


@bp.get("/account")
@login_required
async def account():
    """The change-password form and this user's active sessions, each with a revoke button."""
    listed = await service.list_sessions(current_user._get_current_object())
    return await render("account.html", sessions=listed, errors={})


@bp.post("/account/password")
@login_required
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
@login_required
async def revoke_session(session_id: int):
    """Log out one session of this user (this one included)."""
    if not await service.revoke_session(current_user._get_current_object(), session_id):
        raise HTTPError(404, "No such session.")
    await flash("Session revoked.", "info")
    return redirect(url_for("pages.account"))


@bp.post("/account/sessions/revoke-others")
@login_required
async def revoke_other_sessions():
    """Log out everywhere else."""
    count = await service.revoke_other_sessions(current_user._get_current_object())
    await flash(f"Logged out {count} other session(s).", "info")
    return redirect(url_for("pages.account"))
