"""Alembic's environment: async, on the same database URL as the app."""

import asyncio
import warnings
from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from quart_app import migrations  # also registers the SQLite comparison of indexes on expressions
from quart_app.core.config import database_url
from quart_app.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    # Precedence: `alembic -x url=...`, then a URL set by a caller of the
    # Python API, then QUART_APP_DATABASE_URL / the app's default.
    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or database_url()
    )


def _configure(connection: Connection | None = None, **kwargs) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode copies tables.
        render_as_batch=True,
        compare_type=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    # SQLite's DDL is transactional too, once the driver stops managing
    # transactions itself (below): a failed upgrade then leaves nothing behind.
    _configure(connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


def _sqlite_transactional_ddl(engine) -> None:
    # pysqlite only opens a transaction before INSERT/UPDATE/DELETE, so a batch
    # migration's CREATE TABLE would commit on its own and survive a failure.
    @event.listens_for(engine.sync_engine, "connect")
    def _no_implicit_transactions(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _explicit_begin(connection) -> None:
        connection.exec_driver_sql("BEGIN")


async def run_migrations_online() -> None:
    url = make_url(_url())
    engine = create_async_engine(url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        _sqlite_transactional_ddl(engine)
    try:
        async with engine.connect() as connection:
            with warnings.catch_warnings():
                if url.get_backend_name() == "sqlite":
                    # Alembic warns that it cannot compare the models' indexes
                    # on expressions (lower(username)...) on SQLite:
                    # quart_app.migrations compares them there.
                    warnings.filterwarnings("ignore", message=migrations.SKIPPED_COMPARISON, category=UserWarning)
                await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
