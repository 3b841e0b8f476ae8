"""PostgreSQL itself: the Flask-era adoption path, and a database server that goes away and comes back.

Run when the suite is given a PostgreSQL server (QUART_APP_TEST_DATABASE_URL
or --database-url); everything else in the suite runs on it too.
"""

from __future__ import annotations

import asyncio
import subprocess
from contextlib import asynccontextmanager

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from conftest import FAST_HASHING, ROOT, alembic, register_api
from sqlalchemy.engine import make_url
from werkzeug.security import generate_password_hash

from quart_app import create_app

pytestmark = pytest.mark.postgresql_only("needs a PostgreSQL server")

HEAD = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini"))).get_current_head()
PASSWORD = "correct horse battery"
UNAVAILABLE = {"error": "Service temporarily unavailable; try again shortly."}

# What Flask-SQLAlchemy's create_all emits on PostgreSQL for the seed's model.
FLASK_USERS_DDL = (
    "CREATE TABLE users (id SERIAL NOT NULL, username VARCHAR(50) NOT NULL, "
    "email VARCHAR(120) NOT NULL, password_hash VARCHAR(256) NOT NULL, "
    "PRIMARY KEY (id), UNIQUE (username), UNIQUE (email))"
)
FLASK_USERS = [
    (1, "alice", "alice@example.com", "alice's old password", "scrypt"),
    (2, "olduser", "olduser@example.org", "pbkdf2 era password", "pbkdf2:sha256"),
    (7, "Bob_Smith", "Bob.Smith@Example.com", "bob's secret 123", "scrypt"),
]


@pytest.fixture
def empty(backend, tmp_path):
    database = backend.create(tmp_path)
    yield database
    database.drop()


def flask_era(database, users) -> None:
    """The users table as the Flask app left it on PostgreSQL, with Werkzeug hashes."""
    database.write(FLASK_USERS_DDL)
    for user_id, username, email, password, method in users:
        database.write(
            "INSERT INTO users (id, username, email, password_hash) VALUES (?, ?, ?, ?)",
            user_id,
            username,
            email,
            generate_password_hash(password, method=method),
        )
    database.write("SELECT setval('users_id_seq', (SELECT max(id) FROM users))")


