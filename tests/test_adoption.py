"""Adopting a database made by the sync Flask app: `alembic stamp seed && alembic upgrade head`.

The Flask-era file is built here with the stdlib sqlite3 module and the exact
DDL Flask-SQLAlchemy's create_all emits for the seed's model, with passwords
hashed by Werkzeug as the seed's ``set_password`` does. The database of a
Flask app that grew (columns and a table of its own) is built the same way,
on the suite's backend (SQLite, or PostgreSQL: tests/backends.py).
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import unicodedata
from contextlib import asynccontextmanager, closing
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from argon2 import PasswordHasher as Argon2Hasher
from conftest import FAST_HASHING, ROOT, alembic, auth_cookie, login_form, register_api, sqlite_url
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.schema import CreateTable
from werkzeug.security import generate_password_hash

from quart_app import create_app
from quart_app.auth.validation import email_key

# Most tests build SQLite files of their own (the Flask app's default store);
# those of a grown Flask app (below) run on either backend.
SQLITE_FILES = pytest.mark.sqlite_only("builds and inspects its own SQLite files")

# The newest revision, whatever later revisions add after port_sessions.
HEAD = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini"))).get_current_head()

FLASK_USERS_DDL = (
    "CREATE TABLE users (id INTEGER NOT NULL, username VARCHAR(50) NOT NULL, "
    "email VARCHAR(120) NOT NULL, password_hash VARCHAR(256) NOT NULL, "
    "PRIMARY KEY (id), UNIQUE (username), UNIQUE (email))"
)
LOGIN_FAILED = {"error": "Incorrect username or password."}
ARGON2_PARAMS_RE = re.compile(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$")
APP_ARGON2_PARAMS = (
    FAST_HASHING["ARGON2_MEMORY_COST"],
    FAST_HASHING["ARGON2_TIME_COST"],
    FAST_HASHING["ARGON2_PARALLELISM"],
)

# (id, username, email, password, Werkzeug method): the default scrypt, the
# pbkdf2 of older Flask apps, and a mixed-case username.
FLASK_USERS = [
    (1, "alice", "alice@example.com", "alice's old password", "scrypt"),
    (2, "olduser", "olduser@example.org", "pbkdf2 era password", "pbkdf2:sha256"),
    (7, "Bob_Smith", "Bob.Smith@Example.com", "bob's secret 123", "scrypt"),
]


def flask_database(path: Path, users) -> Path:
    """A users table as the Flask app left it, with ``users`` as (id, username, email, hash)."""
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(FLASK_USERS_DDL)
        conn.executemany("INSERT INTO users (id, username, email, password_hash) VALUES (?, ?, ?, ?)", users)
    return path


def query(path: Path, sql: str, params=()) -> list[tuple]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql, params).fetchall()


def stored_hash(path: Path, user_id: int) -> str:
    [(value,)] = query(path, "SELECT password_hash FROM users WHERE id = ?", (user_id,))
    return value


def schema_names(path: Path) -> set[tuple[str, str, str]]:
    return set(query(path, "SELECT type, name, tbl_name FROM sqlite_master"))


def users_shape(path: Path):
    """The users table's columns and indexes, without the DDL text.

    (Alembic's batch copy writes the two UNIQUE clauses in an order that varies
    from run to run, so the CREATE TABLE text itself is not comparable.)
    """
    columns = [row[1:5] for row in query(path, "PRAGMA table_info(users)")]
    index_list = query(path, "PRAGMA index_list(users)")
    uniques = sorted(
        tuple(row[2] for row in query(path, f'PRAGMA index_info("{name}")'))
        for _, name, _, origin, _ in index_list
        if origin == "u"
    )
    indexes = sorted((name, unique) for _, name, unique, origin, _ in index_list if origin == "c")
    return columns, uniques, indexes


def revision(path: Path) -> list[str]:
    return [row[0] for row in query(path, "SELECT version_num FROM alembic_version")]


def argon2_params(password_hash: str) -> tuple[int, int, int]:
    match = ARGON2_PARAMS_RE.match(password_hash)
    assert match, f"not an argon2id hash: {password_hash[:30]!r}"
    return tuple(int(group) for group in match.groups())


def adopt(path: Path) -> None:
    alembic("stamp", "seed", url=sqlite_url(path))
    alembic("upgrade", "head", url=sqlite_url(path))


@asynccontextmanager
async def serving(path: Path | str):
    """A test client of a freshly created app on the SQLite file ``path``, or on the database URL ``path``."""
    url = path if isinstance(path, str) else sqlite_url(path)
    app = create_app({"ENV": "testing", "DATABASE_URL": url, **FAST_HASHING})
    async with app.test_app():
        yield app.test_client()


async def api_login(client, username: str, password: str):
    response = await client.post("/api/login", json={"username": username, "password": password})
    return response.status_code, await response.get_json()


@pytest.fixture(scope="session")
def flask_rows() -> list[tuple[int, str, str, str]]:
    """The Flask-era rows, hashed once by Werkzeug."""
    return [
        (user_id, username, email, generate_password_hash(password, method=method))
        for user_id, username, email, password, method in FLASK_USERS
    ]


@pytest.fixture(scope="session")
def adopted_template(tmp_path_factory, flask_rows) -> Path:
    """The Flask-era database adopted once; each test gets a copy of it."""
    path = flask_database(tmp_path_factory.mktemp("adopted") / "flask.db", flask_rows)
    adopt(path)
    return path


@pytest.fixture
def adopted(tmp_path, adopted_template) -> Path:
    """A Flask-era database after `alembic stamp seed && alembic upgrade head`."""
    path = tmp_path / "flask.db"
    shutil.copy(adopted_template, path)
    return path


def test_flask_era_hashes_are_werkzeug_scrypt_and_pbkdf2(flask_rows):
    """The fixture stores what the seed's set_password stores (default scrypt) and older pbkdf2."""
    prefixes = [row[3].split("$")[0] for row in flask_rows]
    assert prefixes[0] == prefixes[2] == "scrypt:32768:8:1"
    assert prefixes[1].startswith("pbkdf2:sha256:")


