"""Brute-force throttling of every password check: attempts counted per account and per client, shared by all.

Counters live in the database (``login_throttle``) or in Redis, so they add
up across hypercorn workers and instances. After ``N`` failures
(``LOGIN_RATE_LIMIT = "N/period"``) each further failure locks for
``period * 2**k``, capped at ``LOGIN_BACKOFF_MAX``; counters are forgotten
after ``LOGIN_BACKOFF_MAX`` without failures, and an account's counter is
cleared by a correct password.

An attempt is reserved before the password is verified, in one atomic step
with the check of the locks (``Throttle.begin``): a burst of parallel guesses
is judged exactly as the same guesses sent one after another, whatever worker
or instance each reaches. A correct password then gives its reservation back.

An attacker must not be able to lock an owner out: a locked account still
judges a login from a client that has not failed against it on its own
merits; only clients with failures on that account (or an IP over its own
limit) are turned away. An address shared by many people (an office, a NAT)
can be slowed by one attacker behind it, but its lock is short: the per-IP
back-off is capped at ``LOGIN_IP_BACKOFF_MAX`` (60 s by default), while the
account's and the account-from-this-address counters keep the long back-off.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, TypeVar

from quart import Quart, current_app
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from quart_login import utcnow

from ..core.config import Limit, Settings, parse_limit
from ..db import get_database
from ..models import LoginThrottle

# How long a reserved attempt may stay undecided before it is forgotten (a
# worker that died while verifying), how long an attempt waits for pending
# ones to be decided, and how often it looks.
PENDING_TTL = timedelta(seconds=30)
PENDING_WAIT = 5.0
PENDING_POLL = 0.02


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:40]


@dataclass(frozen=True)
class Keys:
    account: str
    client: str  # the IP, across all accounts
    pair: str  # this IP against this account

    def all(self) -> list[str]:
        return sorted((self.account, self.client, self.pair))  # one lock order everywhere


def keys_for(account: str, ip: str | None) -> Keys:
    """Fixed-size keys; the account part is hashed so that no typed username lands in the table."""
    ip = ip or "unknown"
    return Keys(f"a:{_digest(account)}", f"i:{_digest(ip)}", f"p:{_digest(account + chr(0) + ip)}")


class Entry(NamedTuple):
    failures: int
    locked_until: datetime | None
    # Attempts reserved and not yet decided (their passwords are being verified).
    pending: int = 0
    pending_at: datetime | None = None


EMPTY = Entry(0, None)
# What a transaction writes: the new entry of each key (None: write nothing).
Writes = dict[str, Entry]
T = TypeVar("T")
# Given the current entries of the keys: what to write, and what to answer.
Decide = Callable[[dict[str, Entry]], tuple[Writes | None, T]]


class Throttled(Exception):
    """This client must wait ``retry_after`` seconds before trying this account again."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after}s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Attempt:
    """A reserved attempt: ``Throttle.failed`` or ``Throttle.succeeded`` settles it."""

    keys: Keys


class DatabaseStore:
    """Counters in the ``login_throttle`` table (the default): shared by whatever shares the database."""

    async def transact(self, keys: list[str], now: datetime, forget: timedelta, decide: Decide[T]) -> T:
        """Read the keys' entries, let ``decide`` say what to write, and write it, as one transaction.

        The rows are created if missing and locked (PostgreSQL: FOR UPDATE,
        in key order; SQLite: the insert takes the file's write lock), so no
        other attempt on these keys is decided in between.
        """
        # A transaction of its own, never the request's.
        async with get_database().get_sessionmaker()() as db:
            return await self._transact(db, keys, now, forget, decide)

    @staticmethod
    async def _transact(db: AsyncSession, keys: list[str], now: datetime, forget: timedelta, decide: Decide[T]) -> T:
        insert = pg_insert if db.bind.dialect.name == "postgresql" else sqlite_insert
        table = LoginThrottle
        try:
            await db.execute(
                insert(table)
                .values([{"key": key, "failures": 0, "last_failure_at": now, "pending": 0} for key in keys])
                .on_conflict_do_nothing(index_elements=[table.key])
            )
            query = select(table.key, table.failures, table.last_failure_at, table.locked_until, table.pending)
            query = query.add_columns(table.pending_at).where(table.key.in_(keys)).order_by(table.key)
            if db.bind.dialect.name == "postgresql":
                query = query.with_for_update()
            entries = {}
            for key, failures, last, locked, pending, pending_at in (await db.execute(query)).all():
                if last <= now - forget:  # failures forgotten
                    failures, locked = 0, None
                entries[key] = Entry(failures, locked, pending, pending_at)
            writes, answer = decide(entries)
            if not writes:
                await db.rollback()
                return answer
            for key, entry in writes.items():
                values = {"failures": entry.failures, "locked_until": entry.locked_until}
                values.update(pending=entry.pending, pending_at=entry.pending_at)
                if entry.failures != entries[key].failures:
                    values["last_failure_at"] = now
                await db.execute(update(table).where(table.key == key).values(**values))
            await db.commit()
            return answer
        except BaseException:
            await db.rollback()
            raise

    async def close(self) -> None:
        pass


