"""Fixtures: a fresh app per test on its own SQLite file, migrated by Alembic."""

from __future__ import annotations

import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from quart_app import create_app

ROOT = Path(__file__).resolve().parents[1]

# Cheap argon2 parameters keep the suite fast; the defaults (OWASP's) are
# checked by their own test.
FAST_HASHING = {"ARGON2_TIME_COST": 1, "ARGON2_MEMORY_COST": 1024, "ARGON2_PARALLELISM": 1}


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def db_rows(db_path, sql: str, *params) -> list[tuple]:
    """Read the app's SQLite file directly (what is really stored)."""
    with closing(sqlite3.connect(db_path)) as conn:
        return conn.execute(sql, params).fetchall()


def db_write(db_path, sql: str, *params) -> None:
    """Change the app's SQLite file directly (to age a session, say)."""
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute(sql, params)


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


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory) -> Path:
    """One database migrated to head; each test gets a copy of it."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    alembic("upgrade", "head", url=sqlite_url(path))
    return path


@pytest.fixture
def db_path(tmp_path, migrated_template) -> Path:
    path = tmp_path / "app.db"
    shutil.copy(migrated_template, path)
    return path


@pytest.fixture
def make_app(db_path):
    def factory(**overrides):
        config = {"ENV": "testing", "DATABASE_URL": sqlite_url(db_path), **FAST_HASHING, **overrides}
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
