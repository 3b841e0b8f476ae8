"""Fixtures: a fresh app per test on its own database, migrated by Alembic (SQLite or PostgreSQL: backends.py)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from backends import Backend, TestDatabase, sqlite_url  # noqa: F401 (sqlite_url: for tests that make files)

from quart_app import create_app

ROOT = Path(__file__).resolve().parents[1]

# Cheap argon2 parameters keep the suite fast; the defaults (OWASP's) are
# checked by their own test.
FAST_HASHING = {"ARGON2_TIME_COST": 1, "ARGON2_MEMORY_COST": 1024, "ARGON2_PARALLELISM": 1}


def db_rows(database: TestDatabase, sql: str, *params) -> list[tuple]:
    """Read the app's database directly (what is really stored); ``?`` placeholders."""
    return database.rows(sql, *params)


def db_write(database: TestDatabase, sql: str, *params) -> None:
    """Change the app's database directly (to age a session, say); ``?`` placeholders."""
    database.write(sql, *params)


def alembic(*args: str, url: str) -> subprocess.CompletedProcess:
    """Run the alembic command line the README gives, against ``url``."""
    env = {**os.environ, "QUART_APP_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--database-url",
        default=os.environ.get("QUART_APP_TEST_DATABASE_URL"),
        help="run the suite on this PostgreSQL server (postgresql+asyncpg://user@host:port/maintenance_db) "
        "instead of SQLite; default: $QUART_APP_TEST_DATABASE_URL",
    )


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "sqlite_only(reason): the test is about SQLite itself (files, PRAGMAs)")
    config.addinivalue_line("markers", "postgresql_only(reason): the test needs a PostgreSQL server")


def pytest_report_header(config) -> str:
    url = config.getoption("--database-url")
    return f"database backend: {'postgresql (' + url + ')' if url else 'sqlite'}"


def pytest_collection_modifyitems(config, items) -> None:
    on_postgresql = bool(config.getoption("--database-url"))
    other, here = ("sqlite_only", "PostgreSQL") if on_postgresql else ("postgresql_only", "SQLite")
    for item in items:
        marker = item.get_closest_marker(other)
        if marker is not None:
            why = marker.args[0] if marker.args else other
            item.add_marker(pytest.mark.skip(reason=f"not run on {here}: {why}"))


@pytest.fixture(scope="session")
def backend(request) -> Iterator[Backend]:
    """Where the suite's databases live: SQLite files, or databases on the PostgreSQL server named."""
    backend = Backend(request.config.getoption("--database-url"))
    try:
        yield backend
    finally:
        backend.drop_all()


@pytest.fixture(scope="session")
def migrated_template(backend, tmp_path_factory) -> TestDatabase:
    """One database migrated to head; each test gets a copy of it."""
    template = backend.create(tmp_path_factory.mktemp("template"))
    alembic("upgrade", "head", url=template.url)
    return template


@pytest.fixture
def database(backend, tmp_path, migrated_template) -> Iterator[TestDatabase]:
    """This test's own database, migrated to head."""
    database = backend.create(tmp_path, migrated_template)
    try:
        yield database
    finally:
        backend.drop(database)


@pytest.fixture
def make_app(database):
    def factory(**overrides):
        config = {"ENV": "testing", "DATABASE_URL": database.url, **FAST_HASHING, **overrides}
        return create_app(config)

    return factory


@pytest.fixture
async def app(make_app):
    app = make_app()
    async with app.test_app():
        yield app


@pytest.fixture
def client(app):
    return app.test_client()


CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


async def csrf_from(client, path: str = "/login") -> str:
    """The hidden csrf_token of the form at ``path``."""
    response = await client.get(path)
    match = CSRF_RE.search(await response.get_data(as_text=True))
    assert match, f"no csrf_token on {path}"
    return match.group(1)


async def register_api(client, username="alice", email=None, password="correct horse battery"):
    return await client.post(
        "/api/register",
        json={"username": username, "email": email or f"{username}@example.com", "password": password},
    )


async def login_form(client, username="alice", password="correct horse battery", *, remember=False, next_=None):
    token = await csrf_from(client, "/login")
    form = {"username": username, "password": password, "csrf_token": token}
    if remember:
        form["remember"] = "1"
    path = "/login" + (f"?next={next_}" if next_ is not None else "")
    return await client.post(path, form=form)


def auth_cookie(client) -> str | None:
    for cookie in client.cookie_jar:
        if cookie.name == "quart_app_auth":
            return cookie.value
    return None


def client_with_cookie(app, value: str):
    """A fresh client (another browser, or an attacker) that sends ``value`` as the auth cookie."""
    client = app.test_client()
    client.set_cookie("localhost", "quart_app_auth", value)
    return client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A private redis-server on 127.0.0.1, started by the test run (Debian's package)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; .ci/run installs it")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


# -- mail: a real SMTP server (tests/smtp_server.py) and an app that sends to it -----------------------

# Mail settings for tests: retries and polls fast, a delivery bounded at 5 s.
MAIL_TEST_SETTINGS = {
    "MAIL_FROM": "Quart App <no-reply@example.com>",
    "PUBLIC_URL": "https://app.example.com",
    "MAIL_RETRY_DELAY": 0.2,
    "MAIL_RETRY_DELAY_MAX": 1.0,
    "MAIL_POLL_INTERVAL": 0.2,
    "MAIL_SEND_TIMEOUT": 5,
}


def mail_settings(server, **overrides) -> dict:
    """Settings for an app that mails to ``server`` (an SMTPServer), MAIL_TEST_SETTINGS and ``overrides`` on top."""
    return {"MAIL_URL": server.url, **MAIL_TEST_SETTINGS, **overrides}


@pytest.fixture
def smtp_server():
    """aiosmtpd on 127.0.0.1 (a free port), collecting messages: ``await smtp_server.wait_for(1)``."""
    from smtp_server import SMTPServer

    server = SMTPServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def mail_app(make_app, smtp_server):
    """A served app (its mail sender running) that mails to ``smtp_server``, with MAIL_TEST_SETTINGS."""
    app = make_app(**mail_settings(smtp_server))
    async with app.test_app():
        yield app


@pytest.fixture
def mail_client(mail_app):
    return mail_app.test_client()
