"""The database a test runs on: a SQLite file (always), or a PostgreSQL database.

The suite runs on SQLite unless ``QUART_APP_TEST_DATABASE_URL`` (or pytest's
``--database-url``) names a PostgreSQL server, as
``postgresql+asyncpg://user@127.0.0.1:5432/postgres``: the database in that
URL is only used to create and drop the suite's own databases (one migrated
template, then one copy of it per test or per server), never to store
anything.

Tests read and change what is stored through ``TestDatabase.rows`` and
``TestDatabase.write`` (SQL with ``?`` placeholders, the same on both), with
the stdlib sqlite3 module or psycopg: never through the app.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import make_url

# How SQLAlchemy writes a DateTime into SQLite: PostgreSQL's values are shown the same way.
SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def libpq_url(url: str) -> str:
    """``postgresql+asyncpg://…`` as a libpq URI (psycopg's)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class TestDatabase:
    __test__ = False  # not a test class, whatever pytest thinks of its name

    url: str
    backend: str  # "sqlite" or "postgresql"
    maker: Backend
    path: Path | None = None  # the file, on SQLite
    name: str | None = None  # the database, on PostgreSQL

    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    def clone(self, directory: Path) -> TestDatabase:
        """A new database holding what this one holds (a file in ``directory`` on SQLite)."""
        return self.maker.create(directory, self)

    def drop(self) -> None:
        self.maker.drop(self)

    def rows(self, sql: str, *params) -> list[tuple]:
        """What ``sql`` reads from the database (``?`` placeholders)."""
        if self.is_sqlite:
            with closing(sqlite3.connect(self.path)) as conn:
                return conn.execute(sql, params).fetchall()
        import psycopg

        with psycopg.connect(libpq_url(self.url), autocommit=True) as conn:
            found = conn.execute(_psycopg_sql(sql), params).fetchall()
        return [tuple(_shown(value) for value in row) for row in found]

    def write(self, sql: str, *params) -> None:
        """Run ``sql`` (``?`` placeholders) and commit."""
        if self.is_sqlite:
            with closing(sqlite3.connect(self.path)) as conn, conn:
                conn.execute(sql, params)
            return
        import psycopg

        with psycopg.connect(libpq_url(self.url), autocommit=True) as conn:
            conn.execute(_psycopg_sql(sql), params)


def _psycopg_sql(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


def _shown(value):
    return value.strftime(SQLITE_DATETIME) if isinstance(value, datetime) else value


class Backend:
    """Makes the suite's databases on one backend, and drops them."""

    def __init__(self, server_url: str | None) -> None:
        self.server_url = server_url
        self.name = "sqlite" if server_url is None else make_url(server_url).get_backend_name()
        if self.name not in ("sqlite", "postgresql"):
            raise ValueError(f"test database must be PostgreSQL (or unset for SQLite), not {self.name}")
        self._numbers = itertools.count(1)
        self._made: list[TestDatabase] = []

    def create(self, directory: Path, template: TestDatabase | None = None) -> TestDatabase:
        """A new database: empty, or a copy of ``template`` (a file in ``directory`` on SQLite)."""
        if self.name == "sqlite":
            path = directory / f"app{next(self._numbers)}.db"
            if template is not None:
                shutil.copy(template.path, path)
            return TestDatabase(url=sqlite_url(path), backend="sqlite", maker=self, path=path)
        name = f"quart_app_test_{os.getpid()}_{next(self._numbers)}"
        clause = f" TEMPLATE {template.name}" if template is not None else ""
        self._admin(f"CREATE DATABASE {name}{clause}")
        database = TestDatabase(
            url=make_url(self.server_url).set(database=name).render_as_string(hide_password=False),
            backend="postgresql",
            maker=self,
            name=name,
        )
        self._made.append(database)
        return database

    def drop(self, database: TestDatabase) -> None:
        if database.is_sqlite:
            return
        self._admin(f"DROP DATABASE IF EXISTS {database.name} WITH (FORCE)")
        self._made.remove(database)

    def drop_all(self) -> None:
        for database in list(self._made):
            self.drop(database)

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(libpq_url(self.server_url), autocommit=True) as conn:
            conn.execute(sql)
