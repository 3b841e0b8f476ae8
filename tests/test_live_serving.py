"""The live session WebSocket served for real: hypercorn with two workers, a raw WebSocket client from outside.

test_live.py drives ``/ws/session`` in process, with one app. Here the socket
is held by one hypercorn worker and the session is ended through the other,
so the push can only come from the shared session row, not from anything a
worker keeps in memory. The client is a few lines of asyncio streams and
wsproto (hypercorn's own WebSocket library; no client library is installed).
Everything binds to 127.0.0.1 only and every read is bounded in time.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from conftest import FAST_HASHING
from servers import (
    AUTH_COOKIE,
    PROC_NET_TCP,
    Server,
    client_for,
    connection_to,
    cookie_header,
    paused,
    start_server,
)
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

PASSWORD = "correct horse battery"
POLICY_VIOLATION = 1008
# How often the server's sockets look at the session row.
POLL_INTERVAL = 0.2
# The contract: a held socket hears of the session's end within this many seconds.
REVOKED_WITHIN = 5.0
# The longest any single read from the server may take.
READ_SECONDS = 5.0
# A live session is left alone: nothing arrives for this long after the hello.
QUIET_SECONDS = 3 * POLL_INTERVAL
# An origin other than the server's own that QUART_APP_TRUSTED_ORIGINS lets in.
TRUSTED_ORIGIN = "https://trusted.example.com"
# Plain tries at landing a WebSocket on a chosen worker before pausing the others.
TRIES = 4

needs_proc = pytest.mark.skipif(
    not PROC_NET_TCP.exists(), reason="needs Linux /proc to tell which worker holds a socket"
)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, migrated_template):
    """Two hypercorn workers, cheap hashing, sockets that poll their session every 0.2 s, one trusted origin."""
    yield from start_server(
        tmp_path_factory.mktemp("live"),
        migrated_template,
        {**FAST_HASHING, "WS_POLL_INTERVAL": POLL_INTERVAL, "TRUSTED_ORIGINS": TRUSTED_ORIGIN},
    )


# -- a minimal WebSocket client ---------------------------------------------------


@dataclass(frozen=True)
class Closed:
    """The server's close frame (1006 if the TCP connection ended without one)."""

    code: int
    reason: str | None


class WebSocket:
    """One client WebSocket over an asyncio stream, framed by wsproto; every read is bounded by ``READ_SECONDS``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = WSConnection(ConnectionType.CLIENT)
        self.events: deque[Event] = deque()
        self.eof = False

    @classmethod
    async def connect(cls, server: Server, path: str, token: str | None = None) -> WebSocket:
        """Open ``path`` on ``server`` (with ``token`` as the auth cookie) and return once the server accepted."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), READ_SECONDS)
        ws = cls(reader, writer)
        try:
            headers = [(b"cookie", f"{AUTH_COOKIE}={token}".encode())] if token is not None else []
            await ws.send(Request(host=f"127.0.0.1:{server.port}", target=path, extra_headers=headers))
            event = await ws.next_event()
            if isinstance(event, RejectConnection):
                raise AssertionError(f"handshake refused with HTTP {event.status_code}")
            assert isinstance(event, AcceptConnection), f"handshake answered with {event!r}"
        except BaseException:
            await ws.abort()
            raise
        return ws

    @property
    def local_port(self) -> int:
        return self.writer.get_extra_info("sockname")[1]

    async def send(self, event: Event) -> None:
        self.writer.write(self.protocol.send(event))
        await asyncio.wait_for(self.writer.drain(), READ_SECONDS)

    async def next_event(self) -> Event:
        """The next wsproto event from the server, reading from the socket as needed."""
        while not self.events:
            if self.eof:
                raise ConnectionError("the server closed the TCP connection")
            data = await asyncio.wait_for(self.reader.read(65536), READ_SECONDS)
            if not data:
                self.eof = True
                if self.protocol.connection is None:  # still in the HTTP handshake
                    raise ConnectionError("the server closed the TCP connection during the handshake")
            self.protocol.receive_data(data or None)  # None: the connection is lost (wsproto reports 1006)
            self.events.extend(self.protocol.events())
        return self.events.popleft()

    async def receive(self) -> str | Closed:
        """The next whole text message, or ``Closed`` (after answering the server's close frame)."""
        parts: list[str] = []
        for _ in range(1000):  # fragments of one message, and pings in between
            event = await self.next_event()
            if isinstance(event, TextMessage):
                parts.append(event.data)
                if event.message_finished:
                    return "".join(parts)
            elif isinstance(event, Ping):
                await self.send(event.response())
            elif isinstance(event, CloseConnection):
                if self.protocol.state is ConnectionState.REMOTE_CLOSING:
                    await self.send(event.response())
                return Closed(event.code, event.reason)
            else:
                raise AssertionError(f"unexpected WebSocket event {event!r}")
        raise AssertionError("a message of more than 1000 fragments")

    async def receive_json(self) -> dict:
        message = await self.receive()
        assert isinstance(message, str), f"expected a text message, got {message!r}"
        return json.loads(message)

    async def receive_close(self) -> Closed:
        message = await self.receive()
        assert isinstance(message, Closed), f"expected the socket to be closed, got {message!r}"
        return message

    async def abort(self) -> None:
        """Drop the TCP connection (bounded)."""
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), READ_SECONDS)
        except (OSError, TimeoutError):
            pass

    async def aclose(self) -> None:
        """Close politely if still open (or answer a pending close), then drop the TCP connection."""
        try:
            if self.protocol.state is ConnectionState.OPEN:
                await self.send(CloseConnection(code=1000))
        except OSError:
            pass
        await self.abort()


