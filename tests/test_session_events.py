"""Session events (quart_app/session_events.py): /ws/session told of an end, not polling for it.

On PostgreSQL the database notifies every worker when a session row is
deleted or an account deactivated (triggers of revision ``session_events``):
the socket hears of it on another instance while its poll interval is far
longer than the wait, an open socket makes no query while nothing changes
(one re-read when its expiry time comes), and a lost channel is logged, every
socket polls meanwhile, and listening resumes by itself. On SQLite the
sockets poll, and the PostgreSQL channel cannot be chosen.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

import pytest
from conftest import auth_cookie, client_with_cookie, register_api
from test_live import PASSWORD, POLICY_VIOLATION, Socket, closed_with, next_event

from quart_app.auth.sessions import EXTENSION as STORE
from quart_app.core.config import ConfigError
from quart_app.session_events import EXTENSION

# Far longer than any wait below: a socket that hears of an end within WAIT was told, not polling.
SLOW_POLL = 60.0
WAIT = 3.0

postgresql_only = pytest.mark.postgresql_only("LISTEN/NOTIFY needs a PostgreSQL server")


def events_of(app):
    return app.extensions[EXTENSION]


class StatementCounter:
    """Counts the sockets' re-reads of their session on ``app`` (its store's ``open_until``, still run)."""

    def __init__(self, app) -> None:
        self.reads = 0
        store = app.extensions[STORE]
        read = store.open_until

        async def counted(session_id):
            self.reads += 1
            return await read(session_id)

        store.open_until = counted


async def until(condition, within: float = WAIT) -> None:
    """Wait (bounded: ``within`` seconds) for ``condition()`` to hold."""
    for _ in range(int(within / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    assert condition()


@pytest.fixture
async def instances(make_app):
    """Two apps (two instances) on one database, each listening, polling only every SLOW_POLL seconds."""
    shared = {"WS_POLL_INTERVAL": SLOW_POLL, "SECRET_KEY": secrets.token_urlsafe(48)}  # one key, as instances share
    a, b = make_app(**shared), make_app(**shared)
    async with a.test_app(), b.test_app():
        await until(lambda: events_of(a).live and events_of(b).live)
        yield a, b


async def logout(app, cookie):
    assert (await client_with_cookie(app, cookie).post("/api/logout")).status_code == 204


async def revoke_others(app, cookie):
    other = app.test_client()
    await other.post("/api/login", json={"username": "alice", "password": PASSWORD})
    assert (await other.post("/api/sessions/revoke-others")).status_code == 204


async def change_password(app, cookie):
    other = app.test_client()
    await other.post("/api/login", json={"username": "alice", "password": PASSWORD})
    response = await other.post("/api/password", json={"current_password": PASSWORD, "new_password": "n3w password!"})
    assert response.status_code == 204


async def deactivate_in_place(app, cookie):
    # Behind the app's back: the account off, its session rows left as they are.
    app.extensions["test_database"].write("UPDATE users SET is_active = false")


@postgresql_only
@pytest.mark.parametrize("action", [logout, revoke_others, change_password, deactivate_in_place])
async def test_an_end_on_one_instance_reaches_a_socket_on_the_other_at_once(instances, database, action):
    a, b = instances
    a.extensions["test_database"] = database
    client = a.test_client()
    assert (await register_api(client, "alice")).status_code == 201
    cookie = auth_cookie(client)
    async with Socket(b, cookie) as ws:
        assert (await next_event(ws))["event"] == "hello"
        await action(a, cookie)
        assert await next_event(ws) == {"event": "revoked"}  # within WAIT, with SLOW_POLL between polls
        assert await closed_with(ws) == POLICY_VIOLATION


@postgresql_only
async def test_an_open_socket_makes_no_query_while_nothing_changes(instances):
    a, b = instances
    client = a.test_client()
    await register_api(client, "alice")
    await register_api(a.test_client(), "bob")
    sockets = [Socket(b, auth_cookie(client)) for _ in range(10)]
    counter = StatementCounter(b)
    for ws in sockets:
        await ws.__aenter__()
        assert (await next_event(ws))["event"] == "hello"
    await until(lambda: counter.reads >= 10)  # one read each as it opens
    before = counter.reads
    await asyncio.sleep(1.0)
    assert counter.reads == before
    # bob's logout wakes nobody here: the event names another session.
    bob = a.test_client()
    await bob.post("/api/login", json={"username": "bob", "password": PASSWORD})
    received = events_of(b).received
    assert (await bob.post("/api/logout")).status_code == 204
    await until(lambda: events_of(b).received > received)
    await asyncio.sleep(0.2)
    assert counter.reads == before
    for ws in sockets:
        await ws.__aexit__(None, None, None)


@postgresql_only
async def test_a_socket_re_reads_its_session_when_it_expires(make_app):
    app = make_app(WS_POLL_INTERVAL=2.5, SESSION_IDLE_TIMEOUT=3, SESSION_TOUCH_INTERVAL=1)
    async with app.test_app():
        await until(lambda: events_of(app).live)
        client = app.test_client()
        await register_api(client, "alice")
        counter = StatementCounter(app)
        async with Socket(app, auth_cookie(client)) as ws:
            assert (await next_event(ws))["event"] == "hello"
            message = await asyncio.wait_for(ws.from_app.get(), 6.0)
            assert message["type"] == "websocket.send" and '"revoked"' in message["text"]
        assert counter.reads == 2  # as it opened, and when the session expired: not every 2.5 s


@postgresql_only
async def test_a_lost_channel_is_logged_sockets_poll_and_listening_resumes(make_app, database, caplog):
    app = make_app(WS_POLL_INTERVAL=0.2)
    async with app.test_app():
        events = events_of(app)
        await until(lambda: events.live)
        client = app.test_client()
        await register_api(client, "alice")
        cookie = auth_cookie(client)
        with caplog.at_level(logging.WARNING, logger="quart_app.session_events"):
            database.rows(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'quart_app session events' AND datname = current_database()"
            )
            await until(lambda: not events.live)
            assert "channel lost" in caplog.text
            counter = StatementCounter(app)
            async with Socket(app, cookie) as ws:
                assert (await next_event(ws))["event"] == "hello"
                await until(lambda: events.live, within=5.0)  # it listens again by itself
                assert "listening again" in caplog.text
                received = events.received
                await logout(app, cookie)
                assert await next_event(ws) == {"event": "revoked"}
                assert events.received > received
        assert counter.reads >= 2


async def test_sqlite_sockets_poll_and_the_postgres_channel_is_refused(make_app, backend):
    if backend.name != "sqlite":
        pytest.skip("about SQLite")
    assert events_of(make_app()).mode == "poll"
    with pytest.raises(ConfigError, match="SESSION_EVENTS=postgres needs a PostgreSQL"):
        make_app(SESSION_EVENTS="postgres")


async def test_an_unknown_channel_is_refused(make_app):
    with pytest.raises(ConfigError, match="QUART_APP_SESSION_EVENTS must be one of"):
        make_app(SESSION_EVENTS="carrier-pigeon")


# -- Redis: the app publishes what it ends, every worker subscribes --------------------


@pytest.fixture
async def redis_instances(make_app, redis_server):
    """Two apps on one database and one Redis, events through Redis, polling only every SLOW_POLL seconds."""
    shared = {
        "WS_POLL_INTERVAL": SLOW_POLL,
        "SECRET_KEY": secrets.token_urlsafe(48),
        "REDIS_URL": redis_server,
        "SESSION_EVENTS": "redis",
    }
    a, b = make_app(**shared), make_app(**shared)
    async with a.test_app(), b.test_app():
        await until(lambda: events_of(a).live and events_of(b).live)
        yield a, b


@pytest.mark.parametrize("action", [logout, revoke_others, change_password])
async def test_with_redis_an_end_on_one_instance_reaches_a_socket_on_the_other_at_once(redis_instances, action):
    a, b = redis_instances
    assert events_of(b).mode == "redis"
    client = a.test_client()
    assert (await register_api(client, "alice")).status_code == 201
    cookie = auth_cookie(client)
    async with Socket(b, cookie) as ws:
        assert (await next_event(ws))["event"] == "hello"
        await action(a, cookie)
        assert await next_event(ws) == {"event": "revoked"}
        assert await closed_with(ws) == POLICY_VIOLATION


async def test_with_redis_a_lost_channel_is_logged_sockets_poll_and_listening_resumes(make_app, redis_server, caplog):
    import redis

    app = make_app(WS_POLL_INTERVAL=0.2, REDIS_URL=redis_server, SESSION_EVENTS="redis")
    async with app.test_app():
        events = events_of(app)
        await until(lambda: events.live)
        client = app.test_client()
        await register_api(client, "alice")
        cookie = auth_cookie(client)
        with caplog.at_level(logging.WARNING, logger="quart_app.session_events"):
            assert redis.Redis.from_url(redis_server).client_kill_filter(_type="pubsub") >= 1
            await until(lambda: not events.live)
            assert "channel lost" in caplog.text
            async with Socket(app, cookie) as ws:
                assert (await next_event(ws))["event"] == "hello"
                await until(lambda: events.live, within=5.0)
                assert "listening again" in caplog.text
                received = events.received
                await logout(app, cookie)
                assert await next_event(ws) == {"event": "revoked"}
                assert events.received > received


async def test_on_sqlite_a_redis_url_chooses_redis(make_app, backend, redis_server):
    expected = "redis" if backend.name == "sqlite" else "postgres"  # PostgreSQL keeps its own channel
    assert events_of(make_app(REDIS_URL=redis_server)).mode == expected
    with pytest.raises(ConfigError, match="SESSION_EVENTS=redis needs QUART_APP_REDIS_URL"):
        make_app(SESSION_EVENTS="redis")


async def test_with_redis_the_cli_run_elsewhere_reaches_a_socket(make_app, database, redis_server):
    """`users deactivate` (its own process in real life: here its own app and event loop) publishes too."""
    shared = {"WS_POLL_INTERVAL": SLOW_POLL, "REDIS_URL": redis_server, "SESSION_EVENTS": "redis"}
    app = make_app(**shared)
    async with app.test_app():
        await until(lambda: events_of(app).live)
        client = app.test_client()
        await register_api(client, "alice")
        async with Socket(app, auth_cookie(client)) as ws:
            assert (await next_event(ws))["event"] == "hello"
            cli = make_app(**shared, SECRET_KEY=app.secret_key)
            result = await asyncio.to_thread(cli.test_cli_runner().invoke, args=["users", "deactivate", "alice"])
            assert result.exit_code == 0, result.output
            assert await next_event(ws) == {"event": "revoked"}


@pytest.mark.sqlite_only("the SQLite file moved from under the server")
async def test_a_socket_outlives_a_database_outage_and_still_hears_of_the_end(make_app, database, caplog):
    """Its re-reads fail while the file is away (logged once), the socket stays open; back, a logout reaches it."""
    app = make_app(WS_POLL_INTERVAL=0.1)
    async with app.test_app():
        client = app.test_client()
        await register_api(client, "alice")
        cookie = auth_cookie(client)
        aside = database.path.with_name("aside.db")
        async with Socket(app, cookie) as ws:
            assert (await next_event(ws))["event"] == "hello"
            with caplog.at_level(logging.WARNING, logger="quart_app.live"):
                database.path.rename(aside)
                await until(lambda: "database unavailable" in caplog.text)
                await asyncio.sleep(0.5)  # several failed re-reads
                assert ws.from_app.empty()  # nothing said, not closed
                aside.rename(database.path)
            await logout(app, cookie)
            assert await next_event(ws) == {"event": "revoked"}
            assert await closed_with(ws) == POLICY_VIOLATION
        assert caplog.text.count("database unavailable") == 1


@pytest.mark.sqlite_only("the SQLite file moved from under the server")
async def test_a_handshake_while_the_database_is_away_is_refused_with_503(make_app, database):
    app = make_app()
    async with app.test_app():
        client = app.test_client()
        await register_api(client, "alice")
        database.path.rename(database.path.with_name("aside.db"))
        async with Socket(app, auth_cookie(client)) as ws:
            message = await ws.message()
        assert message["type"] == "websocket.http.response.start", message
        assert message["status"] == 503