class RedisStore:
    """Counters in Redis (``QUART_APP_REDIS_URL``): a hash per key that expires when failures stop.

    A transaction is optimistic (WATCH, read, MULTI, write, EXEC), retried
    when another attempt changed a key in between.
    """

    RETRIES = 200
    FIELDS = ("failures", "locked_until", "pending", "pending_at")

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis

        self._redis = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    @staticmethod
    def _name(key: str) -> str:
        return f"quart_app:throttle:{key}"

    @staticmethod
    def _time(value: bytes | None) -> datetime | None:
        return datetime.fromtimestamp(float(value), UTC).replace(tzinfo=None) if value else None

    async def transact(self, keys: list[str], now: datetime, forget: timedelta, decide: Decide[T]) -> T:
        from redis.exceptions import WatchError

        names = [self._name(key) for key in keys]
        ttl = max(1, int(forget.total_seconds()))
        async with self._redis.pipeline(transaction=True) as pipe:
            for _ in range(self.RETRIES):
                try:
                    await pipe.watch(*names)
                    entries = {}
                    for key, name in zip(keys, names, strict=True):
                        failures, locked, pending, pending_at = await pipe.hmget(name, *self.FIELDS)
                        entries[key] = Entry(
                            int(failures or 0), self._time(locked), int(pending or 0), self._time(pending_at)
                        )
                    writes, answer = decide(entries)
                    if not writes:
                        await pipe.reset()
                        return answer
                    pipe.multi()
                    for key, entry in writes.items():
                        name = self._name(key)
                        pipe.hset(name, mapping={"failures": entry.failures, "pending": entry.pending})
                        for field, moment in (("locked_until", entry.locked_until), ("pending_at", entry.pending_at)):
                            if moment is None:
                                pipe.hdel(name, field)
                            else:
                                pipe.hset(name, field, moment.replace(tzinfo=UTC).timestamp())
                        if entry.failures != entries[key].failures or entries[key] == EMPTY:
                            # Forgotten after ``forget`` without a failure, like the table's rows.
                            pipe.expire(name, ttl)
                    await pipe.execute()
                    return answer
                except WatchError:
                    continue
        raise RuntimeError("throttle: too many concurrent attempts on one key")

    async def close(self) -> None:
        await self._redis.aclose()


EXTENSION = "quart_app.throttle"


def get_throttle() -> Throttle:
    """The running app's throttle."""
    return current_app.extensions[EXTENSION]


