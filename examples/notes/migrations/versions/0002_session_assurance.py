"""auth_sessions: how each session was authenticated (quart_login's amr and aal)

Sessions already open were password logins: the server defaults give them
'pwd' and 1.

Revision ID: 0002_session_assurance
Revises: 0001_initial
Create Date: 2026-12-04 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_session_assurance"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # ADD COLUMN in place on every backend: a NOT NULL column needs its constant server default.
    op.add_column("auth_sessions", sa.Column("amr", sa.String(length=64), server_default="pwd", nullable=False))
    op.add_column("auth_sessions", sa.Column("aal", sa.Integer(), server_default="1", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("auth_sessions") as batch:
        batch.drop_column("aal")
        batch.drop_column("amr")
