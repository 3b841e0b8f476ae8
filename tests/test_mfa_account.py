"""The second factor from the account: /account/2fa and /api/2fa/* (contract: "Second factor: TOTP and recovery codes").

Each row on the pages and on the JSON API, against the suite's real
database, with codes computed here by pyotp from the secret the setup
answered (the page's, or the API's). A code is accepted once: the confirming
code takes its step, so later codes here are those of the next step
(``offset=1``, within the accepted window). Notices go to a real SMTP server.
"""

from __future__ import annotations

import asyncio
import re
import time
from html import unescape
from types import SimpleNamespace
from urllib.parse import parse_qs, urlencode, urlsplit

import pyotp
from conftest import (
    CSRF_RE,
    FAST_HASHING,
    auth_cookie,
    client_with_cookie,
    db_rows,
    db_write,
    mail_settings,
    register_api,
)

from quart_app import create_app
from quart_login.testing import login_client

PASSWORD = "correct horse battery"
CODE_RE = re.compile(r"\b[0-9a-hjkmnp-tv-z]{5}-[0-9a-hjkmnp-tv-z]{5}\b")
SECRET_RE = re.compile(r'data-secret="([A-Z2-7]+)"')
BASE32_RE = re.compile(r"[A-Z2-7]{32}")


def code_of(secret: str, offset: int = 0) -> str:
    """What the authenticator app shows now (``offset`` steps later)."""
    return pyotp.TOTP(secret).at(time.time(), counter_offset=offset)


def wrong_code(secret: str) -> str:
    """Six digits that are the code of no step in the accepted window."""
    window = {code_of(secret, offset) for offset in (-2, -1, 0, 1, 2)}
    return next(
        candidate
        for candidate in ("000000", "111111", "222222", "333333", "444444", "555555", "666666")
        if candidate not in window
    )


def csrf_of(page: str) -> str:
    match = CSRF_RE.search(page)
    assert match, "no csrf_token on the page"
    return match.group(1)


async def text(response) -> str:
    return await response.get_data(as_text=True)


async def post_pairs(client, path: str, pairs: list[tuple[str, str]]):
    """A form POST with repeated fields (``code`` once per code)."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return await client.post(path, data=urlencode(pairs), headers=headers)


async def me_status(app, cookie: str) -> int:
    return (await client_with_cookie(app, cookie).get("/api/me")).status_code


async def second_session(app, username: str = "alice") -> str:
    """The cookie of another client logged in as ``username`` (before any second factor)."""
    other = app.test_client()
    response = await other.post("/api/login", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200, await text(response)
    return auth_cookie(other)


async def another_session(app, database, amr=("pwd", "otp")) -> str:
    """The cookie of another client with a session of alice's that presented ``amr`` (no login form involved)."""
    [(user_id,)] = db_rows(database, "SELECT id FROM users WHERE username = ?", "alice")
    other = app.test_client()
    await login_client(other, SimpleNamespace(id=user_id), amr=amr)
    return auth_cookie(other)


async def api_enrol(client) -> tuple[str, list[str]]:
    """Turn an authenticator app on through the API: (secret, recovery codes)."""
    setup = await client.post("/api/2fa/totp/setup")
    assert setup.status_code == 200, await text(setup)
    secret = (await setup.get_json())["secret"]
    confirmed = await client.post("/api/2fa/totp/confirm", json={"code": code_of(secret)})
    assert confirmed.status_code == 200, await text(confirmed)
    return secret, (await confirmed.get_json())["recovery_codes"]


def factor_rows(database) -> tuple[int, int]:
    return (
        db_rows(database, "SELECT count(*) FROM user_factors")[0][0],
        db_rows(database, "SELECT count(*) FROM recovery_codes")[0][0],
    )


def events(database) -> list[str]:
    return [row[0] for row in db_rows(database, "SELECT event FROM auth_events ORDER BY id")]


def subjects(received) -> list[str]:
    return [message.message["Subject"] for message in received]


