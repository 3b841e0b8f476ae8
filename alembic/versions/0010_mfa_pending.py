"""mfa_pending: logins waiting for their second factor

A right password for an account with a second factor gives no session: it
opens a row here (the user, the SHA-256 of the random secret its client holds
in the quart_app_mfa cookie, when it expires, remember-me and where to go
next, the wrong codes so far) that /login/2fa and POST /api/login/2fa finish.
The rows go with their user (ON DELETE CASCADE). No existing table changes:
the downgrade drops the table, and with it every login still waiting.

Revision ID: mfa_pending
Revises: factors
Create Date: 2026-12-12
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from quart_app.migrations import create_index_if_missing, create_table_if_missing

revision: str = "mfa_pending"
down_revision: str | Sequence[str] | None = "factors"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_table_if_missing(
        "mfa_pending",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("remember", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("next", sa.String(2048), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False, server_default="0"),
    )
    create_index_if_missing("ix_mfa_pending_user_id", "mfa_pending", ["user_id"])
    create_index_if_missing("ix_mfa_pending_expires_at", "mfa_pending", ["expires_at"])


def downgrade() -> None:
    op.drop_table("mfa_pending")
