"""Brute-force throttling, hashing admission control, the audit trail and fresh logins."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest
from conftest import FAST_HASHING, csrf_from, db_rows, db_write, login_form, register_api

from quart_app import create_app
from quart_app.auth import events, fresh_login_required
from quart_app.auth.throttle import RedisStore
from quart_app.core.config import ConfigError
from quart_login import utcnow

PASSWORD = "correct horse battery"


rows = db_rows


async def attempt(app, username="alice", password="Tr0ub4dor&3-guess", ip: str | None = "10.0.0.1"):
    """A JSON login from ``ip`` (None: the test client's default, which has no address)."""
    scope = {"client": (ip, 40000)} if ip else None
    return await app.test_client().post(
        "/api/login", json={"username": username, "password": password}, scope_base=scope
    )


async def fail_times(app, n, **kwargs):
    statuses = [(await attempt(app, **kwargs)).status_code for _ in range(n)]
    return statuses


@pytest.fixture(params=["database", "redis"])
def make_app(request, database):
    """Every test here runs with the throttle's counters in the database, then in Redis."""
    extra = {}
    if request.param == "redis":
        redis_url = request.getfixturevalue("redis_server")
        import redis

        redis.Redis.from_url(redis_url).flushdb()
        extra["REDIS_URL"] = redis_url

    def factory(**overrides):
        config = {"ENV": "testing", "DATABASE_URL": database.url, **FAST_HASHING, **extra, **overrides}
        app = create_app(config)
        app.extensions["test_database"] = database
        return app

    return factory


async def unlock_all(app, database):
    """Let every current lock run out (as if its time had passed)."""
    store = app.extensions["quart_app.throttle"].store
    if isinstance(store, RedisStore):
        for name in await store._redis.keys("quart_app:throttle:*"):
            await store._redis.hset(name, "locked_until", 0)
        return
    past = (utcnow() - timedelta(seconds=1)).isoformat(sep=" ")
    db_write(database, "UPDATE login_throttle SET locked_until = ? WHERE locked_until IS NOT NULL", past)


# -- throttling --------------------------------------------------------------


async def test_after_the_limit_the_next_attempt_is_429_with_retry_after(app):
    """Five failures, then even the right password from that client gets 429 and Retry-After."""
    await register_api(app.test_client(), "alice")
    assert await fail_times(app, 5) == [401] * 5
    response = await attempt(app, password=PASSWORD)
    assert response.status_code == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert "Too many failed login attempts" in (await response.get_json())["error"]


async def test_html_login_is_throttled_too(app):
    """The login form gets 429 with Retry-After and the message on the page."""
    await register_api(app.test_client(), "alice")
    await fail_times(app, 5, ip=None)  # the same (address-less) client as login_form's

    response = await login_form(app.test_client(), "alice", PASSWORD)
    assert response.status_code == 429
    assert response.headers["Retry-After"]
    assert "Too many failed login attempts" in await response.get_data(as_text=True)


async def test_back_off_doubles_and_is_bounded(make_app, database):
    """Each failure past the limit doubles the lock, up to LOGIN_BACKOFF_MAX."""
    app = make_app(LOGIN_RATE_LIMIT="2/minute", LOGIN_BACKOFF_MAX=300)
    async with app.test_app():
        await register_api(app.test_client(), "alice")
        waits = []
        for _ in range(20):
            response = await attempt(app)
            if response.status_code == 429:
                waits.append(int(response.headers["Retry-After"]))
                await unlock_all(app, database)
            if len(waits) == 5:
                break
        # failures 2,3,4,5,6 lock for 60,120,240,300(capped),300 s
        assert waits == [60, 120, 240, 300, 300]


async def test_a_locked_account_still_lets_a_clean_client_log_in(app):
    """An attacker cannot lock the owner out: a client that has not failed is judged on its own."""
    await register_api(app.test_client(), "alice")
    await fail_times(app, 8, ip="203.0.113.9")
    assert (await attempt(app, password=PASSWORD, ip="203.0.113.9")).status_code == 429
    owner = await attempt(app, password=PASSWORD, ip="198.51.100.7")
    assert owner.status_code == 200


async def test_a_clean_client_that_fails_on_a_locked_account_is_throttled_at_once(app):
    """A new client's first wrong guess on a locked account makes its next attempt 429."""
    await register_api(app.test_client(), "alice")
    await fail_times(app, 5, ip="203.0.113.9")
    assert (await attempt(app, ip="198.51.100.8")).status_code == 401
    assert (await attempt(app, password=PASSWORD, ip="198.51.100.8")).status_code == 429


async def test_one_ip_failing_across_many_accounts_is_throttled(make_app):
    """Failures from one IP add up across accounts (LOGIN_IP_RATE_LIMIT)."""
    app = make_app(LOGIN_IP_RATE_LIMIT="6/minute")
    async with app.test_app():
        for i in range(6):
            assert (await attempt(app, username=f"user{i}", ip="192.0.2.50")).status_code == 401
        assert (await attempt(app, username="someone-else", ip="192.0.2.50")).status_code == 429
        assert (await attempt(app, username="someone-else", ip="192.0.2.51")).status_code == 401


async def test_unknown_usernames_are_throttled_like_real_ones(app):
    """A made-up username locks after the same number of failures (no existence oracle)."""
    assert await fail_times(app, 5, username="ghost") == [401] * 5
    assert (await attempt(app, username="ghost")).status_code == 429


async def test_username_and_email_count_against_the_same_account(app):
    """Alternating username and email does not double the attempts."""
    await register_api(app.test_client(), "alice")
    for i in range(5):
        assert (await attempt(app, username="alice" if i % 2 else "ALICE@example.com")).status_code == 401
    assert (await attempt(app, username="alice@example.com", password=PASSWORD)).status_code == 429


async def test_a_correct_login_clears_the_accounts_failures(app):
    """Four failures, a success, then four more failures are still under the limit."""
    await register_api(app.test_client(), "alice")
    assert await fail_times(app, 4) == [401] * 4
    assert (await attempt(app, password=PASSWORD)).status_code == 200
    assert await fail_times(app, 4) == [401] * 4


async def test_throttled_attempts_cost_no_hash(app):
    """A refused attempt is answered without verifying the password."""
    await register_api(app.test_client(), "alice")
    await fail_times(app, 5)
    hasher = app.extensions["quart_app.hasher"]
    calls = []
    original = hasher._verify_sync
    hasher._verify_sync = lambda *a: calls.append(1) or original(*a)
    assert (await attempt(app)).status_code == 429
    assert calls == []


async def test_rate_limit_off_disables_throttling(make_app):
    """QUART_APP_LOGIN_RATE_LIMIT=off: no 429 however many failures (for load tests)."""
    app = make_app(LOGIN_RATE_LIMIT="off")
    async with app.test_app():
        await register_api(app.test_client(), "alice")
        assert set(await fail_times(app, 25)) == {401}
        assert (await attempt(app, password=PASSWORD)).status_code == 200


@pytest.mark.parametrize("value", ["5 per minute", "five/minute", "5/fortnight", "-1/minute"])
def test_malformed_rate_limit_stops_the_start(value, tmp_path):
    """A rate limit that does not parse is a clear error at start."""
    with pytest.raises(ConfigError, match="QUART_APP_LOGIN_RATE_LIMIT"):
        create_app({"ENV": "testing", "LOGIN_RATE_LIMIT": value, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x"})


def test_throttle_keys_hold_no_typed_username(database):
    """Counters are keyed by digests: the table never holds what was typed."""
    from quart_app.auth.throttle import keys_for

    keys = keys_for("name:secret-username", "10.1.2.3")
    assert all("secret" not in k and "10.1.2.3" not in k for k in (keys.account, keys.client, keys.pair))


# -- admission control -------------------------------------------------------


async def test_full_hash_queue_answers_503_at_once_and_pages_keep_answering(make_app):
    """Past HASH_QUEUE_LIMIT a login gets 503 + Retry-After immediately; /dashboard still answers."""
    app = make_app(HASH_QUEUE_LIMIT=2, HASH_WORKERS=1, LOGIN_RATE_LIMIT="off")
    async with app.test_app():
        logged_in = app.test_client()
        await register_api(logged_in, "alice")
        hasher = app.extensions["quart_app.hasher"]
        gate = threading.Event()
        original = hasher._verify_sync

        def blocked(stored, password):
            gate.wait(10)
            return original(stored, password)

        hasher._verify_sync = blocked
        try:
            queued = [asyncio.create_task(attempt(app, password=PASSWORD)) for _ in range(2)]
            for _ in range(500):  # until both wait on the (blocked) hash pool: 5 s at most
                if hasher.pending == 2:
                    break
                await asyncio.sleep(0.01)
            assert hasher.pending == 2
            refused = await attempt(app, password=PASSWORD)
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "1"
            assert "busy" in (await refused.get_json())["error"]
            dashboard = await logged_in.get("/dashboard")
            assert dashboard.status_code == 200
        finally:
            gate.set()
        assert [r.status_code for r in await asyncio.gather(*queued)] == [200, 200]


# -- audit trail and signals -------------------------------------------------


async def test_audit_trail_records_each_kind_of_event(app, database):
    """Login ok/failed, logout, password change, revocation and throttling land in auth_events."""
    client = app.test_client()
    await register_api(client, "alice")
    await fail_times(app, 5, ip="10.9.9.9")
    await attempt(app, ip="10.9.9.9")  # throttled
    await client.post("/api/sessions/revoke-others")
    await client.post("/api/password", json={"current_password": PASSWORD, "new_password": "another pass 1"})
    await client.post("/api/logout")
    kinds = [k for (k,) in rows(database, "SELECT event FROM auth_events ORDER BY id")]
    for kind in ("registered", "login", "login_failed", "throttled", "session_revoked", "password_changed", "logout"):
        assert kind in kinds, kind
    ips = {ip for (ip,) in rows(database, "SELECT ip FROM auth_events WHERE event = 'login_failed'")}
    assert ips == {"10.9.9.9"}
    dump = "\n".join(str(r) for r in rows(database, "SELECT * FROM auth_events"))
    assert PASSWORD not in dump and "another pass 1" not in dump and "argon2" not in dump


async def test_signals_reach_subscribers_without_secrets(app):
    """Flask-Login's signals fire with the user; no password or hash travels with them."""
    received = []

    def on_login(sender, user, **extra):
        received.append(("in", user.username, extra))

    def on_failed(sender, user, **extra):
        received.append(("failed", getattr(user, "username", None), extra))

    def on_logout(sender, user, **extra):
        received.append(("out", user.username, extra))

    events.user_logged_in.connect(on_login)
    events.user_login_failed.connect(on_failed)
    events.user_logged_out.connect(on_logout)
    try:
        client = app.test_client()
        await register_api(client, "alice")
        await attempt(app)
        await client.post("/api/logout")
    finally:
        events.user_logged_in.disconnect(on_login)
        events.user_login_failed.disconnect(on_failed)
        events.user_logged_out.disconnect(on_logout)
    assert [r[:2] for r in received] == [("in", "alice"), ("failed", "alice"), ("out", "alice")]
    assert PASSWORD not in repr(received) and "Tr0ub4dor" not in repr(received)


# -- fresh_login_required ----------------------------------------------------


@pytest.fixture
async def fresh_app(database):
    app = create_app({"ENV": "testing", "DATABASE_URL": database.url, **FAST_HASHING})

    @app.get("/sensitive")
    @fresh_login_required
    async def sensitive():
        return "sensitive ok"

    async with app.test_app():
        yield app


async def test_fresh_login_required_passes_a_fresh_session(fresh_app):
    """Right after login the sensitive view answers."""
    client = fresh_app.test_client()
    await register_api(client, "alice")
    assert (await client.get("/sensitive")).status_code == 200


async def test_stale_session_must_reenter_the_password(fresh_app, database):
    """An old session is sent to /reauthenticate (JSON: 401); entering the password makes it fresh."""
    client = fresh_app.test_client()
    await register_api(client, "alice")
    old = (utcnow() - timedelta(hours=2)).isoformat(sep=" ")
    db_write(database, "UPDATE auth_sessions SET created_at = ?, auth_time = ?", old, old)
    response = await client.get("/sensitive")
    assert response.status_code == 302
    assert response.headers["Location"] == "/reauthenticate?next=%2Fsensitive"
    as_json = await client.get("/sensitive", headers={"Accept": "application/json"})
    assert as_json.status_code == 401
    token = await csrf_from(client, "/reauthenticate?next=%2Fsensitive")
    wrong = await client.post("/reauthenticate?next=%2Fsensitive", form={"password": "nope nope", "csrf_token": token})
    assert wrong.status_code == 401
    done = await client.post("/reauthenticate?next=%2Fsensitive", form={"password": PASSWORD, "csrf_token": token})
    assert done.status_code == 302 and done.headers["Location"] == "/sensitive"
    assert (await client.get("/sensitive")).status_code == 200


async def test_with_redis_url_the_counters_live_in_redis(make_app, database, redis_server):
    """QUART_APP_REDIS_URL moves the counters to Redis: nothing lands in the login_throttle table."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    app = make_app(REDIS_URL=redis_server)
    async with app.test_app():
        await fail_times(app, 5)
        assert (await attempt(app)).status_code == 429
    assert rows(database, "SELECT count(*) FROM login_throttle") == [(0,)]
    assert len(client.keys("quart_app:throttle:*")) == 3  # account, client, pair


async def test_unreachable_redis_answers_503_not_500(make_app, database):
    """If Redis is down, logins get 503 with Retry-After (and pages without login keep working)."""
    from conftest import free_port

    app = make_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    async with app.test_app():
        response = await attempt(app)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert (await app.test_client().get("/")).status_code == 200


# -- bursts: judged as the same attempts sent one after another ---------------


async def test_a_parallel_burst_of_wrong_passwords_gets_exactly_the_limit_of_401s(make_app):
    """12 wrong passwords sent at once: 5 are verified (401), the other 7 get 429, as if sent in a row."""
    app = make_app()
    async with app.test_app():
        await register_api(app.test_client(), "alice")
        hasher = app.extensions["quart_app.hasher"]
        verified = []
        original = hasher._verify_sync
        hasher._verify_sync = lambda *a: verified.append(1) or original(*a)
        statuses = await asyncio.gather(*(attempt(app, ip="10.7.7.7") for _ in range(12)))
        assert sorted(r.status_code for r in statuses) == [401] * 5 + [429] * 7
        assert len(verified) == 5
        assert (await attempt(app, password=PASSWORD, ip="10.7.7.7")).status_code == 429


async def test_a_parallel_burst_of_right_passwords_all_log_in(make_app):
    """30 right passwords for one account from one address at once all succeed: only failures count."""
    app = make_app(LOGIN_IP_RATE_LIMIT="5/minute")
    async with app.test_app():
        await register_api(app.test_client(), "alice")
        statuses = await asyncio.gather(*(attempt(app, password=PASSWORD, ip="10.8.8.8") for _ in range(30)))
        assert [r.status_code for r in statuses] == [200] * 30


async def test_a_shared_address_is_locked_for_at_most_the_ip_backoff_cap(make_app):
    """One attacker behind a shared address locks it for LOGIN_IP_BACKOFF_MAX at most, not the full back-off."""
    app = make_app(LOGIN_IP_RATE_LIMIT="6/minute", LOGIN_IP_BACKOFF_MAX=20)
    async with app.test_app():
        for i in range(15):
            await attempt(app, username=f"victim{i}", ip="192.0.2.99")
        response = await attempt(app, username="a-colleague", ip="192.0.2.99")
        assert response.status_code == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 20


async def test_a_check_that_cannot_run_gives_its_reservation_back(make_app):
    """A verification that fails to run (hash pool full, 503) does not count toward the limit."""
    app = make_app(HASH_QUEUE_LIMIT=1, HASH_WORKERS=1)
    async with app.test_app():
        await register_api(app.test_client(), "alice")
        hasher = app.extensions["quart_app.hasher"]
        original = hasher._run

        async def overloaded(func, *args):
            from quart_app.exceptions import HashQueueFull

            raise HashQueueFull()

        hasher._run = overloaded
        assert {(await attempt(app)).status_code for _ in range(8)} == {503}
        hasher._run = original
        assert (await attempt(app, password=PASSWORD)).status_code == 200


# -- every password check is throttled -------------------------------------------


@pytest.mark.parametrize("route", ["api", "form"])
async def test_guessing_the_current_password_is_throttled_and_ends_the_session(make_app, route):
    """Wrong current passwords count like failed logins: at the limit the session ends; the right one then fails."""
    app = make_app()
    async with app.test_app():
        client = app.test_client()
        await register_api(client, "alice")

        async def change(current: str):
            if route == "api":
                return await client.post(
                    "/api/password", json={"current_password": current, "new_password": "n3w pass word"}
                )
            token = await csrf_from(client, "/account")
            form = {"current_password": current, "new_password": "n3w pass word", "csrf_token": token}
            return await client.post("/account/password", form=form)

        statuses = [(await change(f"guess number {i}")).status_code for i in range(4)]
        assert statuses == [400] * 4
        fifth = await change("guess number 5")
        assert fifth.status_code == (401 if route == "api" else 302)
        assert (await client.get("/api/me")).status_code == 401  # this session is over
        # The account is locked for this client: even the right password is refused now.
        assert (await attempt(app, password=PASSWORD, ip=None)).status_code == 429
        kinds = [k for (k,) in db_rows(app.extensions["test_database"], "SELECT detail FROM auth_events")]
        assert sum("password change" in (k or "") for k in kinds) == 5
