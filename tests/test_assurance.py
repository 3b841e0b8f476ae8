"""Session assurance in the app: each session's amr, auth_time and aal on /api/sessions and /account.

The contract (Session assurance): every session records how it was
authenticated, `amr` (`pwd`, `otp`, `rec`, `webauthn`), `auth_time` (when a
factor was last presented) and `aal` (1 or 2). Rows older than the columns
(revision session_assurance) were password logins: 'pwd' and 1.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from conftest import alembic, client_with_cookie, db_rows, db_write, login_form, register_api

from quart_login import new_token, token_digest, utcnow

PASSWORD = "correct horse battery"
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def column_names(database, table: str) -> list[str]:
    if database.is_sqlite:
        return [row[1] for row in database.rows(f"PRAGMA table_info({table})")]
    rows = database.rows(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position", table
    )
    return [name for (name,) in rows]


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.removesuffix("Z"))


async def logged_in(app, username: str = "alice"):
    client = app.test_client()
    response = await client.post("/api/login", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200, await response.get_data(as_text=True)
    return client


async def test_api_sessions_show_a_password_login_as_pwd_at_aal_1(app):
    """GET /api/sessions: amr ["pwd"], aal 1, and auth_time (the login's time) for every password session."""
    before = utcnow().replace(microsecond=0)
    await register_api(app.test_client(), "alice")
    client = await logged_in(app)
    response = await client.get("/api/sessions")
    assert response.status_code == 200
    listed = await response.get_json()
    assert len(listed) == 2  # registration + login
    for session in listed:
        assert session["amr"] == ["pwd"]
        assert session["aal"] == 1
        assert STAMP.fullmatch(session["auth_time"]), session
        assert before <= parse(session["auth_time"]) <= utcnow() + timedelta(seconds=1)
        assert session["auth_time"] >= session["created_at"]


async def test_api_sessions_show_the_methods_and_level_a_session_reached(app, database):
    """A session whose row says pwd,otp at AAL 2 is listed so, the methods in the order presented."""
    await register_api(app.test_client(), "alice")
    client = await logged_in(app)
    current = next(s["id"] for s in await (await client.get("/api/sessions")).get_json() if s["current"])
    db_write(database, "UPDATE auth_sessions SET amr = 'pwd,otp', aal = 2 WHERE id = ?", current)
    listed = {s["id"]: s for s in await (await client.get("/api/sessions")).get_json()}
    assert (listed[current]["amr"], listed[current]["aal"]) == (["pwd", "otp"], 2)
    others = [s for s in listed.values() if s["id"] != current]
    assert [(s["amr"], s["aal"]) for s in others] == [(["pwd"], 1)]

    page = await (await client.get("/account")).get_data(as_text=True)
    assert "password + authenticator app</span> · AAL 2" in page
    assert "password</span> · AAL 1" in page


async def test_account_page_shows_how_and_when_each_session_signed_in(app):
    """/account has a Sign-in column: "password · AAL 1" and the time of the last factor, per session."""
    await register_api(app.test_client(), "alice")
    client = app.test_client()
    response = await login_form(client)
    assert response.status_code == 302
    page = await (await client.get("/account")).get_data(as_text=True)
    assert '<th scope="col">Sign-in</th>' in page
    assert page.count("password</span> · AAL 1") == 2
    stamps = re.findall(r'last factor <time datetime="([^"]+)">', page)
    assert len(stamps) == 2 and all(STAMP.fullmatch(stamp) for stamp in stamps)
    assert page.count('/revoke"') == 2  # the revoke buttons are still one per session


async def test_a_session_row_from_before_the_columns_is_a_password_login_at_aal_1(app, database):
    """A row written without amr and aal (as before session_assurance) gets 'pwd' and 1, and opens as such."""
    await register_api(app.test_client(), "alice")
    [(user_id,)] = db_rows(database, "SELECT id FROM users WHERE username = 'alice'")
    token, now = new_token(), utcnow().replace(microsecond=0)
    stamp, expires = (moment.strftime("%Y-%m-%d %H:%M:%S.%f") for moment in (now, now + timedelta(hours=1)))
    db_write(
        database,
        "INSERT INTO auth_sessions (token_hash, user_id, remember, created_at, last_seen_at, expires_at, auth_time) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        *(token_digest(token), user_id, False, stamp, stamp, expires, stamp),
    )
    assert db_rows(database, "SELECT amr, aal FROM auth_sessions WHERE token_hash = ?", token_digest(token)) == [
        ("pwd", 1)
    ]
    async with app.app_context():
        cookie = app.extensions["quart_login"].cookie.dump_token(token, app=app)
    client = client_with_cookie(app, cookie)
    listed = await (await client.get("/api/sessions")).get_json()
    [adopted] = [s for s in listed if s["current"]]
    assert (adopted["amr"], adopted["aal"], adopted["auth_time"]) == (["pwd"], 1, now.isoformat() + "Z")


def test_downgrade_drops_the_columns_and_upgrade_gives_old_rows_pwd_and_1(database):
    """session_assurance down and up again: the sessions stay, and come back as password logins at AAL 1."""
    db_write(
        database,
        "INSERT INTO users (username, email, email_key, password_hash) "
        "VALUES ('s', 's@example.com', 's@example.com', 'x')",
    )
    [(user_id,)] = db_rows(database, "SELECT id FROM users WHERE username = 's'")
    stamp = "2026-01-01 10:00:00.000000"
    db_write(
        database,
        "INSERT INTO auth_sessions (token_hash, user_id, remember, created_at, last_seen_at, expires_at, auth_time, "
        "amr, aal) VALUES (?, ?, ?, ?, ?, ?, ?, 'pwd,otp', 2)",
        *("c" * 64, user_id, False, stamp, stamp, "2027-01-01 00:00:00.000000", stamp),
    )
    alembic("downgrade", "email_flows", url=database.url)
    columns = column_names(database, "auth_sessions")
    assert "amr" not in columns and "aal" not in columns and "auth_time" in columns
    assert db_rows(database, "SELECT count(*) FROM auth_sessions") == [(1,)]

    alembic("upgrade", "head", url=database.url)
    assert db_rows(database, "SELECT amr, aal FROM auth_sessions") == [("pwd", 1)]


# -- sensitive actions: a recent factor, and AAL 2 for an account with a second factor ----------

NEW_PASSWORD = "another long passphrase"
NEEDS_REFRESH = "Please reauthenticate to access this page."
STEP_UP = "Confirm it is you with your second factor to do this."


def age_sessions(database, minutes: int = 20) -> None:
    """Every session last presented a factor ``minutes`` ago (FRESH_LOGIN_WINDOW is 15)."""
    old = (utcnow() - timedelta(minutes=minutes)).isoformat(sep=" ")
    db_write(database, "UPDATE auth_sessions SET auth_time = ?", old)


def live_sessions(database) -> int:
    return db_rows(database, "SELECT count(*) FROM auth_sessions")[0][0]


async def sensitive_calls(client, other_id: int) -> list[tuple[str, object]]:
    """Each sensitive API action once: (what, response)."""
    password = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    address = {"current_password": PASSWORD, "new_email": "new@example.com"}
    return [
        ("password", await client.post("/api/password", json=password)),
        ("email", await client.post("/api/email", json=address)),
        ("revoke one", await client.delete(f"/api/sessions/{other_id}")),
        ("revoke others", await client.post("/api/sessions/revoke-others")),
        ("disable 2fa", await client.post("/api/2fa/disable", json={"current_password": PASSWORD, "code": "1"})),
        ("new codes", await client.post("/api/2fa/recovery-codes")),
    ]


async def test_a_stale_session_changes_nothing_sensitive_until_a_factor_is_presented(make_app, smtp_server, database):
    """Password, address, sessions, factors: 401 JSON for a session older than FRESH_LOGIN_WINDOW, nothing changed."""
    from conftest import mail_settings

    app = make_app(**mail_settings(smtp_server))
    async with app.test_app():
        client = app.test_client()
        await register_api(client, "alice")
        await logged_in(app)
        [(other_id,)] = db_rows(database, "SELECT max(id) FROM auth_sessions")
        age_sessions(database)
        before = db_rows(database, "SELECT password_hash, email FROM users")
        for what, response in await sensitive_calls(client, other_id):
            assert response.status_code == 401, what
            assert await response.get_json() == {"error": NEEDS_REFRESH}, what
        assert db_rows(database, "SELECT password_hash, email FROM users") == before
        assert live_sessions(database) == 2
        assert db_rows(database, "SELECT count(*) FROM email_tokens WHERE purpose = 'email_change'") == [(0,)]
        # The session is still logged in (only the sensitive actions are held back) ...
        assert (await client.get("/api/me")).status_code == 200
        # ... and a fresh login does them.
        fresh = await logged_in(app)
        password = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
        assert (await fresh.post("/api/password", json=password)).status_code == 204


async def test_a_stale_page_form_goes_to_reauthenticate_and_comes_back_to_the_form(app, database):
    """The browser is sent to log in again, with next the page the form was on (a POST cannot be redirected to)."""
    client = app.test_client()
    await register_api(client, "alice")
    age_sessions(database)
    page = await client.get("/account")
    token = re.search(r'name="csrf_token" value="([^"]+)"', await page.get_data(as_text=True)).group(1)
    form = {"csrf_token": token, "current_password": PASSWORD, "new_password": NEW_PASSWORD}
    response = await client.post("/account/password", form=form, headers={"Referer": "http://localhost/account"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/reauthenticate?next=%2Faccount"
    # Without a Referer of this site, no next: a POST cannot be repeated by a redirect.
    response = await client.post("/account/sessions/revoke-others", form={"csrf_token": token})
    assert response.headers["Location"] == "/reauthenticate"
    response = await client.post(
        "/account/sessions/revoke-others", form={"csrf_token": token}, headers={"Referer": "https://evil.example/x"}
    )
    assert response.headers["Location"] == "/reauthenticate"
    login = await client.post("/api/login", json={"username": "alice", "password": PASSWORD})
    assert login.status_code == 200  # the old password still works


async def test_an_account_with_a_second_factor_needs_a_session_that_presented_it(app, database):
    """A session of a 2FA account at AAL 1 (password only) is asked to step up: 401 JSON, or /reauthenticate."""
    from test_mfa_account import another_session, api_enrol

    client = app.test_client()
    await register_api(client, "alice")
    await api_enrol(client)
    password_only = client_with_cookie(app, await another_session(app, database, amr=("pwd",)))
    [(other_id,)] = db_rows(database, "SELECT min(id) FROM auth_sessions")
    before = db_rows(database, "SELECT password_hash, email FROM users")
    for what, response in await sensitive_calls(password_only, other_id):
        assert response.status_code == 401, what
        assert await response.get_json() == {"error": STEP_UP}, what
    assert db_rows(database, "SELECT password_hash, email FROM users") == before
    assert live_sessions(database) == 2
    # The session at AAL 2 (the one that enrolled) does them.
    password = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    assert (await client.post("/api/password", json=password)).status_code == 204


async def test_a_page_step_up_goes_to_reauthenticate_with_next(app, database):
    """/reauthenticate then asks for the password and the code (test_mfa_login): a new session at AAL 2."""
    from test_mfa_account import another_session, api_enrol

    client = app.test_client()
    await register_api(client, "alice")
    await api_enrol(client)
    password_only = client_with_cookie(app, await another_session(app, database, amr=("pwd",)))
    page = await password_only.get("/account")
    assert page.status_code == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', await page.get_data(as_text=True)).group(1)
    response = await password_only.post(
        "/account/sessions/revoke-others", form={"csrf_token": token}, headers={"Referer": "http://localhost/account"}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/reauthenticate?next=%2Faccount"
    assert live_sessions(database) == 2
