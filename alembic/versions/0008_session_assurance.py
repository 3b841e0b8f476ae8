"""session_assurance: how each session was authenticated (quart_login's amr and aal)

auth_sessions.amr holds the methods presented in the session, comma-separated
("pwd", "pwd,otp"...), and auth_sessions.aal the assurance level they reach
(1 or 2). Every session open before this revision was started by a password:
the server defaults give those rows 'pwd' and 1.

Revision ID: session_assurance
Revises: email_flows
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa

from quart_app.migrations import add_missing_columns, drop_columns_if_present

revision: str = "session_assurance"
down_revision: str | Sequence[str] | None = "email_flows"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Columns already there keep their values.
    add_missing_columns(
        "auth_sessions",
        sa.Column("amr", sa.String(64), nullable=False, server_default="pwd"),
        sa.Column("aal", sa.Integer(), nullable=False, server_default="1"),
    )


def downgrade() -> None:
    drop_columns_if_present("auth_sessions", "amr", "aal")