# -- which worker holds a socket ------------------------------------------------


@asynccontextmanager
async def websocket_on(server: Server, pid: int, token: str | None = None) -> AsyncIterator[WebSocket]:
    """A ``/ws/session`` socket held by worker ``pid`` (``connection_to``'s approach: plain tries, then SIGSTOP)."""
    assert pid in server.worker_pids, f"{pid} is not a worker of this server"
    for attempt in range(TRIES + 1):
        others = server.worker_pids - {pid} if attempt == TRIES else set()
        with paused(others):  # only the handshake: the others are resumed once ``pid`` has accepted
            ws = await WebSocket.connect(server, "/ws/session", token)
        try:
            # Only for a socket the server keeps open: hypercorn drops the TCP
            # connection as soon as the app returns (an anonymous socket).
            if server.worker_of_port(ws.local_port) == pid:
                yield ws
                return
        finally:
            await ws.aclose()
    pytest.fail(f"no WebSocket landed on worker {pid}, even with the others paused", pytrace=False)


async def register(server: Server, username: str) -> str:
    """Register over HTTP; the auth cookie it was given."""
    async with client_for(server) as client:
        response = await client.post(
            "/api/register", json={"username": username, "email": f"{username}@example.com", "password": PASSWORD}
        )
    assert response.status_code == 201, response.text
    return response.cookies[AUTH_COOKIE]


def worker(server: Server, index: int) -> int:
    return sorted(server.worker_pids)[index]


# -- behaviour -------------------------------------------------------------------


@needs_proc
@pytest.mark.parametrize("socket_worker", [0, 1])
async def test_logout_on_one_worker_revokes_the_socket_held_by_the_other(live_server, socket_worker):
    """A socket held by one worker is told "revoked" and closed with 1008 within 5 s of a logout on the other."""
    server = live_server
    holder = worker(server, socket_worker)
    (other,) = server.worker_pids - {holder}
    username = f"live_{socket_worker}"
    token = await register(server, username)

    async with websocket_on(server, holder, token) as ws:
        assert await ws.receive_json() == {"event": "hello", "username": username}
        with pytest.raises(TimeoutError):  # several polls of a live session: nothing is pushed
            await asyncio.wait_for(ws.receive(), QUIET_SECONDS)

        async with connection_to(server, other) as client:
            logged_out_at = time.monotonic()
            response = await client.post("/api/logout", headers=cookie_header(token))
            assert response.status_code == 204, response.text
            logged_out_by = server.worker_of(response)
        assert logged_out_by == other
        # (websocket_on checked that ``holder`` holds the socket; re-checking now would
        # race the server closing it, which may already have happened.)
        assert logged_out_by != holder

        async with asyncio.timeout(REVOKED_WITHIN):
            event = await ws.receive_json()
            closed = await ws.receive_close()
        elapsed = time.monotonic() - logged_out_at

    assert event == {"event": "revoked"}
    assert closed.code == POLICY_VIOLATION, closed
    assert elapsed < REVOKED_WITHIN