@SQLITE_FILES
def test_adoption_keeps_every_row_and_its_hash(adopted, flask_rows):
    """After stamp seed + upgrade head every row keeps its id, username, email and hash."""
    assert revision(adopted) == [HEAD]
    rows = query(adopted, "SELECT id, username, email, password_hash FROM users ORDER BY id")
    assert rows == flask_rows
    # What the port adds: adopted accounts are active, with no known creation time.
    assert query(adopted, "SELECT is_active, created_at FROM users") == [(1, None)] * len(flask_rows)


@SQLITE_FILES
@pytest.mark.parametrize(("user_id", "username", "email", "password", "_method"), FLASK_USERS)
async def test_adopted_user_logs_in_with_old_password_by_username_or_email_in_any_case(
    adopted, user_id, username, email, password, _method
):
    """Old passwords work by username or email, whatever the letter case of either."""
    async with serving(adopted) as client:
        for identifier in (username, email, username.lower(), username.upper(), email.lower(), email.upper()):
            status, body = await api_login(client, identifier, password)
            assert status == 200, identifier
            assert body == {"id": user_id, "username": username, "email": email}


@SQLITE_FILES
async def test_adopted_user_logs_in_through_the_html_form(adopted):
    """The login page (csrf token and all) accepts an adopted user's old password."""
    _, username, _, password, _ = FLASK_USERS[2]
    async with serving(adopted) as client:
        response = await login_form(client, username.lower(), password)
        assert response.status_code in (302, 303)
        assert auth_cookie(client)
    assert stored_hash(adopted, 7).startswith("$argon2id$")


@SQLITE_FILES
@pytest.mark.parametrize(("user_id", "username", "_email", "password", "method"), FLASK_USERS)
async def test_first_login_replaces_werkzeug_hash_with_argon2id(adopted, user_id, username, _email, password, method):
    """The Werkzeug hash is verified once, then replaced by argon2id with the app's parameters."""
    assert stored_hash(adopted, user_id).startswith(method.split(":")[0] + ":")

    async with serving(adopted) as client:
        status, _ = await api_login(client, username, password)
        assert status == 200
    upgraded = stored_hash(adopted, user_id)
    assert upgraded.startswith("$argon2id$")
    assert argon2_params(upgraded) == APP_ARGON2_PARAMS

    # A fresh app (a restart) accepts the same password against the new hash,
    # and a current hash is not rewritten at every login.
    async with serving(adopted) as client:
        status, body = await api_login(client, username, password)
        assert (status, body["id"]) == (200, user_id)
    assert stored_hash(adopted, user_id) == upgraded


@SQLITE_FILES
@pytest.mark.parametrize(("user_id", "username", "email", "password", "_method"), FLASK_USERS)
async def test_wrong_password_is_refused_before_and_after_the_hash_upgrade(
    adopted, user_id, username, email, password, _method
):
    """A wrong password gets the generic 401 against the Werkzeug hash and the argon2id one."""
    werkzeug_hash = stored_hash(adopted, user_id)
    async with serving(adopted) as client:
        # (Few failures per account: the login throttle must not get involved.)
        assert await api_login(client, username, password + "!") == (401, LOGIN_FAILED)
        # A failed login leaves the old hash alone.
        assert stored_hash(adopted, user_id) == werkzeug_hash

        assert (await api_login(client, username, password))[0] == 200
        assert stored_hash(adopted, user_id).startswith("$argon2id$")
        assert await api_login(client, email, password + "!") == (401, LOGIN_FAILED)

    async with serving(adopted) as client:
        assert await api_login(client, username.upper(), password[:-1]) == (401, LOGIN_FAILED)