class Throttle:
    def __init__(self, settings: Settings) -> None:
        account = parse_limit(settings.LOGIN_RATE_LIMIT, "LOGIN_RATE_LIMIT")
        client = parse_limit(settings.LOGIN_IP_RATE_LIMIT, "LOGIN_IP_RATE_LIMIT")
        self.enabled = account is not None
        self._limits = {"a": account, "p": account, "i": client}
        self._forget = timedelta(seconds=settings.LOGIN_BACKOFF_MAX)
        self._caps = {
            "a": settings.LOGIN_BACKOFF_MAX,
            "p": settings.LOGIN_BACKOFF_MAX,
            "i": min(settings.LOGIN_IP_BACKOFF_MAX, settings.LOGIN_BACKOFF_MAX),
        }
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

    def _lock_for(self, key: str, failures: int, now: datetime) -> datetime | None:
        limit = self._limits[key[0]]
        if limit is None or failures < limit.attempts:
            return None
        seconds = min(limit.period * 2 ** min(failures - limit.attempts, 30), self._caps[key[0]])
        return now + timedelta(seconds=seconds)

    def _keys(self, keys: Keys) -> list[str]:
        return [key for key in keys.all() if self._limits[key[0]] is not None]

    @staticmethod
    def _pending(entry: Entry, now: datetime) -> int:
        # A reservation left by a worker that died is forgotten after PENDING_TTL.
        if entry.pending_at is None or entry.pending_at <= now - PENDING_TTL:
            return 0
        return entry.pending

    async def begin(self, keys: Keys) -> Attempt:
        """Reserve an attempt on this account from this client, or raise ``Throttled`` (nothing counted).

        An attempt whose fate hangs on attempts still being verified (they
        would reach a limit if they failed) waits for them, up to
        PENDING_WAIT: a burst is judged as if its requests came one by one.
        """
        deadline = time.monotonic() + PENDING_WAIT

        def wait_of(entry: Entry, now: datetime) -> int | None:
            if entry.locked_until is None or entry.locked_until <= now:
                return None
            return max(1, math.ceil((entry.locked_until - now).total_seconds()))

        while True:
            now = utcnow()

            def decide(entries: dict[str, Entry], now: datetime = now) -> tuple[Writes | None, int | None | bool]:
                account, client, pair = (entries.get(k, EMPTY) for k in (keys.account, keys.client, keys.pair))
                if (seconds := wait_of(client, now)) is not None:
                    return None, seconds
                # A locked account refuses only the clients that failed on it.
                if pair.failures > 0 and (seconds := wait_of(account, now) or wait_of(pair, now)) is not None:
                    return None, seconds
                judged = [keys.client, keys.pair]
                if pair.failures + self._pending(pair, now) > 0:
                    judged.append(keys.account)
                for key in judged:
                    limit, entry = self._limits[key[0]], entries.get(key, EMPTY)
                    pending = self._pending(entry, now)
                    if limit is not None and pending and entry.failures + pending >= limit.attempts:
                        return None, False  # wait: the pending attempts decide
                writes = {
                    key: entry._replace(pending=self._pending(entry, now) + 1, pending_at=now)
                    for key, entry in entries.items()
                }
                return writes, None

            answer = await self.store.transact(self._keys(keys), now, self._forget, decide)
            if answer is None:
                return Attempt(keys)
            if answer is not False:
                raise Throttled(answer)
            if time.monotonic() >= deadline:
                raise Throttled(1)
            await asyncio.sleep(PENDING_POLL)

    async def failed(self, attempt: Attempt) -> bool:
        """Settle a reserved attempt as a failure; True when it locked the account (or this client on it)."""
        now = utcnow()
        keys = attempt.keys

        def decide(entries: dict[str, Entry]) -> tuple[Writes, bool]:
            writes = {}
            for key, entry in entries.items():
                failures = entry.failures + 1
                lock = self._lock_for(key, failures, now) or entry.locked_until
                writes[key] = Entry(failures, lock, max(self._pending(entry, now) - 1, 0), entry.pending_at)
            locked = any(
                (entry := writes.get(k)) is not None and entry.locked_until is not None and entry.locked_until > now
                for k in (keys.account, keys.pair)
            )
            return writes, locked

        return await self.store.transact(self._keys(keys), now, self._forget, decide)

    async def cancelled(self, attempt: Attempt) -> None:
        """Settle it as neither (the check could not run: an overloaded hash pool, a database error)."""
        now = utcnow()

        def decide(entries: dict[str, Entry]) -> tuple[Writes, None]:
            return {k: e._replace(pending=max(self._pending(e, now) - 1, 0)) for k, e in entries.items()}, None

        await self.store.transact(self._keys(attempt.keys), now, self._forget, decide)

    async def succeeded(self, attempt: Attempt) -> None:
        """Settle it as a success: the account's and the pair's failures clear; the IP's stay."""
        now = utcnow()
        keys = attempt.keys

        def decide(entries: dict[str, Entry]) -> tuple[Writes, None]:
            writes = {}
            for key, entry in entries.items():
                pending = max(self._pending(entry, now) - 1, 0)
                if key == keys.client:
                    writes[key] = entry._replace(pending=pending)
                else:
                    writes[key] = Entry(0, None, pending, entry.pending_at)
            return writes, None

        await self.store.transact(self._keys(keys), now, self._forget, decide)


class RateLimited(Throttled):
    """A rate limit (``Throttle.hit``) refused this request."""


def limit_key(kind: str, value: str) -> str:
    """A fixed-size key for a rate limit on ``value`` (an address, an IP, a user id), hashed like the login's."""
    return f"{kind[:8]}:{_digest(value)}"


async def _hit(throttle: Throttle, key: str, limit: Limit, *, count: bool) -> None:
    now = utcnow()

    def decide(entries: dict[str, Entry]) -> tuple[Writes | None, int | None]:
        entry = entries.get(key, EMPTY)
        if entry.locked_until is not None and entry.locked_until > now:
            return None, max(1, math.ceil((entry.locked_until - now).total_seconds()))
        if not count:
            return None, None
        failures = entry.failures + 1
        lock = now + timedelta(seconds=limit.period) if failures >= limit.attempts else None
        return {key: Entry(failures, lock, entry.pending, entry.pending_at)}, None

    wait = await throttle.store.transact([key], now, timedelta(seconds=limit.period), decide)
    if wait is not None:
        raise RateLimited(wait)


async def hit(key: str, limit: Limit | None) -> None:
    """Count one request on ``key`` under ``limit`` (every one counts); ``RateLimited`` while over it.

    ``limit.attempts`` requests pass, the last of them starts a lock of
    ``limit.period``; the count is forgotten ``limit.period`` after the last
    request. Nothing is counted while locked. ``None``: no limit.
    """
    if limit is not None:
        await _hit(get_throttle(), key, limit, count=True)


async def check(key: str, limit: Limit | None) -> None:
    """``RateLimited`` if ``key`` is locked under ``limit``, counting nothing (then ``hit`` on a failure)."""
    if limit is not None:
        await _hit(get_throttle(), key, limit, count=False)
