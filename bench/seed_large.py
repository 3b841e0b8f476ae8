"""Fill a migrated, empty database of the port with many users and live sessions, directly (not through the API).

    PYTHONPATH=PROJECT .venv/bin/python bench/seed_large.py URL --users N --sessions N [--seed S]

Started by ``bench/scale.py`` (which migrates the database first); prints one
``SEED_JSON {...}`` line: rows written, seconds taken. URL is the app's
(``sqlite+aiosqlite:///PATH`` or ``postgresql+asyncpg://...``).

The rows are what the app itself would write (``quart_app/models.py``,
quart_login's ``AuthSessionMixin``):

* users ``member0000001`` ... with unique emails ``member0000001@example.net``
  (their ``email_key`` from the app's own ``email_key``), one real argon2id
  hash made once by the app's hasher (``create_app``, as ``bench/hash_ceiling.py``
  builds it) and shared by all, ``created_at`` over the last three years,
  most active, about half verified;
* sessions spread at random over those users (some have several, some none),
  ``token_hash`` the SHA-256 hex of a random ``new_token()`` (quart_login's),
  all live: plain logins (70 %) seen in the last hour (``expires_at`` the
  lesser of login + 24 h and last seen + 2 h, the app's default lifetimes),
  remembered ones (30 %) made in the last 300 days (login + 365 days); a few
  with a second factor (``amr`` ``pwd,otp``, ``aal`` 2); IPv4/IPv6 addresses,
  browser user agents.

SQLite: one connection, ``executemany`` in transactions of 100,000 rows, with
``journal_mode=OFF``, ``synchronous=OFF`` and a large page cache during the
seeding only; then ``journal_mode=WAL`` (the app's) and ``ANALYZE``.
PostgreSQL: asyncpg ``copy_records_to_table`` (binary COPY) into the tables as
migrated (every index in place), the id sequences moved past the ids written,
then ``VACUUM (ANALYZE)`` and a ``CHECKPOINT`` (so that neither autovacuum nor
the checkpointer catches up with the million new rows during the measurements).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hashlib
import json
import random
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timedelta

from quart_app.auth.validation import email_key
from quart_login import utcnow
from quart_login.store import new_token

CHUNK = 100_000
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 "
    "Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
    "Mobile Safari/537.36",
    "python-requests/2.32.3",
)
USER_COLUMNS = ("id", "username", "email", "password_hash", "is_active", "created_at", "email_key", "email_verified")
SESSION_COLUMNS = (
    "id",
    "token_hash",
    "remember",
    "created_at",
    "last_seen_at",
    "expires_at",
    "auth_time",
    "ip",
    "user_agent",
    "amr",
    "aal",
    "user_id",
)


def app_hash() -> str:
    """One argon2id hash of a random password, made by the app's own hasher (reused for every seeded user)."""
    from quart_app import create_app

    tmp = tempfile.mkdtemp(prefix="seed-hash-")
    app = create_app({"ENV": "testing", "DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/unused.sqlite3"})
    hasher = app.extensions["quart_app.hasher"]
    return hasher._hash_sync(new_token())


def user_rows(n: int, first_id: int, password_hash: str, now: datetime, rng: random.Random):
    """Chunks of user rows (tuples in USER_COLUMNS order), ids first_id ... first_id + n - 1."""
    three_years = 3 * 365 * 86400
    # Plain ASCII addresses: their key is the address lowered (checked once, not per row).
    sample = "Member0000001@Example.NET"
    if email_key(sample) != sample.lower():
        raise SystemExit(f"email_key({sample!r}) is {email_key(sample)!r}: seed_large.py assumes lower()")
    for start in range(0, n, CHUNK):
        rows = []
        for k in range(start, min(n, start + CHUNK)):
            uid = first_id + k
            name = f"member{uid:07d}"
            email = f"{name}@example.net"
            created = now - timedelta(seconds=rng.randrange(60, three_years), microseconds=rng.randrange(1_000_000))
            rows.append((uid, name, email, password_hash, rng.random() < 0.98, created, email, rng.random() < 0.5))
        yield rows


def session_rows(n: int, first_id: int, user_ids: tuple[int, int], now: datetime, rng: random.Random):
    """Chunks of live session rows (tuples in SESSION_COLUMNS order), over users user_ids[0] ... user_ids[1]."""
    lo, hi = user_ids
    idle, absolute, remember_for = timedelta(hours=2), timedelta(hours=24), timedelta(days=365)
    for start in range(0, n, CHUNK):
        rows = []
        for k in range(start, min(n, start + CHUNK)):
            token_hash = hashlib.sha256(new_token().encode()).hexdigest()
            remember = rng.random() < 0.3
            if remember:
                created = now - timedelta(seconds=rng.randrange(60, 300 * 86400))
                last_seen = created + (now - created) * rng.random()
                expires = created + remember_for
            else:
                # Seen in the last hour, logged in up to 20 hours before: alive for 1 h or more.
                last_seen = now - timedelta(seconds=rng.randrange(0, 3600))
                created = last_seen - timedelta(seconds=rng.randrange(0, 20 * 3600))
                expires = min(created + absolute, last_seen + idle)
            if rng.random() < 0.8:
                ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            else:
                ip = f"2001:db8:{rng.randrange(65536):x}:{rng.randrange(65536):x}::{rng.randrange(1, 65536):x}"
            second = rng.random() < 0.05
            rows.append(
                (
                    first_id + k,
                    token_hash,
                    remember,
                    created,
                    last_seen,
                    expires,
                    created,  # auth_time: a fresh login
                    ip,
                    rng.choice(USER_AGENTS),
                    "pwd,otp" if second else "pwd",
                    2 if second else 1,
                    rng.randint(lo, hi),
                )
            )
        yield rows


