"""Settings: read once from ``QUART_APP_*`` environment variables, validated at start."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from email.utils import parseaddr
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

PREFIX = "QUART_APP_"
ENVIRONMENTS = ("production", "development", "testing")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
INSTANCE_PATH = PROJECT_ROOT / "instance"


# Numbers that may be 0 (every other one must be positive).
_ZERO_ALLOWED = frozenset({"PROXY_HOPS", "DB_MAX_OVERFLOW", "FORGOT_PASSWORD_MIN_TIME"})


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the app refuses to start."""


def default_database_url() -> str:
    return f"sqlite+aiosqlite:///{INSTANCE_PATH / 'quart_app.sqlite3'}"


def _default_hash_workers() -> int:
    return max(1, (os.cpu_count() or 1) // 2)


_DEFAULT_PORTS = {"http": 80, "https": 443}
# A DNS name or IPv4 address, or an IPv6 address in brackets (what an Origin header holds).
_HOST_RE = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]")


def origin_of(text: str) -> str | None:
    """``text`` as browsers serialise an Origin (lower case, no default port), or None if it is no http(s) origin.

    An origin is ``scheme://host[:port]`` and nothing else: no path (not even
    "/"), query, fragment or user name.
    """
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:  # a port that is not a number, or out of range
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or parts.path or "?" in text or "#" in text or "@" in parts.netloc:
        return None
    host = parts.netloc.lower()
    if port is not None:
        host = host.rsplit(":", 1)[0]
    if not _HOST_RE.fullmatch(host) or port == 0:
        return None
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != _DEFAULT_PORTS[scheme] else "")


_PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_LIMIT_RE = re.compile(r"\s*(\d+)\s*/\s*(\d*)\s*(second|minute|hour|day)s?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Limit:
    """A login rate limit (auth/throttle.py): ``attempts`` failures per ``period``."""

    attempts: int
    period: int  # seconds


def parse_limit(text: str, name: str) -> Limit | None:
    """``"5/minute"``, ``"10/5minutes"``, ``"30/hour"``; ``"off"`` or ``"0"`` disables (None)."""
    if text.strip().lower() in {"off", "0", "false", "no", "none"}:
        return None
    match = _LIMIT_RE.fullmatch(text)
    if not match or int(match.group(1)) == 0:
        raise ConfigError(f"{PREFIX}{name} must look like 5/minute, 20/hour or off (got {text!r})")
    count = int(match.group(2) or 1)
    return Limit(int(match.group(1)), count * _PERIODS[match.group(3).lower()])


MAIL_MODES = ("smtp", "smtp+starttls", "smtps", "console", "off")


@dataclass(frozen=True)
class MailURL:
    """QUART_APP_MAIL_URL, parsed: ``mode`` is one of MAIL_MODES; the rest is for the SMTP modes."""

    mode: str
    host: str = ""
    port: int = 0
    username: str = ""
    password: str = ""

    @property
    def sends(self) -> bool:
        """Whether the email features are on (every mode but "off")."""
        return self.mode != "off"

    def __repr__(self) -> str:  # never the password
        return f"MailURL({self.mode!r}, {self.host!r}, {self.port})"


_MAIL_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}


def parse_mail_url(text: str) -> MailURL:
    """``smtp://user:pass@host:port``, ``smtp+starttls://...``, ``smtps://...``, ``console`` or ``off``."""
    text = text.strip()
    if text.lower() in ("console", "off"):
        return MailURL(text.lower())
    shown = (
        f"{PREFIX}MAIL_URL must be smtp://[user:password@]host[:port], smtp+starttls://..., smtps://..., console or off"
    )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{shown} (the port is not a number from 1 to 65535)") from None
    mode = parts.scheme.lower()
    if mode not in _MAIL_PORTS or not parts.hostname or (parts.path not in ("", "/")) or parts.query:
        raise ConfigError(f"{shown} (got a value of another form)")
    return MailURL(
        mode,
        parts.hostname,
        port or _MAIL_PORTS[mode],
        unquote(parts.username or ""),
        unquote(parts.password or ""),
    )


