"""passkeys: WebAuthn credentials as factors, and their one-time challenges

A passkey is a row of user_factors of kind 'webauthn': its credential id
(unique: an assertion names it), its COSE public key, the signature counter
last seen (a counter that goes backwards is refused), the user handle it was
registered with, and the transports the browser reported. Four nullable
columns are added in place (no copy of the table; TOTP rows leave them NULL).
webauthn_challenges keeps the SHA-256 of each challenge handed out, its
purpose, user and expiry: a ceremony's answer consumes it with one
conditional DELETE, so a challenge works once, on any worker. The downgrade
drops the passkeys, the columns and the table.

Revision ID: passkeys
Revises: mfa_pending
Create Date: 2026-12-14
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

revision: str = "passkeys"
down_revision: str | Sequence[str] | None = "mfa_pending"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("credential_id", "public_key", "sign_count", "user_handle", "transports")


def upgrade() -> None:
    add_missing_columns(
        "user_factors",
        sa.Column("credential_id", sa.LargeBinary(), nullable=True),
        sa.Column("public_key", sa.LargeBinary(), nullable=True),
        sa.Column("sign_count", sa.BigInteger(), nullable=True),
        sa.Column("user_handle", sa.LargeBinary(), nullable=True),
        sa.Column("transports", sa.String(200), nullable=True),
    )
    create_index_if_missing("uq_user_factors_credential_id", "user_factors", ["credential_id"], unique=True)
    create_table_if_missing(
        "webauthn_challenges",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
    )
    create_index_if_missing("ix_webauthn_challenges_expires_at", "webauthn_challenges", ["expires_at"])
    create_index_if_missing("ix_webauthn_challenges_user_id", "webauthn_challenges", ["user_id"])


def downgrade() -> None:
    op.drop_table("webauthn_challenges")
    op.execute(sa.text("DELETE FROM user_factors WHERE kind = 'webauthn'"))
    op.drop_index("uq_user_factors_credential_id", table_name="user_factors")
    drop_columns_if_present("user_factors", *COLUMNS)