@needs_proc
@pytest.mark.parametrize("socket_worker", [0, 1])
async def test_anonymous_socket_is_closed_with_1008(live_server, socket_worker):
    """Without a cookie each worker accepts the socket, sends nothing and closes it with 1008."""
    server = live_server
    # The server closes at once, too soon to look the socket up in /proc, so
    # the other worker stays paused (SIGSTOP) throughout: only this one can
    # accept the connection.
    with paused(server.worker_pids - {worker(server, socket_worker)}):
        ws = await WebSocket.connect(server, "/ws/session")
        try:
            closed = await ws.receive_close()
        finally:
            await ws.aclose()
    assert closed.code == POLICY_VIOLATION, closed


# -- the handshake's Origin ------------------------------------------------------


async def handshake(server: Server, token: str, headers: dict[str, str], host: str | None = None) -> tuple[int, str]:
    """Open /ws/session with the cookie and ``headers``: (101, the first message) or (status, the refusal's body)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), READ_SECONDS)
    ws = WebSocket(reader, writer)
    try:
        extra = [(b"cookie", f"{AUTH_COOKIE}={token}".encode())]
        extra += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
        await ws.send(Request(host=host or f"127.0.0.1:{server.port}", target="/ws/session", extra_headers=extra))
        event = await ws.next_event()
        if isinstance(event, AcceptConnection):
            return 101, await ws.receive()
        assert isinstance(event, RejectConnection), f"handshake answered with {event!r}"
        status, body, more = event.status_code, b"", event.has_body
        while more:
            data = await ws.next_event()
            assert isinstance(data, RejectData), data
            body += data.data
            more = not data.body_finished
        return status, body.decode()
    finally:
        await ws.aclose()


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        (None, "https://evil.example"),
        (None, "null"),
        ("app.example.com", "https://evil.example.com"),  # a sibling subdomain
    ],
    ids=["foreign", "null", "sibling-subdomain"],
)
async def test_foreign_origin_is_refused_with_403_at_the_handshake(live_server, host, origin):
    """Over hypercorn: a foreign, null or sibling-subdomain Origin gets HTTP 403, never the WebSocket."""
    token = await register(live_server, f"origin_{secrets.token_hex(4)}")
    status, body = await handshake(live_server, token, {"Origin": origin}, host=host)
    assert status == 403, (status, body)
    assert json.loads(body) == {"error": "Cross-site requests are not allowed."}


@pytest.mark.parametrize("origin", ["same", TRUSTED_ORIGIN, None], ids=["same-origin", "trusted", "no-origin"])
async def test_same_or_trusted_origin_gets_hello(live_server, origin):
    """Over hypercorn: the server's own origin, a trusted one, or none at all opens the socket and gets hello."""
    username = f"welcome_{secrets.token_hex(4)}"
    token = await register(live_server, username)
    if origin == "same":
        origin = f"http://127.0.0.1:{live_server.port}"
    status, message = await handshake(live_server, token, {"Origin": origin} if origin else {})
    assert status == 101, (status, message)
    assert json.loads(message) == {"event": "hello", "username": username}


@needs_proc
@pytest.mark.parametrize("socket_worker", [0, 1])
async def test_a_password_change_leaves_the_changers_socket_open_and_revokes_the_others(live_server, socket_worker):
    """The browser that changed its password keeps its socket (its session goes on); another session's is told."""
    server = live_server
    holder = worker(server, socket_worker)
    (other,) = server.worker_pids - {holder}
    username = f"changer_{socket_worker}"
    token = await register(server, username)
    async with client_for(server) as client:
        response = await client.post("/api/login", json={"username": username, "password": PASSWORD})
        second = response.cookies[AUTH_COOKIE]

    async with websocket_on(server, holder, token) as mine, websocket_on(server, holder, second) as theirs:
        assert (await mine.receive_json())["event"] == "hello"
        assert (await theirs.receive_json())["event"] == "hello"
        async with connection_to(server, other) as client:
            response = await client.post(
                "/api/password",
                json={"current_password": PASSWORD, "new_password": "a new horse battery"},
                headers=cookie_header(token),
            )
            assert response.status_code == 204, response.text
        async with asyncio.timeout(REVOKED_WITHIN):
            assert await theirs.receive_json() == {"event": "revoked"}
        with pytest.raises(TimeoutError):  # several polls: the changer's socket hears nothing
            await asyncio.wait_for(mine.receive(), QUIET_SECONDS)
