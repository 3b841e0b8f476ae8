"""The user's notes (HTML and JSON), and the admin's overview."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, flash, redirect, render_template, request, url_for
from quart_login import current_user, login_required, utcnow
from sqlalchemy import func, select

from .auth import admin_required
from .db import get_sessionmaker
from .models import Note, User

bp = Blueprint("notes", __name__)


async def my_notes() -> list[Note]:
    # current_user is a detached User (no lazy relationships): query by its id.
    async with get_sessionmaker()() as db:
        result = await db.scalars(
            select(Note).where(Note.user_id == current_user.id).order_by(Note.created_at.desc(), Note.id.desc())
        )
        return list(result)


@bp.get("/")
@login_required
async def index() -> Any:
    return await render_template("notes.html", notes=await my_notes())


@bp.post("/notes")
@login_required
async def create() -> Any:
    form = await request.form
    title = form.get("title", "").strip()
    if not title or len(title) > 200:
        await flash("A note needs a title (up to 200 characters).", "error")
        return redirect(url_for("notes.index"))
    async with get_sessionmaker()() as db:
        db.add(Note(user_id=current_user.id, title=title, body=form.get("body", ""), created_at=utcnow()))
        await db.commit()
    return redirect(url_for("notes.index"))


@bp.get("/api/notes")
@login_required
async def api_notes() -> Any:
    return {"user": current_user.public(), "notes": [note.public() for note in await my_notes()]}


@bp.get("/admin")
@admin_required
async def admin() -> Any:
    async with get_sessionmaker()() as db:
        rows = (
            await db.execute(
                select(User, func.count(Note.id))
                .outerjoin(Note, Note.user_id == User.id)
                .group_by(User.id)
                .order_by(User.id)
            )
        ).all()
    return await render_template("admin.html", rows=rows)