@SQLITE_FILES
async def test_registration_differing_only_in_case_from_adopted_user_is_refused(adopted):
    """Usernames and emails of adopted rows are taken whatever the case: 409, nothing added."""
    async with serving(adopted) as client:
        response = await register_api(client, username="bob_smith", email="someone.new@example.com")
        assert response.status_code == 409
        assert await response.get_json() == {"error": "Username already taken."}

        response = await register_api(client, username="ALICE", email="another.new@example.com")
        assert response.status_code == 409
        assert await response.get_json() == {"error": "Username already taken."}

        response = await register_api(client, username="newcomer", email="BOB.SMITH@example.com")
        assert response.status_code == 409
        assert await response.get_json() == {"error": "Email already registered."}
    assert query(adopted, "SELECT count(*) FROM users") == [(len(FLASK_USERS),)]


@SQLITE_FILES
@pytest.mark.parametrize(
    ("username", "email", "index"),
    [
        ("BOB_SMITH", "fresh@example.com", "uq_users_username_lower"),
        ("fresh", "bob.smith@example.com", "uq_users_email_lower"),
    ],
)
def test_lower_unique_indexes_cover_adopted_rows(adopted, username, email, index):
    """The database itself refuses a case variant of an adopted username or email."""
    with closing(sqlite3.connect(adopted)) as conn, pytest.raises(sqlite3.IntegrityError, match=index):
        conn.execute("INSERT INTO users (username, email, password_hash) VALUES (?, ?, 'x')", (username, email))


@SQLITE_FILES
def test_migrations_upgrade_downgrade_and_upgrade_again_on_empty_database(tmp_path):
    """upgrade head, downgrade seed, upgrade head: the migrations are reversible."""
    path = tmp_path / "empty.db"
    url = sqlite_url(path)
    alembic("upgrade", "head", url=url)
    at_head = schema_names(path)
    assert revision(path) == [HEAD]

    alembic("downgrade", "seed", url=url)
    assert revision(path) == ["seed"]
    assert {name for kind, name, _ in schema_names(path) if kind == "table"} == {"users", "alembic_version"}
    columns = [(row[1], row[2], row[3]) for row in query(path, "PRAGMA table_info(users)")]
    assert columns == [
        ("id", "INTEGER", 1),
        ("username", "VARCHAR(50)", 1),
        ("email", "VARCHAR(120)", 1),
        ("password_hash", "VARCHAR(256)", 1),
    ]

    alembic("upgrade", "head", url=url)
    assert revision(path) == [HEAD]
    assert schema_names(path) == at_head

    alembic("downgrade", "base", url=url)
    assert {name for _, name, _ in schema_names(path)} == {"alembic_version", "sqlite_autoindex_alembic_version_1"}


@SQLITE_FILES
def test_downgrade_of_adopted_database_gives_back_the_flask_table_and_rows(adopted, flask_rows):
    """downgrade seed on an adopted database returns the Flask app's columns, rows included."""
    alembic("downgrade", "seed", url=sqlite_url(adopted))
    assert [row[1] for row in query(adopted, "PRAGMA table_info(users)")] == [
        "id",
        "username",
        "email",
        "password_hash",
    ]
    assert query(adopted, "SELECT * FROM users ORDER BY id") == flask_rows


@SQLITE_FILES
def test_fresh_schema_matches_adopted_schema(tmp_path, adopted):
    """upgrade head on an empty database and adoption give the same tables and indexes."""
    fresh = tmp_path / "fresh.db"
    alembic("upgrade", "head", url=sqlite_url(fresh))
    assert schema_names(fresh) == schema_names(adopted)
    assert {name for kind, name, _ in schema_names(adopted) if kind == "index"} >= {
        "uq_users_username_lower",
        "uq_users_email_lower",
        "uq_users_email_key",
        "ix_auth_sessions_user_id",
    }
    assert users_shape(fresh) == users_shape(adopted)
    assert users_shape(adopted)[1:] == (
        [("email",), ("username",)],
        [("uq_users_email_key", 1), ("uq_users_email_lower", 1), ("uq_users_username_lower", 1)],
    )


