"""email_flows: verified addresses, mailed tokens (reset, verify, email change), the mail outbox

users.email_verified is added false for every existing row: accounts adopted
from the Flask database start unverified and keep working (unless
QUART_APP_REQUIRE_VERIFIED_EMAIL is turned on). email_tokens keeps only the
SHA-256 of each mailed token; mail_outbox holds messages queued with the
change that caused them, until a sender delivers them.

Revision ID: email_flows
Revises: email_key
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from quart_app.migrations import (
    add_missing_columns,
    create_index_if_missing,
    create_table_if_missing,
    drop_columns_if_present,
)

revision: str = "email_flows"
down_revision: str | Sequence[str] | None = "email_key"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    add_missing_columns("users", sa.Column("email_verified", sa.Boolean(), nullable=False, server_default=sa.false()))
    create_table_if_missing(
        "email_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("email", sa.String(120), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
    )
    create_index_if_missing("ix_email_tokens_user_id", "email_tokens", ["user_id"])
    create_table_if_missing(
        "mail_outbox",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("recipient", sa.String(255), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.Column("status", sa.String(8), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.String(200), nullable=True),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
    )
    create_index_if_missing("ix_mail_outbox_due", "mail_outbox", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("mail_outbox")
    op.drop_table("email_tokens")
    drop_columns_if_present("users", "email_verified")