def public_url_of(text: str) -> str | None:
    """QUART_APP_PUBLIC_URL without a trailing slash, or None if it is no http(s) URL with a host and no query."""
    text = text.strip().rstrip("/")
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    origin = origin_of(f"{parts.scheme}://{parts.netloc}") if parts.netloc else None
    if origin is None or parts.query or parts.fragment or "?" in text or "#" in text:
        return None
    return origin + parts.path


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
    # Origins besides the app's own (comma-separated https://app.example.com,
    # scheme://host[:port] each) whose pages may POST to it and open /ws/session.
    TRUSTED_ORIGINS: str = ""
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
    # (Never more than HASH_QUEUE_LIMIT unless set: see load_settings.)
    HASH_WORKERS: int = field(default_factory=_default_hash_workers)
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
    # How /ws/session learns that its session ended (quart_app/session_events.py):
    # auto (LISTEN/NOTIFY on PostgreSQL, polling on SQLite), postgres, or poll.
    SESSION_EVENTS: str = "auto"
    # /ws/session re-checks its session this often (seconds) when it polls: on
    # SQLite, with SESSION_EVENTS=poll, or while the event channel is down.
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

    # Mail (quart_app/mail/): smtp://user:pass@host:port, smtp+starttls://...,
    # smtps://..., "console" (written to the log: development and testing,
    # their default) or "off" (the email features answer 404). Production has
    # no default.
    MAIL_URL: str = ""
    # The sender of every message ("Name <address>" or an address).
    MAIL_FROM: str = ""
    # The origin of every link in a message (https://example.com); never the request's Host.
    PUBLIC_URL: str = ""
    # A sender retries a message that failed after MAIL_RETRY_DELAY seconds,
    # doubling up to MAIL_RETRY_DELAY_MAX; after MAIL_MAX_ATTEMPTS tries it
    # stops and the message stays "failed" (`quart ... mail status`, `mail retry`).
    MAIL_MAX_ATTEMPTS: int = 10
    MAIL_RETRY_DELAY: float = 10.0
    MAIL_RETRY_DELAY_MAX: float = 3600.0
    # Each worker's sender looks for due messages this often (it is also woken
    # at once by the requests of its own worker that queue one).
    MAIL_POLL_INTERVAL: float = 5.0
    # The longest one SMTP delivery may take (connect, TLS, send).
    MAIL_SEND_TIMEOUT: float = 30.0
    # Lifetimes of mailed links (seconds).
    RESET_TOKEN_TTL: int = 1800
    VERIFY_TOKEN_TTL: int = 86400
    # On: login_required routes answer like a missing login until the address is verified.
    REQUIRE_VERIFIED_EMAIL: bool = False
    # Password-reset requests per address, and per client IP (every request counts).
    FORGOT_PASSWORD_RATE_LIMIT: str = "5/hour"
    FORGOT_PASSWORD_IP_RATE_LIMIT: str = "20/hour"
    # Verification mails one user may ask for again.
    EMAIL_RESEND_RATE_LIMIT: str = "5/hour"
    # Mailed tokens that fail a check (unknown, used, expired), per client IP.
    TOKEN_RATE_LIMIT: str = "20/minute"
    # /forgot-password answers no sooner than this (seconds) after the request
    # came, known address or not: its time tells nothing.
    FORGOT_PASSWORD_MIN_TIME: float = 0.25
    # Optional breached-password check, k-anonymity range API
    # (https://api.pwnedpasswords.com/range/): only 5 hex digits of the SHA-1
    # leave the server. Fail-open after PWNED_PASSWORDS_TIMEOUT seconds.
    PWNED_PASSWORDS_URL: str = ""
    PWNED_PASSWORDS_TIMEOUT: float = 2.0

    # Second factor (quart_app/auth/mfa.py). The TOTP secrets are encrypted at
    # rest with a key derived from MFA_KEY, or from SECRET_KEY (and its
    # fallbacks) when MFA_KEY is empty; recovery codes are kept as digests
    # keyed the same way. MFA_KEY_FALLBACKS (comma-separated) are earlier keys
    # still read while the secrets are encrypted again under the new one (to
    # move from SECRET_KEY to an MFA_KEY of its own, give the secret key here).
    MFA_KEY: str = ""
    MFA_KEY_FALLBACKS: str = ""
    # How long a right password waits for its second factor (seconds).
    MFA_PENDING_TTL: int = 300
    # On: an account without a second factor must set one up before anything else.
    MFA_REQUIRED: bool = False
    # The name authenticator apps show beside the username.
    MFA_ISSUER: str = "Quart App"

    # Passkeys (WebAuthn, quart_app/auth/passkeys.py). The relying party: the
    # site's domain (empty: PUBLIC_URL's host, localhost in development), a
    # suffix of PUBLIC_URL's host; the expected origin is PUBLIC_URL's. Off
    # in production while neither names a real domain.
    WEBAUTHN_RP_ID: str = ""
    # How long a ceremony's challenge lives (seconds); each works once.
    WEBAUTHN_CHALLENGE_TTL: int = 300

    @property
    def is_production(self) -> bool:
        return self.ENV == "production"

    @cached_property
    def mail(self) -> MailURL:
        return parse_mail_url(self.MAIL_URL)

    @property
    def secret_key_fallbacks(self) -> list[str]:
        return [key.strip() for key in self.SECRET_KEY_FALLBACKS.split(",") if key.strip()]

    @property
    def webauthn_origin(self) -> str:
        """The origin a passkey ceremony must come from: PUBLIC_URL's scheme, host and port."""
        parts = urlsplit(self.PUBLIC_URL)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def webauthn_rp_id(self) -> str:
        return (self.WEBAUTHN_RP_ID.strip().lower() or urlsplit(self.PUBLIC_URL).hostname or "").rstrip(".")

    @property
    def webauthn_enabled(self) -> bool:
        """Passkeys on: always outside production; there, once the relying party is a real domain."""
        return not (self.is_production and self.webauthn_rp_id in ("", "localhost"))

    @property
    def mfa_key_fallbacks(self) -> list[str]:
        return [key.strip() for key in self.MFA_KEY_FALLBACKS.split(",") if key.strip()]

    @property
    def mfa_keys(self) -> list[str]:
        """The second factor's key material, current key first: MFA_KEY and its fallbacks, else the secret key's."""
        if self.MFA_KEY:
            return [self.MFA_KEY, *self.mfa_key_fallbacks]
        return [self.SECRET_KEY, *self.secret_key_fallbacks]

    @cached_property
    def trusted_origins(self) -> frozenset[str]:
        """TRUSTED_ORIGINS, each as ``origin_of`` gives it; a ConfigError for an entry that is not an origin."""
        origins = set()
        for entry in (entry.strip() for entry in self.TRUSTED_ORIGINS.split(",")):
            if not entry:
                continue
            origin = origin_of(entry)
            if origin is None:
                raise ConfigError(
                    f"{PREFIX}TRUSTED_ORIGINS: {entry!r} is not an origin; each must be scheme://host[:port] "
                    "(http or https, no path), e.g. https://app.example.com"
                )
            origins.add(origin)
        return frozenset(origins)


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
    if settings.ARGON2_MEMORY_COST < 8 * settings.ARGON2_PARALLELISM:
        raise ConfigError(f"{PREFIX}ARGON2_MEMORY_COST must be at least 8 KiB per lane")
    _ = settings.trusted_origins  # parsed now: a malformed entry stops the start
    if "HASH_WORKERS" not in values and settings.HASH_WORKERS > settings.HASH_QUEUE_LIMIT:
        # The default follows the cores; on a big machine it must not contradict the queue (below).
        settings = replace(settings, HASH_WORKERS=settings.HASH_QUEUE_LIMIT)
    settings = _mail_settings(settings)
    _check_mfa(settings)
    _check_webauthn(settings)
    _check_relations(settings)
    return settings