# -- setup and confirm -----------------------------------------------------------------------------


async def test_api_setup_answers_a_secret_and_its_otpauth_uri_not_yet_active(app, client, database):
    await register_api(client)
    response = await client.post("/api/2fa/totp/setup")
    assert response.status_code == 200
    body = await response.get_json()
    assert set(body) == {"secret", "otpauth_uri"}
    assert BASE32_RE.fullmatch(body["secret"])
    uri = urlsplit(body["otpauth_uri"])
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert parse_qs(uri.query)["secret"] == [body["secret"]]
    assert "alice" in uri.path
    # Not active yet: no recovery codes, the login takes a password alone.
    assert factor_rows(database) == (1, 0)
    assert db_rows(database, "SELECT confirmed_at FROM user_factors") == [(None,)]
    # A second setup replaces the first (one pending setup at a time).
    again = await (await client.post("/api/2fa/totp/setup")).get_json()
    assert again["secret"] != body["secret"]
    assert factor_rows(database) == (1, 0)


async def test_api_confirm_with_a_right_code_turns_it_on_revokes_the_others_and_mails(make_app, smtp_server, database):
    app = make_app(**mail_settings(smtp_server))
    async with app.test_app():
        client = app.test_client()
        await register_api(client)
        other = await second_session(app)
        assert await me_status(app, other) == 200
        before = auth_cookie(client)

        secret, codes = await api_enrol(client)
        assert len(codes) == 10 and len(set(codes)) == 10
        assert all(CODE_RE.fullmatch(code) for code in codes)
        assert await me_status(app, other) == 401  # every other session is revoked
        assert (await client.get("/api/me")).status_code == 200  # this one goes on...
        assert auth_cookie(client) != before  # ...with a new secret: a copy of the old cookie opens nothing
        assert await me_status(app, before) == 401
        [session] = await (await client.get("/api/sessions")).get_json()
        assert (session["amr"], session["aal"]) == (["pwd", "otp"], 2)  # it presented the new factor

        received = await smtp_server.wait_for(2)  # the registration's verification link, then the notice
        [notice] = [m for m in received if "Two-factor authentication is on" in m.message["Subject"]]
        assert notice.rcpt_tos == ["alice@example.com"]
        assert "Hello alice," in notice.text and "Every other session" in notice.text
        for code in codes:
            assert code not in notice.text and code not in notice.html
        assert secret not in notice.text
    assert factor_rows(database) == (1, 10)
    assert "mfa_enabled" in events(database)


async def test_api_confirm_with_a_wrong_code_is_400_and_changes_nothing(app, client, database):
    await register_api(client)
    other = await second_session(app)
    secret = (await (await client.post("/api/2fa/totp/setup")).get_json())["secret"]
    for code in (wrong_code(secret), code_of(secret, 3), "12345", "abcdef", ""):
        response = await client.post("/api/2fa/totp/confirm", json={"code": code})
        assert response.status_code == 400, code
        assert "code" in (await response.get_json())["fields"]
    assert (await client.post("/api/2fa/totp/confirm", json={})).status_code == 400
    assert (await client.post("/api/2fa/totp/confirm", json={"code": 123456})).status_code == 400
    assert await me_status(app, other) == 200
    assert factor_rows(database) == (1, 0)
    # The right code still works afterwards.
    assert (await client.post("/api/2fa/totp/confirm", json={"code": code_of(secret)})).status_code == 200


async def test_api_confirm_without_a_setup_is_400_and_a_second_setup_once_on_is_409(app, client):
    await register_api(client)
    response = await client.post("/api/2fa/totp/confirm", json={"code": "123456"})
    assert response.status_code == 400
    await api_enrol(client)
    assert (await client.post("/api/2fa/totp/setup")).status_code == 409
    assert (await client.post("/api/2fa/totp/confirm", json={"code": "123456"})).status_code == 400