def prefetch(chunks):
    """``chunks``, each next one made on a thread while the caller writes the current one.

    The rows are made in Python; the database's side of a write (sqlite3 releases the GIL while
    SQLite works, PostgreSQL is another process) then overlaps with making the next chunk.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(next, chunks, None)
        while (chunk := future.result()) is not None:
            future = pool.submit(next, chunks, None)
            yield chunk


# -- SQLite --------------------------------------------------------------------------


def _sqlite_time(value: datetime) -> str:
    # As SQLAlchemy's SQLite DateTime stores it (and the app's lookups compare it).
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def seed_sqlite(path: str, users: int, sessions: int, rng: random.Random) -> dict:
    password_hash = app_hash()
    now = utcnow()
    conn = sqlite3.connect(path, isolation_level=None)
    timings = {}
    try:
        first_user = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM users").fetchone()[0]
        first_session = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM auth_sessions").fetchone()[0]
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1048576")  # 1 GiB, this connection only
        conn.execute("PRAGMA temp_store=MEMORY")
        t0 = time.monotonic()
        sql = f"INSERT INTO users ({', '.join(USER_COLUMNS)}) VALUES ({', '.join('?' * len(USER_COLUMNS))})"
        chunks = (
            [(*r[:5], _sqlite_time(r[5]), *r[6:]) for r in rows]
            for rows in user_rows(users, first_user, password_hash, now, rng)
        )
        for rows in prefetch(chunks):
            conn.execute("BEGIN")
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
        timings["users_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        sql = (
            f"INSERT INTO auth_sessions ({', '.join(SESSION_COLUMNS)}) VALUES ({', '.join('?' * len(SESSION_COLUMNS))})"
        )
        chunks = (
            [(r[0], r[1], r[2], *(_sqlite_time(v) for v in r[3:7]), *r[7:]) for r in rows]
            for rows in session_rows(sessions, first_session, (first_user, first_user + users - 1), now, rng)
        )
        for rows in prefetch(chunks):
            conn.execute("BEGIN")
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
        timings["sessions_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        timings["analyze_s"] = time.monotonic() - t0
    finally:
        conn.close()
    return timings


# -- PostgreSQL ----------------------------------------------------------------------


async def seed_postgresql(dsn: str, users: int, sessions: int, rng: random.Random) -> dict:
    import asyncpg

    password_hash = app_hash()
    now = utcnow()
    conn = await asyncpg.connect(dsn)
    timings = {}
    try:
        first_user = await conn.fetchval("SELECT coalesce(max(id), 0) + 1 FROM users")
        first_session = await conn.fetchval("SELECT coalesce(max(id), 0) + 1 FROM auth_sessions")
        t0 = time.monotonic()
        for rows in prefetch(user_rows(users, first_user, password_hash, now, rng)):
            await conn.copy_records_to_table("users", records=rows, columns=USER_COLUMNS)
        await conn.execute("SELECT setval(pg_get_serial_sequence('users', 'id'), (SELECT max(id) FROM users))")
        timings["users_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        for rows in prefetch(session_rows(sessions, first_session, (first_user, first_user + users - 1), now, rng)):
            await conn.copy_records_to_table("auth_sessions", records=rows, columns=SESSION_COLUMNS)
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence('auth_sessions', 'id'), (SELECT max(id) FROM auth_sessions))"
        )
        timings["sessions_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        # VACUUM as well: the copied rows' visibility map and hint bits set now, and no autovacuum
        # of a million fresh rows starting mid-measurement; a checkpoint so that its writes do not either.
        await conn.execute("VACUUM (ANALYZE)")
        try:
            await conn.execute("CHECKPOINT")
        except asyncpg.PostgresError:  # not a superuser on BENCH_PG_URL's server: its own checkpoints then
            pass
        timings["analyze_s"] = time.monotonic() - t0
    finally:
        await conn.close()
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--seed", type=int, default=16)
    opts = parser.parse_args()
    rng = random.Random(opts.seed)
    t0 = time.monotonic()
    if opts.url.startswith("sqlite"):
        path = opts.url.split(":///", 1)[1]
        timings = seed_sqlite(path, opts.users, opts.sessions, rng)
    elif opts.url.startswith("postgresql"):
        dsn = opts.url.replace("postgresql+asyncpg://", "postgresql://", 1)
        timings = asyncio.run(seed_postgresql(dsn, opts.users, opts.sessions, rng))
    else:
        raise SystemExit(f"unknown database URL {opts.url!r}")
    result = {"users": opts.users, "sessions": opts.sessions, **timings, "total_s": time.monotonic() - t0}
    print("SEED_JSON " + json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
