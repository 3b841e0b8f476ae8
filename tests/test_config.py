"""Settings: read once from QUART_APP_* variables, validated at start, no silent production secret."""

from __future__ import annotations

import pytest
from conftest import db_rows
from sqlalchemy import text

from quart_app import create_app
from quart_app.core import config as config_module
from quart_app.core.config import ConfigError, Settings, load_settings
from quart_app.db import get_db


def test_production_without_secret_key_refuses_to_start():
    """No QUART_APP_SECRET_KEY in production: a clear error, no app."""
    with pytest.raises(ConfigError, match="QUART_APP_SECRET_KEY is not set"):
        load_settings(environ={})
    with pytest.raises(ConfigError, match="QUART_APP_SECRET_KEY"):
        load_settings(environ={"QUART_APP_ENV": "production"})


def test_create_app_reads_the_environment(monkeypatch, tmp_path):
    """create_app() with no arguments takes everything from QUART_APP_* variables."""
    monkeypatch.delenv("QUART_APP_SECRET_KEY", raising=False)
    monkeypatch.setenv("QUART_APP_ENV", "production")
    with pytest.raises(ConfigError):
        create_app()
    monkeypatch.setenv("QUART_APP_SECRET_KEY", "k" * 40)
    monkeypatch.setenv("QUART_APP_COOKIE_SECURE", "on")
    monkeypatch.setenv("QUART_APP_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/x.db")
    app = create_app()
    settings = app.extensions["quart_app.settings"]
    assert settings.SECRET_KEY == "k" * 40 and settings.COOKIE_SECURE is True
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert settings.DATABASE_URL.endswith("/x.db")


def test_short_production_secret_is_refused():
    """A production secret under 32 characters is refused."""
    with pytest.raises(ConfigError, match="too short"):
        load_settings(environ={"QUART_APP_SECRET_KEY": "short"})


@pytest.mark.parametrize(
    ("name", "value"),
    [("ARGON2_TIME_COST", "two"), ("HASH_WORKERS", "0"), ("COOKIE_SECURE", "maybe"), ("ENV", "staging")],
)
def test_malformed_settings_name_the_variable(name, value):
    """A malformed value stops the start with the variable's name in the message."""
    with pytest.raises(ConfigError, match=f"QUART_APP_{name}"):
        load_settings(environ={"QUART_APP_ENV": "testing", f"QUART_APP_{name}": value})


def test_unknown_override_is_refused():
    """A typo in create_app's config is an error, not silently ignored."""
    with pytest.raises(ConfigError, match="SECRET_KYE"):
        load_settings({"ENV": "testing", "SECRET_KYE": "x"}, environ={})


def test_development_key_is_generated_once_and_shared(monkeypatch, tmp_path):
    """Development without a key: one random key kept in instance/, the same for every worker."""
    monkeypatch.setattr(config_module, "INSTANCE_PATH", tmp_path / "instance")
    first = load_settings(environ={"QUART_APP_ENV": "development"}).SECRET_KEY
    second = load_settings(environ={"QUART_APP_ENV": "development"}).SECRET_KEY
    assert first == second and len(first) >= 32
    key_file = tmp_path / "instance" / "dev_secret_key"
    assert key_file.stat().st_mode & 0o077 == 0


def test_default_database_is_sqlite_under_instance():
    """Without QUART_APP_DATABASE_URL the app uses a SQLite file under instance/."""
    settings = load_settings(environ={"QUART_APP_ENV": "testing"})
    assert settings.DATABASE_URL.startswith("sqlite+aiosqlite:///")
    assert settings.DATABASE_URL.endswith("instance/quart_app.sqlite3")


def test_default_argon2_parameters_meet_owasp():
    """Defaults: argon2id with m=19 MiB, t=2, p=1 (OWASP's minimum), and hashes say so."""
    settings = Settings()
    assert (settings.ARGON2_MEMORY_COST, settings.ARGON2_TIME_COST, settings.ARGON2_PARALLELISM) == (
        19 * 1024,
        2,
        1,
    )
    from argon2 import PasswordHasher

    hashed = PasswordHasher(
        time_cost=settings.ARGON2_TIME_COST,
        memory_cost=settings.ARGON2_MEMORY_COST,
        parallelism=settings.ARGON2_PARALLELISM,
    ).hash("x" * 8)
    assert hashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


async def test_default_app_hashes_with_owasp_parameters(make_app, database):
    """The app built with default hashing settings stores m=19456,t=2,p=1 argon2id hashes."""
    app = make_app(ARGON2_TIME_COST=2, ARGON2_MEMORY_COST=19 * 1024, ARGON2_PARALLELISM=1)
    async with app.test_app():
        response = await app.test_client().post(
            "/api/register", json={"username": "alice", "email": "a@example.com", "password": "p" * 12}
        )
        assert response.status_code == 201
    [(stored,)] = db_rows(database, "SELECT password_hash FROM users")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


@pytest.mark.sqlite_only("SQLite PRAGMAs")
async def test_sqlite_connections_get_wal_busy_timeout_and_foreign_keys(app):
    """Every SQLite connection runs in WAL with a busy timeout and foreign keys on."""
    async with app.app_context():
        db = get_db()
        assert (await db.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await db.execute(text("PRAGMA foreign_keys"))).scalar() == 1
        assert (await db.execute(text("PRAGMA busy_timeout"))).scalar() == 10_000


async def test_engine_lives_between_before_and_after_serving(make_app):
    """The engine is created when serving starts and disposed when it stops."""
    app = make_app()
    database = app.extensions["quart_app.db"]
    assert database.engine is None
    async with app.test_app():
        assert database.engine is not None
    assert database.engine is None