async def test_page_setup_shows_the_qr_code_and_the_secret_and_confirm_shows_the_codes(make_app, smtp_server, database):
    app = make_app(**mail_settings(smtp_server))
    async with app.test_app():
        client = app.test_client()
        await register_api(client)
        other = await second_session(app)

        page = await client.get("/account/2fa")
        assert page.status_code == 200
        html = await text(page)
        assert "Set up an authenticator app" in html and 'action="/account/2fa/totp/setup"' in html
        assert 'href="/account/2fa"' in await text(await client.get("/account"))

        setup = await client.post("/account/2fa/totp/setup", form={"csrf_token": csrf_of(html)})
        assert setup.status_code == 200
        html = await text(setup)
        [secret] = SECRET_RE.findall(html)
        assert " ".join(secret[i : i + 4] for i in range(0, 32, 4)) in html  # typed by hand, in groups
        svg = html[html.index("<svg") : html.index("</svg>") + 6]
        assert 'xmlns="http://www.w3.org/2000/svg"' in svg and "<path" in svg
        # Inline, under the strict CSP: nothing in it is a script or a style.
        assert not re.search(r"<script|<style|\sstyle=|\son\w+=|href=", svg)
        assert "script-src 'self'" in setup.headers["Content-Security-Policy"]

        # A wrong code: 400, the same QR code and secret shown again, with the error.
        wrong = await client.post(
            "/account/2fa/totp/confirm", form={"code": wrong_code(secret), "csrf_token": csrf_of(html)}
        )
        assert wrong.status_code == 400
        html = await text(wrong)
        assert SECRET_RE.findall(html) == [secret] and "<svg" in html
        assert 'aria-invalid="true"' in html and "That code is not right" in html
        assert await me_status(app, other) == 200

        confirmed = await client.post(
            "/account/2fa/totp/confirm", form={"code": code_of(secret), "csrf_token": csrf_of(html)}
        )
        assert confirmed.status_code == 200
        html = await text(confirmed)
        pre = html[html.index('<pre id="recovery-codes"') : html.index("</pre>")]
        codes = CODE_RE.findall(pre)
        assert len(codes) == 10 and len(set(codes)) == 10
        assert "shown only now" in html
        assert await me_status(app, other) == 401

        # Downloadable as a text file: the page posts them back and gets an attachment.
        download = await post_pairs(
            client,
            "/account/2fa/recovery-codes/download",
            [("csrf_token", csrf_of(html)), *(("code", code) for code in codes)],
        )
        assert download.status_code == 200
        assert download.mimetype == "text/plain"
        assert download.headers["Content-Disposition"] == 'attachment; filename="recovery-codes.txt"'
        assert CODE_RE.findall(await text(download)) == codes
        # Only code-shaped values are echoed; and not without the form's token.
        junk = await client.post(
            "/account/2fa/recovery-codes/download", form={"csrf_token": csrf_of(html), "code": "<b>hi</b>"}
        )
        assert junk.status_code == 400
        forged = await post_pairs(client, "/account/2fa/recovery-codes/download", [("code", codes[0])])
        assert forged.status_code == 403

        # The state page now says it is on, with 10 codes left.
        html = await text(await client.get("/account/2fa"))
        assert "An authenticator app is set up" in html
        assert re.search(r"<strong>10</strong> of 10 recovery codes left", html)

        received = await smtp_server.wait_for(2)
        assert any("Two-factor authentication is on" in subject for subject in subjects(received))
    assert factor_rows(database) == (1, 10)


async def test_every_form_needs_the_csrf_token(app, client):
    await register_api(client)
    for path in (
        "/account/2fa/totp/setup",
        "/account/2fa/totp/confirm",
        "/account/2fa/disable",
        "/account/2fa/recovery-codes",
    ):
        response = await client.post(path, form={"code": "123456", "current_password": PASSWORD})
        assert response.status_code == 403, path


# -- fresh login ------------------------------------------------------------------------------------


