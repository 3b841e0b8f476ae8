"""factors: second factors (TOTP, later passkeys) and recovery codes

user_factors holds each user's second factors: for TOTP the base32 secret
encrypted with a key derived from QUART_APP_MFA_KEY or the secret key (never
plain), and the last 30-second step a code was accepted for (no code works
twice); a row with no confirmed_at is a setup not yet confirmed. recovery_codes
keeps only a keyed SHA-256 digest of each single-use code. Both go with their
user (ON DELETE CASCADE). No existing table changes: the downgrade drops the
two tables, and with them every factor and code.

Revision ID: factors
Revises: session_assurance
Create Date: 2026-12-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from quart_app.migrations import create_index_if_missing, create_table_if_missing

revision: str = "factors"
down_revision: str | Sequence[str] | None = "session_assurance"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_table_if_missing(
        "user_factors",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(64), nullable=True),
        sa.Column("secret", sa.LargeBinary(), nullable=True),
        sa.Column("last_step", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(), nullable=True),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
    )
    create_index_if_missing("ix_user_factors_user_id", "user_factors", ["user_id"])
    create_table_if_missing(
        "recovery_codes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
    )
    create_index_if_missing("ix_recovery_codes_user_id", "recovery_codes", ["user_id"])


def downgrade() -> None:
    op.drop_table("recovery_codes")
    op.drop_table("user_factors")
