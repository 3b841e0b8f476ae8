"""The second factor across the two hypercorn workers of one served app (real processes, one database).

Every guarantee of a login's second step must hold whichever worker each
request reaches: a recovery code or a TOTP step sent at once to both workers
logs in once, wrong codes sent through both count together (the throttle's
429, the pending login's end after ``pending.MAX_FAILURES``), and a pending
login opened on one worker is finished on the other. Each request is sent on
a connection a chosen worker holds (``servers.connection_to``), and the
worker that answered is checked. Codes are computed here with pyotp from the
secret the API's setup answered, as an authenticator app does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pyotp
import pytest
from conftest import FAST_HASHING, db_rows
from servers import AUTH_COOKIE, PROC_NET_TCP, Server, client_for, connection_to, cookie_header, serving

from quart_app.auth import pending

pytestmark = pytest.mark.skipif(not PROC_NET_TCP.exists(), reason="needs Linux /proc to tell which worker answered")

PASSWORD = "correct horse battery"
# Wrong codes (or passwords) per account before the throttle's 429: as many as end a pending login.
LIMIT = 5
# The IP's limit is out of the way: every request here comes from 127.0.0.1.
SETTINGS = {**FAST_HASHING, "LOGIN_RATE_LIMIT": f"{LIMIT}/minute", "LOGIN_IP_RATE_LIMIT": "1000/minute"}
# Rounds of each race: a race the app loses now and then should show in one of them.
ROUNDS = 5
# Seconds any one request of client_for here may take (connection_to's clients keep httpx's 5 s).
REQUEST_TIMEOUT = 15


@pytest.fixture(scope="module")
def server(tmp_path_factory, migrated_template) -> Iterator[Server]:
    """Two workers of one instance on a copy of the migrated template (the suite's backend: SQLite or PostgreSQL).

    Shared by the tests here, each on accounts of its own: a server start costs seconds.
    """
    directory = tmp_path_factory.mktemp("mfa-workers")
    db = migrated_template.clone(directory)
    try:
        with serving(db, SETTINGS, workers=2, log_path=directory / "hypercorn.log") as server:
            assert len(server.worker_pids) == 2
            yield server
    finally:
        db.drop()


# -- helpers -------------------------------------------------------------------------------


def code_of(secret: str, offset: int = 0) -> str:
    """What the authenticator app shows now (``offset`` steps later)."""
    return pyotp.TOTP(secret).at(time.time(), counter_offset=offset)


def wrong_code(secret: str) -> str:
    """Six digits that are the code of no step in the accepted window."""
    window = {code_of(secret, offset) for offset in (-2, -1, 0, 1, 2, 3)}
    return next(candidate for candidate in (f"{digit}" * 6 for digit in range(10)) if candidate not in window)


async def rows(database, sql: str, *params) -> list[tuple]:
    """What the database holds, read off the event loop."""
    return await asyncio.to_thread(db_rows, database, sql, *params)


def workers(server: Server) -> tuple[int, int]:
    a, b = sorted(server.worker_pids)
    return a, b


async def enrolled(server: Server, username: str) -> tuple[str, list[str]]:
    """Register ``username`` and turn an authenticator app on through the API: (secret, recovery codes)."""
    async with client_for(server, timeout=REQUEST_TIMEOUT) as client:
        registered = await client.post(
            "/api/register", json={"username": username, "email": f"{username}@example.com", "password": PASSWORD}
        )
        assert registered.status_code == 201, registered.text
        headers = cookie_header(registered.cookies[AUTH_COOKIE])
        setup = await client.post("/api/2fa/totp/setup", headers=headers)
        assert setup.status_code == 200, setup.text
        secret = setup.json()["secret"]
        confirmed = await client.post("/api/2fa/totp/confirm", json={"code": code_of(secret)}, headers=headers)
        assert confirmed.status_code == 200, confirmed.text
        codes = confirmed.json()["recovery_codes"]
    assert len(codes) == 10
    return secret, codes


def answered_by(server: Server, response: httpx.Response, pid: int) -> httpx.Response:
    assert server.worker_of(response) == pid, f"the connection moved off worker {pid}"
    return response


async def start_login(server: Server, client: httpx.AsyncClient, pid: int, username: str) -> str:
    """A right password on ``client`` (a connection ``pid`` holds): the pending login's cookie."""
    response = answered_by(
        server, await client.post("/api/login", json={"username": username, "password": PASSWORD}), pid
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"mfa_required": True, "methods": ["totp", "recovery_code"]}
    assert AUTH_COOKIE not in response.cookies
    return response.cookies[pending.COOKIE]


async def send_code(server: Server, client: httpx.AsyncClient, pid: int, login: str, code: str) -> httpx.Response:
    """POST /api/login/2fa with ``code`` for the pending login whose cookie is ``login``, through worker ``pid``."""
    response = await client.post("/api/login/2fa", json={"code": code}, headers={"Cookie": f"{pending.COOKIE}={login}"})
    return answered_by(server, response, pid)


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


async def pending_failures(database, uid: int) -> list[int]:
    return [failures for (failures,) in await rows(database, "SELECT failures FROM mfa_pending WHERE user_id = ?", uid)]


# -- races -----------------------------------------------------------------------------------


async def race(server: Server, username: str, code: str, round_: int) -> list[httpx.Response]:
    """Two pending logins of ``username``, one opened on each worker, send ``code`` there at the same moment."""
    a, b = workers(server)
    async with connection_to(server, a) as on_a, connection_to(server, b) as on_b:
        sides = [(on_a, a), (on_b, b)]
        if round_ % 2 == 0:  # which one is sent first changes each round
            sides.reverse()
        logins = [await start_login(server, client, pid, username) for client, pid in sides]
        return await asyncio.gather(
            *(send_code(server, client, pid, login, code) for (client, pid), login in zip(sides, logins, strict=True))
        )


async def test_one_recovery_code_sent_to_both_workers_at_once_logs_in_once(server):
    """The same recovery code from two pending logins, one through each worker, at once: one 200, one 401."""
    db = server.db
    _secret, codes = await enrolled(server, "racer")
    uid = await user_id(db, "racer")
    for round_, code in enumerate(codes[:ROUNDS], 1):
        answers = await race(server, "racer", code, round_)
        assert sorted(answer.status_code for answer in answers) == [200, 401], (round_, [a.text for a in answers])
        (winner,) = [answer for answer in answers if answer.status_code == 200]
        (loser,) = [answer for answer in answers if answer.status_code == 401]
        assert AUTH_COOKIE in winner.cookies and AUTH_COOKIE not in loser.cookies
        assert winner.json()["recovery_codes_left"] == len(codes) - round_
        assert loser.json()["error"] == pending.WRONG_CODE
        # Used once: one more used code each round, one notice, one session at AAL 2.
        used_sql = "SELECT count(*) FROM recovery_codes WHERE user_id = ? AND used_at IS NOT NULL"
        assert await rows(db, used_sql, uid) == [(round_,)]
        notices_sql = "SELECT count(*) FROM auth_events WHERE event = 'recovery_code_used' AND user_id = ?"
        assert await rows(db, notices_sql, uid) == [(round_,)]
        current = await session_of(server, winner.cookies[AUTH_COOKIE])
        assert current["amr"] == ["pwd", "rec"] and current["aal"] == 2
        # Each round's loser: its pending login took one wrong code, and lives on.
        assert await pending_failures(db, uid) == [1] * round_
    unused_sql = "SELECT count(*) FROM recovery_codes WHERE user_id = ? AND used_at IS NULL"
    assert await rows(db, unused_sql, uid) == [(len(codes) - ROUNDS,)]


async def test_one_totp_code_sent_to_both_workers_at_once_logs_in_at_most_once(server):
    """The same (right) TOTP code from two pending logins, one through each worker, at once: one 200, one 401."""
    db = server.db
    for round_ in range(1, ROUNDS + 1):
        # An account each round: a step is accepted once, and the window holds few of them.
        username = f"timer{round_}"
        secret, _codes = await enrolled(server, username)
        uid = await user_id(db, username)
        [(confirmed_step,)] = await rows(db, "SELECT last_step FROM user_factors WHERE user_id = ?", uid)
        # The next step's code: the confirming code took this step's.
        answers = await race(server, username, code_of(secret, 1), round_)
        successes = [answer for answer in answers if answer.status_code == 200]
        assert len(successes) <= 1, (round_, [answer.text for answer in answers])
        # The code is right and within the window: one of the two does log in.
        assert sorted(answer.status_code for answer in answers) == [200, 401], (round_, [a.text for a in answers])
        (loser,) = [answer for answer in answers if answer.status_code == 401]
        assert loser.json()["error"] == pending.WRONG_CODE
        assert AUTH_COOKIE not in loser.cookies
        current = await session_of(server, successes[0].cookies[AUTH_COOKIE])
        assert current["amr"] == ["pwd", "otp"] and current["aal"] == 2
        [(step,)] = await rows(db, "SELECT last_step FROM user_factors WHERE user_id = ?", uid)
        assert step > confirmed_step
        assert await pending_failures(db, uid) == [1]  # the loser's, alive with its one wrong code


# -- wrong codes count together --------------------------------------------------------------


async def test_wrong_codes_through_both_workers_reach_the_throttle_together(server):
    """LIMIT wrong codes, alternately through worker B and worker A (over two pending logins): 429 on both."""
    db = server.db
    a, b = workers(server)
    secret, _codes = await enrolled(server, "guessed")
    uid = await user_id(db, "guessed")
    [(confirmed_step,)] = await rows(db, "SELECT last_step FROM user_factors WHERE user_id = ?", uid)
    wrong = wrong_code(secret)
    # The first pending login takes fewer than it dies of; a new one (the password again) the rest.
    split = LIMIT - 2
    assert 0 < split < pending.MAX_FAILURES
    async with connection_to(server, a) as on_a, connection_to(server, b) as on_b:
        by_worker = {a: on_a, b: on_b}
        login = await start_login(server, on_a, a, "guessed")
        for n in range(1, LIMIT + 1):
            if n == split + 1:
                login = await start_login(server, on_b, b, "guessed")
            pid = (a, b)[n % 2]  # B, A, B, A, B: neither worker sees all of them
            response = await send_code(server, by_worker[pid], pid, login, wrong)
            assert response.status_code == 401, (n, response.text)
            assert response.json()["error"] == pending.WRONG_CODE
        assert sorted(await pending_failures(db, uid)) == [LIMIT - split, split]
        for pid in (a, b):
            # Even the right code waits, on either worker.
            refused = await send_code(server, by_worker[pid], pid, login, code_of(secret, 1))
            assert refused.status_code == 429, (pid, refused.text)
            assert int(refused.headers["Retry-After"]) >= 1
            assert AUTH_COOKIE not in refused.cookies
            # And so does the password, from this client.
            again = await by_worker[pid].post("/api/login", json={"username": "guessed", "password": PASSWORD})
            assert answered_by(server, again, pid).status_code == 429, again.text
            assert int(again.headers["Retry-After"]) >= 1
    # Refused before any check: nothing more counted, no code spent, the pending logins kept.
    assert sorted(await pending_failures(db, uid)) == [LIMIT - split, split]
    assert await rows(db, "SELECT last_step FROM user_factors WHERE user_id = ?", uid) == [(confirmed_step,)]


@pytest.mark.parametrize("first", [0, 1], ids=["started-on-a", "started-on-b"])
async def test_a_pending_login_ends_after_its_wrong_codes_whichever_worker_saw_them(server, first):
    """pending.MAX_FAILURES wrong codes split over both workers end the pending login on both."""
    assert LIMIT >= pending.MAX_FAILURES  # else the throttle's 429 would come first
    db = server.db
    pids = workers(server)
    username = f"fumbler{first}"
    secret, _codes = await enrolled(server, username)
    uid = await user_id(db, username)
    [(confirmed_step,)] = await rows(db, "SELECT last_step FROM user_factors WHERE user_id = ?", uid)
    wrong = wrong_code(secret)
    async with connection_to(server, pids[0]) as on_a, connection_to(server, pids[1]) as on_b:
        clients = (on_a, on_b)
        login = await start_login(server, clients[first], pids[first], username)
        for n in range(1, pending.MAX_FAILURES + 1):
            side = (first + n) % 2  # the other worker first, then alternately
            response = await send_code(server, clients[side], pids[side], login, wrong)
            assert response.status_code == 401, (n, response.text)
            if n < pending.MAX_FAILURES:
                assert response.json()["error"] == pending.WRONG_CODE
                assert await pending_failures(db, uid) == [n]
            else:
                assert response.json()["error"] == pending.TOO_MANY_WRONG
        assert await pending_failures(db, uid) == []
        for side in (0, 1):
            # Dead on both workers: even the right code finds no pending login.
            late = await send_code(server, clients[side], pids[side], login, code_of(secret, 1))
            assert late.status_code == 401, late.text
            assert late.json()["error"] == pending.NO_PENDING
            assert AUTH_COOKIE not in late.cookies
            # And those LIMIT wrong codes locked the account for this client, on both workers.
            again = await clients[side].post("/api/login", json={"username": username, "password": PASSWORD})
            assert answered_by(server, again, pids[side]).status_code == 429, again.text
    events_sql = "SELECT detail FROM auth_events WHERE event = 'mfa_login_failed' AND user_id = ? ORDER BY id"
    events = await rows(db, events_sql, uid)
    assert len(events) == pending.MAX_FAILURES
    assert "pending login ended" in events[-1][0] and not any("ended" in detail for (detail,) in events[:-1])
    # No code was spent by the refused attempts.
    assert await rows(db, "SELECT last_step FROM user_factors WHERE user_id = ?", uid) == [(confirmed_step,)]


# -- server-side state -----------------------------------------------------------------------


@pytest.mark.parametrize("starter", [0, 1], ids=["a-to-b", "b-to-a"])
async def test_a_pending_login_started_on_one_worker_is_finished_on_the_other(server, starter):
    """The password through one worker, the code through the other: logged in at AAL 2, on both."""
    db = server.db
    pids = workers(server)
    opener, finisher = pids[starter], pids[1 - starter]
    username = f"roamer{starter}"
    secret, _codes = await enrolled(server, username)
    uid = await user_id(db, username)
    async with connection_to(server, opener) as first, connection_to(server, finisher) as second:
        login = await start_login(server, first, opener, username)
        done = await send_code(server, second, finisher, login, code_of(secret, 1))
        assert done.status_code == 200, done.text
        assert done.json()["username"] == username
        token = done.cookies[AUTH_COOKIE]
        # Finished for the worker that opened it too.
        again = await send_code(server, first, opener, login, code_of(secret, 1))
        assert again.status_code == 401 and again.json()["error"] == pending.NO_PENDING
        for client, pid in ((first, opener), (second, finisher)):
            me = await client.get("/api/me", headers=cookie_header(token))
            assert answered_by(server, me, pid).status_code == 200 and me.json()["username"] == username
    current = await session_of(server, token)
    assert current["amr"] == ["pwd", "otp"] and current["aal"] == 2
    assert await pending_failures(db, uid) == []
