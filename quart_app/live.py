"""The live session channel: ``/ws/session`` tells a page the moment its session ends.

Something the sync Flask version cannot do: a browser tab learns of a logout
in another tab, a password change, a revocation from another device or a
deactivation, whichever worker or instance caused it. On PostgreSQL the
database tells every worker as the change commits (LISTEN/NOTIFY), and the
socket re-reads its session then, and when its expiry time comes; on SQLite
(or with ``QUART_APP_SESSION_EVENTS=poll``, or while the channel is down) it
re-reads it every ``QUART_APP_WS_POLL_INTERVAL`` seconds
(quart_app/session_events.py).
"""

from __future__ import annotations

import asyncio
import logging

from quart import Blueprint, websocket

from quart_login import current_auth_session, current_user
from quart_login.store import utcnow

from .auth.sessions import get_store
from .db import is_unavailable
from .session_events import get_session_events, wait_for_end

bp = Blueprint("live", __name__)
log = logging.getLogger(__name__)

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
    store, events = get_store(), get_session_events()

    async def drain() -> None:
        # The client has nothing to say; reading notices when it goes away.
        while True:
            await websocket.receive()

    reader = asyncio.ensure_future(drain())
    watch = events.watch(auth_session.id, auth_session.user_id)
    # One read right away: an end committed between the handshake's lookup and
    # the watch above woke nobody.
    watch.changed.set()
    expires_at = auth_session.expires_at
    failed = False
    try:
        while True:
            await wait_for_end(events, watch, expires_at=expires_at, now=utcnow, gone=reader, poll=failed)
            if reader.done():  # the client went away
                return
            # By the session's id: the session may get a new secret (a
            # password change in this browser) and is still the same one.
            try:
                until = await store.open_until(auth_session.id)
            except Exception as error:
                if not is_unavailable(error):
                    raise
                # The database is out of reach for now: the socket stays open
                # and asks again after the poll interval.
                if not failed:
                    log.warning("/ws/session: database unavailable (%s); re-reading later", type(error).__name__)
                failed = True
                continue
            failed = False
            if until is None:
                await websocket.send_json({"event": "revoked"})
                await websocket.close(POLICY_VIOLATION, "session revoked")
                return
            expires_at = until
    finally:
        events.unwatch(watch)
        reader.cancel()
