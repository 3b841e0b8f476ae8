"""Every setting of ``quart_login``, with its default: ``app.config["QUART_LOGIN_<NAME>"]`` overrides it.

=========================  ===========================  ==================================================
key (``QUART_LOGIN_`` +)   default                      meaning
=========================  ===========================  ==================================================
``COOKIE_NAME``            ``"quart_login"``            the auth cookie (it carries a signed random secret)
``COOKIE_DOMAIN``          ``None``                     its Domain attribute (host-only when None)
``COOKIE_PATH``            ``"/"``                      its Path attribute
``COOKIE_SECURE``          ``False``                    Secure attribute: turn on behind TLS
``COOKIE_HTTPONLY``        ``True``                     HttpOnly attribute
``COOKIE_SAMESITE``        ``"Lax"``                    ``"Lax"`` or ``"Strict"``
``SALT``                   ``"quart_login.auth"``       itsdangerous salt of the cookie's signature
``REMEMBER_DURATION``      ``365 days`` (seconds)       lifetime of a ``remember=True`` session and cookie
``SESSION_IDLE_TIMEOUT``   ``2 hours``                  a plain login dies after this much inactivity...
``SESSION_ABSOLUTE_TIMEOUT`` ``24 hours``               ...and in any case this long after it began
``SESSION_TOUCH_INTERVAL`` ``60``                       last-seen time written at most this often
``FRESH_LOGIN_WINDOW``     ``15 minutes``               ``fresh_login_required``: how recent a login is fresh
``LOGIN_VIEW``             ``None``                     endpoint (or path) of the login page; None: 401
``LOGIN_MESSAGE``          Flask-Login's                flashed when redirecting to LOGIN_VIEW (None: none)
``LOGIN_MESSAGE_CATEGORY`` ``"message"``                its flash category
``REFRESH_VIEW``           ``None``                     endpoint of the re-authentication page; None: 401
``NEEDS_REFRESH_MESSAGE``  Flask-Login's                flashed when redirecting to REFRESH_VIEW
``NEEDS_REFRESH_MESSAGE_CATEGORY`` ``"message"``        its flash category
``STEP_UP_VIEW``           ``None``                     endpoint of the page asking for another factor; None: 401
``STEP_UP_MESSAGE``        ``"Please confirm ..."``     flashed when redirecting to STEP_UP_VIEW
``STEP_UP_MESSAGE_CATEGORY`` ``"message"``              its flash category
``EXEMPT_METHODS``         ``{"OPTIONS"}``              methods ``login_required`` lets through
``LOGIN_DISABLED``         ``False``                    ``login_required`` does nothing (tests only)
=========================  ===========================  ==================================================

Attributes set on the ``LoginManager`` in code (``login_manager.login_view = "auth.login"``, as in
Flask-Login) take precedence over the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

PREFIX = "QUART_LOGIN_"

DEFAULTS: dict[str, Any] = {
    "COOKIE_NAME": "quart_login",
    "COOKIE_DOMAIN": None,
    "COOKIE_PATH": "/",
    "COOKIE_SECURE": False,
    "COOKIE_HTTPONLY": True,
    "COOKIE_SAMESITE": "Lax",
    "SALT": "quart_login.auth",
    "REMEMBER_DURATION": 365 * 24 * 3600,
    "SESSION_IDLE_TIMEOUT": 2 * 3600,
    "SESSION_ABSOLUTE_TIMEOUT": 24 * 3600,
    "SESSION_TOUCH_INTERVAL": 60,
    "FRESH_LOGIN_WINDOW": 15 * 60,
    "LOGIN_VIEW": None,
    "LOGIN_MESSAGE": "Please log in to access this page.",
    "LOGIN_MESSAGE_CATEGORY": "message",
    "REFRESH_VIEW": None,
    "NEEDS_REFRESH_MESSAGE": "Please reauthenticate to access this page.",
    "NEEDS_REFRESH_MESSAGE_CATEGORY": "message",
    "STEP_UP_VIEW": None,
    "STEP_UP_MESSAGE": "Please confirm your identity to access this page.",
    "STEP_UP_MESSAGE_CATEGORY": "message",
    "EXEMPT_METHODS": frozenset({"OPTIONS"}),
    "LOGIN_DISABLED": False,
}

# Settings a LoginManager attribute of the same (lower-case) name overrides, as in Flask-Login.
MANAGER_ATTRIBUTES = (
    "LOGIN_VIEW",
    "LOGIN_MESSAGE",
    "LOGIN_MESSAGE_CATEGORY",
    "REFRESH_VIEW",
    "NEEDS_REFRESH_MESSAGE",
    "NEEDS_REFRESH_MESSAGE_CATEGORY",
    "STEP_UP_VIEW",
    "STEP_UP_MESSAGE",
    "STEP_UP_MESSAGE_CATEGORY",
)


def _seconds(value: Any) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


@dataclass(frozen=True)
class Lifetimes:
    """How long a session lives; given to the store, which applies it in SQL."""

    idle: float
    absolute: float
    remember: float
    touch_interval: float

    def __post_init__(self) -> None:
        keys = {
            "idle": "SESSION_IDLE_TIMEOUT",
            "absolute": "SESSION_ABSOLUTE_TIMEOUT",
            "remember": "REMEMBER_DURATION",
            "touch_interval": "SESSION_TOUCH_INTERVAL",
        }
        for name, key in keys.items():
            if getattr(self, name) <= 0:
                raise ValueError(f"{PREFIX}{key} must be positive")
        if self.idle > self.absolute:
            raise ValueError(f"{PREFIX}SESSION_IDLE_TIMEOUT must not exceed {PREFIX}SESSION_ABSOLUTE_TIMEOUT")

    def expiry(self, *, remember: bool, created_at: datetime, now: datetime, duration: float | None = None) -> datetime:
        """When a session stops opening: a remembered one at a fixed time, a plain one on idleness too."""
        if remember:
            return created_at + timedelta(seconds=duration if duration is not None else self.remember)
        return min(created_at + timedelta(seconds=self.absolute), now + timedelta(seconds=self.idle))

    def needs_touch(self, last_seen_at: datetime, now: datetime) -> bool:
        return (now - last_seen_at).total_seconds() >= self.touch_interval


def read_config(config: Any) -> dict[str, Any]:
    """Every setting, from ``config`` (an app's ``app.config``) or its default."""
    values = {name: config.get(PREFIX + name, default) for name, default in DEFAULTS.items()}
    values["EXEMPT_METHODS"] = frozenset(method.upper() for method in values["EXEMPT_METHODS"])
    if values["COOKIE_SAMESITE"] not in ("Lax", "Strict"):
        raise ValueError(f"{PREFIX}COOKIE_SAMESITE must be 'Lax' or 'Strict'")
    return values


def lifetimes(values: dict[str, Any]) -> Lifetimes:
    return Lifetimes(
        idle=_seconds(values["SESSION_IDLE_TIMEOUT"]),
        absolute=_seconds(values["SESSION_ABSOLUTE_TIMEOUT"]),
        remember=_seconds(values["REMEMBER_DURATION"]),
        touch_interval=_seconds(values["SESSION_TOUCH_INTERVAL"]),
    )
