"""Account and sessions: password change, session list and revocation, fresh logins."""

from __future__ import annotations

import re

import pytest
from conftest import auth_cookie, client_with_cookie, csrf_from, db_rows, register_api

PASSWORD = "correct horse battery"
NEW_PASSWORD = "new staple battery horse"


rows = db_rows


async def login_api(app, username="alice", password=PASSWORD, **extra):
    client = app.test_client()
    response = await client.post(
        "/api/login", json={"username": username, "password": password, **extra}, headers={"User-Agent": "ua-test"}
    )
    assert response.status_code == 200, await response.get_data(as_text=True)
    return client


# -- GET /account ------------------------------------------------------------


async def test_account_requires_login(client):
    """Anonymous browsers are sent to the login page."""
    response = await client.get("/account")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=%2Faccount"


async def test_account_lists_sessions_with_this_one_marked(app):
    """The page shows each active session (IP, user agent) with revoke buttons; this one is marked."""
    await register_api(app.test_client(), "alice")
    other = await login_api(app)  # noqa: F841 - a second, live session
    client = await login_api(app)
    response = await client.get("/account")
    body = await response.get_data(as_text=True)
    assert response.status_code == 200
    assert body.count('/revoke"') == 3  # registration + two logins
    assert "(this session)" in body and body.count("(this session)") == 1
    assert "ua-test" in body
    assert 'name="current_password"' in body and 'name="new_password"' in body
    assert "/account/sessions/revoke-others" in body
    assert response.headers["Cache-Control"] == "no-store"


# -- password change ---------------------------------------------------------


async def test_password_change_with_wrong_current_password_is_400_and_changes_nothing(app, database):
    """Wrong current password: 400, the hash unchanged, the other sessions alive."""
    first = app.test_client()
    await register_api(first, "alice")
    client = await login_api(app)
    before = rows(database, "SELECT password_hash FROM users")
    token = await csrf_from(client, "/account")
    response = await client.post(
        "/account/password",
        form={"current_password": "not my password", "new_password": NEW_PASSWORD, "csrf_token": token},
    )
    assert response.status_code == 400
    assert "Current password is incorrect." in await response.get_data(as_text=True)
    assert rows(database, "SELECT password_hash FROM users") == before
    assert (await first.get("/api/me")).status_code == 200


async def test_password_change_revokes_others_keeps_this_one_with_a_new_cookie(app, database):
    """Success: 302 to /account; others dead, this browser logged in on a new secret, old cookie dead."""
    other = app.test_client()
    await register_api(other, "alice")
    client = await login_api(app)
    old_cookie = auth_cookie(client)
    token = await csrf_from(client, "/account")
    response = await client.post(
        "/account/password",
        form={"current_password": PASSWORD, "new_password": NEW_PASSWORD, "csrf_token": token},
    )
    assert response.status_code == 302 and response.headers["Location"] == "/account"
    assert (await client.get("/api/me")).status_code == 200
    assert auth_cookie(client) != old_cookie
    assert (await client_with_cookie(app, old_cookie).get("/api/me")).status_code == 401
    assert (await other.get("/api/me")).status_code == 401
    assert rows(database, "SELECT count(*) FROM auth_sessions") == [(1,)]
    # The new password works, the old one does not.
    old = await app.test_client().post("/api/login", json={"username": "alice", "password": PASSWORD})
    assert old.status_code == 401
    await login_api(app, password=NEW_PASSWORD)


