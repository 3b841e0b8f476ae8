"""The migrations against the models (`alembic check`), the revision helpers, and the session_auth_time revision.

Every test runs on the suite's backend: SQLite, or PostgreSQL when the suite
is given a server (tests/backends.py).
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from conftest import alembic, register_api
from sqlalchemy.engine import make_url

from quart_app.migrations import (
    add_missing_columns,
    batch_alter_table,
    create_index_if_missing,
    create_table_if_missing,
    index_names,
)

LOWER_INDEXES = {"uq_users_username_lower": "username", "uq_users_email_lower": "email"}


def check(database) -> subprocess.CompletedProcess:
    """`alembic check` on ``database``, which must find the models and the database the same."""
    try:
        return alembic("check", url=database.url)
    except subprocess.CalledProcessError as failure:
        pytest.fail(f"alembic check: models and database differ\n{failure.stdout}{failure.stderr}", pytrace=False)


def check_failure(database) -> str:
    """The differences `alembic check` finds on ``database`` (there must be some): its list of operations."""
    with pytest.raises(subprocess.CalledProcessError) as failure:
        alembic("check", url=database.url)
    [found] = [line for line in failure.value.stdout.splitlines() if line.startswith("FAILED: ")]
    assert found.startswith("FAILED: New upgrade operations detected: ["), found
    return found


def integrity_error(database) -> type[Exception]:
    """What the driver that TestDatabase.write uses raises for a violated constraint."""
    if database.is_sqlite:
        return sqlite3.IntegrityError
    import psycopg

    return psycopg.errors.IntegrityError


def index_definitions(database, table: str) -> dict[str, str]:
    """Each index the database has on ``table`` (expressions included), with its CREATE INDEX."""
    if database.is_sqlite:
        rows = database.rows("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", table)
    else:
        rows = database.rows("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ?", table)
    return dict(rows)


def column_names(database, table: str) -> list[str]:
    if database.is_sqlite:
        return [row[1] for row in database.rows(f"PRAGMA table_info({table})")]
    rows = database.rows(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position", table
    )
    return [name for (name,) in rows]


@contextmanager
def operations(database) -> Iterator[sa.Connection]:
    """Alembic's ``op`` on ``database`` (sync drivers), as inside a revision; committed at the end."""
    url = make_url(database.url).set(drivername="sqlite" if database.is_sqlite else "postgresql+psycopg")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection, Operations.context(MigrationContext.configure(connection)):
            yield connection
    finally:
        engine.dispose()


# -- alembic check ---------------------------------------------------------------------------


def test_models_and_migrations_agree(database):
    """`alembic check` on a database migrated to head finds nothing the models declare differently."""
    result = check(database)
    assert "No new upgrade operations detected." in result.stdout


def test_check_reports_a_column_the_models_lack(database):
    """A column the database has and the models do not is a difference."""
    database.write("ALTER TABLE users ADD COLUMN nickname VARCHAR(40)")
    report = check_failure(database)
    assert "remove_column" in report and "nickname" in report


@pytest.mark.parametrize("index", sorted(LOWER_INDEXES))
def test_check_reports_a_missing_lower_index(database, index):
    """The models declare the lower() unique indexes: a database without one differs from them."""
    database.write(f"DROP INDEX {index}")
    report = check_failure(database)
    assert f"('add_index', Index({index!r}" in report


def test_check_reports_a_lower_index_that_is_not_unique(database):
    """The same name on the same expression without UNIQUE is a difference too."""
    database.write("DROP INDEX uq_users_username_lower")
    database.write("CREATE INDEX uq_users_username_lower ON users (lower(username))")
    report = check_failure(database)
    assert "uq_users_username_lower" in report
    assert "uq_users_email_lower" not in report


def test_check_reports_an_index_on_an_expression_the_models_lack(database):
    database.write("CREATE UNIQUE INDEX ix_users_upper_username ON users (upper(username))")
    report = check_failure(database)
    assert "('remove_index', Index('ix_users_upper_username'" in report


# -- case-insensitive uniqueness --------------------------------------------------------------


def test_upgrade_head_creates_the_lower_unique_indexes(database):
    """A fresh `upgrade head` has both unique indexes on lower(...)."""
    definitions = index_definitions(database, "users")
    for index, column in LOWER_INDEXES.items():
        definition = " ".join(definitions[index].split())
        assert definition.upper().startswith(f"CREATE UNIQUE INDEX {index.upper()} ON "), definition
        assert f"lower({column})" in definition.replace("(" + column + ")::text", column), definition


@pytest.mark.parametrize(
    ("username", "email", "index"),
    [("zed", "other@example.com", "uq_users_username_lower"), ("other", "ZED@EXAMPLE.COM", "uq_users_email_lower")],
)
def test_database_refuses_a_case_variant(database, username, email, index):
    """The database itself, not only the app, refuses "zed" next to "Zed"."""
    insert = "INSERT INTO users (username, email, email_key, password_hash) VALUES (?, ?, ?, 'x')"
    database.write(insert, "Zed", "Zed@example.com", "zed@example.com")
    with pytest.raises(integrity_error(database), match=index):
        database.write(insert, username, email, f"{username}.{email}")
    assert database.rows("SELECT username FROM users") == [("Zed",)]


async def test_api_refuses_a_case_variant_with_409(client, database):
    assert (await register_api(client, "Zed", "zed@example.com")).status_code == 201
    response = await register_api(client, "zed", "other@example.com")
    assert response.status_code == 409
    assert await response.get_json() == {"error": "Username already taken."}
    response = await register_api(client, "other", "ZED@example.com")
    assert response.status_code == 409
    assert await response.get_json() == {"error": "Email already registered."}
    assert database.rows("SELECT username FROM users") == [("Zed",)]


