"""Helpers for Alembic revisions that meet a database someone else made first (the Flask app, a fork's).

A revision written with them adds only what is missing and leaves every
existing table, column, index and value as it is::

    from quart_app.migrations import add_missing_columns, create_index_if_missing, create_table_if_missing

    def upgrade() -> None:
        add_missing_columns("users", sa.Column("display_name", sa.String(80), nullable=True))
        create_table_if_missing("notes", sa.Column("id", sa.Integer(), primary_key=True), ...)
        create_index_if_missing("ix_notes_user_id", "notes", ["user_id"])

What is kept is kept as it is, even where it differs from the models (a
column's type, say): ``alembic check`` then reports the difference.

They run inside a revision (they use ``alembic.op``). Offline (``alembic
upgrade --sql``: no database to look at) they take everything as missing and
write what ``op`` would. The module also gives
Alembic's autogenerate (``alembic check``, ``revision --autogenerate``) the
comparison of indexes on expressions for SQLite, whose reflection in
SQLAlchemy skips them; alembic/env.py imports it for that.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic import op
from alembic.autogenerate import comparators
from alembic.operations import ops
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateIndex

# Under alembic's logger, which alembic.ini shows: the comparisons below are autogenerate's.
log = logging.getLogger("alembic.autogenerate.quart_app")

# What SQLAlchemy warns when its SQLite reflection leaves out an index on an
# expression, and what Alembic warns when it leaves out the model's side of
# such an index (the comparator below compares both instead).
SKIPPED_REFLECTION = "Skipped unsupported reflection of expression-based index"
SKIPPED_COMPARISON = "autogenerate skipping metadata-specified expression-based index"


def _inspector() -> sa.Inspector:
    # A new inspector each time: it caches, and the revision changes the schema.
    return sa.inspect(op.get_bind())


def _offline() -> bool:
    return op.get_context().as_sql


def has_table(table: str) -> bool:
    return not _offline() and _inspector().has_table(table)


def column_names(table: str) -> set[str]:
    if _offline():
        return set()
    return {column["name"] for column in _inspector().get_columns(table)}


def index_names(table: str) -> set[str]:
    """Every index of ``table``, those on expressions included (which SQLite's reflection leaves out)."""
    if _offline():
        return set()
    connection = op.get_bind()
    if connection.dialect.name == "sqlite":
        return set(_sqlite_index_sql(connection, table))
    return {index["name"] for index in _inspector().get_indexes(table)}


def add_missing_columns(table: str, *columns: sa.Column) -> list[str]:
    """Add each of ``columns`` that ``table`` lacks; the names of those added.

    ``ALTER TABLE ... ADD COLUMN`` on every backend (no copy of the table, even
    on SQLite): a NOT NULL column needs a constant ``server_default`` there.
    """
    present = column_names(table)
    added = []
    for column in columns:
        if column.name not in present:
            op.add_column(table, column)
            added.append(column.name)
    return added


def create_table_if_missing(table: str, *elements: Any, **kwargs: Any) -> bool:
    """``op.create_table`` unless ``table`` exists (kept as it is); whether it was created."""
    if has_table(table):
        return False
    op.create_table(table, *elements, **kwargs)
    return True


def create_index_if_missing(index: str, table: str, columns: Sequence[str | sa.TextClause], **kwargs: Any) -> bool:
    """``op.create_index`` unless ``table`` has an index named ``index``; whether it was created."""
    if index in index_names(table):
        return False
    op.create_index(index, table, list(columns), **kwargs)
    return True


def drop_columns_if_present(table: str, *names: str) -> list[str]:
    """Drop each of the columns ``names`` that ``table`` has (the rest of the table is kept); those dropped."""
    present = list(names) if _offline() else [name for name in names if name in column_names(table)]
    if present:
        with batch_alter_table(table) as batch:
            for name in present:
                batch.drop_column(name)
    return present


@contextmanager
def batch_alter_table(table: str, **kwargs: Any) -> Iterator[Any]:
    """``op.batch_alter_table`` that keeps the table's indexes on expressions.

    On SQLite a batch that needs a new copy of the table rebuilds only the
    indexes SQLAlchemy can reflect: without this, the copy of ``users`` would
    lose ``uq_users_username_lower`` and ``uq_users_email_lower``, and with
    them the case-insensitive uniqueness. They are created again, from their
    own SQL, once the copy is made (drop an index before dropping a column it
    reads). Elsewhere this is ``op.batch_alter_table``.
    """
    connection = op.get_bind()
    if connection.dialect.name != "sqlite" or _offline():
        with op.batch_alter_table(table, **kwargs) as batch:
            yield batch
        return
    expression_indexes = _sqlite_expression_indexes(connection, table)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SKIPPED_REFLECTION, category=sa.exc.SAWarning)
        with op.batch_alter_table(table, **kwargs) as batch:
            yield batch
    present = set(_sqlite_index_sql(connection, table))
    for name, sql in expression_indexes.items():
        if name not in present:
            op.execute(sql)


# -- SQLite: reading indexes on expressions ------------------------------------------------


def _sqlite_index_sql(connection: Connection, table: str) -> dict[str, str | None]:
    """Each index of ``table`` by name, with its CREATE INDEX (None for those made by UNIQUE or PRIMARY KEY)."""
    rows = connection.exec_driver_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (table,)
    ).all()
    return dict(rows)


