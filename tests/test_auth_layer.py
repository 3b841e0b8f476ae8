"""The auth layer: the loader, current_user, server-side sessions and password hashing."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest
from conftest import auth_cookie, client_with_cookie, db_rows, db_write, register_api
from quart import render_template_string

from quart_app.auth import AnonymousUser, current_user
from quart_login import token_digest, utcnow

PASSWORD = "correct horse battery"


def session_token_of(app, cookie_value: str) -> str:
    """The session secret inside a signed auth cookie."""
    return app.extensions["quart_login"].cookie.load_token(cookie_value, app=app)


# -- the loader and current_user ---------------------------------------------


async def test_loader_is_awaited_once_per_request(app, client):
    """However often views and templates read current_user, the loader runs once per request."""
    await register_api(client, "alice")
    store = app.extensions["quart_login"].store
    calls = []
    original = store.resolve

    async def counting_resolve(token, lifetimes):
        calls.append(token)
        return await original(token, lifetimes)

    store.resolve = counting_resolve
    response = await client.get("/dashboard")  # base + dashboard templates read it 5+ times
    assert response.status_code == 200
    assert len(calls) == 1


@pytest.fixture
async def probe_app(make_app):
    """An app with a view that reports what current_user looks like to views and templates."""
    app = make_app()

    @app.get("/probe")
    async def probe():
        user = current_user
        return {
            "is_authenticated": user.is_authenticated,
            "is_anonymous": user.is_anonymous,
            "is_active": user.is_active,
            "id": user.id,
            "get_id": user.get_id(),
            "username": user.username,
            "is_the_anonymous_object": type(user._get_current_object()) is AnonymousUser,
            "template": await render_template_string("{{ current_user.id }}|{{ current_user.username }}"),
        }

    async with app.test_app():
        yield app


async def test_anonymous_current_user_has_safe_attributes(probe_app):
    """Anonymous: a real object whose id, username and flags read without error, in views and templates."""
    response = await probe_app.test_client().get("/probe")
    assert await response.get_json() == {
        "is_authenticated": False,
        "is_anonymous": True,
        "is_active": False,
        "id": None,
        "get_id": None,
        "username": "",
        "is_the_anonymous_object": True,
        "template": "None|",
    }


async def test_current_user_is_the_loaded_user_in_views_and_templates(probe_app):
    """Logged in: current_user is the User row, read without await in views and templates."""
    client = probe_app.test_client()
    await register_api(client, "alice")
    assert await (await client.get("/probe")).get_json() == {
        "is_authenticated": True,
        "is_anonymous": False,
        "is_active": True,
        "id": 1,
        "get_id": "1",
        "username": "alice",
        "is_the_anonymous_object": False,
        "template": "1|alice",
    }


async def test_tampered_cookie_is_anonymous_and_cleared(app, client):
    """A cookie whose signature does not verify is anonymous, and the browser is told to drop it."""
    await register_api(client, "alice")
    cookie = auth_cookie(client)
    tampered = cookie[:-3] + ("AAA" if not cookie.endswith("AAA") else "BBB")
    response = await client_with_cookie(app, tampered).get("/api/me")
    assert response.status_code == 401
    assert response.headers["Set-Cookie"].startswith("quart_app_auth=;")
    assert (await client_with_cookie(app, cookie).get("/api/me")).status_code == 200


async def test_cookie_signed_with_another_secret_is_anonymous(make_app, client, app):
    """A cookie made by an app with another SECRET_KEY opens nothing."""
    await register_api(client, "alice")
    cookie = auth_cookie(client)
    other = make_app(SECRET_KEY="another-secret-" + "x" * 40)
    async with other.test_app():
        assert (await client_with_cookie(other, cookie).get("/api/me")).status_code == 401


async def test_unknown_session_cookie_is_cleared(app, client, database):
    """A well-signed cookie for a session that no longer exists is anonymous and deleted."""
    await register_api(client, "alice")
    cookie = auth_cookie(client)
    db_write(database, "DELETE FROM auth_sessions")
    response = await client_with_cookie(app, cookie).get("/api/me")
    assert response.status_code == 401
    assert response.headers["Set-Cookie"].startswith("quart_app_auth=;")


# -- server-side sessions ----------------------------------------------------


async def test_database_keeps_only_the_sha256_of_the_session_secret(app, client, database):
    """The cookie's secret (256 bits) is not in the database; its SHA-256 is."""
    await register_api(client, "alice")
    token = session_token_of(app, auth_cookie(client))
    assert len(token) >= 43  # 32 random bytes, url-safe base64
    [(stored,)] = db_rows(database, "SELECT token_hash FROM auth_sessions")
    assert stored == token_digest(token) != token
    if database.is_sqlite:  # the file and its write-ahead log, byte for byte
        for path in (database.path, database.path.with_name(database.path.name + "-wal")):
            if path.exists():
                assert token.encode() not in path.read_bytes()
    else:
        assert token not in repr(db_rows(database, "SELECT * FROM auth_sessions"))


