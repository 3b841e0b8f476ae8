"""Passkeys across the two hypercorn workers of one served app (real processes, one database).

A ceremony's challenge is kept in the database, not in a worker: options
handed out by one worker are answered on the other, for adding a passkey
and for signing in with one; and a challenge works once whichever worker
takes the answer, so the same answer sent to both workers at the same moment
signs in once (and finishes a pending login once). Each request is sent on a
connection a chosen worker holds (``servers.connection_to``), and the worker
that answered is checked. The served app's PUBLIC_URL is http://localhost,
the origin the software authenticator writes (the Host header, 127.0.0.1:port,
is not what a ceremony is checked against).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from conftest import FAST_HASHING, db_rows
from servers import AUTH_COOKIE, PROC_NET_TCP, Server, client_for, connection_to, cookie_header, serving
from webauthn_authenticator import SoftAuthenticator

from quart_app.auth import passkeys, pending

pytestmark = pytest.mark.skipif(not PROC_NET_TCP.exists(), reason="needs Linux /proc to tell which worker answered")

PASSWORD = "correct horse battery"
ORIGIN = "http://localhost"
# The throttles are out of the way (every request comes from 127.0.0.1): the races are about the challenges.
SETTINGS = {
    **FAST_HASHING,
    "PUBLIC_URL": ORIGIN,
    "LOGIN_RATE_LIMIT": "1000/minute",
    "LOGIN_IP_RATE_LIMIT": "1000/minute",
    "TOKEN_RATE_LIMIT": "1000/minute",
}
# Rounds of each race: a race the app loses now and then should show in one of them.
ROUNDS = 5
# Seconds any one request of client_for here may take (connection_to's clients keep httpx's 5 s).
REQUEST_TIMEOUT = 15


@pytest.fixture(scope="module")
def server(tmp_path_factory, migrated_template) -> Iterator[Server]:
    """Two workers of one instance on a copy of the migrated template (the suite's backend: SQLite or PostgreSQL)."""
    directory = tmp_path_factory.mktemp("passkey-workers")
    db = migrated_template.clone(directory)
    try:
        with serving(db, SETTINGS, workers=2, log_path=directory / "hypercorn.log") as server:
            assert len(server.worker_pids) == 2
            yield server
    finally:
        db.drop()


# -- helpers -------------------------------------------------------------------------------


async def rows(database, sql: str, *params) -> list[tuple]:
    """What the database holds, read off the event loop."""
    return await asyncio.to_thread(db_rows, database, sql, *params)


def workers(server: Server) -> tuple[int, int]:
    a, b = sorted(server.worker_pids)
    return a, b


def answered_by(server: Server, response: httpx.Response, pid: int) -> httpx.Response:
    assert server.worker_of(response) == pid, f"the connection moved off worker {pid}"
    return response


async def registered(server: Server, username: str) -> str:
    """Register ``username`` (logged in): its auth cookie."""
    async with client_for(server, timeout=REQUEST_TIMEOUT) as client:
        response = await client.post(
            "/api/register", json={"username": username, "email": f"{username}@example.com", "password": PASSWORD}
        )
    assert response.status_code == 201, response.text
    return response.cookies[AUTH_COOKIE]


async def with_passkey(server: Server, username: str) -> tuple[str, SoftAuthenticator]:
    """Register ``username`` and add a passkey (through whichever worker): (auth cookie, authenticator)."""
    token = await registered(server, username)
    authenticator = SoftAuthenticator(origin=ORIGIN)
    async with client_for(server, headers=cookie_header(token), timeout=REQUEST_TIMEOUT) as client:
        options = await client.post("/api/webauthn/register/options")
        assert options.status_code == 200, options.text
        done = await client.post(
            "/api/webauthn/register/verify", json={"credential": authenticator.create(options.json())}
        )
    assert done.status_code == 201, done.text
    return done.cookies[AUTH_COOKIE], authenticator


async def session_of(server: Server, token: str) -> dict:
    """The session of auth cookie ``token`` as GET /api/sessions lists it."""
    async with client_for(server, headers=cookie_header(token), timeout=REQUEST_TIMEOUT) as client:
        response = await client.get("/api/sessions")
    assert response.status_code == 200, response.text
    (current,) = [listed for listed in response.json() if listed["current"]]
    return current


async def user_id(database, username: str) -> int:
    [(found,)] = await rows(database, "SELECT id FROM users WHERE username = ?", username)
    return found


async def sign_count(database, uid: int) -> int:
    [(count,)] = await rows(database, "SELECT sign_count FROM user_factors WHERE user_id = ?", uid)
    return count


async def used_events(database, uid: int) -> int:
    sql = "SELECT count(*) FROM auth_events WHERE event = 'passkey_used' AND user_id = ?"
    return (await rows(database, sql, uid))[0][0]


# -- a ceremony begun on one worker, finished on the other -----------------------------------


@pytest.mark.parametrize("starter", [0, 1], ids=["a-to-b", "b-to-a"])
async def test_a_passkey_added_with_options_from_one_worker_and_the_answer_to_the_other(server, starter):
    db = server.db
    pids = workers(server)
    opener, finisher = pids[starter], pids[1 - starter]
    username = f"adder{starter}"
    token = await registered(server, username)
    uid = await user_id(db, username)
    authenticator = SoftAuthenticator(origin=ORIGIN)
    async with connection_to(server, opener) as first, connection_to(server, finisher) as second:
        options = await first.post("/api/webauthn/register/options", headers=cookie_header(token))
        assert answered_by(server, options, opener).status_code == 200, options.text
        answer = authenticator.create(options.json())
        done = await second.post(
            "/api/webauthn/register/verify",
            json={"credential": answer, "name": "Laptop"},
            headers=cookie_header(token),
        )
        assert answered_by(server, done, finisher).status_code == 201, done.text
        assert done.json()["name"] == "Laptop"
        token = done.cookies[AUTH_COOKIE]  # this session's new secret
        # Used: the worker that handed the challenge out refuses the same answer.
        again = await first.post(
            "/api/webauthn/register/verify", json={"credential": answer}, headers=cookie_header(token)
        )
        assert answered_by(server, again, opener).status_code == 400, again.text
    stored = await rows(db, "SELECT kind, credential_id FROM user_factors WHERE user_id = ?", uid)
    assert [(kind, bytes(credential_id)) for kind, credential_id in stored] == [
        ("webauthn", authenticator.credentials[0].id)
    ]
    current = await session_of(server, token)
    assert (current["amr"], current["aal"]) == (["pwd", "webauthn"], 2)


@pytest.mark.parametrize("starter", [0, 1], ids=["a-to-b", "b-to-a"])
async def test_a_passkey_sign_in_with_options_from_one_worker_and_the_answer_to_the_other(server, starter):
    db = server.db
    pids = workers(server)
    opener, finisher = pids[starter], pids[1 - starter]
    username = f"signer{starter}"
    _token, authenticator = await with_passkey(server, username)
    uid = await user_id(db, username)
    async with connection_to(server, opener) as first, connection_to(server, finisher) as second:
        options = answered_by(server, await first.post("/api/webauthn/login/options", json={}), opener)
        assert options.status_code == 200 and options.json()["allowCredentials"] == []
        answer = authenticator.get(options.json())
        done = answered_by(
            server, await second.post("/api/webauthn/login/verify", json={"credential": answer}), finisher
        )
        assert done.status_code == 200, done.text
        assert done.json()["username"] == username
        token = done.cookies[AUTH_COOKIE]
        # Signed in for both workers; the answer used for both.
        for client, pid in ((first, opener), (second, finisher)):
            me = answered_by(server, await client.get("/api/me", headers=cookie_header(token)), pid)
            assert me.status_code == 200 and me.json()["username"] == username
        replay = answered_by(
            server, await first.post("/api/webauthn/login/verify", json={"credential": answer}), opener
        )
        assert replay.status_code == 401 and AUTH_COOKIE not in replay.cookies
    current = await session_of(server, token)
    assert (current["amr"], current["aal"]) == (["webauthn"], 2)
    assert await sign_count(db, uid) == 1


# -- one answer, both workers, at once ---------------------------------------------------------


async def test_one_sign_in_answer_sent_to_both_workers_at_once_signs_in_once(server):
    db = server.db
    a, b = workers(server)
    _token, authenticator = await with_passkey(server, "racer")
    uid = await user_id(db, "racer")
    async with connection_to(server, a) as on_a, connection_to(server, b) as on_b:
        for round_ in range(1, ROUNDS + 1):
            for held in (on_a, on_b):
                held.cookies.clear()  # each round from browsers without a session: each sign-in starts its own
            sides = [(on_a, a), (on_b, b)]
            if round_ % 2 == 0:  # which one is sent first, and which handed the options out, changes each round
                sides.reverse()
            client, pid = sides[0]
            options = answered_by(server, await client.post("/api/webauthn/login/options", json={}), pid)
            answer = authenticator.get(options.json())

            async def send(client: httpx.AsyncClient, pid: int, answer: dict = answer) -> httpx.Response:
                response = await client.post("/api/webauthn/login/verify", json={"credential": answer})
                return answered_by(server, response, pid)

            answers = await asyncio.gather(*(send(client, pid) for client, pid in sides))
            assert sorted(answer.status_code for answer in answers) == [200, 401], (round_, [a.text for a in answers])
            (winner,) = [answer for answer in answers if answer.status_code == 200]
            (loser,) = [answer for answer in answers if answer.status_code == 401]
            assert AUTH_COOKIE in winner.cookies and AUTH_COOKIE not in loser.cookies
            assert loser.json()["error"] == passkeys.SIGN_IN_REFUSED
            # Used once: the counter moved once, one use audited, one session more.
            assert await sign_count(db, uid) == round_
            assert await used_events(db, uid) == round_
            current = await session_of(server, winner.cookies[AUTH_COOKIE])
            assert (current["amr"], current["aal"]) == (["webauthn"], 2)
    sessions = await rows(db, "SELECT count(*) FROM auth_sessions WHERE user_id = ?", uid)
    assert sessions == [(ROUNDS + 1,)]  # the registration's, and one per round


async def test_one_second_step_answer_sent_to_both_workers_at_once_logs_in_once(server):
    db = server.db
    a, b = workers(server)
    _token, authenticator = await with_passkey(server, "stepper")
    uid = await user_id(db, "stepper")
    async with connection_to(server, a) as on_a, connection_to(server, b) as on_b:
        for round_ in range(1, ROUNDS + 1):
            for held in (on_a, on_b):
                held.cookies.clear()  # each round from browsers without a session: each sign-in starts its own
            sides = [(on_a, a), (on_b, b)]
            if round_ % 2 == 0:
                sides.reverse()
            client, pid = sides[0]
            login = answered_by(
                server, await client.post("/api/login", json={"username": "stepper", "password": PASSWORD}), pid
            )
            assert login.status_code == 200 and login.json() == {"mfa_required": True, "methods": ["webauthn"]}
            headers = {"Cookie": f"{pending.COOKIE}={login.cookies[pending.COOKIE]}"}
            options = answered_by(server, await client.post("/api/login/2fa/webauthn", json={}, headers=headers), pid)
            assert options.status_code == 200, options.text
            answer = authenticator.get(options.json())

            async def send(client: httpx.AsyncClient, pid: int, answer: dict = answer, headers=headers):
                response = await client.post("/api/login/2fa/webauthn", json={"credential": answer}, headers=headers)
                return answered_by(server, response, pid)

            answers = await asyncio.gather(*(send(client, pid) for client, pid in sides))
            assert sorted(answer.status_code for answer in answers) == [200, 401], (round_, [a.text for a in answers])
            (winner,) = [answer for answer in answers if answer.status_code == 200]
            (loser,) = [answer for answer in answers if answer.status_code == 401]
            assert AUTH_COOKIE in winner.cookies and AUTH_COOKIE not in loser.cookies
            assert loser.json()["error"] in (pending.NO_PENDING, pending.PASSKEY_REFUSED)
            assert winner.json()["recovery_codes_left"] is None
            assert await sign_count(db, uid) == round_
            current = await session_of(server, winner.cookies[AUTH_COOKIE])
            assert (current["amr"], current["aal"]) == (["pwd", "webauthn"], 2)
            # The pending login is finished, on both workers.
            assert await rows(db, "SELECT count(*) FROM mfa_pending WHERE user_id = ?", uid) == [(0,)]