async def test_a_stale_session_is_sent_to_reauthenticate_and_json_gets_401(app, client, database):
    await register_api(client)
    db_write(database, "UPDATE auth_sessions SET auth_time = NULL")
    page = await client.get("/account/2fa")
    assert page.status_code == 302
    assert urlsplit(page.headers["Location"]).path == "/reauthenticate"
    for path in ("/api/2fa/totp/setup", "/api/2fa/recovery-codes"):
        response = await client.post(path)
        assert response.status_code == 401, path
    assert (await client.post("/api/2fa/totp/confirm", json={"code": "123456"})).status_code == 401
    # Anonymous: 401 on the API, the login page for the pages.
    anonymous = app.test_client()
    assert (await anonymous.post("/api/2fa/totp/setup")).status_code == 401
    assert (await anonymous.post("/api/2fa/disable", json={"current_password": "x", "code": "1"})).status_code == 401
    assert urlsplit((await anonymous.get("/account/2fa")).headers["Location"]).path == "/login"


# -- disable -----------------------------------------------------------------------------------------


async def test_api_disable_needs_both_the_password_and_a_code(make_app, smtp_server, database):
    app = make_app(**mail_settings(smtp_server))
    async with app.test_app():
        client = app.test_client()
        await register_api(client)
        secret, _codes = await api_enrol(client)
        other = await another_session(app, database)
        cases = [
            {"current_password": "wrong password", "code": code_of(secret, 1)},
            {"current_password": PASSWORD, "code": wrong_code(secret)},
            {"current_password": PASSWORD, "code": "00000-00000"},
            {"current_password": PASSWORD},
            {"code": code_of(secret, 1)},
        ]
        for case in cases:
            response = await client.post("/api/2fa/disable", json=case)
            assert response.status_code == 400, case
        assert factor_rows(database) == (1, 10)

        response = await client.post(
            "/api/2fa/disable", json={"current_password": PASSWORD, "code": code_of(secret, 1)}
        )
        assert response.status_code == 204
        assert factor_rows(database) == (0, 0)
        assert await me_status(app, other) == 401
        assert (await client.get("/api/me")).status_code == 200
        # Nothing left to turn off: 409.
        again = await client.post("/api/2fa/disable", json={"current_password": PASSWORD, "code": code_of(secret, 1)})
        assert again.status_code == 409

        received = await smtp_server.wait_for(3)
        [notice] = [m for m in received if "Two-factor authentication is off" in m.message["Subject"]]
        assert "Hello alice," in notice.text and "no longer work" in notice.text
    assert "mfa_disabled" in events(database)


async def test_api_disable_with_a_recovery_code(app, client, database):
    await register_api(client)
    _secret, codes = await api_enrol(client)
    response = await client.post("/api/2fa/disable", json={"current_password": PASSWORD, "code": codes[3].upper()})
    assert response.status_code == 204
    assert factor_rows(database) == (0, 0)
    assert "recovery_code_used" in events(database)


async def test_api_wrong_codes_on_disable_are_throttled_and_end_the_session(make_app, database):
    app = make_app(LOGIN_RATE_LIMIT="3/minute")
    async with app.test_app():
        client = app.test_client()
        await register_api(client)
        secret, _codes = await api_enrol(client)
        statuses = []
        for _ in range(4):
            response = await client.post(
                "/api/2fa/disable", json={"current_password": PASSWORD, "code": wrong_code(secret)}
            )
            statuses.append(response.status_code)
            if response.status_code != 400:
                break
        assert statuses[:2] == [400, 400]
        assert statuses[-1] == 401  # the failure that reaches the limit ends this session
        assert (await client.get("/api/me")).status_code == 401
    assert factor_rows(database) == (1, 10)


