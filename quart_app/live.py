"""The live session channel: ``/ws/session`` tells a page the moment its session ends.

Something the sync Flask version cannot do: a browser tab learns of a logout
in another tab, a password change, a revocation from another device or a
deactivation, whichever worker or instance caused it, because the socket
polls the shared session row (one indexed lookup every
``QUART_APP_WS_POLL_INTERVAL`` seconds).
"""

from __future__ import annotations

import asyncio

from quart import Blueprint, websocket

from quart_login import current_auth_session, current_user

from .auth.sessions import get_store
from .core.config import get_settings

bp = Blueprint("live", __name__)

POLICY_VIOLATION = 1008  # RFC 6455: what an anonymous or revoked client is closed with


@bp.websocket("/ws/session")
async def session_channel() -> None:
    """Say hello to a logged-in client, then {"event": "revoked"} and close 1008 once its session ends."""
    await websocket.accept()
    auth_session = current_auth_session()
    if not current_user.is_authenticated or auth_session is None:
        await websocket.close(POLICY_VIOLATION, "login required")
        return
    await websocket.send_json({"event": "hello", "username": current_user.username})
    interval = get_settings().WS_POLL_INTERVAL
    store = get_store()

    async def drain() -> None:
        # The client has nothing to say; reading notices when it goes away.
        while True:
            await websocket.receive()

    reader = asyncio.ensure_future(drain())
    try:
        while True:
            done, _ = await asyncio.wait({reader}, timeout=interval)
            if done:  # the client went away
                return
            # By the session's id: the session may get a new secret (a
            # password change in this browser) and is still the same one.
            if not await store.is_open(auth_session.id):
                await websocket.send_json({"event": "revoked"})
                await websocket.close(POLICY_VIOLATION, "session revoked")
                return
    finally:
        reader.cancel()