def _mail_settings(settings: Settings) -> Settings:
    """MAIL_URL, MAIL_FROM and PUBLIC_URL checked, with the development and testing defaults filled in."""
    if not settings.MAIL_URL.strip():
        if settings.is_production:
            raise ConfigError(
                f"{PREFIX}MAIL_URL is not set. Production needs the SMTP relay that sends password-reset and "
                f"verification mail, e.g.\n  export {PREFIX}MAIL_URL=smtp+starttls://user:password@smtp.example.com:587\n"
                "(smtp://, smtp+starttls:// or smtps://), or off to turn the email features off."
            )
        settings = replace(settings, MAIL_URL="console")
    mail = settings.mail  # parsed now: a malformed URL stops the start
    if mail.mode == "console" and settings.is_production:
        raise ConfigError(
            f"{PREFIX}MAIL_URL=console writes every message, live links included, to the log: "
            "production needs an SMTP relay (smtp://, smtp+starttls://, smtps://) or off"
        )
    if not settings.MAIL_FROM.strip():
        if settings.is_production and mail.sends:
            raise ConfigError(
                f"{PREFIX}MAIL_FROM is not set: the sender of every message, e.g. Example <no-reply@example.com>"
            )
        settings = replace(settings, MAIL_FROM="Quart App <no-reply@localhost>")
    if "@" not in parseaddr(settings.MAIL_FROM)[1] or any(ch in settings.MAIL_FROM for ch in "\r\n"):
        raise ConfigError(f"{PREFIX}MAIL_FROM must be an address or Name <address> (got {settings.MAIL_FROM!r})")
    if not settings.PUBLIC_URL.strip():
        if settings.is_production and mail.sends:
            raise ConfigError(
                f"{PREFIX}PUBLIC_URL is not set: the origin of the links in every message, e.g. https://example.com "
                "(links are never built from the request's Host header)"
            )
        settings = replace(
            settings, PUBLIC_URL="http://localhost" if settings.ENV == "testing" else "http://localhost:5000"
        )
    public = public_url_of(settings.PUBLIC_URL)
    if public is None:
        raise ConfigError(
            f"{PREFIX}PUBLIC_URL must be an http(s) URL like https://example.com (got {settings.PUBLIC_URL!r})"
        )
    settings = replace(settings, PUBLIC_URL=public)
    if settings.REQUIRE_VERIFIED_EMAIL and not mail.sends:
        raise ConfigError(
            f"{PREFIX}REQUIRE_VERIFIED_EMAIL is on while {PREFIX}MAIL_URL is off: no address could ever be verified"
        )
    for name in (
        "FORGOT_PASSWORD_RATE_LIMIT",
        "FORGOT_PASSWORD_IP_RATE_LIMIT",
        "EMAIL_RESEND_RATE_LIMIT",
        "TOKEN_RATE_LIMIT",
    ):
        parse_limit(getattr(settings, name), name)
    if settings.PWNED_PASSWORDS_URL and public_url_of(settings.PWNED_PASSWORDS_URL) is None:
        raise ConfigError(
            f"{PREFIX}PWNED_PASSWORDS_URL must be an http(s) URL like https://api.pwnedpasswords.com/range "
            f"(got {settings.PWNED_PASSWORDS_URL!r})"
        )
    if settings.MAIL_RETRY_DELAY > settings.MAIL_RETRY_DELAY_MAX:
        raise ConfigError(f"{PREFIX}MAIL_RETRY_DELAY must not exceed {PREFIX}MAIL_RETRY_DELAY_MAX")
    return settings


