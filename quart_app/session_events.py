"""Session events: how ``/ws/session`` learns, on any worker of any instance, that its session ended.

``QUART_APP_SESSION_EVENTS`` chooses the channel:

``postgres`` (the default on PostgreSQL)
    Each worker keeps one connection that ``LISTEN``s on ``quart_app_sessions``,
    where triggers (revision ``session_events``) send ``s:<id>`` for every session
    row deleted (logout, revocation, password change or reset, deactivation,
    an account removed, SQL by hand) and ``u:<id>`` for an account deactivated
    in place. NOTIFY is sent at commit, so a socket hears of an end once it is
    true and never of one rolled back.
``redis`` (the default on SQLite when ``QUART_APP_REDIS_URL`` is set, or chosen)
    The session store tells this module of every session it ends (quart_login's
    ``on_end`` hook, inside the transaction that ends it); once that transaction
    commits, the worker publishes the events on the Redis channel
    ``quart_app:sessions``, off the request's path, and every worker subscribes
    to it. Only ends made through the app are published (not SQL by hand, which
    PostgreSQL's triggers do see).
``poll`` (the default on SQLite without Redis, or chosen)
    Each socket re-reads its session every ``QUART_APP_WS_POLL_INTERVAL`` seconds.

An event is a hint, never the truth: the sockets it names re-read their
session (one indexed lookup each) and only a session that no longer opens is
reported. So an open socket costs no query while nothing changes, besides one
re-read when its session's expiry time comes (a request touching the session
moves it on, and the socket waits again). The listening connection itself
is checked every ``HEARTBEAT`` seconds (one ``SELECT 1`` per worker, whatever
the number of sockets): a channel found lost (the server restarted, the
connection cut or silent) is logged, every socket polls until it is back, and
when it is back every socket re-reads its session once (events sent while it
was down are lost) before going back to waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from quart import Quart, current_app
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from .core.config import ConfigError, Settings

log = logging.getLogger(__name__)

EXTENSION = "quart_app.session_events"
CHANNEL = "quart_app_sessions"  # alembic/versions/0012_session_events.py notifies on it
MODES = ("auto", "poll", "postgres", "redis")
REDIS_CHANNEL = "quart_app:sessions"
_PENDING = "quart_app.session_events.pending"  # a Session's info: events to publish at its commit
HEARTBEAT = 15.0  # seconds between checks of the listening connection
RETRY_MAX = 10.0  # longest wait between attempts to listen again


def mode_of(settings: Settings) -> str:
    """The channel ``settings`` choose: ``poll`` or ``postgres`` (an impossible choice stops the start)."""
    chosen = settings.SESSION_EVENTS.strip().lower()
    if chosen not in MODES:
        raise ConfigError(f"QUART_APP_SESSION_EVENTS must be one of {', '.join(MODES)}, not {chosen!r}")
    url = make_url(settings.DATABASE_URL)
    on_postgres = url.get_backend_name() == "postgresql" and url.get_driver_name() == "asyncpg"
    if chosen == "postgres" and not on_postgres:
        raise ConfigError("QUART_APP_SESSION_EVENTS=postgres needs a PostgreSQL database (postgresql+asyncpg://)")
    if chosen == "redis" and not settings.REDIS_URL:
        raise ConfigError("QUART_APP_SESSION_EVENTS=redis needs QUART_APP_REDIS_URL")
    if chosen == "auto":
        # On PostgreSQL its own channel: transactional, and it sees every change, SQL by hand included.
        return "postgres" if on_postgres else "redis" if settings.REDIS_URL else "poll"
    return chosen


class Watch:
    """One socket's interest in one session: ``changed`` is set when it should re-read it."""

    __slots__ = ("session_id", "user_id", "changed")

    def __init__(self, session_id: Any, user_id: Any) -> None:
        self.session_id = session_id
        self.user_id = user_id
        self.changed = asyncio.Event()


