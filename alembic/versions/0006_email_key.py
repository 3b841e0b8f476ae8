"""email_key: an email in any case or Unicode spelling is one account

users.email_key holds ``quart_app.auth.validation.email_key(email)``: the
local part NFKC-normalized and case folded, the domain IDNA-encoded with
UTS-46 mapping. Its unique index makes "Ärger@example.com" and
"ärger@example.com", an address in NFC and in NFD, a domain in Unicode and in
xn-- form, fullwidth letters and plain ones, one account; the login looks
accounts up by it. (uq_users_email_lower stays: lower() folds ASCII only on
SQLite and knows no Unicode forms anywhere.)

The keys are computed in Python, for every row, before anything changes: two
accounts whose emails share a key (or a key longer than the column) stop the
upgrade with a message naming them; merge or change them, then upgrade again.

users is altered in place, never copied (ALTER TABLE ... ADD COLUMN, on SQLite
too): the column is added NOT NULL with an empty default, filled, then
indexed. On PostgreSQL the default is dropped at the end; SQLite cannot drop
it without copying the table, so it stays there (the app always sets the key;
a row inserted behind its back gets '', and a second one is refused by the
index). A users table that already has an email_key column keeps it with its
values.

Revision ID: email_key
Revises: throttle_pending
Create Date: 2026-12-05
"""

from collections.abc import Sequence
from itertools import islice

import sqlalchemy as sa
from alembic import op

from quart_app.auth.validation import EMAIL_KEY_MAX, email_key
from quart_app.migrations import add_missing_columns, create_index_if_missing, drop_columns_if_present

revision: str = "email_key"
down_revision: str | Sequence[str] | None = "throttle_pending"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 1000
SHOWN = 10  # groups of accounts named in a refusal


def _shown(accounts: list[tuple[int, str]]) -> str:
    # With the ids: an address in NFC and the same in NFD look alike.
    return ", ".join(f"{email} (id {user_id})" for user_id, email in accounts)


def _keys() -> list[dict[str, object]]:
    """The key of every row, as UPDATE parameters; refuses keys two rows share, or too long for the column."""
    by_key: dict[str, list[tuple[int, str]]] = {}
    for user_id, email in op.get_bind().execute(sa.text("SELECT id, email FROM users ORDER BY id")):
        by_key.setdefault(email_key(email), []).append((user_id, email))
    shared = [accounts for accounts in by_key.values() if len(accounts) > 1]
    if shared:
        raise RuntimeError(
            "users.email holds addresses that are one address once case and Unicode spelling are ignored ("
            + "; ".join(_shown(accounts) for accounts in shared[:SHOWN])
            + (f"; and {len(shared) - SHOWN} more" if len(shared) > SHOWN else "")
            + "); merge or change those accounts, then run `alembic upgrade head` again."
        )
    too_long = [accounts[0] for key, accounts in by_key.items() if len(key) > EMAIL_KEY_MAX]
    if too_long:
        raise RuntimeError(
            f"users.email holds addresses longer than {EMAIL_KEY_MAX} characters once normalized "
            f"({_shown(too_long[:SHOWN])}); change them, then run `alembic upgrade head` again."
        )
    return [{"id": accounts[0][0], "key": key} for key, accounts in by_key.items()]


def upgrade() -> None:
    if op.get_context().as_sql:
        raise RuntimeError("revision email_key computes each account's key in Python: run it online, not with --sql.")
    keys = _keys()  # (before anything changes)
    if add_missing_columns("users", sa.Column("email_key", sa.String(255), nullable=False, server_default="")):
        connection = op.get_bind()
        update = sa.text("UPDATE users SET email_key = :key WHERE id = :id")
        rows = iter(keys)
        while batch := list(islice(rows, BATCH)):
            connection.execute(update, batch)
        if connection.dialect.name != "sqlite":
            op.alter_column("users", "email_key", server_default=None)
    create_index_if_missing("uq_users_email_key", "users", ["email_key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_users_email_key", table_name="users")
    drop_columns_if_present("users", "email_key")