@SQLITE_FILES
async def test_weaker_argon2_hash_is_rehashed_with_app_parameters_at_login(database):
    """An argon2id hash with older, weaker parameters is replaced after a successful login."""
    weak = Argon2Hasher(time_cost=1, memory_cost=512, parallelism=1).hash("weakly hashed pw")
    assert argon2_params(weak) == (512, 1, 1)
    with closing(sqlite3.connect(database.path)) as conn, conn:
        user_id = conn.execute(
            "INSERT INTO users (username, email, email_key, password_hash) "
            "VALUES ('weak', 'weak@example.com', 'weak@example.com', ?)",
            (weak,),
        ).lastrowid

    async with serving(database.path) as client:
        assert await api_login(client, "weak", "weakly hashed pw!") == (401, LOGIN_FAILED)
        assert stored_hash(database.path, user_id) == weak

        status, body = await api_login(client, "weak", "weakly hashed pw")
        assert (status, body["id"]) == (200, user_id)
    rehashed = stored_hash(database.path, user_id)
    assert rehashed != weak
    assert argon2_params(rehashed) == APP_ARGON2_PARAMS

    async with serving(database.path) as client:
        assert (await api_login(client, "weak@example.com", "weakly hashed pw"))[0] == 200
    assert stored_hash(database.path, user_id) == rehashed


CASE_DUPLICATES = {
    "username": [(1, "Carol", "carol@example.com"), (2, "carol", "carol.two@example.com")],
    "email": [(1, "dave", "Dave@example.com"), (2, "dave2", "dave@example.com")],
}


def case_duplicates_database(path: Path, column: str) -> Path:
    """A Flask-era database (whose UNIQUE is case-sensitive) with two rows equal but for case."""
    rows = [(*row, generate_password_hash(f"password of {row[1]}")) for row in CASE_DUPLICATES[column]]
    return flask_database(path, rows)


@SQLITE_FILES
@pytest.mark.parametrize("column", ["username", "email"])
def test_upgrade_with_values_differing_only_in_case_fails_and_keeps_every_row(tmp_path, column):
    """Usernames or emails differing only in case stop upgrade head; rows and revision stay as they were."""
    path = case_duplicates_database(tmp_path / "dupes.db", column)
    rows_before = query(path, "SELECT * FROM users ORDER BY id")
    alembic("stamp", "seed", url=sqlite_url(path))

    with pytest.raises(subprocess.CalledProcessError) as failure:
        alembic("upgrade", "head", url=sqlite_url(path))
    assert failure.value.returncode != 0
    assert f"users.{column} holds values that differ only in case" in failure.value.stderr

    assert revision(path) == ["seed"]
    assert query(path, "SELECT * FROM users ORDER BY id") == rows_before
    assert query(path, "SELECT sql FROM sqlite_master WHERE name = 'users'") == [(FLASK_USERS_DDL,)]
    assert not {name for _, name, _ in schema_names(path)} & {
        "uq_users_username_lower",
        "uq_users_email_lower",
        "auth_sessions",
    }


@SQLITE_FILES
def test_failed_upgrade_leaves_nothing_behind_and_succeeds_once_duplicates_are_merged(tmp_path):
    """After the case duplicates are merged by hand, upgrade head simply runs again."""
    path = case_duplicates_database(tmp_path / "dupes.db", "username")
    alembic("stamp", "seed", url=sqlite_url(path))
    with pytest.raises(subprocess.CalledProcessError):
        alembic("upgrade", "head", url=sqlite_url(path))
    assert {name for kind, name, _ in schema_names(path) if kind == "table"} == {"users", "alembic_version"}

    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE users SET username = 'carol2' WHERE id = 2")
    alembic("upgrade", "head", url=sqlite_url(path))
    assert revision(path) == [HEAD]
    assert query(path, "SELECT id, username FROM users ORDER BY id") == [(1, "Carol"), (2, "carol2")]


# -- a Flask app that grew: columns of its own on users, a notes table -----------------------
#
# These run on the suite's backend: the database is made with the DDL
# Flask-SQLAlchemy's create_all emits there for the grown app's models.

GROWN_METADATA = sa.MetaData()
sa.Table(
    "users",
    GROWN_METADATA,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("username", sa.String(50), unique=True, nullable=False),
    sa.Column("email", sa.String(120), unique=True, nullable=False),
    sa.Column("password_hash", sa.String(256), nullable=False),
    sa.Column("created_at", sa.DateTime),  # default=datetime.utcnow, on the Python side
    sa.Column("is_admin", sa.Boolean),
    sa.Column("display_name", sa.String(80)),
)
sa.Table(
    "notes",
    GROWN_METADATA,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime),
)
DIALECTS = {"sqlite": sqlite_dialect.dialect(), "postgresql": postgresql.dialect()}
USERS_COLUMNS = "id, username, email, password_hash, created_at, is_admin, display_name"
# (created_at, is_admin, display_name) of each of FLASK_USERS.
GROWN_EXTRAS = {
    1: ("2019-04-01 09:30:00.000000", True, "Alice A."),
    2: (None, None, None),
    7: ("2021-11-15 17:45:12.123456", False, "Bob"),
}
NOTES = [
    (1, 1, "alice's first note", "2019-04-02 10:00:00.000000"),
    (2, 7, "bob's note", "2021-12-01 08:00:00.000000"),
    (3, 1, "another of alice's", None),
]
# The fork revision shown in docs/porting-from-flask-login.md.
GUIDE = ROOT / "docs" / "porting-from-flask-login.md"


