"""The app served for real (hypercorn, two workers) under attack and accident.

Cookie replay after every way a session ends, racing registrations, a crash
in the middle of a registration load, and brute force spread over both
workers. Every server listens on 127.0.0.1 only; every loop is bounded.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from backends import TestDatabase
from conftest import FAST_HASHING
from servers import (
    AUTH_COOKIE,
    PROC_NET_TCP,
    Server,
    client_for,
    connection_to,
    cookie_header,
    on_each_worker,
    run_cli,
    serving_off_loop,
    start_server,
)

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a brand new horse battery"
WRONG_PASSWORD = "not the password at all"
# Generous: hashing is cheap with FAST_HASHING, but a 2-core box runs the
# client, two workers and their hash threads at once.
TIMEOUT = httpx.Timeout(60)
# Enough connections for every request of a burst to be in flight at once.
BURST_LIMITS = httpx.Limits(max_connections=300, max_keepalive_connections=300)

RACERS = 50
CROWD = 200
LOGIN_CONCURRENCY = 32
CRASH_LOAD = 300
CRASH_CONCURRENCY = 16
KILL_AFTER = 100
# The account limit (LOGIN_RATE_LIMIT's default, "5/minute").
ACCOUNT_LIMIT = 5
ACCOUNT_PERIOD = 60

needs_proc = pytest.mark.skipif(not PROC_NET_TCP.exists(), reason="needs Linux /proc to tell which worker answered")


@pytest.fixture(scope="module")
def attack_server(tmp_path_factory, migrated_template):
    """Two hypercorn workers with the default throttle and cheap hashing."""
    yield from start_server(tmp_path_factory.mktemp("attack"), migrated_template, FAST_HASHING)


@pytest.fixture(scope="module")
def race_server(tmp_path_factory, migrated_template):
    """Two hypercorn workers whose hash queue holds a whole burst (the default, 64, would shed it with 503s)."""
    yield from start_server(
        tmp_path_factory.mktemp("race"), migrated_template, {**FAST_HASHING, "HASH_QUEUE_LIMIT": CROWD + RACERS}
    )


# -- helpers -------------------------------------------------------------------


def registration(username: str, email: str | None = None) -> dict[str, str]:
    return {"username": username, "email": email or f"{username}@example.com", "password": PASSWORD}


async def register(server: Server, username: str) -> str:
    """Register over HTTP; the auth cookie it was given."""
    async with client_for(server) as client:
        response = await client.post("/api/register", json=registration(username))
    assert response.status_code == 201, response.text
    return response.cookies[AUTH_COOKIE]


async def log_in(server: Server, username: str, password: str = PASSWORD) -> httpx.Response:
    async with client_for(server, timeout=TIMEOUT) as client:
        return await client.post("/api/login", json={"username": username, "password": password})


async def send_with(server: Server, token: str, method: str, path: str, **options) -> httpx.Response:
    """One request on a fresh connection carrying ``token`` as the auth cookie."""
    async with client_for(server) as client:
        return await client.request(method, path, headers=cookie_header(token), **options)


async def logins_all_succeed(server: Server, usernames: list[str]) -> None:
    """Log every user in, ``LOGIN_CONCURRENCY`` at a time; each must get 200 with its own name."""
    gate = asyncio.Semaphore(LOGIN_CONCURRENCY)

    async def one(client: httpx.AsyncClient, username: str) -> tuple[str, int, str]:
        async with gate:
            response = await client.post("/api/login", json={"username": username, "password": PASSWORD})
        name = response.json().get("username") if response.status_code == 200 else response.text
        return username, response.status_code, name

    async with client_for(server, timeout=TIMEOUT, limits=BURST_LIMITS) as client:
        results = await asyncio.gather(*(one(client, username) for username in usernames))
    failed = [result for result in results if result[1] != 200 or result[2] != result[0]]
    assert not failed, f"{len(failed)} of {len(usernames)} could not log in, e.g. {failed[:5]}"


def rows(db: TestDatabase, sql: str, *params) -> list[tuple]:
    return db.rows(sql, *params)


def case_variants(name: str, count: int) -> list[str]:
    """``count`` distinct spellings of ``name`` differing only in case (bit i of n uppercases letter i)."""
    letters = [i for i, char in enumerate(name) if char.isalpha()]
    assert count <= 2 ** len(letters)
    variants = []
    for n in range(count):
        chars = list(name.lower())
        for bit, index in enumerate(letters):
            if n >> bit & 1:
                chars[index] = chars[index].upper()
        variants.append("".join(chars))
    return variants


# -- replay of a captured cookie after the session ended ------------------------


@dataclass
class Scene:
    """One user with two sessions: ``victim``'s cookie is the one an attacker captured; ``other`` is a second device."""

    server: Server
    username: str
    victim: str
    other: str