async def test_each_login_gets_its_own_secret_and_row(app, database):
    """Two logins make two sessions with different secrets."""
    await register_api(app.test_client(), "alice")
    tokens = []
    for _ in range(2):
        client = app.test_client()
        await client.post("/api/login", json={"username": "alice", "password": PASSWORD})
        tokens.append(session_token_of(app, auth_cookie(client)))
    assert tokens[0] != tokens[1]
    assert len(db_rows(database, "SELECT id FROM auth_sessions")) == 3  # + the registration's


async def test_session_row_records_ip_user_agent_and_times(client, database):
    """A session knows when it was created and last seen, from which IP and user agent."""
    await client.post(
        "/api/register",
        json={"username": "alice", "email": "a@example.com", "password": PASSWORD},
        headers={"User-Agent": "pytest-browser/1.0"},
    )
    [(ip, agent, created, seen, expires, remember)] = db_rows(
        database, "SELECT ip, user_agent, created_at, last_seen_at, expires_at, remember FROM auth_sessions"
    )
    assert ip and agent == "pytest-browser/1.0"
    assert created == seen < expires
    assert remember == 0


async def test_logging_in_again_replaces_this_browsers_session(app, client):
    """A second login from the same browser revokes the session it replaces."""
    await register_api(client, "alice")
    first = auth_cookie(client)
    await client.post("/api/login", json={"username": "alice", "password": PASSWORD})
    assert (await client_with_cookie(app, first).get("/api/me")).status_code == 401
    assert (await client.get("/api/me")).status_code == 200


async def test_expired_session_is_refused(app, client, database):
    """A session past its expiry opens nothing, even with a valid signed cookie."""
    await register_api(client, "alice")
    past = (utcnow() - timedelta(seconds=1)).isoformat(sep=" ")
    db_write(database, "UPDATE auth_sessions SET expires_at = ?", past)
    assert (await client.get("/api/me")).status_code == 401


async def test_activity_slides_the_idle_expiry_but_not_past_the_absolute_limit(make_app, database):
    """Plain sessions: a request after the touch interval moves last_seen and the idle expiry."""
    app = make_app(SESSION_IDLE_TIMEOUT=600, SESSION_ABSOLUTE_TIMEOUT=900, SESSION_TOUCH_INTERVAL=60)
    async with app.test_app():
        client = app.test_client()
        await register_api(client, "alice")
        now = utcnow()
        created = now - timedelta(seconds=800)
        db_write(
            database,
            "UPDATE auth_sessions SET created_at = ?, last_seen_at = ?, expires_at = ?",
            created.isoformat(sep=" "),
            (now - timedelta(seconds=120)).isoformat(sep=" "),
            (now + timedelta(seconds=30)).isoformat(sep=" "),
        )
        assert (await client.get("/api/me")).status_code == 200
        [(seen, expires)] = db_rows(database, "SELECT last_seen_at, expires_at FROM auth_sessions")
        assert datetime.fromisoformat(seen) >= now - timedelta(seconds=1)
        # now + idle (600 s) would pass created + absolute (900 s): the absolute wins.
        assert datetime.fromisoformat(expires) == created + timedelta(seconds=900)


async def test_recent_activity_does_not_write(client, database):
    """Within the touch interval a request does not write last_seen (no write on the hot path)."""
    await register_api(client, "alice")
    [(before,)] = db_rows(database, "SELECT last_seen_at FROM auth_sessions")
    for _ in range(3):
        assert (await client.get("/api/me")).status_code == 200
    assert db_rows(database, "SELECT last_seen_at FROM auth_sessions") == [(before,)]