@pytest.fixture
def grown(backend, tmp_path, flask_rows):
    """The Flask app's database, grown: users with created_at, is_admin, display_name; notes."""
    database = backend.create(tmp_path)
    for table in GROWN_METADATA.sorted_tables:
        database.write(str(CreateTable(table).compile(dialect=DIALECTS[database.backend])))
    for row in flask_rows:
        database.write(f"INSERT INTO users ({USERS_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", *row, *GROWN_EXTRAS[row[0]])
    for row in NOTES:
        database.write("INSERT INTO notes (id, user_id, body, created_at) VALUES (?, ?, ?, ?)", *row)
    if not database.is_sqlite:
        for table in ("users", "notes"):
            database.write(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))")
    yield database
    database.drop()


def adopt_database(database, *config: str) -> None:
    """The guide's two commands (``config``: alembic's -c option, for a fork's scripts)."""
    alembic(*config, "stamp", "seed", url=database.url)
    alembic(*config, "upgrade", "head", url=database.url)


def flask_values(database) -> dict[str, list[tuple]]:
    """Every value the grown Flask app stored, table by table."""
    return {
        "users": database.rows(f"SELECT {USERS_COLUMNS} FROM users ORDER BY id"),
        "notes": database.rows("SELECT * FROM notes ORDER BY id"),
    }


