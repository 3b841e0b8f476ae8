"""Adopting a database made by the sync Flask app: `alembic stamp seed && alembic upgrade head`.

The Flask-era file is built here with the stdlib sqlite3 module and the exact
DDL Flask-SQLAlchemy's create_all emits for the seed's model, with passwords
hashed by Werkzeug as the seed's ``set_password`` does.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
from contextlib import asynccontextmanager, closing
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from argon2 import PasswordHasher as Argon2Hasher
from conftest import FAST_HASHING, ROOT, alembic, auth_cookie, login_form, register_api, sqlite_url
from werkzeug.security import generate_password_hash

from quart_app import create_app

# These tests build SQLite files of their own (the Flask app's default store);
# the PostgreSQL adoption path is in test_postgresql.py.
pytestmark = pytest.mark.sqlite_only("builds and inspects its own SQLite files")

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
async def serving(path: Path):
    """A test client of a freshly created app on ``path``."""
    app = create_app({"ENV": "testing", "DATABASE_URL": sqlite_url(path), **FAST_HASHING})
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


def test_adoption_keeps_every_row_and_its_hash(adopted, flask_rows):
    """After stamp seed + upgrade head every row keeps its id, username, email and hash."""
    assert revision(adopted) == [HEAD]
    rows = query(adopted, "SELECT id, username, email, password_hash FROM users ORDER BY id")
    assert rows == flask_rows
    # What the port adds: adopted accounts are active, with no known creation time.
    assert query(adopted, "SELECT is_active, created_at FROM users") == [(1, None)] * len(flask_rows)


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


async def test_adopted_user_logs_in_through_the_html_form(adopted):
    """The login page (csrf token and all) accepts an adopted user's old password."""
    _, username, _, password, _ = FLASK_USERS[2]
    async with serving(adopted) as client:
        response = await login_form(client, username.lower(), password)
        assert response.status_code in (302, 303)
        assert auth_cookie(client)
    assert stored_hash(adopted, 7).startswith("$argon2id$")


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


def test_fresh_schema_matches_adopted_schema(tmp_path, adopted):
    """upgrade head on an empty database and adoption give the same tables and indexes."""
    fresh = tmp_path / "fresh.db"
    alembic("upgrade", "head", url=sqlite_url(fresh))
    assert schema_names(fresh) == schema_names(adopted)
    assert {name for kind, name, _ in schema_names(adopted) if kind == "index"} >= {
        "uq_users_username_lower",
        "uq_users_email_lower",
        "ix_auth_sessions_user_id",
    }
    assert users_shape(fresh) == users_shape(adopted)
    assert users_shape(adopted)[1:] == (
        [("email",), ("username",)],
        [("uq_users_email_lower", 1), ("uq_users_username_lower", 1)],
    )


async def test_weaker_argon2_hash_is_rehashed_with_app_parameters_at_login(database):
    """An argon2id hash with older, weaker parameters is replaced after a successful login."""
    weak = Argon2Hasher(time_cost=1, memory_cost=512, parallelism=1).hash("weakly hashed pw")
    assert argon2_params(weak) == (512, 1, 1)
    with closing(sqlite3.connect(database.path)) as conn, conn:
        user_id = conn.execute(
            "INSERT INTO users (username, email, password_hash) VALUES ('weak', 'weak@example.com', ?)", (weak,)
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