def _check_mfa(settings: Settings) -> None:
    """MFA_KEY, its fallbacks and MFA_ISSUER checked (a ConfigError naming the setting)."""
    if settings.is_production and settings.MFA_KEY and len(settings.MFA_KEY) < 32:
        raise ConfigError(f"{PREFIX}MFA_KEY is too short for production (need 32+ characters)")
    if settings.mfa_key_fallbacks and not settings.MFA_KEY:
        raise ConfigError(
            f"{PREFIX}MFA_KEY_FALLBACKS is set while {PREFIX}MFA_KEY is not: without an MFA_KEY the second "
            f"factor's key is the secret key, rotated through {PREFIX}SECRET_KEY_FALLBACKS"
        )
    if settings.is_production and any(len(key) < 32 for key in settings.mfa_key_fallbacks):
        raise ConfigError(f"{PREFIX}MFA_KEY_FALLBACKS holds a key too short for production")
    issuer = settings.MFA_ISSUER
    # The issuer is the label's prefix in the otpauth:// URI ("Issuer:username").
    if not issuer.strip() or ":" in issuer or len(issuer) > 64 or any(ord(ch) < 32 or ord(ch) == 127 for ch in issuer):
        raise ConfigError(
            f"{PREFIX}MFA_ISSUER must be a name of 1 to 64 characters without a colon or control characters "
            f"(got {issuer!r})"
        )


def _check_webauthn(settings: Settings) -> None:
    """WEBAUTHN_RP_ID: a domain that PUBLIC_URL's host is, or ends with (browsers refuse anything else)."""
    rp_id = settings.webauthn_rp_id
    host = (urlsplit(settings.PUBLIC_URL).hostname or "").lower()
    if settings.WEBAUTHN_RP_ID.strip():
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", rp_id):
            got = settings.WEBAUTHN_RP_ID
            raise ConfigError(f"{PREFIX}WEBAUTHN_RP_ID must be a domain like example.com (got {got!r})")
        if host != rp_id and not host.endswith("." + rp_id):
            raise ConfigError(
                f"{PREFIX}WEBAUTHN_RP_ID ({rp_id}) must be {PREFIX}PUBLIC_URL's host ({host}) or a domain it is under"
            )
    if settings.WEBAUTHN_CHALLENGE_TTL < 30 or settings.WEBAUTHN_CHALLENGE_TTL > 3600:
        raise ConfigError(f"{PREFIX}WEBAUTHN_CHALLENGE_TTL must be between 30 and 3600 seconds")


