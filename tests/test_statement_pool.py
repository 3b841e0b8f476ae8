"""PostgreSQL's hot path (speed-up ``asyncpg_pool``): the per-request lookup on a pool of its own.

The lookup runs on plain asyncpg connections named ``quart_app statements``
in ``pg_stat_activity``: at most ``DB_POOL_SIZE`` of them, kept open across
bursts (no connection opened and closed per burst, as SQLAlchemy's overflow
connections were), none when the speed-up is off, and ones the server ends
are replaced without the client seeing an error.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import register_api

from quart_app.db import StatementPool

pytestmark = pytest.mark.postgresql_only("needs a PostgreSQL server")

POOL_SIZE = 3


def lookup_connections(database) -> set[int]:
    """The backend pids of the statement pool's connections to this test's database."""
    rows = database.rows(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = "
        f"'{StatementPool.NAME}'"
    )
    return {pid for (pid,) in rows}


async def burst(client, size: int = 30) -> list[int]:
    return [response.status_code for response in await asyncio.gather(*(client.get("/api/me") for _ in range(size)))]


async def test_the_lookup_keeps_at_most_pool_size_connections_across_bursts(database, make_app):
    app = make_app(DB_POOL_SIZE=POOL_SIZE)
    async with app.test_app():
        client = app.test_client()
        assert (await register_api(client, "alice")).status_code == 201
        assert await burst(client) == [200] * 30
        first = lookup_connections(database)
        assert 1 <= len(first) <= POOL_SIZE
        for _ in range(3):
            assert await burst(client) == [200] * 30
            assert lookup_connections(database) == first  # the same connections, none opened or closed


async def test_with_the_speed_up_off_the_lookup_uses_the_engines_connections(database, make_app):
    app = make_app(DB_POOL_SIZE=POOL_SIZE, SPEEDUPS="all,-asyncpg_pool")
    async with app.test_app():
        client = app.test_client()
        assert (await register_api(client, "alice")).status_code == 201
        assert await burst(client) == [200] * 30
        assert lookup_connections(database) == set()


async def test_lookup_connections_the_server_ends_are_replaced_without_an_error(database, make_app):
    app = make_app(DB_POOL_SIZE=POOL_SIZE)
    async with app.test_app():
        client = app.test_client()
        assert (await register_api(client, "alice")).status_code == 201
        assert await burst(client, 10) == [200] * 10
        ended = lookup_connections(database)
        database.rows(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid IN ({','.join(map(str, ended))})"
        )
        assert await burst(client, 10) == [200] * 10
        assert lookup_connections(database).isdisjoint(ended)
        assert (await client.get("/dashboard")).status_code == 200