def table_names(database) -> set[str]:
    if database.is_sqlite:
        return {name for (name,) in database.rows("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return {name for (name,) in database.rows("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def columns(database, table: str) -> list[tuple]:
    """The columns of ``table`` in order: name, type, nullability, default."""
    if database.is_sqlite:
        return [row[1:5] for row in database.rows(f"PRAGMA table_info({table})")]
    return database.rows(
        "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = 'public' AND table_name = ? ORDER BY ordinal_position",
        table,
    )


def definition(database, table: str) -> dict[str, object]:
    """What ``table`` is: its columns, and its constraints and indexes with their SQL."""
    if database.is_sqlite:
        rows = database.rows(f"PRAGMA foreign_key_list({table})")
        keys = {("foreign key", row[2:5]) for row in rows}
        index_rows = database.rows("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", table)
        uniques = {
            ("unique", tuple(row[2] for row in database.rows(f'PRAGMA index_info("{name}")')))
            for name, sql in index_rows
            if sql is None
        }
        indexes = {(name, sql) for name, sql in index_rows if sql is not None}
        return {"columns": columns(database, table), "constraints": keys | uniques, "indexes": indexes}
    constraints = database.rows(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = ?::regclass", table
    )
    indexes = database.rows("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ?", table)
    return {"columns": columns(database, table), "constraints": set(constraints), "indexes": set(indexes)}


def everything(database) -> dict[str, object]:
    """Every table's definition and rows."""
    return {
        table: (definition(database, table), database.rows(f"SELECT * FROM {table} ORDER BY 1"))
        for table in sorted(table_names(database))
    }


def test_adoption_of_grown_flask_database_keeps_every_value_and_table(grown):
    """Columns the port also has (created_at), columns and tables it does not know: all kept, values included."""
    values, users, notes = flask_values(grown), definition(grown, "users"), definition(grown, "notes")
    adopt_database(grown)

    assert [version for (version,) in grown.rows("SELECT version_num FROM alembic_version")] == [HEAD]
    assert flask_values(grown) == values
    assert definition(grown, "notes") == notes
    # users keeps its columns as they were; only is_active (true for everyone), email_key and email_verified are added.
    after = definition(grown, "users")
    assert after["columns"][: len(users["columns"])] == users["columns"]
    added = [column[0] for column in after["columns"][len(users["columns"]) :]]
    assert added == ["is_active", "email_key", "email_verified"]
    assert users["constraints"] <= after["constraints"]
    assert grown.rows("SELECT count(*) FROM users WHERE is_active = ?", True) == [(len(FLASK_USERS),)]
    assert {"notes", "auth_sessions", "auth_events", "login_throttle"} <= table_names(grown)


async def test_grown_flask_users_log_in_and_keep_their_other_values(grown):
    """Old passwords log in; the hash is all that changes, and a newcomer can register."""
    adopt_database(grown)
    values = flask_values(grown)
    async with serving(grown.url) as client:
        for user_id, username, email, password, _ in FLASK_USERS:
            status, body = await api_login(client, username.upper(), password)
            assert (status, body) == (200, {"id": user_id, "username": username, "email": email})
        assert (await register_api(client, "newcomer")).status_code == 201

    after = flask_values(grown)
    assert after["notes"] == values["notes"]
    old_users, new_users = values["users"], after["users"][: len(values["users"])]
    assert [row[:3] + row[4:] for row in new_users] == [row[:3] + row[4:] for row in old_users]
    assert all(row[3].startswith("$argon2id$") for row in new_users)
    assert after["users"][-1][1:3] == ("newcomer", "newcomer@example.com")


def test_upgrade_head_again_changes_nothing(grown):
    adopt_database(grown)
    before = everything(grown)
    result = alembic("upgrade", "head", url=grown.url)
    assert "Running upgrade" not in result.stderr
    assert everything(grown) == before


async def test_downgrade_of_session_auth_time_on_grown_database(grown):
    """Down to account_security: auth_time goes, sessions and the Flask values stay; up again, it is backfilled."""
    adopt_database(grown)
    for _, username, _, password, _ in FLASK_USERS[:2]:
        async with serving(grown.url) as client:  # a browser each
            assert (await api_login(client, username, password))[0] == 200
    values = flask_values(grown)
    sessions = grown.rows("SELECT id, user_id, token_hash, created_at FROM auth_sessions ORDER BY id")
    assert len(sessions) == 2

    alembic("downgrade", "account_security", url=grown.url)
    assert "auth_time" not in [column[0] for column in columns(grown, "auth_sessions")]
    assert grown.rows("SELECT id, user_id, token_hash, created_at FROM auth_sessions ORDER BY id") == sessions
    assert flask_values(grown) == values

    alembic("upgrade", "head", url=grown.url)
    assert grown.rows("SELECT id, auth_time FROM auth_sessions ORDER BY id") == [(row[0], row[3]) for row in sessions]


def test_downgrade_to_seed_keeps_the_flask_app_s_own_columns_and_tables(grown):
    """downgrade seed drops what the port adds (created_at included, as the guide says) and nothing else."""
    values = flask_values(grown)
    adopt_database(grown)
    alembic("downgrade", "seed", url=grown.url)
    assert table_names(grown) == {"users", "notes", "alembic_version"}
    assert [column[0] for column in columns(grown, "users")] == [
        "id",
        "username",
        "email",
        "password_hash",
        "is_admin",
        "display_name",
    ]
    kept = "id, username, email, password_hash, is_admin, display_name"
    assert grown.rows(f"SELECT {kept} FROM users ORDER BY id") == [row[:4] + row[5:] for row in values["users"]]
    assert grown.rows("SELECT * FROM notes ORDER BY id") == values["notes"]


def test_check_reports_what_the_grown_flask_app_has_and_the_models_do_not(grown):
    """alembic check does not hide the Flask app's own columns and table: a fork declares them."""
    adopt_database(grown)
    with pytest.raises(subprocess.CalledProcessError) as failure:
        alembic("check", url=grown.url)
    [report] = [line for line in failure.value.stdout.splitlines() if line.startswith("FAILED: ")]
    assert "('remove_table', Table('notes'" in report
    for column in ("is_admin", "display_name"):
        assert f"('remove_column', None, 'users', Column({column!r}" in report
    # Nothing else: the created_at the Flask app had is what the models declare.
    assert sorted(re.findall(r"\('((?:add|remove|modify)_\w+)'", report)) == [
        "remove_column",
        "remove_column",
        "remove_table",
    ]


def guide_fork_revision() -> str:
    """The fork revision the porting guide shows (its python block that defines revision "notes")."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    [block] = [block for block in blocks if 'revision = "notes"' in block]
    return block


def fork_scripts(tmp_path: Path) -> Path:
    """A fork's alembic/: the port's revisions and the guide's; its alembic.ini."""
    shutil.copytree(ROOT / "alembic", tmp_path / "alembic", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "alembic" / "versions" / "0100_notes.py").write_text(guide_fork_revision())
    shutil.copy(ROOT / "alembic.ini", tmp_path / "alembic.ini")
    return tmp_path / "alembic.ini"


def test_guide_fork_revision_follows_the_port_s_head():
    assert f'down_revision = "{HEAD}"' in guide_fork_revision(), "the guide's fork revision must follow the head"


def test_guide_fork_revision_adopts_the_flask_app_s_notes(grown, tmp_path):
    """The fork's revision meets the notes table the Flask app made: kept with its rows, and indexed."""
    config = ("-c", str(fork_scripts(tmp_path)))
    values, notes = flask_values(grown), definition(grown, "notes")
    adopt_database(grown, *config)

    assert grown.rows("SELECT version_num FROM alembic_version") == [("notes",)]
    assert flask_values(grown) == values
    after = definition(grown, "notes")
    assert (after["columns"], after["constraints"]) == (notes["columns"], notes["constraints"])
    assert {name for name, _ in after["indexes"] - notes["indexes"]} == {"ix_notes_user_id"}
    assert "Running upgrade" not in alembic(*config, "upgrade", "head", url=grown.url).stderr


def test_guide_fork_revision_creates_notes_on_a_new_database(backend, tmp_path):
    config = ("-c", str(fork_scripts(tmp_path)))
    database = backend.create(tmp_path)
    try:
        alembic(*config, "upgrade", "head", url=database.url)
        assert "notes" in table_names(database)
        assert "display_name" in [column[0] for column in columns(database, "users")]
        database.write(
            "INSERT INTO users (username, email, email_key, password_hash) "
            "VALUES ('a', 'a@example.com', 'a@example.com', 'x')"
        )
        database.write("INSERT INTO notes (user_id, body) VALUES ((SELECT id FROM users), 'a note')")

        alembic(*config, "downgrade", HEAD, url=database.url)
        assert "notes" not in table_names(database)
        assert "display_name" not in [column[0] for column in columns(database, "users")]
    finally:
        database.drop()


# -- email_key: one address in any case or Unicode spelling ----------------------------------
#
# Revision email_key computes users.email_key in Python for every row and
# refuses, before changing anything, rows whose addresses share a key.

SHARED_KEY = "users.email holds addresses that are one address once case and Unicode spelling are ignored"
EMAIL_CASE_DUPLICATES = "users.email holds values that differ only in case"


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


@SQLITE_FILES
def test_emails_equal_but_for_non_ascii_case_stop_the_upgrade_and_then_it_runs_once_they_are_changed(tmp_path):
    """Ärger@x.example and ärger@x.example (which lower() does not fold on SQLite): refused, named, nothing changed."""
    rows = [
        (1, "aerger", "\u00c4rger@x.example", generate_password_hash("password one")),
        (2, "aerger2", "\u00e4rger@x.example", generate_password_hash("password two")),
        (3, "other", "other@x.example", generate_password_hash("password three")),
    ]
    path = flask_database(tmp_path / "unicode.db", rows)
    alembic("stamp", "seed", url=sqlite_url(path))

    with pytest.raises(subprocess.CalledProcessError) as failure:
        alembic("upgrade", "head", url=sqlite_url(path))
    message = failure.value.stderr
    assert SHARED_KEY in message
    assert "\u00c4rger@x.example (id 1), \u00e4rger@x.example (id 2)" in message
    assert "other@x.example" not in message
    assert revision(path) == ["seed"]
    assert query(path, "SELECT * FROM users ORDER BY id") == rows
    assert query(path, "SELECT sql FROM sqlite_master WHERE name = 'users'") == [(FLASK_USERS_DDL,)]
    assert {name for kind, name, _ in schema_names(path) if kind == "table"} == {"users", "alembic_version"}

    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE users SET email = 'aerger.two@x.example' WHERE id = 2")
    alembic("upgrade", "head", url=sqlite_url(path))
    assert revision(path) == [HEAD]
    assert query(path, "SELECT id, email_key FROM users ORDER BY id") == [
        (1, "\u00e4rger@x.example"),
        (2, "aerger.two@x.example"),
        (3, "other@x.example"),
    ]


@SQLITE_FILES
def test_an_email_too_long_once_normalized_stops_the_upgrade(tmp_path):
    """U+FDFA is 18 letters under NFKC: a key longer than users.email_key is refused, not truncated."""
    long_one = "\ufdfa" * 15 + "@x.example"
    path = flask_database(tmp_path / "long.db", [(1, "long", long_one, generate_password_hash("password one"))])
    alembic("stamp", "seed", url=sqlite_url(path))
    with pytest.raises(subprocess.CalledProcessError) as failure:
        alembic("upgrade", "head", url=sqlite_url(path))
    assert "users.email holds addresses longer than 255 characters once normalized" in failure.value.stderr
    assert f"{long_one} (id 1)" in failure.value.stderr
    assert revision(path) == ["seed"]


def test_the_email_key_revision_refuses_to_write_sql_offline(tmp_path):
    """The keys are computed from the rows: `upgrade --sql` cannot write them, and says so."""
    with pytest.raises(subprocess.CalledProcessError) as failure:
        alembic("upgrade", "throttle_pending:email_key", "--sql", url=sqlite_url(tmp_path / "offline.db"))
    assert "revision email_key computes each account's key in Python" in failure.value.stderr


@pytest.mark.parametrize(
    ("one", "other"),
    [
        pytest.param("jos\u00e9@x.example", nfd("jos\u00e9@x.example"), id="NFC and NFD"),
        pytest.param("user@xn--bcher-kva.example", "user@b\u00fccher.example", id="punycode and Unicode domain"),
        pytest.param("\uff4a\uff4f\uff45@x.example", "joe@x.example", id="fullwidth and ASCII"),
        pytest.param("\u00c4rger@x.example", "\u00e4rger@x.example", id="non-ASCII case"),
    ],
)
def test_flask_emails_sharing_a_key_stop_the_upgrade_and_change_nothing(backend, tmp_path, one, other):
    """On either backend: the upgrade stops with a message naming both accounts; every table and row stays."""
    database = backend.create(tmp_path)
    try:
        database.write(str(CreateTable(GROWN_METADATA.tables["users"]).compile(dialect=DIALECTS[database.backend])))
        for user_id, email in [(1, one), (2, other), (3, "bystander@x.example")]:
            database.write(
                f"INSERT INTO users ({USERS_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                *(user_id, f"user{user_id}", email, generate_password_hash("a password"), None, None, None),
            )
        alembic("stamp", "seed", url=database.url)
        before = everything(database)
        with pytest.raises(subprocess.CalledProcessError) as failure:
            alembic("upgrade", "head", url=database.url)
        [(lower_folds,)] = database.rows("SELECT lower(CAST(? AS VARCHAR)) = lower(CAST(? AS VARCHAR))", one, other)
        if lower_folds:
            # PostgreSQL's lower() folds Ä where the database's locale does: revision port_sessions refuses first.
            assert EMAIL_CASE_DUPLICATES in failure.value.stderr
        else:
            assert SHARED_KEY in failure.value.stderr
            assert f"{one} (id 1), {other} (id 2)" in failure.value.stderr
        assert database.rows("SELECT version_num FROM alembic_version") == [("seed",)]
        assert everything(database) == before
    finally:
        database.drop()


# A Flask row whose email was stored in NFD, upper case, with a punycode
# domain; one in fullwidth letters.
UNICODE_FLASK_USERS = [
    (8, "juergen", "JU\u0308RGEN@XN--BCHER-KVA.EXAMPLE", "j\u00fcrgen's password", "j\u00fcrgen@xn--bcher-kva.example"),
    (9, "wide", "\uff57\uff49\uff44\uff45@example.com", "a wide password", "wide@example.com"),
]


async def test_adoption_backfills_the_email_key_of_every_row_and_logs_in_by_any_spelling(grown):
    for user_id, username, email, password, _ in UNICODE_FLASK_USERS:
        grown.write(
            f"INSERT INTO users ({USERS_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            *(user_id, username, email, generate_password_hash(password), None, None, None),
        )
    values = flask_values(grown)
    adopt_database(grown)

    assert flask_values(grown) == values
    expected = {user_id: email_key(email) for user_id, _, email, _, _ in FLASK_USERS + UNICODE_FLASK_USERS}
    assert expected[8] == UNICODE_FLASK_USERS[0][4] and expected[9] == UNICODE_FLASK_USERS[1][4]
    assert expected[7] == "bob.smith@example.com"
    assert dict(grown.rows("SELECT id, email_key FROM users")) == expected
    users = definition(grown, "users")
    [column] = [column for column in users["columns"] if column[0] == "email_key"]
    if grown.is_sqlite:
        assert column == ("email_key", "VARCHAR(255)", 1, "''")  # (SQLite cannot drop the default in place)
    else:
        assert column == ("email_key", "character varying", 255, "NO", None)
    assert "uq_users_email_key" in {name for name, _ in users["indexes"]}

    async with serving(grown.url) as client:
        status, body = await api_login(client, "j\u00fcrgen@b\u00fccher.example", "j\u00fcrgen's password")
        assert (status, body["id"]) == (200, 8)
        assert (await api_login(client, "wide@EXAMPLE.com", "a wide password"))[0] == 200
        response = await register_api(client, "wider", "WIDE@example.com")
        assert (response.status_code, await response.get_json()) == (409, {"error": "Email already registered."})


def test_downgrade_of_email_key_drops_it_and_upgrade_fills_it_again(grown):
    adopt_database(grown)
    values = flask_values(grown)
    keys = grown.rows("SELECT id, email_key FROM users ORDER BY id")

    alembic("downgrade", "throttle_pending", url=grown.url)
    assert "email_key" not in [column[0] for column in columns(grown, "users")]
    assert "uq_users_email_key" not in {name for name, _ in definition(grown, "users")["indexes"]}
    assert flask_values(grown) == values

    alembic("upgrade", "head", url=grown.url)
    assert grown.rows("SELECT id, email_key FROM users ORDER BY id") == keys
    assert flask_values(grown) == values


@SQLITE_FILES
async def test_adopted_accounts_start_unverified_and_keep_working(adopted):
    """email_verified is false for every adopted row; the account logs in and reaches its pages all the same."""
    assert query(adopted, "SELECT email_verified FROM users") == [(0,)] * len(FLASK_USERS)
    user_id, username, email, password, _ = FLASK_USERS[0]
    async with serving(adopted) as client:
        status, _ = await api_login(client, username, password)
        assert status == 200
        me = await client.get("/api/me")
        assert me.status_code == 200
        assert await me.get_json() == {"id": user_id, "username": username, "email": email, "email_verified": False}
        assert (await client.get("/dashboard")).status_code == 200