async def test_page_disable_needs_both_and_then_turns_everything_off(app, client, database):
    await register_api(client)
    secret, _codes = await api_enrol(client)
    other = await another_session(app, database)
    html = await text(await client.get("/account/2fa"))
    assert 'action="/account/2fa/disable"' in html
    for form in (
        {"current_password": "wrong password", "code": code_of(secret, 1)},
        {"current_password": PASSWORD, "code": wrong_code(secret)},
    ):
        response = await client.post("/account/2fa/disable", form={**form, "csrf_token": csrf_of(html)})
        assert response.status_code == 400, form
        html = await text(response)
        assert 'aria-invalid="true"' in html
    assert factor_rows(database) == (1, 10)
    response = await client.post(
        "/account/2fa/disable",
        form={"current_password": PASSWORD, "code": code_of(secret, 1), "csrf_token": csrf_of(html)},
    )
    assert response.status_code == 302
    assert urlsplit(response.headers["Location"]).path == "/account/2fa"
    assert factor_rows(database) == (0, 0)
    assert await me_status(app, other) == 401
    html = await text(await client.get("/account/2fa"))
    assert "Two-factor authentication is off" in unescape(html)
    assert "Set up an authenticator app" in html


# -- recovery codes -----------------------------------------------------------------------------


async def test_api_regenerate_gives_ten_new_codes_and_kills_the_old_ones(make_app, smtp_server, database):
    app = make_app(**mail_settings(smtp_server))
    async with app.test_app():
        client = app.test_client()
        await register_api(client)
        _secret, old = await api_enrol(client)
        other = await another_session(app, database)
        response = await client.post("/api/2fa/recovery-codes")
        assert response.status_code == 200
        new = (await response.get_json())["recovery_codes"]
        assert len(new) == 10 and not set(new) & set(old)
        assert await me_status(app, other) == 401
        # An old code is dead; a new one works (turning the factor off with it).
        dead = await client.post("/api/2fa/disable", json={"current_password": PASSWORD, "code": old[0]})
        assert dead.status_code == 400
        alive = await client.post("/api/2fa/disable", json={"current_password": PASSWORD, "code": new[0]})
        assert alive.status_code == 204
        received = await smtp_server.wait_for(4)
        assert any("New recovery codes" in subject for subject in subjects(received))
    assert "recovery_codes_regenerated" in events(database)


async def test_regenerate_without_a_second_factor_is_409(app, client):
    await register_api(client)
    assert (await client.post("/api/2fa/recovery-codes")).status_code == 409


async def test_regenerate_needs_a_session_that_presented_the_second_factor(app, client, database):
    """An account with a second factor changes its codes only from a session at AAL 2."""
    await register_api(client)
    await api_enrol(client)
    # A session with the password alone (as from before the factor existed): AAL 1.
    password_only = client_with_cookie(app, await another_session(app, database, amr=("pwd",)))
    assert (await password_only.post("/api/2fa/recovery-codes")).status_code == 401
    assert (await password_only.get("/api/me")).status_code == 200
    assert (await client.post("/api/2fa/recovery-codes")).status_code == 200


async def test_page_regenerate_shows_the_new_codes_once(app, client, database):
    await register_api(client)
    _secret, old = await api_enrol(client)
    html = await text(await client.get("/account/2fa"))
    response = await client.post("/account/2fa/recovery-codes", form={"csrf_token": csrf_of(html)})
    assert response.status_code == 200
    html = await text(response)
    pre = html[html.index('<pre id="recovery-codes"') : html.index("</pre>")]
    new = CODE_RE.findall(pre)
    assert len(new) == 10 and not set(new) & set(old)
    assert "no longer work" in html
    # Shown once: the state page gives the count, never a code.
    html = await text(await client.get("/account/2fa"))
    assert re.search(r"<strong>10</strong> of 10 recovery codes left", html)
    assert not CODE_RE.search(html)


# -- users reset-2fa ------------------------------------------------------------------------------