def _check_relations(settings: Settings) -> None:
    """Refuse settings that are each fine but cannot hold together (a ConfigError naming both).

    Combinations looked at and left alone, because they are not broken:
    FRESH_LOGIN_WINDOW longer than SESSION_ABSOLUTE_TIMEOUT (every session
    is simply fresh for its whole life); REMEMBER_COOKIE_DURATION shorter than
    the plain timeouts (a shorter remembered session that still survives a
    browser restart); DB_POOL_TIMEOUT against DB_COMMAND_TIMEOUT (one bounds
    the wait for a free pooled connection, the other one statement on a
    connection already held: either may be the longer, e.g. shedding load
    quickly while allowing slow statements); DB_CONNECT_TIMEOUT against
    DB_POOL_TIMEOUT (the pool's wait does not include opening a connection).
    """
    idle, touch = settings.SESSION_IDLE_TIMEOUT, settings.SESSION_TOUCH_INTERVAL
    # The idle expiry moves only when a touch is written: it is the last
    # touch + IDLE_TIMEOUT, and requests in between (at most TOUCH_INTERVAL of
    # them) leave it where it is. With TOUCH_INTERVAL >= IDLE_TIMEOUT a user
    # who keeps clicking is logged out IDLE_TIMEOUT after a touch, before the
    # next touch is due; just under it, a pause of a few seconds does the same.
    # The inactivity really tolerated lies between IDLE_TIMEOUT - TOUCH_INTERVAL
    # and IDLE_TIMEOUT, so at most half keeps it at least half the one set.
    if 2 * touch > idle:
        raise ConfigError(
            f"{PREFIX}SESSION_TOUCH_INTERVAL ({touch} s) must be at most half of {PREFIX}SESSION_IDLE_TIMEOUT "
            f"({idle} s): the idle expiry moves only when a touch is written, so users still active would be "
            "logged out"
        )
    if idle > settings.SESSION_ABSOLUTE_TIMEOUT:
        raise ConfigError(f"{PREFIX}SESSION_IDLE_TIMEOUT must not exceed {PREFIX}SESSION_ABSOLUTE_TIMEOUT")
    # /ws/session learns that its session ended only when it polls, and the
    # socket does not touch the session (quart_login's is_live): a poll
    # interval as long as the idle timeout reports an idled-out or revoked
    # session a whole session lifetime late, never "within a few seconds".
    if settings.WS_POLL_INTERVAL >= idle:
        raise ConfigError(
            f"{PREFIX}WS_POLL_INTERVAL ({settings.WS_POLL_INTERVAL} s) must be shorter than "
            f"{PREFIX}SESSION_IDLE_TIMEOUT ({idle} s): the socket would notice a session's end too late"
        )
    # Fewer hashes admitted than threads to run them: the threads past the
    # queue limit never run, and logins get 503 while cores sit idle.
    if settings.HASH_QUEUE_LIMIT < settings.HASH_WORKERS:
        raise ConfigError(
            f"{PREFIX}HASH_QUEUE_LIMIT ({settings.HASH_QUEUE_LIMIT}) must be at least {PREFIX}HASH_WORKERS "
            f"({settings.HASH_WORKERS}): hash threads beyond the queue limit could never run"
        )
    # Failures are forgotten LOGIN_BACKOFF_MAX after the last one, and no lock
    # lasts longer: a limit counted over a longer window never fills for a
    # client that paces itself just over LOGIN_BACKOFF_MAX apart ("5/day"
    # with 900 s would allow 96 a day). The IP limit counts only while the
    # account limit is on (the throttle is off otherwise).
    account = parse_limit(settings.LOGIN_RATE_LIMIT, "LOGIN_RATE_LIMIT")
    client = parse_limit(settings.LOGIN_IP_RATE_LIMIT, "LOGIN_IP_RATE_LIMIT") if account is not None else None
    for name, text, limit in (
        ("LOGIN_RATE_LIMIT", settings.LOGIN_RATE_LIMIT, account),
        ("LOGIN_IP_RATE_LIMIT", settings.LOGIN_IP_RATE_LIMIT, client),
    ):
        if limit is not None and settings.LOGIN_BACKOFF_MAX < limit.period:
            raise ConfigError(
                f"{PREFIX}LOGIN_BACKOFF_MAX ({settings.LOGIN_BACKOFF_MAX} s) must be at least the period of "
                f"{PREFIX}{name} ({text!r}: {limit.period} s): failures are forgotten after LOGIN_BACKOFF_MAX, "
                "so a longer window could never fill"
            )


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
