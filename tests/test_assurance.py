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