class SessionEvents:
    """This worker's channel and the sockets watching through it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mode = mode_of(settings)
        self._by_session: dict[Any, set[Watch]] = defaultdict(set)
        self._by_user: dict[Any, set[Watch]] = defaultdict(set)
        self._live = False
        self._task: asyncio.Task | None = None
        self._stopping = False
        #: Events received (for tests and the benchmark).
        self.received = 0

    def init_app(self, app: Quart, store: Any) -> None:
        """Serve ``app``'s sockets; with Redis, ``store`` (quart_login's SQLAlchemy store) tells what it ends."""
        app.extensions[EXTENSION] = self
        if self.mode != "poll":
            app.before_serving(self.start)
            app.after_serving(self.stop)
        if self.mode == "redis":
            store.on_end = self._ended

    @property
    def live(self) -> bool:
        """Whether events arrive now (else every socket polls)."""
        return self._live

    # -- sockets -----------------------------------------------------------------

    def watch(self, session_id: Any, user_id: Any) -> Watch:
        watch = Watch(session_id, user_id)
        self._by_session[session_id].add(watch)
        self._by_user[user_id].add(watch)
        return watch

    def unwatch(self, watch: Watch) -> None:
        for index, key in ((self._by_session, watch.session_id), (self._by_user, watch.user_id)):
            watches = index.get(key)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del index[key]

    def _wake_all(self) -> None:
        for watches in self._by_session.values():
            for watch in watches:
                watch.changed.set()

    def deliver(self, payload: str) -> None:
        """An event's payload (``s:<session id>`` or ``u:<user id>``): wake the sockets it names."""
        self.received += 1
        kind, _, ident = payload.partition(":")
        index = {"s": self._by_session, "u": self._by_user}.get(kind)
        if index is None or not ident.isdigit():
            log.warning("session events: ignored an event %r", payload[:40])
            return
        for watch in index.get(int(ident), ()):
            watch.changed.set()

    # -- the channel -----------------------------------------------------------

    def _set_live(self, live: bool) -> None:
        if live != self._live:
            self._live = live
            # Either way every socket re-reads its session: going down, to start
            # polling; coming back, for what happened while nothing was heard.
            self._wake_all()

    async def start(self) -> None:
        self._stopping = False
        self._loop = asyncio.get_running_loop()
        if self.mode == "redis":
            from redis.asyncio import Redis

            timeout = self.settings.DB_CONNECT_TIMEOUT
            self._redis = Redis.from_url(
                self.settings.REDIS_URL, socket_timeout=timeout, socket_connect_timeout=timeout
            )
            self._publishing: set[asyncio.Task] = set()
            listening = self._keep_listening(f"Redis {REDIS_CHANNEL}", self._listen_redis_once)
        else:
            listening = self._keep_listening(CHANNEL, self._listen_postgres_once)
        self._task = asyncio.create_task(listening, name="session events")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._live = False
        if self.mode == "redis":
            await asyncio.sleep(0)  # publications committed just before (a CLI command) get their task
            if self._publishing:  # what was committed is still published (bounded by the socket timeout)
                await asyncio.wait(self._publishing)
            await self._redis.aclose()

    # -- the channel's loop: listen, and when that fails, poll and listen again ---

    async def _keep_listening(self, where: str, listen_once: Callable[[Callable[[], None]], Awaitable[None]]) -> None:
        """Run ``listen_once`` (which calls ``listening()`` once it hears, and returns or raises only when the
        channel is gone) again and again, with a growing pause between tries, until the app stops."""
        delay, was_lost = 0.5, False

        def listening() -> None:
            nonlocal delay, was_lost
            self._set_live(True)
            if was_lost:
                log.warning("session events: listening again on %s", where)
            delay, was_lost = 0.5, False

        while not self._stopping:
            try:
                await listen_once(listening)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 (any failure of the channel means: poll, and retry)
                if not was_lost:
                    log.warning(
                        "session events: channel lost (%s: %s); sockets poll every %s s until it is back",
                        type(error).__name__,
                        error,
                        self.settings.WS_POLL_INTERVAL,
                    )
                was_lost = True
                self._set_live(False)
            if not self._stopping:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    # -- Redis: publishing what the app ended ----------------------------------

    def _ended(self, db: Session, kind: str, ident: Any) -> None:
        """quart_login's ``on_end`` hook: publish ``kind``'s event once ``db``'s transaction commits."""
        pending = db.info.get(_PENDING)
        if pending is None:
            pending = db.info[_PENDING] = []
            event.listen(db, "after_commit", self._committed)
            event.listen(db, "after_rollback", _forget)
        pending.append(("s:" if kind == "session" else "u:") + str(ident))

    def _committed(self, db: Session) -> None:
        # On the event loop (an AsyncSession) or on a SQLite thread (a unit of work there).
        payloads = db.info.pop(_PENDING, None)
        if payloads:
            self._loop.call_soon_threadsafe(self._publish, payloads)

    def _publish(self, payloads: list[str]) -> None:
        task = self._loop.create_task(self._send(payloads))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _send(self, payloads: list[str]) -> None:
        try:
            for payload in dict.fromkeys(payloads):
                await self._redis.publish(REDIS_CHANNEL, payload)
        except Exception as error:  # noqa: BLE001 (logged; the sockets elsewhere learn of it when they re-read)
            log.warning(
                "session events: could not publish %d event(s) to Redis (%s: %s)",
                len(payloads),
                type(error).__name__,
                error,
            )

    async def _listen_redis_once(self, listening: Callable[[], None]) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(REDIS_CHANNEL)
            listening()
            pinged = False
            while True:
                message = await pubsub.get_message(timeout=HEARTBEAT)
                if message is None:
                    if pinged:  # a whole HEARTBEAT without the answer: a silent connection
                        raise ConnectionError("Redis did not answer a ping")
                    await pubsub.ping()
                    pinged = True
                    continue
                pinged = False  # anything heard (the pong too) shows the connection alive
                if message.get("type") == "message":
                    data = message["data"]
                    self.deliver(data.decode() if isinstance(data, bytes) else str(data))
        finally:
            try:
                await pubsub.aclose()
            except Exception:  # noqa: BLE001 (already broken)
                pass

    # -- PostgreSQL: listening to the triggers' notifications ------------------

    async def _connect(self) -> Any:
        import asyncpg
        from sqlalchemy.ext.asyncio import create_async_engine

        from .db import connect_options

        url = make_url(self.settings.DATABASE_URL)
        options = connect_options(create_async_engine(url).dialect, url, "quart_app session events")
        return await asyncpg.connect(timeout=self.settings.DB_CONNECT_TIMEOUT, **options)

    async def _listen_postgres_once(self, listening: Callable[[], None]) -> None:
        connection = await self._connect()
        try:
            ended = asyncio.Event()
            connection.add_termination_listener(lambda _connection: ended.set())
            await connection.add_listener(CHANNEL, self._on_notify)
            listening()
            await self._keep_alive(connection, ended)
        finally:
            connection.terminate()

    async def _keep_alive(self, connection: Any, ended: asyncio.Event) -> None:
        """Return (raise) only when the listening connection is found ended or silent."""
        while True:
            try:
                await asyncio.wait_for(ended.wait(), timeout=HEARTBEAT)
            except TimeoutError:
                await connection.fetchval("SELECT 1", timeout=self.settings.DB_CONNECT_TIMEOUT)
                continue
            raise ConnectionError("the listening connection ended")

    def _on_notify(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        self.deliver(payload)


def _forget(db: Session) -> None:
    db.info.pop(_PENDING, None)


def get_session_events() -> SessionEvents:
    return current_app.extensions[EXTENSION]


async def wait_for_end(
    events: SessionEvents,
    watch: Watch,
    *,
    expires_at: datetime,
    now: Callable[[], datetime],
    gone: asyncio.Future,
    poll: bool = False,
) -> None:
    """Wait until ``watch``'s socket should re-read its session: an event, its expiry, or (polling) the interval.

    ``poll``: wait the interval even while events arrive (the last read failed).
    Returns early, without waiting more, once ``gone`` (the client went away) is done.
    """
    if events.live and not poll:
        timeout = max((expires_at - now()).total_seconds(), 0.0) + 0.05
    else:
        timeout = events.settings.WS_POLL_INTERVAL
    waiter = asyncio.ensure_future(watch.changed.wait())
    try:
        await asyncio.wait({gone, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    watch.changed.clear()
