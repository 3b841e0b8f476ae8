"""Print the database's plan for the app's hot queries, on SQLite or PostgreSQL.

    .venv/bin/python scripts/query_plans.py [DATABASE_URL] [--json]

DATABASE_URL (default: a temporary SQLite file) must be an empty database the
script may fill: it is migrated to head (Alembic), given USERS users with a
session each and as many throttle rows, ANALYZEd, and then asked to EXPLAIN
the statements the app runs, built by the app's own code. The output is what
docs/query-plans.md shows; tests/test_query_plans.py checks that every plan
is index lookups only, on the backend the suite runs on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, insert, select
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quart_app.auth.mfa import has_factor_statement  # noqa: E402
from quart_app.auth.service import _BY_USERNAME_OR_EMAIL, _FOR_LOGIN  # noqa: E402
from quart_app.auth.validation import email_key  # noqa: E402
from quart_app.models import AuthSession, LoginThrottle, User, UserFactor  # noqa: E402
from quart_login import token_digest, utcnow  # noqa: E402
from quart_login.sqlalchemy_store import SQLAlchemyAuthSessionStore  # noqa: E402

# The statement the app's store runs on every protected request.
_RESOLVE = SQLAlchemyAuthSessionStore(AuthSession, User, sessionmaker=lambda: None).resolve_statement

USERS = 5000
# One user in FACTOR_EVERY has an authenticator app.
FACTOR_EVERY = 10


def statements(now):
    """(name, statement, parameters): what the app asks on each path."""
    forget = timedelta(minutes=15)
    ident = {"ident": "USER1234@EXAMPLE.COM", "email_key": email_key("USER1234@EXAMPLE.COM")}
    return [
        ("session lookup (every protected request)", _RESOLVE, {"digest": token_digest("token-1234"), "now": now}),
        (
            "login lookup (username or email, any case)",
            _BY_USERNAME_OR_EMAIL,
            ident,
        ),
        ("password login, with whether a second factor follows (every login)", _FOR_LOGIN, ident),
        ("second factor of one user (sensitive actions, MFA_REQUIRED)", has_factor_statement(1234), {}),
        (
            "throttle counters (every login)",
            select(LoginThrottle).where(
                LoginThrottle.key.in_(["account:1234", "ip:10.0.4.210", "pair:1234:10.0.4.210"]),
                LoginThrottle.last_failure_at > now - forget,
            ),
            {},
        ),
        ("sessions of one user (/account, revocation)", select(AuthSession).where(AuthSession.user_id == 1234), {}),
    ]


def sync_url(url: str) -> str:
    parsed = make_url(url)
    driver = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}[parsed.get_backend_name()]
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def migrate(url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env={**os.environ, "QUART_APP_DATABASE_URL": url},
        check=True,
        capture_output=True,
    )


def fill(engine, now) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(User),
            [
                {
                    "username": f"user{i}",
                    "email": f"user{i}@example.com",
                    "email_key": f"user{i}@example.com",
                    "password_hash": "x",
                    "is_active": True,
                }
                for i in range(1, USERS + 1)
            ],
        )
        conn.execute(
            insert(AuthSession),
            [
                {
                    "token_hash": token_digest(f"token-{i}"),
                    "user_id": i,
                    "remember": False,
                    "created_at": now,
                    "last_seen_at": now,
                    "expires_at": now + timedelta(hours=1),
                }
                for i in range(1, USERS + 1)
            ],
        )
        conn.execute(
            insert(UserFactor),
            [
                {"user_id": i, "kind": "totp", "secret": b"x", "created_at": now, "confirmed_at": now}
                for i in range(FACTOR_EVERY, USERS + 1, FACTOR_EVERY)
            ],
        )
        conn.execute(
            insert(LoginThrottle),
            [{"key": f"account:{i}", "failures": 1, "last_failure_at": now} for i in range(1, USERS + 1)],
        )
        conn.exec_driver_sql("ANALYZE")


def _sqlite_value(value):
    return value.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(value, datetime) else value


def explain(conn, statement, params) -> list[str]:
    compiled = statement.compile(conn, compile_kwargs={"render_postcompile": True})
    values = compiled.construct_params(params)
    if conn.dialect.name == "sqlite":
        # (as SQLAlchemy stores them: Python 3.12 deprecates sqlite3's own datetime adapter)
        ordered = tuple(_sqlite_value(values[name]) for name in compiled.positiontup)
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", ordered).all()
        return [row[-1] for row in rows]
    rows = conn.exec_driver_sql(f"EXPLAIN (COSTS OFF) {compiled}", values).all()
    return [row[0] for row in rows]


def plans(url: str) -> dict[str, list[str]]:
    migrate(url)
    engine = create_engine(sync_url(url))
    try:
        now = utcnow()
        fill(engine, now)
        with engine.connect() as conn:
            return {name: explain(conn, statement, params) for name, statement, params in statements(now)}
    finally:
        engine.dispose()


def main(argv: list[str]) -> None:
    as_json = "--json" in argv
    urls = [arg for arg in argv if not arg.startswith("--")]
    with tempfile.TemporaryDirectory() as scratch:
        url = urls[0] if urls else f"sqlite+aiosqlite:///{scratch}/plans.db"
        found = plans(url)
        if as_json:
            print(json.dumps(found, indent=2))
            return
        backend = make_url(url).get_backend_name()
        factors = USERS // FACTOR_EVERY
        counts = f"{USERS} users, {USERS} sessions, {factors} factors, {USERS} throttle rows"
        print(f"# {backend}: {counts}, after ANALYZE\n")
        for name, lines in found.items():
            print(f"{name}:\n```")
            print("\n".join(lines))
            print("```\n")


if __name__ == "__main__":
    main(sys.argv[1:])