# -- the revision helpers ---------------------------------------------------------------------


def test_add_missing_columns_adds_only_what_is_missing_and_keeps_values(database):
    database.write(
        "INSERT INTO users (username, email, email_key, password_hash, created_at) "
        "VALUES ('a', 'a@example.com', 'a@example.com', 'x', ?)",
        "2020-01-02 03:04:05.000000",
    )
    with operations(database):
        added = add_missing_columns(
            "users", sa.Column("created_at", sa.DateTime(), nullable=True), sa.Column("nickname", sa.String(40))
        )
        assert added == ["nickname"]
        assert add_missing_columns("users", sa.Column("nickname", sa.String(40))) == []
    assert database.rows("SELECT created_at, nickname FROM users") == [("2020-01-02 03:04:05.000000", None)]


def test_create_table_and_index_if_missing(database):
    with operations(database):
        assert not create_table_if_missing("auth_events", sa.Column("id", sa.Integer(), primary_key=True))
        notes = (
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        )
        assert create_table_if_missing("notes", *notes)
        assert not create_table_if_missing("notes", *notes)
        # Indexes on expressions count, on SQLite too (whose reflection skips them).
        assert set(LOWER_INDEXES) <= index_names("users")
        assert not create_index_if_missing(
            "uq_users_username_lower", "users", [sa.text("lower(username)")], unique=True
        )
        assert create_index_if_missing("ix_notes_user_id", "notes", ["user_id"])
        assert not create_index_if_missing("ix_notes_user_id", "notes", ["user_id"])
    assert "ix_notes_user_id" in index_definitions(database, "notes")


def test_batch_alter_table_keeps_the_lower_indexes(database):
    """A batch that copies users (SQLite) makes the indexes on lower(...) again; they still refuse case variants."""
    database.write(
        "INSERT INTO users (username, email, email_key, password_hash) "
        "VALUES ('Zed', 'zed@example.com', 'zed@example.com', 'x')"
    )
    # On PostgreSQL, "auto" alters in place (a copy could not drop a table others refer to).
    recreate = "always" if database.is_sqlite else "auto"
    with operations(database), batch_alter_table("users", recreate=recreate) as batch:
        batch.add_column(sa.Column("nickname", sa.String(40)))
    assert "nickname" in column_names(database, "users")
    assert set(LOWER_INDEXES) <= set(index_definitions(database, "users"))
    with pytest.raises(integrity_error(database), match="uq_users_username_lower"):
        database.write(
            "INSERT INTO users (username, email, email_key, password_hash) "
            "VALUES ('ZED', 'z2@example.com', 'z2@example.com', 'x')"
        )
    # What check reports is the column the models lack, not the indexes.
    report = check_failure(database)
    assert "nickname" in report and "uq_users" not in report


# -- session_auth_time ------------------------------------------------------------------------


def add_sessions(database) -> list[tuple]:
    """A user with two sessions, the second confirmed after it started; their (id, created_at)."""
    if "email_key" in column_names(database, "users"):  # (not below revision email_key)
        database.write(
            "INSERT INTO users (username, email, email_key, password_hash) "
            "VALUES ('s', 's@example.com', 's@example.com', 'x')"
        )
    else:
        database.write("INSERT INTO users (username, email, password_hash) VALUES ('s', 's@example.com', 'x')")
    [(user_id,)] = database.rows("SELECT id FROM users WHERE username = 's'")
    for token_hash, created_at, auth_time in [
        ("a" * 64, "2026-01-01 10:00:00.000000", None),
        ("b" * 64, "2026-01-02 11:00:00.000000", "2026-01-02 12:30:00.000000"),
    ]:
        database.write(
            "INSERT INTO auth_sessions (token_hash, user_id, remember, created_at, last_seen_at, expires_at, "
            "auth_time) VALUES (?, ?, ?, ?, ?, ?, ?)",
            *(token_hash, user_id, False, created_at, created_at, "2027-01-01 00:00:00.000000", auth_time),
        )
    return database.rows("SELECT id, created_at FROM auth_sessions ORDER BY id")


def test_session_auth_time_downgrade_keeps_sessions_and_upgrade_backfills_created_at(database):
    sessions = add_sessions(database)

    alembic("downgrade", "account_security", url=database.url)
    assert "auth_time" not in column_names(database, "auth_sessions")
    assert database.rows("SELECT id, created_at FROM auth_sessions ORDER BY id") == sessions
    assert "ix_auth_sessions_user_id" in index_definitions(database, "auth_sessions")

    alembic("upgrade", "head", url=database.url)
    assert database.rows("SELECT id, auth_time FROM auth_sessions ORDER BY id") == sessions
    check(database)


def test_session_auth_time_keeps_an_auth_time_column_already_there(database):
    """Where auth_sessions already has auth_time, its values (NULL included) stay."""
    alembic("downgrade", "account_security", url=database.url)
    database.write("ALTER TABLE auth_sessions ADD COLUMN auth_time TIMESTAMP")
    add_sessions(database)
    before = database.rows("SELECT id, auth_time FROM auth_sessions ORDER BY id")
    assert before[0][1] is None

    alembic("upgrade", "head", url=database.url)
    assert database.rows("SELECT id, auth_time FROM auth_sessions ORDER BY id") == before
