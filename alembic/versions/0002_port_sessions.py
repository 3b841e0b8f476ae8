"""port_sessions: what the port adds to the seed

- users.is_active (deactivation) and users.created_at (NULL for adopted rows);
- case-insensitive uniqueness of username and email, enforced by the database;
- auth_sessions: server-side sessions, found by the SHA-256 of the cookie's secret.

The users table of an adopted Flask database is altered in place, never
copied: a column or index it already has (created_at, say) is kept with its
values, and so is every column and table the port does not know.

Revision ID: port_sessions
Revises: seed
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from quart_app.migrations import add_missing_columns, create_index_if_missing, drop_columns_if_present

revision: str = "port_sessions"
down_revision: str | Sequence[str] | None = "seed"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _refuse_case_duplicates() -> None:
    # An adopted Flask database may hold "Carol" and "carol": the unique
    # lower() indexes cannot be built then. Say which, before changing anything.
    connection = op.get_bind()
    for column in ("username", "email"):
        clashes = (
            connection.execute(
                sa.text(f"SELECT lower({column}) FROM users GROUP BY lower({column}) HAVING count(*) > 1")
            )
            .scalars()
            .all()
        )
        if clashes:
            raise RuntimeError(
                f"users.{column} holds values that differ only in case ({', '.join(sorted(clashes)[:10])}); "
                "merge or rename those accounts, then run `alembic upgrade head` again."
            )


def upgrade() -> None:
    _refuse_case_duplicates()
    add_missing_columns(
        "users",
        sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.DateTime(), nullable=True),
    )
    create_index_if_missing("uq_users_username_lower", "users", [sa.text("lower(username)")], unique=True)
    create_index_if_missing("uq_users_email_lower", "users", [sa.text("lower(email)")], unique=True)

    op.create_table(
        "auth_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("remember", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("ip", sa.String(length=45), nullable=True),
        sa.Column("user_agent", sa.String(length=256), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_auth_sessions_user_id", "auth_sessions", ["user_id"])


def downgrade() -> None:
    # Back to the seed's users table: is_active and created_at go, even on a
    # database whose Flask app had columns of those names; the rest is kept.
    op.drop_index("ix_auth_sessions_user_id", table_name="auth_sessions")
    op.drop_table("auth_sessions")
    op.drop_index("uq_users_email_lower", table_name="users")
    op.drop_index("uq_users_username_lower", table_name="users")
    drop_columns_if_present("users", "created_at", "is_active")
