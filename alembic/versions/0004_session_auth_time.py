"""session_auth_time: when a credential was last presented in each session (quart_login's freshness)

auth_sessions.auth_time is nullable (NULL: not fresh). The sessions already
open were all started by a login: theirs is their created_at.

Revision ID: session_auth_time
Revises: account_security
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from quart_app.migrations import add_missing_columns, drop_columns_if_present

revision: str = "session_auth_time"
down_revision: str | Sequence[str] | None = "account_security"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A column already there keeps its values.
    if add_missing_columns("auth_sessions", sa.Column("auth_time", sa.DateTime(), nullable=True)):
        op.execute("UPDATE auth_sessions SET auth_time = created_at")


def downgrade() -> None:
    drop_columns_if_present("auth_sessions", "auth_time")