# Each action ends sessions; it returns (cookies that must now be refused, cookies that must still work).
Action = Callable[[Scene], Awaitable[tuple[list[str], list[str]]]]


async def logout(scene: Scene) -> tuple[list[str], list[str]]:
    response = await send_with(scene.server, scene.victim, "POST", "/api/logout")
    assert response.status_code == 204, response.text
    return [scene.victim], [scene.other]


async def password_change(scene: Scene) -> tuple[list[str], list[str]]:
    response = await send_with(
        scene.server,
        scene.victim,
        "POST",
        "/api/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
    )
    assert response.status_code == 204, response.text
    reissued = response.cookies[AUTH_COOKIE]
    assert reissued != scene.victim
    # The session that changed the password keeps going under a new secret.
    return [scene.victim, scene.other], [reissued]


async def revoke_one(scene: Scene) -> tuple[list[str], list[str]]:
    listed = await send_with(scene.server, scene.other, "GET", "/api/sessions")
    assert listed.status_code == 200, listed.text
    sessions = listed.json()
    assert len(sessions) == 2, sessions
    (victim_id,) = [session["id"] for session in sessions if not session["current"]]
    response = await send_with(scene.server, scene.other, "DELETE", f"/api/sessions/{victim_id}")
    assert response.status_code == 204, response.text
    return [scene.victim], [scene.other]


async def revoke_others(scene: Scene) -> tuple[list[str], list[str]]:
    response = await send_with(scene.server, scene.other, "POST", "/api/sessions/revoke-others")
    assert response.status_code == 204, response.text
    return [scene.victim], [scene.other]


async def deactivation(scene: Scene) -> tuple[list[str], list[str]]:
    code, output = await run_cli(scene.server, "users", "deactivate", scene.username)
    assert code == 0, output
    # And no new session either.
    response = await log_in(scene.server, scene.username)
    assert response.status_code == 401, response.text
    return [scene.victim, scene.other], []


ACTIONS: dict[str, Action] = {
    "logout": logout,
    "password-change": password_change,
    "revoke-one": revoke_one,
    "revoke-others": revoke_others,
    "deactivation": deactivation,
}


def me_is(token: str, status: int) -> Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]:
    async def send(client: httpx.AsyncClient) -> httpx.Response:
        response = await client.get("/api/me", headers=cookie_header(token))
        assert response.status_code == status, f"GET /api/me: {response.status_code}, not {status}: {response.text}"
        if status == 401:
            assert response.json() == {"error": "Authentication required."}
        return response

    return send


def dashboard_is(token: str, status: int) -> Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]:
    async def send(client: httpx.AsyncClient) -> httpx.Response:
        response = await client.get("/dashboard", headers=cookie_header(token))
        assert response.status_code == status, f"GET /dashboard: {response.status_code}, not {status}"
        if status == 302:
            assert response.headers["location"] == "/login?next=%2Fdashboard"
        return response

    return send


@needs_proc
@pytest.mark.parametrize("action", list(ACTIONS))
async def test_captured_cookie_is_refused_by_every_worker_after(action, attack_server):
    """A cookie captured while logged in is refused on HTML and JSON routes by both workers once its session ends."""
    server = attack_server
    username = f"replay_{action.replace('-', '_')}"
    victim = await register(server, username)
    response = await log_in(server, username)
    assert response.status_code == 200, response.text
    scene = Scene(server, username, victim, other=response.cookies[AUTH_COOKIE])
    # The captured cookie works on both workers first: a worker that kept a
    # successful lookup in memory would be caught accepting it afterwards.
    await on_each_worker(server, me_is(victim, 200))
    await on_each_worker(server, dashboard_is(victim, 200))

    dead, alive = await ACTIONS[action](scene)

    for token in dead:
        await on_each_worker(server, dashboard_is(token, 302))
        await on_each_worker(server, me_is(token, 401))
    for token in alive:
        await on_each_worker(server, me_is(token, 200))


# -- racing registrations --------------------------------------------------------