def _sqlite_expression_indexes(connection: Connection, table: str) -> dict[str, str]:
    """The CREATE INDEX of each index of ``table`` on an expression, by name."""
    found = {}
    for name, sql in _sqlite_index_sql(connection, table).items():
        if sql is None:
            continue
        quoted = connection.dialect.identifier_preparer.quote_identifier(name)
        # index_info names no column for an expression (as in SQLAlchemy's reflection).
        if any(row[2] is None for row in connection.exec_driver_sql(f"PRAGMA index_info({quoted})")):
            found[name] = sql
    return found


_CREATE_INDEX_RE = re.compile(
    r"^\s*CREATE\s+(?P<unique>UNIQUE\s+)?INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?\S+\s+ON\s+\S+?\s*\(", re.IGNORECASE
)


def _index_from_sql(name: str, sql: str, table: sa.Table) -> sa.Index:
    """An Index on ``table`` equivalent to the CREATE INDEX ``sql`` (its expressions as text)."""
    match = _CREATE_INDEX_RE.match(sql)
    if match is None:
        raise ValueError(f"not a CREATE INDEX statement: {sql!r}")
    expressions, depth, start = [], 1, match.end()
    position = start
    while depth:
        if position == len(sql):
            raise ValueError(f"unbalanced parentheses in {sql!r}")
        character = sql[position]
        if character == "(":
            depth += 1
        elif character == ")":
            depth -= 1
        if (character == "," and depth == 1) or depth == 0:
            expressions.append(sql[start:position].strip())
            start = position + 1
        position += 1
    where = re.match(r"\s*WHERE\s+(.+)$", sql[position:], re.IGNORECASE | re.DOTALL)
    options = {"sqlite_where": sa.text(where.group(1))} if where else {}
    return sa.Index(
        name,
        *(sa.text(expression) for expression in expressions),
        unique=bool(match["unique"]),
        _table=table,
        **options,
    )


def _normalized(sql: str) -> str:
    """CREATE INDEX text without what does not change its meaning: quotes, spacing, letter case."""
    sql = re.sub(r"\s+", " ", sql.replace('"', "")).strip()
    sql = re.sub(r" ?([(),]) ?", r"\1", sql)
    return re.sub(r"(?i)\bIF NOT EXISTS ", "", sql).casefold()


def _is_expression_index(index: sa.Index) -> bool:
    return any(not isinstance(element, sa.Column) for element in index.expressions)


@comparators.dispatch_for("table", qualifier="sqlite")
def _compare_sqlite_expression_indexes(
    autogen_context: Any,
    modify_ops: ops.ModifyTableOps,
    schema: str | None,
    table_name: str,
    conn_table: sa.Table | None,
    metadata_table: sa.Table | None,
) -> None:
    """Autogenerate's comparison of the indexes on expressions that SQLAlchemy's SQLite reflection skips.

    Alembic leaves both sides of those out on SQLite (with a warning); here the
    database's side is read from sqlite_master and compared, by name and by
    definition, with the model's: an index missing from the models is reported
    as removed, one missing from the database as added, one defined
    differently as changed.
    """
    if metadata_table is None or schema is not None:
        return
    connection = autogen_context.connection
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SKIPPED_REFLECTION, category=sa.exc.SAWarning)
        reflected = (
            set() if conn_table is None else {ix["name"] for ix in autogen_context.inspector.get_indexes(table_name)}
        )
    # Only what Alembic itself does not compare.
    declared = {ix.name: ix for ix in metadata_table.indexes if _is_expression_index(ix) and ix.name not in reflected}
    stored = {}
    if conn_table is not None:
        stored = {
            name: _index_from_sql(name, sql, conn_table)
            for name, sql in _sqlite_expression_indexes(connection, table_name).items()
            if name not in reflected
            and autogen_context.run_name_filters(name, "index", {"table_name": table_name, "schema_name": schema})
        }
    dialect = autogen_context.dialect

    def definition(index: sa.Index) -> str:
        return _normalized(str(CreateIndex(index).compile(dialect=dialect)))

    for name in sorted(set(stored) - set(declared)):
        if autogen_context.run_object_filters(stored[name], name, "index", True, None):
            modify_ops.ops.append(ops.DropIndexOp.from_index(stored[name]))
            log.info("Detected removed index %r on %r", name, table_name)
    for name in sorted(set(declared) - set(stored)):
        if autogen_context.run_object_filters(declared[name], name, "index", False, None):
            modify_ops.ops.append(ops.CreateIndexOp.from_index(declared[name]))
            log.info("Detected added index %r on %r", name, table_name)
    for name in sorted(set(declared) & set(stored)):
        if definition(declared[name]) == definition(stored[name]):
            log.info("Compared index %r on %r from its CREATE INDEX: the same", name, table_name)
        elif autogen_context.run_object_filters(declared[name], name, "index", False, stored[name]):
            modify_ops.ops.append(ops.DropIndexOp.from_index(stored[name]))
            modify_ops.ops.append(ops.CreateIndexOp.from_index(declared[name]))
            log.info("Detected changed index %r on %r", name, table_name)
