"""Register, log in, log out; ``admin_required`` on top of ``login_required``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from quart import Blueprint, abort, flash, redirect, render_template, request, url_for
from quart_login import current_user, login_required, login_user, logout_user, utcnow
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from .db import get_sessionmaker
from .models import User

bp = Blueprint("auth", __name__)

MIN_PASSWORD = 8


# Hashing is deliberately slow (scrypt): it runs on a thread, never on the event loop.
async def hash_password(password: str) -> str:
    return await asyncio.to_thread(generate_password_hash, password)


async def verify_password(password_hash: str, password: str) -> bool:
    return await asyncio.to_thread(check_password_hash, password_hash, password)


def admin_required(view: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``login_required`` (anonymous: to the login page, or 401), then 403 for a user who is not an admin."""

    @wraps(view)
    @login_required
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not current_user.is_admin:
            abort(403)
        return await view(*args, **kwargs)

    return wrapper


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a path on this site, else None (no open redirect through ``?next=``)."""
    if not target or any(ord(char) < 0x20 or char == "\\" for char in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    return target


@bp.route("/register", methods=["GET", "POST"])
async def register() -> Any:
    if current_user.is_authenticated:
        return redirect(url_for("notes.index"))
    if request.method == "GET":
        return await render_template("register.html", form={})
    form = await request.form
    username = form.get("username", "").strip()
    email = form.get("email", "").strip().lower()
    display_name = form.get("display_name", "").strip() or username
    password = form.get("password", "")
    error = None
    if not username or len(username) > 50 or "@" not in email or len(display_name) > 100:
        error = "Choose a username (up to 50 characters) and give a valid email."
    elif len(password) < MIN_PASSWORD:
        error = f"The password needs at least {MIN_PASSWORD} characters."
    else:
        user = User(
            username=username,
            email=email,
            display_name=display_name,
            password_hash=await hash_password(password),
            created_at=utcnow(),
        )
        async with get_sessionmaker()() as db:
            db.add(user)
            try:
                await db.commit()
            except IntegrityError:
                error = "That username or email is already taken."
    if error is not None:
        await flash(error, "error")
        return await render_template("register.html", form=form), 400
    await login_user(user)
    await flash(f"Welcome, {user.display_name}!")
    return redirect(url_for("notes.index"))


@bp.route("/login", methods=["GET", "POST"])
async def login() -> Any:
    next_url = safe_next(request.args.get("next"))
    if request.method == "GET":
        if current_user.is_authenticated:
            return redirect(next_url or url_for("notes.index"))
        return await render_template("login.html", next=next_url)
    form = await request.form
    next_url = safe_next(form.get("next")) or next_url
    async with get_sessionmaker()() as db:
        user = await db.scalar(select(User).where(User.username == form.get("username", "").strip()))
    if user is not None and await verify_password(user.password_hash, form.get("password", "")):
        if await login_user(user, remember=form.get("remember") == "on"):
            return redirect(next_url or url_for("notes.index"))
        await flash("This account is disabled.", "error")
    else:
        await flash("Wrong username or password.", "error")
    return await render_template("login.html", next=next_url), 401


@bp.post("/logout")
async def logout() -> Any:
    await logout_user()
    await flash("You are logged out.")
    return redirect(url_for("auth.login"))