async def test_api_password_change(app):
    """POST /api/password: 204 and other sessions revoked; wrong current: 400; short new: 400."""
    other = app.test_client()
    await register_api(other, "alice")
    client = await login_api(app)
    wrong = await client.post("/api/password", json={"current_password": "nope nope", "new_password": NEW_PASSWORD})
    assert wrong.status_code == 400
    assert (await wrong.get_json())["error"] == "Current password is incorrect."
    short = await client.post("/api/password", json={"current_password": PASSWORD, "new_password": "short"})
    assert short.status_code == 400 and "new_password" in (await short.get_json())["fields"]
    ok = await client.post("/api/password", json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert ok.status_code == 204
    assert (await client.get("/api/me")).status_code == 200
    assert (await other.get("/api/me")).status_code == 401


# -- sessions API ------------------------------------------------------------


async def test_api_sessions_lists_this_users_sessions_without_secrets(app):
    """GET /api/sessions: id, times, IP, user agent and which is current; no secret."""
    await register_api(app.test_client(), "alice")
    await register_api(app.test_client(), "bob")
    client = await login_api(app)
    response = await client.get("/api/sessions")
    listed = await response.get_json()
    assert response.status_code == 200
    assert len(listed) == 2
    fields = ("aal", "amr", "auth_time", "created_at", "current", "id", "ip", "last_seen_at", "user_agent")
    assert {tuple(sorted(s)) for s in listed} == {fields}
    assert [s["current"] for s in listed].count(True) == 1
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", s["created_at"]) for s in listed)
    raw = await response.get_data(as_text=True)
    cookie_secret = app.extensions["QUART_AUTH"][0].load_token(auth_cookie(client), app=app)
    assert cookie_secret not in raw


async def test_api_delete_session_revokes_it(app):
    """DELETE /api/sessions/<id>: 204 and that session's cookie is dead."""
    other = app.test_client()
    await register_api(other, "alice")
    client = await login_api(app)
    listed = await (await client.get("/api/sessions")).get_json()
    other_id = next(s["id"] for s in listed if not s["current"])
    assert (await client.delete(f"/api/sessions/{other_id}")).status_code == 204
    assert (await other.get("/api/me")).status_code == 401
    assert (await client.get("/api/me")).status_code == 200


async def test_api_delete_someone_elses_session_is_404(app):
    """A session id that is not this user's: 404, and it stays alive."""
    bob = app.test_client()
    await register_api(bob, "bob")
    await register_api(app.test_client(), "alice")
    alice = await login_api(app)
    bob_session = (await (await bob.get("/api/sessions")).get_json())[0]["id"]
    response = await alice.delete(f"/api/sessions/{bob_session}")
    assert response.status_code == 404
    assert await response.get_json() == {"error": "No such session."}
    assert (await bob.get("/api/me")).status_code == 200


async def test_api_delete_own_current_session_logs_out(app):
    """Revoking the current session logs this client out."""
    client = app.test_client()
    await register_api(client, "alice")
    current = (await (await client.get("/api/sessions")).get_json())[0]["id"]
    assert (await client.delete(f"/api/sessions/{current}")).status_code == 204
    assert (await client.get("/api/me")).status_code == 401


async def test_api_revoke_others_keeps_only_this_session(app, database):
    """POST /api/sessions/revoke-others: 204, every other session dead, this one alive."""
    others = [app.test_client() for _ in range(3)]
    await register_api(others[0], "alice")
    for c in others[1:]:
        await c.post("/api/login", json={"username": "alice", "password": PASSWORD})
    client = await login_api(app)
    assert (await client.post("/api/sessions/revoke-others")).status_code == 204
    for c in others:
        assert (await c.get("/api/me")).status_code == 401
    assert (await client.get("/api/me")).status_code == 200
    assert rows(database, "SELECT count(*) FROM auth_sessions") == [(1,)]


async def test_html_revoke_one_and_revoke_others(app):
    """The account page's buttons revoke one session, or all others; both land on /account."""
    a, b = app.test_client(), app.test_client()
    await register_api(a, "alice")
    await b.post("/api/login", json={"username": "alice", "password": PASSWORD})
    client = await login_api(app)
    listed = await (await client.get("/api/sessions")).get_json()
    token = await csrf_from(client, "/account")
    a_id = min(s["id"] for s in listed)  # a's session, from the registration
    response = await client.post(f"/account/sessions/{a_id}/revoke", form={"csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/account"
    assert (await a.get("/api/me")).status_code == 401
    assert (await b.get("/api/me")).status_code == 200
    response = await client.post("/account/sessions/revoke-others", form={"csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/account"
    assert (await b.get("/api/me")).status_code == 401
    assert (await client.get("/api/me")).status_code == 200


async def test_html_revoke_without_csrf_is_403(app):
    """The revoke forms need the CSRF token like every other form."""
    client = app.test_client()
    await register_api(client, "alice")
    assert (await client.post("/account/sessions/revoke-others")).status_code == 403


@pytest.mark.parametrize("session_id", [2**31 - 1, 2**31, 2**63, 10**30])
async def test_revoking_an_id_past_the_column_range_is_404_not_500(app, session_id):
    """A session id larger than any the database holds is unknown: 404 on both routes, nothing revoked."""
    client = app.test_client()
    await register_api(client, "alice")
    response = await client.delete(f"/api/sessions/{session_id}")
    assert response.status_code == 404
    token = await csrf_from(client, "/account")
    response = await client.post(f"/account/sessions/{session_id}/revoke", form={"csrf_token": token})
    assert response.status_code == 404
    assert (await client.get("/api/me")).status_code == 200


# -- the session that changed the password goes on ------------------------------------


async def test_the_changers_live_channel_stays_open_and_other_sessions_are_told(make_app, database):
    """After a password change this browser's socket stays open (its session goes on); another session's is revoked."""
    import asyncio

    from test_live import Socket, next_event

    app = make_app(WS_POLL_INTERVAL=0.05)
    async with app.test_app():
        changer = app.test_client()
        await register_api(changer, "alice")
        other = app.test_client()
        await other.post("/api/login", json={"username": "alice", "password": PASSWORD})
        async with Socket(app, auth_cookie(changer)) as mine, Socket(app, auth_cookie(other)) as theirs:
            assert (await next_event(mine))["event"] == "hello"
            assert (await next_event(theirs))["event"] == "hello"
            old_cookie = auth_cookie(changer)
            response = await changer.post(
                "/api/password", json={"current_password": PASSWORD, "new_password": "another pass 1"}
            )
            assert response.status_code == 204
            assert await next_event(theirs) == {"event": "revoked"}
            with pytest.raises(asyncio.TimeoutError):  # ten polls and no word for this browser's socket
                await asyncio.wait_for(mine.from_app.get(), 0.5)
        assert auth_cookie(changer) != old_cookie
        assert (await changer.get("/api/me")).status_code == 200
        assert (await client_with_cookie(app, old_cookie).get("/api/me")).status_code == 401
        # One session left: the same row as before the change, with a new secret.
        assert db_rows(database, "SELECT count(*) FROM auth_sessions") == [(1,)]