def test_cli_reset_2fa_removes_the_factors_and_revokes_every_session(database):
    app = create_app({"ENV": "testing", "DATABASE_URL": database.url, **FAST_HASHING})

    async def enrol():
        async with app.test_app():
            client = app.test_client()
            await register_api(client)
            await api_enrol(client)
            return auth_cookie(client)

    cookie = asyncio.run(enrol())
    assert factor_rows(database) == (1, 10)
    result = app.test_cli_runner().invoke(args=["users", "reset-2fa", "alice"])
    assert result.exit_code == 0, result.output
    assert "Removed the second factor(s) of alice" in result.output
    assert factor_rows(database) == (0, 0)
    assert db_rows(database, "SELECT count(*) FROM auth_sessions") == [(0,)]
    assert events(database)[-1] == "mfa_reset"

    async def status():
        async with app.test_app():
            return await me_status(app, cookie)

    assert asyncio.run(status()) == 401
    again = app.test_cli_runner().invoke(args=["users", "reset-2fa", "alice"])
    assert again.exit_code == 0 and "had no second factor" in again.output
    missing = app.test_cli_runner().invoke(args=["users", "reset-2fa", "nobody"])
    assert missing.exit_code == 1 and "no user named" in missing.output


# -- at rest -------------------------------------------------------------------------------------


async def test_a_copy_of_the_database_gives_neither_the_secret_nor_a_code(app, client, database):
    await register_api(client)
    secret, codes = await api_enrol(client)
    regenerated = (await (await client.post("/api/2fa/recovery-codes")).get_json())["recovery_codes"]
    forms = [secret, secret.lower(), *codes, *regenerated, *(code.replace("-", "") for code in codes + regenerated)]
    tables = [
        row[0]
        for row in db_rows(
            database,
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            if database.is_sqlite
            else "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()",
        )
    ]
    assert "user_factors" in tables and "recovery_codes" in tables
    stored = b""
    for table in tables:
        for row in db_rows(database, f"SELECT * FROM {table}"):
            for value in row:
                stored += (bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()) + b"\0"
    for form in forms:
        assert form.encode() not in stored, form
    if database.is_sqlite:  # the file and its write-ahead log, as copied
        for path in (database.path, database.path.with_name(database.path.name + "-wal")):
            if path.exists():
                raw = path.read_bytes()
                assert not any(form.encode() in raw for form in forms)


# -- audit rows and signals ------------------------------------------------------------------------


async def test_each_step_is_an_audit_row_and_a_signal(app, client, database):
    """On, a wrong code at login, a recovery code used, new codes, off: rows in auth_events and signals sent."""
    from quart_app.auth import events as signals

    names = {
        "mfa_enabled": signals.mfa_enabled,
        "user_login_failed": signals.user_login_failed,
        "recovery_code_used": signals.recovery_code_used,
        "recovery_codes_regenerated": signals.recovery_codes_regenerated,
        "mfa_disabled": signals.mfa_disabled,
    }
    received: list[tuple[str, str | None]] = []
    receivers = {}
    for name, signal in names.items():
        receivers[name] = lambda app, name=name, detail=None, **extra: received.append((name, detail))
        signal.connect(receivers[name], weak=False)
    try:
        await register_api(client)
        secret, codes = await api_enrol(client)
        other = app.test_client()
        await other.post("/api/login", json={"username": "alice", "password": PASSWORD})
        assert (await other.post("/api/login/2fa", json={"code": wrong_code(secret)})).status_code == 401
        assert (await other.post("/api/login/2fa", json={"code": codes[0]})).status_code == 200
        assert (await client.post("/api/2fa/recovery-codes")).status_code == 200
        off = {"current_password": PASSWORD, "code": code_of(secret, 1)}
        assert (await client.post("/api/2fa/disable", json=off)).status_code == 204
    finally:
        for name, signal in names.items():
            signal.disconnect(receivers[name])
    assert [name for name, _ in received] == [
        "mfa_enabled",
        "user_login_failed",
        "recovery_code_used",
        "recovery_codes_regenerated",
        "mfa_disabled",
    ]
    assert "wrong code" in received[1][1]
    rows = events(database)
    for event in (
        "mfa_enabled",
        "mfa_login_failed",
        "recovery_code_used",
        "recovery_codes_regenerated",
        "mfa_disabled",
    ):
        assert event in rows, (event, rows)
    assert not any(secret in (detail or "") or codes[0] in (detail or "") for _, detail in received)