async def test_racing_registrations_of_one_name_in_any_case_give_one_201_and_409s(race_server):
    """Fifty simultaneous registrations of one name in case variants: exactly one 201, 49 409s, no 5xx."""
    server = race_server
    names = case_variants("mallory_racer", RACERS)
    async with client_for(server, timeout=TIMEOUT, limits=BURST_LIMITS) as client:
        responses = await asyncio.gather(
            *(
                client.post("/api/register", json=registration(name, f"racer{i}@example.com"))
                for i, name in enumerate(names)
            )
        )
    statuses = Counter(response.status_code for response in responses)
    assert statuses == {201: 1, 409: RACERS - 1}, {
        status: [r.text for r in responses if r.status_code == status][:3] for status in statuses
    }
    assert {r.json()["error"] for r in responses if r.status_code == 409} == {"Username already taken."}
    (winner,) = [names[i] for i, r in enumerate(responses) if r.status_code == 201]
    assert rows(server.db, "SELECT username FROM users WHERE lower(username) = ?", "mallory_racer") == [(winner,)]


async def test_a_burst_of_distinct_registrations_is_all_stored_and_every_account_logs_in(race_server):
    """Two hundred simultaneous registrations of different names: all 201, all stored, all able to log in."""
    server = race_server
    names = [f"crowd_{i:03d}" for i in range(CROWD)]
    async with client_for(server, timeout=TIMEOUT, limits=BURST_LIMITS) as client:
        responses = await asyncio.gather(*(client.post("/api/register", json=registration(name)) for name in names))
    statuses = Counter(response.status_code for response in responses)
    assert statuses == {201: CROWD}, {
        status: [r.text for r in responses if r.status_code == status][:3] for status in statuses
    }
    assert rows(server.db, "SELECT count(*) FROM users WHERE username LIKE 'crowd\\_%' ESCAPE '\\'") == [(CROWD,)]
    await logins_all_succeed(server, names)


# -- a crash in the middle of a load ---------------------------------------------


def integrity_of_copy(db: Path, directory: Path) -> str:
    """PRAGMA integrity_check of a copy of the SQLite file ``db`` with its -wal and -shm, as the crash left them."""
    directory.mkdir()
    copy = directory / db.name
    for suffix in ("", "-wal", "-shm"):
        source = db.with_name(db.name + suffix)
        if source.exists():
            shutil.copy(source, copy.with_name(copy.name + suffix))
    with closing(sqlite3.connect(copy)) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


async def test_registrations_acknowledged_before_a_crash_survive_it(tmp_path, migrated_template):
    """SIGKILL mid-load: the database stays sound and every registration answered 201 logs in after a restart."""
    db = migrated_template.clone(tmp_path)
    acknowledged: list[str] = []
    unexpected: list[tuple[str, int, str]] = []
    cut_off = 0
    enough = asyncio.Event()
    killed = asyncio.Event()
    gate = asyncio.Semaphore(CRASH_CONCURRENCY)
    async with serving_off_loop(db, FAST_HASHING) as server:
        async with client_for(server, timeout=TIMEOUT, limits=BURST_LIMITS) as client:

            async def one(username: str) -> None:
                nonlocal cut_off
                async with gate:
                    if killed.is_set():
                        return
                    try:
                        response = await client.post("/api/register", json=registration(username))
                    except httpx.TransportError:
                        cut_off += 1
                        return
                if response.status_code == 201:
                    acknowledged.append(username)
                else:
                    unexpected.append((username, response.status_code, response.text))
                if len(acknowledged) + len(unexpected) >= KILL_AFTER:
                    enough.set()

            tasks = [asyncio.create_task(one(f"crash_{i:03d}")) for i in range(CRASH_LOAD)]
            try:
                await asyncio.wait_for(enough.wait(), 60)
                server.kill()
                killed.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 60)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    assert not unexpected, unexpected[:5]
    # The kill really came in the middle: some answered, some cut off.
    assert KILL_AFTER <= len(acknowledged) < CRASH_LOAD
    assert cut_off >= 1
    if db.is_sqlite:  # (PostgreSQL's own crash recovery is its business)
        assert integrity_of_copy(db.path, tmp_path / "crashed") == "ok"

    async with serving_off_loop(db, FAST_HASHING) as restarted:
        stored = {name for (name,) in rows(db, "SELECT username FROM users")}
        lost = sorted(set(acknowledged) - stored)
        assert not lost, f"{len(lost)} registrations answered 201 are gone after the crash: {lost[:5]}"
        await logins_all_succeed(restarted, acknowledged)


