"""The JSON API: the same auth service as the pages, JSON in and out."""

from __future__ import annotations

import json
from typing import Any

from quart import Blueprint, Response, request

from ..auth import current_user, login_required, logout_user, service, sessions
from ..errors import HTTPError

bp = Blueprint("api", __name__, url_prefix="/api")


async def json_body(*, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object; 415 for another content type, 400 for anything but an object."""
    data = await request.get_data()
    if optional and not data:
        return {}
    if request.mimetype != "application/json":
        raise HTTPError(415, "Content-Type must be application/json.")
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise HTTPError(400, "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "The JSON body must be an object.")
    return body


@bp.post("/register")
async def register():
    """Create an account and log it in: 201 with the public user."""
    user = await service.register(await json_body())
    return user.public(), 201


@bp.post("/login")
async def login():
    """Log in by username or email: 200 with the public user, or 401."""
    user = await service.authenticate(await json_body())
    return user.public(), 200


@bp.post("/logout")
@login_required
async def logout():
    """End this session on the server: 204."""
    await json_body(optional=True)
    await logout_user()
    return Response(status=204)


@bp.get("/me")
@login_required
async def me():
    """The logged-in user."""
    return current_user.public(), 200


@bp.post("/password")
@login_required
async def change_password():
    """Change the password: 204; every other session is revoked and this one re-issued."""
    await service.change_password(current_user._get_current_object(), await json_body())
    return Response(status=204)


@bp.get("/sessions")
@login_required
async def list_sessions():
    """This user's active sessions."""
    rows = await sessions.list_for(current_user.id)
    return [sessions.describe(row) for row in rows], 200


@bp.delete("/sessions/<int:session_id>")
@login_required
async def revoke_session(session_id: int):
    """Revoke one of this user's sessions: 204, or 404 if it is not theirs."""
    if not await service.revoke_session(current_user._get_current_object(), session_id):
        raise HTTPError(404, "No such session.")
    return Response(status=204)


@bp.post("/sessions/revoke-others")
@login_required
async def revoke_other_sessions():
    """Revoke every other session of this user: 204."""
    await json_body(optional=True)
    await service.revoke_other_sessions(current_user._get_current_object())
    return Response(status=204)
