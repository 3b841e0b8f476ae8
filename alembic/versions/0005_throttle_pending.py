"""throttle_pending: attempts reserved before their password is verified

Revision ID: throttle_pending
Revises: session_auth_time
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "throttle_pending"
down_revision: str | Sequence[str] | None = "session_auth_time"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("login_throttle") as batch:
        batch.add_column(sa.Column("pending", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("pending_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("login_throttle") as batch:
        batch.drop_column("pending_at")
        batch.drop_column("pending")