# -- brute force over both workers -----------------------------------------------


@needs_proc
async def test_login_throttle_counts_failures_from_both_workers_and_both_enforce_it(attack_server):
    """Five failures split over the two workers lock the account: the next attempt is 429 on either worker."""
    server = attack_server
    username = "brute_target"
    await register(server, username)
    first, second = sorted(server.worker_pids)

    async def attempt_on(pid: int, password: str) -> httpx.Response:
        async with connection_to(server, pid) as client:
            response = await client.post("/api/login", json={"username": username, "password": password})
            assert server.worker_of(response) == pid, "the connection moved to another worker"
        return response

    # 3 failures on one worker, 2 on the other: neither saw the limit by itself.
    for number, pid in enumerate([first, second] * 3, 1):
        if number > ACCOUNT_LIMIT:
            break
        response = await attempt_on(pid, WRONG_PASSWORD)
        assert response.status_code == 401, f"failure {number} on worker {pid}: {response.text}"

    # Every further attempt is refused by both workers, even with the right password.
    for pid in [second, first, second, first]:
        for password in (WRONG_PASSWORD, PASSWORD):
            response = await attempt_on(pid, password)
            assert response.status_code == 429, f"worker {pid} let an attempt through: {response.text}"
            retry_after = int(response.headers["Retry-After"])
            assert 1 <= retry_after <= ACCOUNT_PERIOD


async def test_a_burst_of_wrong_passwords_over_both_workers_gets_exactly_the_limit_of_401s(attack_server):
    """12 wrong passwords for one account sent at the same instant: 5 answered 401, 7 answered 429."""
    server = attack_server
    username = "burst_target"
    await register(server, username)
    async with client_for(server, timeout=TIMEOUT, limits=BURST_LIMITS) as client:
        # Every connection open first, so that the 12 requests leave together.
        await asyncio.gather(*(client.get("/") for _ in range(12)))
        responses = await asyncio.gather(
            *(client.post("/api/login", json={"username": username, "password": WRONG_PASSWORD}) for _ in range(12))
        )
    assert sorted(r.status_code for r in responses) == [401] * ACCOUNT_LIMIT + [429] * (12 - ACCOUNT_LIMIT)
    assert (await log_in(server, username)).status_code == 429


async def test_guessing_the_current_password_over_both_workers_ends_the_session(attack_server):
    """A stolen session sending wrong current passwords is logged out at the limit, on whichever worker."""
    server = attack_server
    token = await register(server, "stolen_session")
    statuses = []
    for i in range(ACCOUNT_LIMIT + 2):
        response = await send_with(
            server,
            token,
            "POST",
            "/api/password",
            json={"current_password": f"guess {i}", "new_password": NEW_PASSWORD},
        )
        statuses.append(response.status_code)
    assert statuses == [400] * (ACCOUNT_LIMIT - 1) + [401] * 3
    assert (await send_with(server, token, "GET", "/api/me")).status_code == 401
    assert (await log_in(server, "stolen_session")).status_code == 429


async def test_a_deeply_nested_body_is_a_400_from_the_served_app(attack_server):
    """A body nested 1,000 levels deep, from an anonymous client, is a clean 400 on every JSON route (not a 500)."""
    body = '{"username": ' + "[" * 1000 + "]" * 1000 + ', "password": "x"}'
    async with client_for(attack_server, timeout=TIMEOUT) as client:
        for path in ("/api/login", "/api/register"):
            response = await client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 400, (path, response.text)
            assert response.json() == {"error": "The JSON body is nested too deeply."}


async def test_an_address_in_another_case_or_unicode_form_is_the_same_account_when_served(attack_server):
    """Ärger@… and ärger@… (and its decomposed form) are one address: one 201, then 409s; login with either works."""
    import unicodedata

    async with client_for(attack_server, timeout=TIMEOUT) as client:
        first = await client.post("/api/register", json={**registration("aerger1"), "email": "Ärger@example.com"})
        assert first.status_code == 201, first.text
        for email in ("ärger@example.com", unicodedata.normalize("NFD", "ÄRGER@example.com")):
            again = await client.post("/api/register", json={**registration("aerger2"), "email": email})
            assert again.status_code == 409 and again.json()["error"] == "Email already registered."
    for typed in ("ärger@EXAMPLE.com", unicodedata.normalize("NFD", "ärger@example.com")):
        assert (await log_in(attack_server, typed)).status_code == 200
