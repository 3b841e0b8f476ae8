"""session_events: PostgreSQL tells listeners the moment a session ends

On PostgreSQL, a row trigger on auth_sessions sends NOTIFY quart_app_sessions
's:<id>' for every session row deleted (a logout, a revocation, a password
change or reset, a deactivation, an account removed by cascade, or SQL by
hand), and one on users sends 'u:<id>' when an account is deactivated in
place. NOTIFY is transactional: listeners hear of a change when it commits,
never of one rolled back. quart_app/session_events.py listens, so that
/ws/session learns of an ended session in milliseconds instead of polling.
SQLite has no NOTIFY: nothing is created there (its sockets poll, or use
Redis). The downgrade drops the triggers and their functions.

Revision ID: session_events
Revises: passkeys
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "session_events"
down_revision: str | Sequence[str] | None = "passkeys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "quart_app_sessions"  # quart_app/session_events.py listens on it

# One statement each (a driver's prepared statement takes one).
UPGRADE = (
    f"""CREATE OR REPLACE FUNCTION quart_app_session_ended() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{CHANNEL}', 's:' || OLD.id);
        RETURN NULL;
    END $$""",
    f"""CREATE OR REPLACE FUNCTION quart_app_user_deactivated() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{CHANNEL}', 'u:' || NEW.id);
        RETURN NULL;
    END $$""",
    "DROP TRIGGER IF EXISTS quart_app_session_ended ON auth_sessions",
    """CREATE TRIGGER quart_app_session_ended AFTER DELETE ON auth_sessions
    FOR EACH ROW EXECUTE FUNCTION quart_app_session_ended()""",
    "DROP TRIGGER IF EXISTS quart_app_user_deactivated ON users",
    """CREATE TRIGGER quart_app_user_deactivated AFTER UPDATE OF is_active ON users
    FOR EACH ROW WHEN (OLD.is_active AND NOT NEW.is_active) EXECUTE FUNCTION quart_app_user_deactivated()""",
)

DOWNGRADE = (
    "DROP TRIGGER IF EXISTS quart_app_user_deactivated ON users",
    "DROP TRIGGER IF EXISTS quart_app_session_ended ON auth_sessions",
    "DROP FUNCTION IF EXISTS quart_app_user_deactivated()",
    "DROP FUNCTION IF EXISTS quart_app_session_ended()",
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in UPGRADE:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in DOWNGRADE:
            op.execute(statement)
