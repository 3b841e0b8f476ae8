"""Two hypercorn instances (separate processes, separate ports) on one database.

What N instances behind a load balancer need: a cookie made by one works on
the other, a session ended on one is dead on the other (and a WebSocket held
by one hears of it), failed logins count across both, and the users CLI acts
on both. Nothing may live in one instance's memory.

The suite runs this on its backend: one PostgreSQL database when it is given
one (the scale-out setup), else one SQLite file shared by both instances.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import pytest
from conftest import FAST_HASHING
from servers import Server, client_for, cookie_header, run_cli, serving
from test_live_serving import POLICY_VIOLATION, REVOKED_WITHIN, WebSocket, register

PASSWORD = "correct horse battery"
# Failed logins per account before the lock (LOGIN_RATE_LIMIT below).
LIMIT = 4
SETTINGS = {**FAST_HASHING, "LOGIN_RATE_LIMIT": f"{LIMIT}/minute", "WS_POLL_INTERVAL": 0.2}


@pytest.fixture(scope="module")
def instances(tmp_path_factory, migrated_template) -> Iterator[tuple[Server, Server]]:
    """Instances A and B: one worker each, one SECRET_KEY, one database."""
    directory = tmp_path_factory.mktemp("scale-out")
    db = migrated_template.clone(directory)
    key = secrets.token_urlsafe(48)
    try:
        with (
            serving(db, SETTINGS, workers=1, secret_key=key, log_path=directory / "a.log") as a,
            serving(db, SETTINGS, workers=1, secret_key=key, log_path=directory / "b.log") as b,
        ):
            assert a.port != b.port and not (a.worker_pids & b.worker_pids)
            yield a, b
    finally:
        db.drop()


async def me(server: Server, token: str) -> int:
    async with client_for(server, headers=cookie_header(token)) as client:
        return (await client.get("/api/me")).status_code


async def test_a_cookie_from_one_instance_works_on_the_other(instances):
    a, b = instances
    token = await register(a, "roamer")
    async with client_for(b, headers=cookie_header(token)) as client:
        response = await client.get("/api/me")
        assert response.status_code == 200
        assert response.json()["username"] == "roamer"
        assert (await client.get("/dashboard")).status_code == 200


async def test_logout_on_one_instance_is_refused_on_the_other(instances):
    a, b = instances
    token = await register(a, "leaver")
    assert await me(a, token) == 200
    async with client_for(b, headers=cookie_header(token)) as client:
        assert (await client.post("/api/logout")).status_code == 204
    assert await me(a, token) == 401
    assert await me(b, token) == 401


async def test_a_socket_on_one_instance_hears_of_a_logout_on_the_other(instances):
    a, b = instances
    token = await register(a, "watcher")
    socket = await WebSocket.connect(a, "/ws/session", token)
    try:
        assert await socket.receive_json() == {"event": "hello", "username": "watcher"}
        async with client_for(b, headers=cookie_header(token)) as client:
            assert (await client.post("/api/logout")).status_code == 204
        async with asyncio.timeout(REVOKED_WITHIN):
            assert await socket.receive_json() == {"event": "revoked"}
            closed = await socket.receive_close()
        assert closed.code == POLICY_VIOLATION
    finally:
        await socket.aclose()


async def test_failed_logins_count_across_instances(instances):
    """LIMIT failures split over A and B lock the account on both; the right password waits too."""
    a, b = instances
    await register(a, "target")
    for attempt in range(LIMIT):
        server = (a, b)[attempt % 2]
        async with client_for(server) as client:
            response = await client.post("/api/login", json={"username": "target", "password": "wrong guess"})
        assert response.status_code == 401, (attempt, response.text)
    for server in (a, b):
        async with client_for(server) as client:
            response = await client.post("/api/login", json={"username": "target", "password": "another guess"})
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1


async def test_the_cli_on_one_instance_acts_on_both(instances):
    """`users deactivate` run with A's settings ends the sessions B is serving."""
    a, b = instances
    token = await register(b, "departing")
    assert await me(b, token) == 200
    code, output = await run_cli(a, "users", "deactivate", "departing")
    assert code == 0, output
    assert await me(b, token) == 401
    async with client_for(b) as client:
        response = await client.post("/api/login", json={"username": "departing", "password": PASSWORD})
    assert response.status_code == 401
