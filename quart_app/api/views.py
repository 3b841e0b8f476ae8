"""The JSON API: the same auth service as the pages, JSON in and out."""

from __future__ import annotations

import json
from typing import Any

from quart import Blueprint, Response, request

from ..auth import current_user, login_required, logout_user, service
from ..exceptions import HTTPError
from ..models import MAX_ID
from .schemas import (
    LoginRequest,
    PasswordChangeRequest,
    PublicUser,
    RegisterRequest,
    SessionInfo,
    body,
    errors,
    needs_login,
    no_content,
    returns,
)

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
@body(RegisterRequest)
@returns(PublicUser, 201)
@errors(400, 403, 409, 413, 415, 503)
async def register():
    """Create an account and log it in: 201 with the public user."""
    user = await service.register(await json_body())
    return user.public(), 201


@bp.post("/login")
@body(LoginRequest)
@returns(PublicUser, 200)
@errors(400, 401, 403, 413, 415, 429, 503)
async def login():
    """Log in by username or email: 200 with the public user, or 401."""
    user = await service.authenticate(await json_body())
    return user.public(), 200


@bp.post("/logout")
@needs_login
@no_content
@errors(400, 401, 403, 413, 415, 503)
@login_required
async def logout():
    """End this session on the server: 204."""
    await json_body(optional=True)
    await logout_user()
    return Response(status=204)


@bp.get("/me")
@needs_login
@returns(PublicUser, 200)
@errors(401, 503)
@login_required
async def me():
    """The logged-in user."""
    return current_user.public(), 200


@bp.post("/password")
@needs_login
@body(PasswordChangeRequest)
@no_content
@errors(400, 401, 403, 413, 415, 429, 503)
@login_required
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
@login_required
async def revoke_session(session_id: int):
    """Revoke one of this user's sessions: 204, or 404 if it is not theirs."""
    if not await service.revoke_session(current_user._get_current_object(), session_id):
        raise HTTPError(404, "No such session.")
    return Response(status=204)


@bp.post("/sessions/revoke-others")
@needs_login
@no_content
@errors(400, 401, 403, 413, 415, 503)
@login_required
async def revoke_other_sessions():
    """Revoke every other session of this user: 204."""
    await json_body(optional=True)
    await service.revoke_other_sessions(current_user._get_current_object())
    return Response(status=204)
