"""The JSON API: the same auth service as the pages, JSON in and out."""

from __future__ import annotations

import json
from typing import Any

from quart import Blueprint, Response, request

from ..auth import current_user, login_required, logout_user, service
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
