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
    monkeypatch.setenv("QUART_APP_MAIL_URL", "off")
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


# -- settings that contradict each other ---------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        (
            {"SESSION_IDLE_TIMEOUT": "1800", "SESSION_TOUCH_INTERVAL": "3600"},
            ("SESSION_TOUCH_INTERVAL", "SESSION_IDLE_TIMEOUT"),
        ),
        (
            {"SESSION_IDLE_TIMEOUT": "600", "SESSION_TOUCH_INTERVAL": "600"},
            ("SESSION_TOUCH_INTERVAL", "SESSION_IDLE_TIMEOUT"),
        ),
        (
            {"SESSION_IDLE_TIMEOUT": "600", "SESSION_TOUCH_INTERVAL": "301"},
            ("SESSION_TOUCH_INTERVAL", "SESSION_IDLE_TIMEOUT"),
        ),
        (
            {"SESSION_IDLE_TIMEOUT": "7200", "SESSION_ABSOLUTE_TIMEOUT": "3600"},
            ("SESSION_IDLE_TIMEOUT", "SESSION_ABSOLUTE_TIMEOUT"),
        ),
        ({"LOGIN_RATE_LIMIT": "5/hour", "LOGIN_BACKOFF_MAX": "900"}, ("LOGIN_BACKOFF_MAX", "LOGIN_RATE_LIMIT")),
        ({"LOGIN_RATE_LIMIT": "10/5minutes", "LOGIN_BACKOFF_MAX": "299"}, ("LOGIN_BACKOFF_MAX", "LOGIN_RATE_LIMIT")),
        ({"LOGIN_IP_RATE_LIMIT": "100/day", "LOGIN_BACKOFF_MAX": "900"}, ("LOGIN_BACKOFF_MAX", "LOGIN_IP_RATE_LIMIT")),
        ({"HASH_WORKERS": "8", "HASH_QUEUE_LIMIT": "4"}, ("HASH_QUEUE_LIMIT", "HASH_WORKERS")),
        ({"WS_POLL_INTERVAL": "7200"}, ("WS_POLL_INTERVAL", "SESSION_IDLE_TIMEOUT")),
        ({"WS_POLL_INTERVAL": "900", "SESSION_IDLE_TIMEOUT": "600"}, ("WS_POLL_INTERVAL", "SESSION_IDLE_TIMEOUT")),
    ],
    ids=[
        "touch-longer-than-idle",
        "touch-equal-to-idle",
        "touch-over-half-of-idle",
        "idle-longer-than-absolute",
        "account-window-longer-than-memory",
        "account-window-of-minutes",
        "ip-window-longer-than-memory",
        "queue-smaller-than-workers",
        "poll-as-long-as-idle",
        "poll-longer-than-idle",
    ],
)
def test_contradicting_settings_stop_the_start_naming_both(settings, names):
    """Two settings that cannot both hold: a ConfigError at start that names both variables."""
    environ = {"QUART_APP_ENV": "testing", **{f"QUART_APP_{k}": v for k, v in settings.items()}}
    with pytest.raises(ConfigError) as raised:
        load_settings(environ=environ)
    for name in names:
        assert f"QUART_APP_{name}" in str(raised.value), str(raised.value)


def test_contradicting_overrides_stop_create_app(tmp_path):
    """The same checks hold for create_app's own config."""
    with pytest.raises(ConfigError, match="QUART_APP_SESSION_TOUCH_INTERVAL.*QUART_APP_SESSION_IDLE_TIMEOUT"):
        create_app(
            {
                "ENV": "testing",
                "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db",
                "SESSION_IDLE_TIMEOUT": 60,
                "SESSION_TOUCH_INTERVAL": 60,
            }
        )