async def test_deactivated_user_is_refused_and_cannot_log_in(app, client, database):
    """is_active false: existing sessions refused at once, and login gives the generic 401."""
    await register_api(client, "alice")
    db_write(database, "UPDATE users SET is_active = false")
    assert (await client.get("/api/me")).status_code == 401
    response = await app.test_client().post("/api/login", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 401
    assert await response.get_json() == {"error": "Incorrect username or password."}


async def test_deleting_a_user_deletes_their_sessions(app, client, database):
    """Sessions belong to their user (foreign key with cascade, enforced on SQLite too)."""
    await register_api(client, "alice")
    # Through the app's own engine, whose connections turn foreign keys on.
    from sqlalchemy import text

    from quart_app.db import get_db

    async with app.app_context():
        db = get_db()
        await db.execute(text("DELETE FROM users"))
        await db.commit()
    assert db_rows(database, "SELECT count(*) FROM auth_sessions") == [(0,)]


# -- passwords ---------------------------------------------------------------


async def test_unknown_user_login_still_runs_a_verification(app):
    """An unknown username costs a password verification like a wrong password does."""
    hasher = app.extensions["quart_app.hasher"]
    verified = []
    original = hasher._verify_sync

    def spy(stored_hash, password):
        verified.append(stored_hash.split("$")[1])
        return original(stored_hash, password)

    hasher._verify_sync = spy
    response = await app.test_client().post("/api/login", json={"username": "ghost", "password": "whatever1"})
    assert response.status_code == 401
    assert verified == ["argon2id"]


async def test_hashing_runs_off_the_event_loop_thread(app):
    """Hashes are computed on the hash pool's threads, never on the loop's."""
    import threading

    hasher = app.extensions["quart_app.hasher"]
    threads = []
    original = hasher._hash_sync

    def spy(password):
        threads.append(threading.current_thread().name)
        return original(password)

    hasher._hash_sync = spy
    assert (await register_api(app.test_client(), "alice")).status_code == 201
    assert threads and all(name.startswith("password-hash") for name in threads)
    assert threading.current_thread().name not in threads


async def test_hash_pool_runs_at_most_its_size_at_once(make_app):
    """The pool bounds concurrent hashing to HASH_WORKERS, however many logins arrive."""
    import threading
    import time

    app = make_app(HASH_WORKERS=2)
    async with app.test_app():
        hasher = app.extensions["quart_app.hasher"]
        lock = threading.Lock()
        running, peak = 0, 0
        original = hasher._verify_sync

        def slow(stored_hash, password):
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            time.sleep(0.05)
            try:
                return original(stored_hash, password)
            finally:
                with lock:
                    running -= 1

        hasher._verify_sync = slow
        await asyncio.gather(
            *(app.test_client().post("/api/login", json={"username": f"u{i}", "password": "x" * 9}) for i in range(8))
        )
        assert peak == 2


async def test_outdated_argon2_parameters_are_upgraded_at_login(make_app, database):
    """A hash made with weaker parameters is replaced by one with the current ones at login."""
    weak = make_app(ARGON2_MEMORY_COST=512)
    async with weak.test_app():
        await register_api(weak.test_client(), "alice")
    assert "m=512," in db_rows(database, "SELECT password_hash FROM users")[0][0]
    app = make_app()
    async with app.test_app():
        response = await app.test_client().post("/api/login", json={"username": "alice", "password": PASSWORD})
        assert response.status_code == 200
    assert "m=1024," in db_rows(database, "SELECT password_hash FROM users")[0][0]


@pytest.mark.sqlite_only("the SQLite thread pool")
async def test_session_lookup_runs_on_the_sqlite_threads_not_the_loop(app, client):
    """On SQLite the per-request lookup is one trip to the bounded SQLite thread pool."""
    import threading

    await register_api(client, "alice")
    database = app.extensions["quart_app.db"]
    threads = []

    def spying(original):
        def spy(work):
            threads.append(threading.current_thread().name)
            return original(work)

        return spy

    # Either kind of trip: a SQLAlchemy unit of work, or SQL on the thread's own connection.
    database._run_in_thread = spying(database._run_in_thread)
    database._run_raw = spying(database._run_raw)
    assert (await client.get("/dashboard")).status_code == 200
    assert len(threads) == 1 and threads[0].startswith("sqlite")


@pytest.mark.sqlite_only("a SQLite file held by another process")
async def test_a_sqlite_file_held_elsewhere_is_503_then_service_resumes(make_app, database):
    """A session lookup that must write (its touch) while another process holds the write lock past
    busy_timeout: 503 + Retry-After, not 500, and the next request after the lock goes is served."""
    import sqlite3

    # A session is touched (written) when its last touch is a second old.
    app = make_app(SQLITE_BUSY_TIMEOUT_MS=50, SESSION_TOUCH_INTERVAL=1)
    async with app.test_app():
        client = app.test_client()
        await register_api(client, "alice")
        assert (await client.get("/dashboard")).status_code == 200
        holder = sqlite3.connect(database.path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # the file's one write lock, as another worker would hold it
            await asyncio.sleep(1.1)
            response = await client.get("/dashboard")
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "1"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert (await client.get("/dashboard")).status_code == 200


async def test_an_os_error_outside_the_database_is_a_500_not_a_503(make_app):
    """Only the database layer's socket errors and timeouts mean "retry later"; anywhere else they are bugs."""
    app = make_app()
    app.config["PROPAGATE_EXCEPTIONS"] = False  # answer as in production

    @app.get("/broken")
    async def broken():
        raise FileNotFoundError("a file the view expected")

    async with app.test_app():
        response = await app.test_client().get("/broken")
    assert response.status_code == 500
    assert "Retry-After" not in response.headers


async def test_no_request_hook_runs_on_a_thread(app):
    """Every hook and context processor is async: Quart would run a sync one on a thread per request."""
    import inspect

    hooks = [
        *(f for fs in app.before_request_funcs.values() for f in fs),
        *(f for fs in app.after_request_funcs.values() for f in fs),
        *(f for fs in app.template_context_processors.values() for f in fs),
        *(f for fs in app.teardown_appcontext_funcs for f in [fs]),
    ]
    sync = [getattr(f, "__qualname__", repr(f)) for f in hooks if not inspect.iscoroutinefunction(f)]
    assert sync == []


async def test_secret_key_rotation_keeps_sessions_signed_with_a_fallback_key(make_app):
    """A cookie signed with the previous key still works when that key is listed in SECRET_KEY_FALLBACKS."""
    old_key, new_key = "old-secret-" + "o" * 40, "new-secret-" + "n" * 40
    before = make_app(SECRET_KEY=old_key)
    async with before.test_app():
        first = before.test_client()
        await register_api(first, "alice")
        cookie = auth_cookie(first)
    rotated = make_app(SECRET_KEY=new_key, SECRET_KEY_FALLBACKS=old_key)
    async with rotated.test_app():
        assert (await client_with_cookie(rotated, cookie).get("/api/me")).status_code == 200
        fresh = rotated.test_client()
        await fresh.post("/api/login", json={"username": "alice", "password": PASSWORD})
        new_cookie = auth_cookie(fresh)
    dropped = make_app(SECRET_KEY=new_key)
    async with dropped.test_app():
        assert (await client_with_cookie(dropped, cookie).get("/api/me")).status_code == 401
        assert (await client_with_cookie(dropped, new_cookie).get("/api/me")).status_code == 200


async def test_behind_a_trusted_proxy_the_client_ip_is_the_forwarded_one(make_app, database):
    """PROXY_HOPS=1: sessions (and so the throttle and audit trail) see X-Forwarded-For's client, not the proxy."""
    for hops, username, expected in ((0, "alice", "10.0.0.9"), (1, "bob", "203.0.113.7")):
        app = make_app(PROXY_HOPS=hops)
        async with app.test_app():
            response = await app.test_client().post(
                "/api/register",
                json={"username": username, "email": f"{username}@example.com", "password": PASSWORD},
                headers={"X-Forwarded-For": "203.0.113.7"},
                scope_base={"client": ("10.0.0.9", 40000)},
            )
            assert response.status_code == 201, await response.get_data(as_text=True)
        sql = "SELECT s.ip FROM auth_sessions s JOIN users u ON u.id = s.user_id WHERE u.username = ?"
        assert db_rows(database, sql, username) == [(expected,)]


async def test_a_remembered_cookie_still_expires_at_its_signature_max_age(make_app, monkeypatch):
    """Verified cookies are remembered per worker, but not past REMEMBER_COOKIE_DURATION after signing."""
    import time

    app = make_app(REMEMBER_COOKIE_DURATION=3600, SESSION_IDLE_TIMEOUT=3600, SESSION_ABSOLUTE_TIMEOUT=3600)
    async with app.test_app():
        client = app.test_client()
        await register_api(client, "alice")
        assert (await client.get("/api/me")).status_code == 200  # verified, and remembered
        assert (await client.get("/api/me")).status_code == 200
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() + 3601)
        assert (await client.get("/api/me")).status_code == 401
