"""Settings: read once from ``QUART_APP_*`` environment variables, validated at start."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

PREFIX = "QUART_APP_"
ENVIRONMENTS = ("production", "development", "testing")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
INSTANCE_PATH = PROJECT_ROOT / "instance"


# Numbers that may be 0 (every other one must be positive).
_ZERO_ALLOWED = frozenset({"PROXY_HOPS", "DB_MAX_OVERFLOW"})


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the app refuses to start."""


def default_database_url() -> str:
    return f"sqlite+aiosqlite:///{INSTANCE_PATH / 'quart_app.sqlite3'}"


@dataclass(frozen=True)
class Settings:
    """Every setting with its default; the environment name is ``QUART_APP_`` + field name."""

    ENV: str = "production"
    SECRET_KEY: str = ""
    # Earlier keys, comma-separated, still accepted on cookies while they
    # expire (key rotation: the new key signs, these only verify).
    SECRET_KEY_FALLBACKS: str = ""
    DATABASE_URL: str = ""
    COOKIE_SECURE: bool = False
    # Reverse proxies in front of the app whose X-Forwarded-For/-Proto/-Host
    # are trusted (0: none, the peer address is the client). The throttle and
    # the audit trail need the real client IP.
    PROXY_HOPS: int = 0
    # Flask-Login's REMEMBER_COOKIE_DURATION: lifetime of a remember-me session.
    REMEMBER_COOKIE_DURATION: int = 30 * 24 * 3600
    # A plain (non-remember) login dies after this much inactivity...
    SESSION_IDLE_TIMEOUT: int = 2 * 3600
    # ...and in any case this long after it was created.
    SESSION_ABSOLUTE_TIMEOUT: int = 24 * 3600
    # last_seen_at is written at most this often per session, to keep the
    # protected hot path free of writes.
    SESSION_TOUCH_INTERVAL: int = 60
    MAX_CONTENT_LENGTH: int = 64 * 1024
    # argon2id; defaults are OWASP's minimum (m=19 MiB, t=2, p=1).
    ARGON2_TIME_COST: int = 2
    ARGON2_MEMORY_COST: int = 19 * 1024
    ARGON2_PARALLELISM: int = 1
    # Threads per worker process that hash and verify passwords, off the
    # event loop. In all (workers x this) they should match the cores: more
    # only take CPU from the event loops while logins pour in. The default
    # fits hypercorn.toml's 2 workers; set it when running another number.
    HASH_WORKERS: int = max(1, (os.cpu_count() or 1) // 2)
    # At most this many hashes running or waiting per worker; more get 503.
    HASH_QUEUE_LIMIT: int = 64
    # Failed logins allowed per account (and per account from one client)
    # before exponential back-off starts; "off" or "0" disables throttling.
    LOGIN_RATE_LIMIT: str = "5/minute"
    # The same for one client IP across all accounts.
    LOGIN_IP_RATE_LIMIT: str = "20/minute"
    # Throttle counters in Redis instead of the database (e.g. redis://127.0.0.1:6379/0).
    REDIS_URL: str = ""
    # The longest lock-out, and how long failures are remembered.
    LOGIN_BACKOFF_MAX: int = 15 * 60
    # The longest lock of one client IP: an address many people share (an
    # office, a NAT) is slowed by an attacker behind it, never shut for long.
    LOGIN_IP_BACKOFF_MAX: int = 60
    # fresh_login_required: a session older than this must re-enter the password.
    FRESH_LOGIN_WINDOW: int = 15 * 60
    # /ws/session re-checks its session this often (seconds).
    WS_POLL_INTERVAL: float = 2.0
    REFRESH_VIEW: str = "pages.reauthenticate"
    NEEDS_REFRESH_MESSAGE: str = "Please reauthenticate to access this page."
    LOGIN_VIEW: str = "pages.login"
    LOGIN_MESSAGE: str = "Please log in first."
    # Connections per worker process: DB_POOL_SIZE kept open, DB_MAX_OVERFLOW
    # more under load; a request waits DB_POOL_TIMEOUT seconds for one, then 503.
    DB_POOL_SIZE: int = 5
    DB_MAX_OVERFLOW: int = 10
    DB_POOL_TIMEOUT: float = 10.0
    # Server databases (PostgreSQL): the longest wait for a new connection and
    # for one statement; past them the request is answered 503, not left hanging.
    DB_CONNECT_TIMEOUT: float = 5.0
    DB_COMMAND_TIMEOUT: float = 30.0
    SQLITE_BUSY_TIMEOUT_MS: int = 10_000
    # Threads that run the hot path's SQLite work (one trip per request).
    SQLITE_THREADS: int = 2
    # Which measured speed-ups are on (quart_app/speedups.py): all, none, a
    # list of names, or all minus some ("all,-gc_freeze").
    SPEEDUPS: str = "all"

    @property
    def is_production(self) -> bool:
        return self.ENV == "production"

    @property
    def secret_key_fallbacks(self) -> list[str]:
        return [key.strip() for key in self.SECRET_KEY_FALLBACKS.split(",") if key.strip()]


def _coerce(name: str, raw: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off", ""}:
            return False
        raise ConfigError(f"{PREFIX}{name} must be on/off (got {raw!r})")
    if kind in (int, float):
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{PREFIX}{name} must be a number (got {raw!r})") from None
        if value < 0 or (value == 0 and name not in _ZERO_ALLOWED):
            raise ConfigError(f"{PREFIX}{name} must be positive (got {raw!r})")
        return value
    return str(raw)


def load_settings(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from the environment, then ``overrides`` (unprefixed names)."""
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    types = {f.name: f.type for f in fields(Settings)}
    kinds = {"str": str, "bool": bool, "int": int, "float": float}
    unknown = set(overrides) - set(types)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")

    values: dict[str, Any] = {}
    for name, type_name in types.items():
        if name in overrides:
            raw = overrides[name]
        elif PREFIX + name in environ:
            raw = environ[PREFIX + name]
        else:
            continue
        values[name] = _coerce(name, raw, kinds[type_name])

    settings = Settings(**values)
    if settings.ENV not in ENVIRONMENTS:
        raise ConfigError(f"{PREFIX}ENV must be one of {', '.join(ENVIRONMENTS)} (got {settings.ENV!r})")
    if not settings.DATABASE_URL:
        settings = replace(settings, DATABASE_URL=database_url(environ))
    if not settings.SECRET_KEY:
        if settings.is_production:
            raise ConfigError(
                f"{PREFIX}SECRET_KEY is not set. Production needs a long random secret, e.g.\n"
                f"  export {PREFIX}SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')\n"
                f"(or set {PREFIX}ENV=development for a local key kept under instance/)."
            )
        key = secrets.token_urlsafe(48) if settings.ENV == "testing" else _development_key()
        settings = replace(settings, SECRET_KEY=key)
    elif settings.is_production and len(settings.SECRET_KEY) < 32:
        raise ConfigError(f"{PREFIX}SECRET_KEY is too short for production (need 32+ characters)")
    if settings.is_production and any(len(key) < 32 for key in settings.secret_key_fallbacks):
        raise ConfigError(f"{PREFIX}SECRET_KEY_FALLBACKS holds a key too short for production")
    if settings.SESSION_IDLE_TIMEOUT > settings.SESSION_ABSOLUTE_TIMEOUT:
        raise ConfigError(f"{PREFIX}SESSION_IDLE_TIMEOUT must not exceed {PREFIX}SESSION_ABSOLUTE_TIMEOUT")
    if settings.ARGON2_MEMORY_COST < 8 * settings.ARGON2_PARALLELISM:
        raise ConfigError(f"{PREFIX}ARGON2_MEMORY_COST must be at least 8 KiB per lane")
    return settings


def get_settings() -> Settings:
    """The running app's settings."""
    from quart import current_app

    return current_app.extensions[EXTENSION]


EXTENSION = "quart_app.settings"


def database_url(environ: Mapping[str, str] | None = None) -> str:
    """The database URL the app and Alembic share."""
    environ = os.environ if environ is None else environ
    return environ.get(PREFIX + "DATABASE_URL") or default_database_url()


def _development_key() -> str:
    """A random key kept in instance/, shared by every worker and restart on this machine."""
    path = INSTANCE_PATH / "dev_secret_key"
    INSTANCE_PATH.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".dev_secret_key.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        try:
            # link() is atomic and refuses to overwrite: two workers starting
            # together end up with the same key.
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()