@pytest.mark.parametrize(
    "settings",
    [
        {},  # the defaults
        {"SESSION_IDLE_TIMEOUT": "120", "SESSION_TOUCH_INTERVAL": "60"},  # a touch at exactly half
        {"SESSION_IDLE_TIMEOUT": "3600", "SESSION_ABSOLUTE_TIMEOUT": "3600"},
        {"LOGIN_RATE_LIMIT": "5/15minutes", "LOGIN_BACKOFF_MAX": "900"},  # window and memory equal
        {"LOGIN_RATE_LIMIT": "off", "LOGIN_BACKOFF_MAX": "1"},  # nothing throttled: nothing to remember
        {"LOGIN_RATE_LIMIT": "0", "LOGIN_IP_RATE_LIMIT": "5/day"},  # the IP limit only counts with the account's
        {"HASH_WORKERS": "4", "HASH_QUEUE_LIMIT": "4"},
        {"HASH_QUEUE_LIMIT": "1"},  # the default number of hash threads follows the queue down
        {"FRESH_LOGIN_WINDOW": "172800"},  # longer than any session: every session stays fresh, not a contradiction
        {"DB_POOL_TIMEOUT": "60", "DB_COMMAND_TIMEOUT": "1"},
        {"DB_POOL_TIMEOUT": "1", "DB_COMMAND_TIMEOUT": "60"},
        {"WS_POLL_INTERVAL": "0.05"},
    ],
    ids=lambda settings: ",".join(f"{k}={v}" for k, v in settings.items()) or "defaults",
)
def test_settings_that_agree_are_accepted(settings):
    """The defaults, and combinations at the edge of each rule, start."""
    load_settings(environ={"QUART_APP_ENV": "testing", **{f"QUART_APP_{k}": v for k, v in settings.items()}})


def test_default_hash_workers_never_exceed_the_queue(monkeypatch):
    """On a machine with many cores the default number of hash threads stays within HASH_QUEUE_LIMIT."""
    monkeypatch.setattr(config_module.os, "cpu_count", lambda: 512)
    settings = load_settings(environ={"QUART_APP_ENV": "testing"})
    assert settings.HASH_WORKERS == settings.HASH_QUEUE_LIMIT == 64
    assert load_settings(environ={"QUART_APP_ENV": "testing", "QUART_APP_HASH_QUEUE_LIMIT": "8"}).HASH_WORKERS == 8
    assert load_settings(environ={"QUART_APP_ENV": "testing", "QUART_APP_HASH_QUEUE_LIMIT": "300"}).HASH_WORKERS == 256


def test_production_defaults_pass():
    """Production with only a secret key and mail turned off: no contradiction among the defaults."""
    settings = load_settings(environ={"QUART_APP_SECRET_KEY": "k" * 40, "QUART_APP_MAIL_URL": "off"})
    assert settings.is_production and settings.trusted_origins == frozenset()


# -- QUART_APP_TRUSTED_ORIGINS -------------------------------------------------------------------


def test_trusted_origins_are_parsed_and_normalised():
    """Comma-separated origins, compared as browsers send them: lower case, no default port."""
    settings = load_settings(
        environ={
            "QUART_APP_ENV": "testing",
            "QUART_APP_TRUSTED_ORIGINS": " https://App.Example.com , HTTP://localhost:5173,https://x.example:443,"
            "http://[::1]:8000, http://127.0.0.1:80",
        }
    )
    assert settings.trusted_origins == frozenset(
        {
            "https://app.example.com",
            "http://localhost:5173",
            "https://x.example",
            "http://[::1]:8000",
            "http://127.0.0.1",
        }
    )


