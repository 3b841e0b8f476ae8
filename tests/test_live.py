"""The live session WebSocket: hello for a live session, then "revoked" and 1008 when it ends anywhere."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import auth_cookie, client_with_cookie, db_write, register_api

PASSWORD = "correct horse battery"
POLICY_VIOLATION = 1008


@pytest.fixture
async def app(make_app, database):
    app = make_app(WS_POLL_INTERVAL=0.05)
    app.extensions["test_database"] = database  # for actions that change the database behind the app's back
    async with app.test_app():
        yield app


# "Within a few seconds" of the contract; the test app polls every 0.05 s.
WAIT = 3.0


class Socket:
    """A /ws/session client speaking ASGI to the app directly.

    (Quart 0.23's test client drops the close code, which is what these tests
    are about, so this works the same on Quart 0.22 and 0.23.)
    """

    def __init__(self, app, cookie: str | None = None) -> None:
        headers = [(b"host", b"localhost")]
        if cookie:
            headers.append((b"cookie", f"quart_app_auth={cookie}".encode()))
        self.app = app
        self.scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "scheme": "ws",
            "path": "/ws/session",
            "raw_path": b"/ws/session",
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("localhost", 80),
            "subprotocols": [],
            "extensions": {"websocket.http.response": {}},
        }
        self.to_app: asyncio.Queue = asyncio.Queue()
        self.from_app: asyncio.Queue = asyncio.Queue()

    async def __aenter__(self) -> Socket:
        await self.to_app.put({"type": "websocket.connect"})
        self.task = asyncio.ensure_future(self.app(self.scope, self.to_app.get, self.from_app.put))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.to_app.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(self.task, WAIT)

    async def message(self) -> dict:
        """The next message the app sends, after the handshake's accept."""
        while True:
            message = await asyncio.wait_for(self.from_app.get(), WAIT)
            if message["type"] != "websocket.accept":
                return message


async def next_event(ws: Socket) -> dict:
    message = await ws.message()
    assert message["type"] == "websocket.send", message
    return json.loads(message["text"])


async def closed_with(ws: Socket) -> int:
    message = await ws.message()
    assert message["type"] == "websocket.close", message
    return message["code"]


async def test_anonymous_client_is_closed_with_1008(app):
    """No session: the socket is closed with 1008 at once."""
    async with Socket(app) as ws:
        assert await closed_with(ws) == POLICY_VIOLATION


async def test_logged_in_client_gets_hello_with_its_username(app):
    """A live session is greeted with its username and the socket stays open."""
    client = app.test_client()
    await register_api(client, "alice")
    async with Socket(app, auth_cookie(client)) as ws:
        assert await next_event(ws) == {"event": "hello", "username": "alice"}
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.from_app.get(), 0.3)


async def revoked_after(app, action) -> tuple[dict, int]:
    """Connect as alice, run ``action(app, cookie)``, and return what the socket said and its close code."""
    client = app.test_client()
    await register_api(client, "alice")
    cookie = auth_cookie(client)
    async with Socket(app, cookie) as ws:
        assert (await next_event(ws))["event"] == "hello"
        await action(app, cookie)
        return await next_event(ws), await closed_with(ws)


async def logout_in_another_tab(app, cookie):
    assert (await client_with_cookie(app, cookie).post("/api/logout")).status_code == 204


async def change_password_elsewhere(app, cookie):
    other = app.test_client()
    await other.post("/api/login", json={"username": "alice", "password": PASSWORD})
    response = await other.post("/api/password", json={"current_password": PASSWORD, "new_password": "n3w password!"})
    assert response.status_code == 204


async def revoke_from_another_device(app, cookie):
    other = app.test_client()
    await other.post("/api/login", json={"username": "alice", "password": PASSWORD})
    assert (await other.post("/api/sessions/revoke-others")).status_code == 204


async def deactivate(app, cookie):
    db_write(app.extensions["test_database"], "UPDATE users SET is_active = false")


@pytest.mark.parametrize(
    "action", [logout_in_another_tab, change_password_elsewhere, revoke_from_another_device, deactivate]
)
async def test_session_end_is_pushed_and_the_socket_closed(app, action):
    """Logout elsewhere, password change, revocation, deactivation: {"event": "revoked"}, then 1008."""
    event, code = await revoked_after(app, action)
    assert event == {"event": "revoked"}
    assert code == POLICY_VIOLATION