def tables(database) -> set[str]:
    return {name for (name,) in database.rows("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def indexes(database) -> set[str]:
    return {name for (name,) in database.rows("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}


def revision(database) -> list[str]:
    return [value for (value,) in database.rows("SELECT version_num FROM alembic_version")]


@asynccontextmanager
async def client_of(url: str, **settings):
    app = create_app({"ENV": "testing", "DATABASE_URL": url, **FAST_HASHING, **settings})
    async with app.test_app():
        yield app.test_client()


async def test_flask_database_is_adopted_and_every_old_password_still_logs_in(empty):
    """stamp seed + upgrade head on the Flask app's PostgreSQL table: old hashes log in and are upgraded."""
    flask_era(empty, FLASK_USERS)
    alembic("stamp", "seed", url=empty.url)
    alembic("upgrade", "head", url=empty.url)
    assert revision(empty) == [HEAD]
    assert {"auth_sessions", "auth_events", "login_throttle"} <= tables(empty)
    async with client_of(empty.url) as client:
        for _, username, email, password, _ in FLASK_USERS:
            response = await client.post("/api/login", json={"username": email.upper(), "password": password})
            assert response.status_code == 200, (username, await response.get_data(as_text=True))
            assert (await response.get_json())["username"] == username
        # New rows continue the Flask-era ids.
        assert (await register_api(client, "newcomer")).status_code == 201
    hashes = [value for (value,) in empty.rows("SELECT password_hash FROM users ORDER BY id")]
    assert all(value.startswith("$argon2id$") for value in hashes)
    assert [user_id for (user_id,) in empty.rows("SELECT id FROM users ORDER BY id")] == [1, 2, 7, 8]


def test_migrations_upgrade_downgrade_and_upgrade_again(empty):
    """Every revision runs both ways on PostgreSQL; downgrade seed leaves the Flask table."""
    alembic("upgrade", "head", url=empty.url)
    at_head = (tables(empty), indexes(empty))
    assert {"uq_users_username_lower", "uq_users_email_lower", "auth_sessions_token_hash_key"} <= at_head[1]
    alembic("downgrade", "seed", url=empty.url)
    assert tables(empty) == {"users", "alembic_version"}
    columns = empty.rows(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'users' ORDER BY ordinal_position"
    )
    assert [name for (name,) in columns] == ["id", "username", "email", "password_hash"]
    alembic("upgrade", "head", url=empty.url)
    assert (tables(empty), indexes(empty)) == at_head
    alembic("downgrade", "base", url=empty.url)
    assert tables(empty) == {"alembic_version"}


def test_case_duplicates_stop_the_upgrade_and_leave_everything_as_it_was(empty):
    """Two usernames equal but for case: upgrade head fails clearly and the transaction leaves nothing."""
    flask_era(
        empty,
        [(1, "Carol", "carol@example.com", "pw one", "scrypt"), (2, "carol", "c2@example.com", "pw two", "scrypt")],
    )
    before = empty.rows("SELECT * FROM users ORDER BY id")
    alembic("stamp", "seed", url=empty.url)
    with pytest.raises(subprocess.CalledProcessError) as failure:
        alembic("upgrade", "head", url=empty.url)
    assert "users.username holds values that differ only in case" in failure.value.stderr
    assert revision(empty) == ["seed"]
    assert tables(empty) == {"users", "alembic_version"}
    assert empty.rows("SELECT * FROM users ORDER BY id") == before


def test_the_database_refuses_a_case_variant_by_itself(database):
    """The lower() unique indexes hold on PostgreSQL, whatever the app does."""
    import psycopg

    insert = "INSERT INTO users (username, email, email_key, password_hash) VALUES (?, ?, ?, 'x')"
    database.write(insert, "Dave", "dave@example.com", "dave@example.com")
    with pytest.raises(psycopg.errors.UniqueViolation, match="uq_users_username_lower"):
        database.write(insert, "DAVE", "other@example.com", "other@example.com")


# -- a database server that goes away ------------------------------------------------


class Proxy:
    """A TCP relay between the app and PostgreSQL that the test can cut.

    ``refuse()``: connections in flight are reset and new ones refused (the
    server is down). ``blackhole()``: connections are accepted and go on
    existing, but nothing passes (a network partition; only a timeout ends a
    wait). ``restore()``: traffic flows again on the same port.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.mode = "open"
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.pipes: set[asyncio.Task] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        if self.mode == "blackhole":
            return  # accepted, never answered
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self.writers.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self.pipes.add(task)
            task.add_done_callback(self.pipes.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self.flowing.wait()
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()

    def _reset_all(self) -> None:
        for task in list(self.pipes):
            task.cancel()
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def refuse(self) -> None:
        self.mode = "refuse"
        self.server.close()
        # Connections first: since Python 3.12 wait_closed() waits for every open one.
        self._reset_all()
        await self.server.wait_closed()

    async def blackhole(self) -> None:
        self.mode = "blackhole"
        self.flowing.clear()

    async def restore(self) -> None:
        if self.mode == "blackhole":
            self._reset_all()
        self.mode = "open"
        self.flowing.set()
        if not self.server.is_serving():
            await self.start()

    async def close(self) -> None:
        self._reset_all()
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def proxy(database):
    url = make_url(database.url)
    relay = Proxy(url.host, url.port or 5432)
    await relay.start()
    yield relay
    await relay.close()


# Short timeouts: the test waits for them.
OUTAGE_SETTINGS = {"DB_CONNECT_TIMEOUT": 1.0, "DB_COMMAND_TIMEOUT": 1.0, "DB_POOL_TIMEOUT": 1.0}


async def answers(client, cookie_client, attempts: int = 40) -> int:
    """The status of GET /dashboard once it is no longer 503 (bounded)."""
    for _ in range(attempts):
        response = await cookie_client.get("/api/me")
        if response.status_code != 503:
            return response.status_code
        await asyncio.sleep(0.25)
    return 503


@pytest.mark.parametrize("outage", ["refuse", "blackhole"])
async def test_lost_database_is_503_within_the_timeouts_and_service_resumes(database, proxy, outage):
    """The database stops answering: requests get 503 + Retry-After in bounded time; then it comes back."""
    url = make_url(database.url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    async with client_of(url, **OUTAGE_SETTINGS) as client:
        assert (await register_api(client, "alice")).status_code == 201
        assert (await client.get("/api/me")).status_code == 200

        await getattr(proxy, outage)()
        for path in ("/api/me", "/dashboard"):
            response = await asyncio.wait_for(client.get(path), timeout=10)
            assert response.status_code == 503, path
            assert response.headers["Retry-After"] == "1"
        response = await asyncio.wait_for(
            client.post("/api/register", json={"username": "bob", "email": "b@example.com", "password": PASSWORD}),
            timeout=10,
        )
        assert response.status_code == 503
        assert await response.get_json() == UNAVAILABLE

        await proxy.restore()
        assert await answers(client, client) == 200
        assert (await client.get("/api/me")).status_code == 200
    # Nothing half-done from the outage: only alice, and bob was never acknowledged.
    assert database.rows("SELECT username FROM users") == [("alice",)]


async def test_connections_the_server_ends_are_replaced_without_an_error(database, make_app):
    """A failover or restart ends every pooled connection: the next requests are served on new ones."""
    app = make_app()
    async with app.test_app():
        client = app.test_client()
        assert (await register_api(client, "alice")).status_code == 201
        for path in ("/api/me", "/dashboard", "/account"):
            assert (await client.get(path)).status_code == 200
        [(ended,)] = database.rows(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert ended >= 1
        for path in ("/api/me", "/dashboard", "/account", "/api/sessions"):
            assert (await client.get(path)).status_code == 200, path