@pytest.mark.parametrize(
    "value",
    [
        "app.example.com",
        "//app.example.com",
        "https://app.example.com/",
        "https://app.example.com/login",
        "https://app.example.com?next=/",
        "https://app.example.com#top",
        "https://user:pw@app.example.com",
        "ftp://app.example.com",
        "ws://app.example.com",
        "null",
        "https://",
        "https://app.example.com:99999",
        "https://app.example.com:port",
        "https://*.example.com",
        "*",
        "https://app.example.com https://b.example.com",
    ],
)
def test_malformed_trusted_origins_stop_the_start(value):
    """Each entry must be scheme://host[:port] (http or https), nothing more: else a ConfigError naming the variable."""
    with pytest.raises(ConfigError, match="QUART_APP_TRUSTED_ORIGINS"):
        load_settings(environ={"QUART_APP_ENV": "testing", "QUART_APP_TRUSTED_ORIGINS": value})


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"Origin": "https://app.example.com"}, True),
        ({"Origin": "https://app.example.com", "Sec-Fetch-Site": "cross-site"}, True),
        ({"Origin": "https://evil.example.com"}, False),
        ({"Origin": "http://app.example.com"}, False),
        ({"Origin": "null"}, False),
        ({"Origin": "http://["}, False),  # not even a URL: 403, not a 500
        ({"Origin": "http://localhost"}, True),  # the app's own origin stays allowed
    ],
)
async def test_trusted_origins_are_honoured_by_the_post_check(make_app, headers, allowed):
    """A POST from a trusted origin passes the foreign-Origin check; any other foreign origin is still 403."""
    app = make_app(TRUSTED_ORIGINS="https://app.example.com")
    async with app.test_app():
        response = await app.test_client().post(
            "/api/login", json={"username": "alice", "password": "correct horse battery"}, headers=headers
        )
        if allowed:
            assert response.status_code == 401  # judged on its merits
        else:
            assert response.status_code == 403
            assert await response.get_json() == {"error": "Cross-site requests are not allowed."}


# -- mail ------------------------------------------------------------------------------------------

PRODUCTION = {"QUART_APP_SECRET_KEY": "k" * 40}
SMTP = {**PRODUCTION, "QUART_APP_MAIL_URL": "smtp+starttls://user:p%40ss@smtp.example.com"}


def test_production_without_a_mail_url_stops_with_a_clear_message():
    with pytest.raises(ConfigError, match="QUART_APP_MAIL_URL is not set"):
        load_settings(environ=PRODUCTION)


def test_console_mail_is_refused_in_production():
    with pytest.raises(ConfigError, match="console"):
        load_settings(environ={**PRODUCTION, "QUART_APP_MAIL_URL": "console"})


@pytest.mark.parametrize("missing", ["QUART_APP_MAIL_FROM", "QUART_APP_PUBLIC_URL"])
def test_production_mail_needs_a_sender_and_a_public_url(missing):
    environ = {
        **SMTP,
        "QUART_APP_MAIL_FROM": "Example <no-reply@example.com>",
        "QUART_APP_PUBLIC_URL": "https://x.example",
    }
    del environ[missing]
    with pytest.raises(ConfigError, match=missing):
        load_settings(environ=environ)


def test_an_smtp_url_is_parsed_and_never_shows_its_password():
    settings = load_settings(
        environ={**SMTP, "QUART_APP_MAIL_FROM": "no-reply@example.com", "QUART_APP_PUBLIC_URL": "https://x.example/"}
    )
    mail = settings.mail
    assert (mail.mode, mail.host, mail.port, mail.username, mail.password) == (
        "smtp+starttls",
        "smtp.example.com",
        587,
        "user",
        "p@ss",
    )
    assert "p@ss" not in repr(mail) and settings.PUBLIC_URL == "https://x.example"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAIL_URL", "http://smtp.example.com"),
        ("MAIL_URL", "smtp://"),
        ("MAIL_URL", "smtp://host:99999"),
        ("MAIL_FROM", "not an address"),
        ("MAIL_FROM", "a@example.com\r\nBcc: x@example.com"),
        ("PUBLIC_URL", "example.com"),
        ("PUBLIC_URL", "https://example.com/?next=x"),
        ("FORGOT_PASSWORD_RATE_LIMIT", "often"),
        ("PWNED_PASSWORDS_URL", "ftp://x"),
    ],
)
def test_malformed_mail_settings_stop_the_start(name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({"ENV": "testing", name: value})


def test_requiring_verified_addresses_without_mail_is_refused():
    with pytest.raises(ConfigError, match="REQUIRE_VERIFIED_EMAIL"):
        load_settings({"ENV": "testing", "MAIL_URL": "off", "REQUIRE_VERIFIED_EMAIL": True})