async def test_a_revoked_cookie_cannot_connect(app):
    """A cookie captured before logout opens no socket."""
    client = app.test_client()
    await register_api(client, "alice")
    cookie = auth_cookie(client)
    await client.post("/api/logout")
    async with Socket(app, cookie) as ws:
        assert await closed_with(ws) == POLICY_VIOLATION


async def test_logged_in_pages_load_the_live_session_script(app):
    """Pages of a logged-in user load /static/session.js and carry the hidden 'session ended' notice."""
    client = app.test_client()
    await register_api(client, "alice")
    body = await (await client.get("/dashboard")).get_data(as_text=True)
    assert 'src="/static/session.js"' in body
    assert 'id="session-ended"' in body and "hidden" in body
    script = await client.get("/static/session.js")
    assert script.status_code == 200 and "/ws/session" in await script.get_data(as_text=True)


# -- the Origin of the handshake (quart_app/core/csrf.py) ---------------------------------------------

TRUSTED = "https://app.example.com"


async def handshake(app, headers: dict[str, str]):
    """Open /ws/session as alice (logged in) with ``headers``: the first event, or the HTTP response that refused it."""
    from quart.testing.connections import WebsocketResponseError

    client = app.test_client()
    if (await register_api(client, "alice")).status_code != 201:
        await client.post("/api/login", json={"username": "alice", "password": PASSWORD})
    try:
        async with client.websocket("/ws/session", headers=headers) as ws:
            return json.loads(await asyncio.wait_for(ws.receive(), WAIT))
    except WebsocketResponseError as refused:
        return refused.response


@pytest.fixture
async def trusting_app(make_app):
    app = make_app(WS_POLL_INTERVAL=0.05, TRUSTED_ORIGINS=f"{TRUSTED}, https://other.example.org:8443")
    async with app.test_app():
        yield app


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://localhost.evil.example"},
        {"Origin": "http://localhost:8080"},  # another port is another origin
        {"Host": "app.example.com", "Origin": "https://evil.example.com"},  # a sibling subdomain
        {"Host": "app.example.com", "Origin": "https://example.com"},  # the parent domain
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://["},  # not even a URL
    ],
    ids=[
        "foreign",
        "null",
        "suffix",
        "other-port",
        "sibling-subdomain",
        "parent-domain",
        "sec-fetch-cross-site",
        "not-a-url",
    ],
)
async def test_foreign_origin_is_refused_with_403_before_the_handshake(app, headers):
    """A foreign, null or sibling Origin: HTTP 403 {"error": ...} instead of the WebSocket, even with a live cookie."""
    response = await handshake(app, headers)
    assert not isinstance(response, dict), f"the socket was opened: {response}"
    assert response.status_code == 403
    assert json.loads(await response.get_data(as_text=True)) == {"error": "Cross-site requests are not allowed."}


@pytest.mark.parametrize(
    "headers",
    [
        {},  # no Origin: a non-browser client
        {"Origin": "http://localhost"},
        {"Origin": "https://localhost"},  # behind a TLS-terminating proxy the app sees http
        {"Host": "app.example.com", "Origin": "https://APP.example.com"},
        {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"},
    ],
    ids=["no-origin", "same-origin", "same-host-https", "same-host-case", "sec-fetch-same-origin"],
)
async def test_same_origin_or_no_origin_gets_hello(app, headers):
    """The site's own pages, and clients that send no Origin, are greeted as before."""
    assert await handshake(app, headers) == {"event": "hello", "username": "alice"}


@pytest.mark.parametrize(
    "origin",
    [TRUSTED, "https://APP.example.com:443", "https://other.example.org:8443"],
    ids=["exact", "default-port", "port"],
)
async def test_a_trusted_origin_gets_hello(trusting_app, origin):
    """QUART_APP_TRUSTED_ORIGINS lets the origins it names open the socket (even marked cross-site)."""
    headers = {"Origin": origin, "Sec-Fetch-Site": "cross-site"}
    assert await handshake(trusting_app, headers) == {"event": "hello", "username": "alice"}


@pytest.mark.parametrize(
    "origin", ["http://app.example.com", "https://app.example.com:8443", "https://evil.app.example.com", "null"]
)
async def test_trusting_one_origin_trusts_no_other(trusting_app, origin):
    """Another scheme, port or subdomain than a trusted origin's is still foreign."""
    response = await handshake(trusting_app, {"Origin": origin})
    assert not isinstance(response, dict), f"the socket was opened: {response}"
    assert response.status_code == 403
