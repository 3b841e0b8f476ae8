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
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from quart import Quart, current_app
from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from quart_login import utcnow

from ..core.config import ConfigError, Settings
from ..db import get_db
from ..models import LoginThrottle

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


class Entry(NamedTuple):
    failures: int
    locked_until: datetime | None


class DatabaseStore:
    """Counters in the ``login_throttle`` table (the default): shared by whatever shares the database."""

    async def read(self, keys: list[str], now: datetime, forget: timedelta) -> dict[str, Entry]:
        result = await get_db().execute(
            select(LoginThrottle).where(LoginThrottle.key.in_(keys), LoginThrottle.last_failure_at > now - forget)
        )
        return {row.key: Entry(row.failures, row.locked_until) for row in result.scalars()}

    async def add_failure(self, key: str, now: datetime, forget: timedelta) -> int:
        db = get_db()
        insert = pg_insert if db.bind.dialect.name == "postgresql" else sqlite_insert
        # One atomic statement, so that two workers counting at once both count.
        statement = (
            insert(LoginThrottle)
            .values(key=key, failures=1, last_failure_at=now, locked_until=None)
            .on_conflict_do_update(
                index_elements=[LoginThrottle.key],
                set_={
                    "failures": case(
                        (LoginThrottle.last_failure_at <= now - forget, 1), else_=LoginThrottle.failures + 1
                    ),
                    "last_failure_at": now,
                },
            )
            .returning(LoginThrottle.failures)
        )
        return (await db.execute(statement)).scalar_one()

    async def lock(self, key: str, until: datetime) -> None:
        await get_db().execute(update(LoginThrottle).where(LoginThrottle.key == key).values(locked_until=until))

    async def clear(self, keys: list[str]) -> None:
        await get_db().execute(delete(LoginThrottle).where(LoginThrottle.key.in_(keys)))

    async def close(self) -> None:
        pass


class RedisStore:
    """Counters in Redis (``QUART_APP_REDIS_URL``): a hash per key that expires when failures stop."""

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis

        self._redis = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    @staticmethod
    def _name(key: str) -> str:
        return f"quart_app:throttle:{key}"

    async def read(self, keys: list[str], now: datetime, forget: timedelta) -> dict[str, Entry]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(self._name(key), "failures", "locked_until")
            replies = await pipe.execute()
        entries = {}
        for key, (failures, locked) in zip(keys, replies, strict=True):
            if failures is not None:
                until = datetime.fromtimestamp(float(locked), UTC).replace(tzinfo=None) if locked else None
                entries[key] = Entry(int(failures), until)
        return entries

    async def add_failure(self, key: str, now: datetime, forget: timedelta) -> int:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(self._name(key), "failures", 1)
            # Forgotten after ``forget`` without a failure, like the table's rows.
            pipe.expire(self._name(key), max(1, int(forget.total_seconds())))
            failures, _ = await pipe.execute()
        return int(failures)

    async def lock(self, key: str, until: datetime) -> None:
        await self._redis.hset(self._name(key), "locked_until", until.replace(tzinfo=UTC).timestamp())

    async def clear(self, keys: list[str]) -> None:
        await self._redis.delete(*(self._name(k) for k in keys))

    async def close(self) -> None:
        await self._redis.aclose()


EXTENSION = "quart_app.throttle"


def get_throttle() -> Throttle:
    """The running app's login throttle."""
    return current_app.extensions[EXTENSION]


class Throttle:
    def __init__(self, settings: Settings) -> None:
        account = parse_limit(settings.LOGIN_RATE_LIMIT, "LOGIN_RATE_LIMIT")
        client = parse_limit(settings.LOGIN_IP_RATE_LIMIT, "LOGIN_IP_RATE_LIMIT")
        self.enabled = account is not None
        self._limits = {"a": account, "p": account, "i": client}
        self._forget = timedelta(seconds=settings.LOGIN_BACKOFF_MAX)
        self._redis_url = settings.REDIS_URL
        self.store: DatabaseStore | RedisStore = DatabaseStore()

    def init_app(self, app: Quart) -> None:
        app.extensions[EXTENSION] = self
        if self.enabled and self._redis_url:

            @app.before_serving
            async def _connect() -> None:
                self.store = RedisStore(self._redis_url)

            @app.after_serving
            async def _close() -> None:
                await self.store.close()

    async def retry_after(self, keys: Keys) -> int | None:
        """Seconds this client must wait before trying this account, or None if it may try now."""
        now = utcnow()
        entries = await self.store.read([keys.account, keys.client, keys.pair], now, self._forget)

        def locked(key: str) -> int | None:
            entry = entries.get(key)
            if entry is None or entry.locked_until is None or entry.locked_until <= now:
                return None
            return max(1, math.ceil((entry.locked_until - now).total_seconds()))

        if (wait := locked(keys.client)) is not None:
            return wait
        # A locked account refuses only the clients that failed on it.
        if keys.pair in entries:
            return locked(keys.account) or locked(keys.pair)
        return None

    async def failed(self, keys: Keys) -> None:
        """Count a failure against the account, the client and the pair (the caller commits)."""
        now = utcnow()
        for key in (keys.account, keys.client, keys.pair):
            limit = self._limits[key[0]]
            if limit is None:
                continue
            failures = await self.store.add_failure(key, now, self._forget)
            if failures >= limit.attempts:
                seconds = min(limit.period * 2 ** min(failures - limit.attempts, 30), self._forget.total_seconds())
                await self.store.lock(key, now + timedelta(seconds=seconds))

    async def succeeded(self, keys: Keys) -> None:
        """A correct password clears the account's and the pair's counters, not the IP's (caller commits)."""
        await self.store.clear([keys.account, keys.pair])
