"""Brute-force throttling of logins: failures counted per account and per client, shared by all workers.

Counters live in the database (``login_throttle``), so they add up across
hypercorn workers and instances. After ``N`` failures (``LOGIN_RATE_LIMIT =
"N/period"``) each further failure locks for ``period * 2**k``, capped at
``LOGIN_BACKOFF_MAX``; counters are forgotten after ``LOGIN_BACKOFF_MAX``
without failures, and an account's counter is cleared by a correct login.

An attacker must not be able to lock an owner out: a locked account still
judges a login from a client that has not failed against it on its own
merits; only clients with failures on that account (or an IP over its own
limit) are turned away.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..core.config import ConfigError, Settings
from ..db import get_db
from ..models import LoginThrottle
from .sessions import utcnow

_PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_LIMIT_RE = re.compile(r"\s*(\d+)\s*/\s*(\d*)\s*(second|minute|hour|day)s?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Limit:
    attempts: int
    period: int  # seconds


def parse_limit(text: str, name: str) -> Limit | None:
    """``"5/minute"``, ``"10/5minutes"``, ``"30/hour"``; ``"off"`` or ``"0"`` disables (None)."""
    if text.strip().lower() in {"off", "0", "false", "no", "none"}:
        return None
    match = _LIMIT_RE.fullmatch(text)
    if not match or int(match.group(1)) == 0:
        raise ConfigError(f"QUART_APP_{name} must look like 5/minute, 20/hour or off (got {text!r})")
    count = int(match.group(2) or 1)
    return Limit(int(match.group(1)), count * _PERIODS[match.group(3).lower()])


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:40]


@dataclass(frozen=True)
class Keys:
    account: str
    client: str  # the IP, across all accounts
    pair: str  # this IP against this account


def keys_for(account: str, ip: str | None) -> Keys:
    """Fixed-size keys; the account part is hashed so that no typed username lands in the table."""
    ip = ip or "unknown"
    return Keys(f"a:{_digest(account)}", f"i:{_digest(ip)}", f"p:{_digest(account + chr(0) + ip)}")


class Throttle:
    def __init__(self, settings: Settings) -> None:
        account = parse_limit(settings.LOGIN_RATE_LIMIT, "LOGIN_RATE_LIMIT")
        client = parse_limit(settings.LOGIN_IP_RATE_LIMIT, "LOGIN_IP_RATE_LIMIT")
        self.enabled = account is not None
        self._limits = {"a": account, "p": account, "i": client}
        self._max = settings.LOGIN_BACKOFF_MAX

    async def retry_after(self, keys: Keys) -> int | None:
        """Seconds this client must wait before trying this account, or None if it may try now."""
        now = utcnow()
        forget = now - timedelta(seconds=self._max)
        db = get_db()
        rows = {
            row.key: row
            for row in (
                await db.execute(
                    select(LoginThrottle).where(
                        LoginThrottle.key.in_([keys.account, keys.client, keys.pair]),
                        LoginThrottle.last_failure_at > forget,
                    )
                )
            ).scalars()
        }

        def locked(key: str) -> int | None:
            row = rows.get(key)
            if row is None or row.locked_until is None or row.locked_until <= now:
                return None
            return max(1, math.ceil((row.locked_until - now).total_seconds()))

        if (wait := locked(keys.client)) is not None:
            return wait
        # A locked account refuses only the clients that failed on it.
        if keys.pair in rows and (wait := locked(keys.account) or locked(keys.pair)) is not None:
            return wait
        return None

    async def failed(self, keys: Keys) -> None:
        """Count a failure against the account, the client and the pair (the caller commits)."""
        db = get_db()
        now = utcnow()
        forget = now - timedelta(seconds=self._max)
        insert = pg_insert if db.bind.dialect.name == "postgresql" else sqlite_insert
        for key in (keys.account, keys.client, keys.pair):
            limit = self._limits[key[0]]
            if limit is None:
                continue
            statement = insert(LoginThrottle).values(key=key, failures=1, last_failure_at=now, locked_until=None)
            # One atomic statement per key, so that two workers counting at
            # once both count.
            statement = statement.on_conflict_do_update(
                index_elements=[LoginThrottle.key],
                set_={
                    "failures": case(
                        (LoginThrottle.last_failure_at <= forget, 1), else_=LoginThrottle.failures + 1
                    ),
                    "last_failure_at": now,
                },
            ).returning(LoginThrottle.failures)
            failures = (await db.execute(statement)).scalar_one()
            if failures >= limit.attempts:
                lock = min(limit.period * 2 ** min(failures - limit.attempts, 30), self._max)
                await db.execute(
                    update(LoginThrottle)
                    .where(LoginThrottle.key == key)
                    .values(locked_until=now + timedelta(seconds=lock))
                )

    async def succeeded(self, keys: Keys) -> None:
        """A correct password clears the account's and the pair's counters, not the IP's (caller commits)."""
        await get_db().execute(delete(LoginThrottle).where(LoginThrottle.key.in_([keys.account, keys.pair])))
