"""A login with a second factor (the contract's login rows of "Second factor", and "Session assurance").

A right password for an account with an authenticator app opens a pending
login (the ``mfa_pending`` table, the ``quart_app_mfa`` cookie) instead of a
session; ``/login/2fa`` and ``POST /api/login/2fa`` finish it with a code.
The factor is enrolled through ``quart_app.auth.mfa`` directly, at a moment
the test chooses (``T0``, with ``mfa.clock`` moved step by step), and every
code is computed here with pyotp from the secret, as an authenticator app does.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import pyotp
import pytest
from conftest import FAST_HASHING, auth_cookie, csrf_from, db_rows, db_write, login_form, mail_settings, register_api
from sqlalchemy import select

from quart_app.auth import mfa, pending
from quart_app.core.security import get_hasher
from quart_app.db import get_db
from quart_app.models import User

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a brand new passphrase"
# A moment in the middle of a step, well past any real clock (steps are 30 s).
T0 = 1_900_000_005.0
STEP = 30


class Clock:
    """The second factor's time (``mfa.clock``): starts at T0, moves a step at a time."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def tick(self, steps: int = 1) -> float:
        self.now += steps * STEP
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(mfa, "clock", clock)
    return clock


def code_at(secret: str, now: float) -> str:
    return pyotp.TOTP(secret).at(now)


async def enrol(app, username: str = "alice") -> tuple[str, list[str]]:
    """Turn an authenticator app on for ``username`` at the clock's time: (base32 secret, recovery codes)."""
    async with app.test_request_context("/"):
        db = get_db()
        user = (await db.execute(select(User).where(User.username == username))).scalar_one()
        secret, _uri = await mfa.begin_totp_setup(user)
        codes = await mfa.confirm_totp(user, code_at(secret, mfa.clock()))
        await db.commit()
    return secret, codes


async def enrolled_user(app, username: str = "alice") -> tuple[str, list[str]]:
    response = await register_api(app.test_client(), username)
    assert response.status_code == 201, await response.get_data(as_text=True)
    return await enrol(app, username)


def cookie(client, name: str) -> str | None:
    return next((c.value for c in client.cookie_jar if c.name == name), None)


def set_cookies(response) -> dict[str, str]:
    """The response's Set-Cookie headers by cookie name."""
    return {value.split("=", 1)[0]: value for value in response.headers.getlist("Set-Cookie")}


async def api_login(client, username: str = "alice", password: str = PASSWORD, **extra):
    return await client.post("/api/login", json={"username": username, "password": password, **extra})


async def api_code(client, code: str):
    return await client.post("/api/login/2fa", json={"code": code})


async def form_code(client, code: str):
    token = await csrf_from(client, "/login/2fa")
    return await client.post("/login/2fa", form={"code": code, "csrf_token": token})


async def this_session(client) -> dict:
    """This client's session as GET /api/sessions lists it."""
    response = await client.get("/api/sessions")
    assert response.status_code == 200, await response.get_data(as_text=True)
    (current,) = [listed for listed in await response.get_json() if listed["current"]]
    return current


async def mail_with(smtp_server, text: str, wait: float = 15.0) -> list:
    """The messages received whose text part has ``text``, once there is one (fails after ``wait`` seconds)."""
    deadline = time.monotonic() + wait
    while not (found := [m for m in smtp_server.received if text in m.text]):
        assert time.monotonic() < deadline, [m.text for m in smtp_server.received]
        await asyncio.sleep(0.05)
    return found


def pending_rows(database) -> list[tuple]:
    return db_rows(database, "SELECT user_id, failures, remember, next FROM mfa_pending")


# -- the browser ---------------------------------------------------------------------------


async def test_html_login_asks_for_the_code_then_logs_in_at_aal2_and_keeps_next(app, database, clock):
    secret, _codes = await enrolled_user(app)
    client = app.test_client()

    response = await login_form(client, next_="/account")
    assert response.status_code == 302
    assert urlsplit(response.headers["Location"]).path == "/login/2fa"
    # No session: only the pending login's cookie, HttpOnly, SameSite=Lax, for the TTL.
    assert auth_cookie(client) is None
    assert (await client.get("/api/me")).status_code == 401
    header = set_cookies(response)[pending.COOKIE]
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Max-Age=300" in header and "Path=/" in header
    assert "Secure" not in header  # COOKIE_SECURE is off in tests
    secret_value = cookie(client, pending.COOKIE)
    assert secret_value and len(secret_value) >= 40
    rows = db_rows(database, "SELECT secret_hash, next, remember, failures FROM mfa_pending")
    assert len(rows) == 1 and secret_value not in rows[0][0]  # only its digest is stored
    assert rows[0][1:] == ("/account", False, 0) or rows[0][1:] == ("/account", 0, 0)

    page = await client.get("/login/2fa")
    assert page.status_code == 200
    assert 'name="code"' in await page.get_data(as_text=True)

    done = await form_code(client, code_at(secret, clock.tick()))
    assert done.status_code == 302
    assert done.headers["Location"] == "/account"
    assert auth_cookie(client) is not None
    assert cookie(client, pending.COOKIE) is None  # cleared with the login
    assert pending_rows(database) == []
    current = await this_session(client)
    assert current["amr"] == ["pwd", "otp"] and current["aal"] == 2
    assert "Welcome back, alice!" in await (await client.get("/")).get_data(as_text=True)


async def test_html_wrong_code_shows_the_form_again_with_a_401(app, clock):
    await enrolled_user(app)
    client = app.test_client()
    await login_form(client)
    response = await form_code(client, "000000")
    assert response.status_code == 401
    text = await response.get_data(as_text=True)
    assert "That code is not right." in text and 'name="code"' in text
    assert auth_cookie(client) is None


async def test_html_without_a_pending_login_is_401(app):
    client = app.test_client()
    page = await client.get("/login/2fa")
    assert page.status_code == 401
    assert pending.NO_PENDING in await page.get_data(as_text=True)
    token = await csrf_from(client, "/login")
    response = await client.post("/login/2fa", form={"code": "123456", "csrf_token": token})
    assert response.status_code == 401
    assert pending.NO_PENDING in await response.get_data(as_text=True)


async def test_an_account_without_a_second_factor_logs_in_as_before(app, database):
    await register_api(app.test_client())
    client = app.test_client()
    response = await login_form(client, next_="/dashboard")
    assert response.status_code == 302 and response.headers["Location"] == "/dashboard"
    current = await this_session(client)
    assert current["amr"] == ["pwd"] and current["aal"] == 1
    assert pending_rows(database) == []


# -- the API -------------------------------------------------------------------------------


async def test_api_login_answers_mfa_required_then_the_code_logs_in(app, clock):
    secret, _codes = await enrolled_user(app)
    client = app.test_client()

    response = await api_login(client)
    assert response.status_code == 200
    assert await response.get_json() == {"mfa_required": True, "methods": ["totp", "recovery_code"]}
    assert auth_cookie(client) is None and cookie(client, pending.COOKIE) is not None
    assert (await client.get("/api/me")).status_code == 401

    done = await api_code(client, code_at(secret, clock.tick()))
    assert done.status_code == 200, await done.get_data(as_text=True)
    body = await done.get_json()
    assert body == {"id": body["id"], "username": "alice", "email": "alice@example.com", "recovery_codes_left": None}
    assert (await client.get("/api/me")).status_code == 200
    current = await this_session(client)
    assert current["amr"] == ["pwd", "otp"] and current["aal"] == 2


async def test_api_without_a_pending_login_or_code_is_401_or_400(app, clock):
    secret, _codes = await enrolled_user(app)
    client = app.test_client()
    response = await api_code(client, code_at(secret, clock.tick()))
    assert response.status_code == 401
    assert (await response.get_json())["error"] == pending.NO_PENDING

    await api_login(client)
    missing = await client.post("/api/login/2fa", json={})
    assert missing.status_code == 400
    assert "code" in (await missing.get_json())["fields"]


async def test_unknown_user_and_wrong_password_are_the_same_401_for_a_2fa_account(app, database):
    await enrolled_user(app)
    client = app.test_client()
    unknown = await api_login(client, "nobody", PASSWORD)
    wrong = await api_login(client, "alice", "not the password")
    assert unknown.status_code == wrong.status_code == 401
    assert await unknown.get_json() == await wrong.get_json()
    assert cookie(client, pending.COOKIE) is None and pending_rows(database) == []


async def test_a_right_password_for_a_2fa_account_runs_one_hash_check_like_a_wrong_one(app, monkeypatch):
    """The same verification (one argon2 check) for an unknown user, a wrong password and a right one."""
    await enrolled_user(app)
    calls: list[str] = []
    async with app.app_context():
        hasher = get_hasher()
    real_verify = hasher.verify

    async def counting(stored_hash, password):
        calls.append(password)
        return await real_verify(stored_hash, password)

    monkeypatch.setattr(hasher, "verify", counting)
    client = app.test_client()
    for username, password in (("nobody", PASSWORD), ("alice", "not the password"), ("alice", PASSWORD)):
        calls.clear()
        await api_login(client, username, password)
        assert calls == [password]


async def test_a_right_password_for_a_2fa_account_takes_about_as_long_as_a_wrong_one(make_app):
    """With real argon2 costs, the pending write is small next to the hash: medians within a factor of 2."""
    app = make_app(**{**FAST_HASHING, "ARGON2_TIME_COST": 2, "ARGON2_MEMORY_COST": 19456, "LOGIN_RATE_LIMIT": "off"})
    async with app.test_app():
        await enrolled_user(app)
        client = app.test_client()

        async def timed(password: str) -> float:
            started = time.perf_counter()
            await api_login(client, "alice", password)
            return time.perf_counter() - started

        await timed(PASSWORD)  # warm up
        right, wrong = [], []
        for _ in range(7):
            right.append(await timed(PASSWORD))
            wrong.append(await timed("not the password"))
        ratio = statistics.median(right) / statistics.median(wrong)
        assert 0.5 < ratio < 2.0, (right, wrong)


# -- codes work once -----------------------------------------------------------------------


async def test_a_totp_code_works_once(app, clock):
    secret, _codes = await enrolled_user(app)
    client = app.test_client()
    code = code_at(secret, clock.tick())
    await api_login(client)
    assert (await api_code(client, code)).status_code == 200
    assert (await client.post("/api/logout")).status_code == 204

    await api_login(client)
    replayed = await api_code(client, code)
    assert replayed.status_code == 401
    assert (await replayed.get_json())["fields"]["code"] == pending.WRONG_CODE
    assert auth_cookie(client) is None
    # The next step's code works (the pending login survived the wrong one).
    assert (await api_code(client, code_at(secret, clock.tick()))).status_code == 200


async def test_a_recovery_code_works_once_mails_a_notice_and_says_how_many_are_left(make_app, smtp_server, clock):
    app = make_app(**mail_settings(smtp_server))
    async with app.test_app():
        _secret, codes = await enrolled_user(app)
        client = app.test_client()
        await api_login(client)
        done = await api_code(client, codes[0].upper())  # as typed: case does not matter
        assert done.status_code == 200, await done.get_data(as_text=True)
        assert (await done.get_json())["recovery_codes_left"] == 9
        current = await this_session(client)
        assert current["amr"] == ["pwd", "rec"] and current["aal"] == 2

        notices = await mail_with(smtp_server, "recovery code was used")
        assert "9 recovery codes are left" in notices[0].text
        assert str(notices[0].message["To"]).lower() == "alice@example.com"
        assert codes[0] not in notices[0].text

        assert (await client.post("/api/logout")).status_code == 204
        await api_login(client)
        again = await api_code(client, codes[0])
        assert again.status_code == 401
        other = await api_code(client, codes[1])
        assert other.status_code == 200 and (await other.get_json())["recovery_codes_left"] == 8


async def test_html_recovery_code_flashes_how_many_are_left(app, clock):
    _secret, codes = await enrolled_user(app)
    client = app.test_client()
    await login_form(client)
    done = await form_code(client, codes[3])
    assert done.status_code == 302 and done.headers["Location"] == "/"
    home = await (await client.get("/")).get_data(as_text=True)
    assert "You used a recovery code: 9 left." in home


# -- the pending login ---------------------------------------------------------------------


async def test_the_pending_login_dies_after_its_ttl(app, database, clock):
    secret, _codes = await enrolled_user(app)
    client = app.test_client()
    await api_login(client)
    db_write(database, "UPDATE mfa_pending SET expires_at = created_at")
    assert (await client.get("/login/2fa")).status_code == 401
    response = await api_code(client, code_at(secret, clock.tick()))
    assert response.status_code == 401
    assert (await response.get_json())["error"] == pending.NO_PENDING
    assert auth_cookie(client) is None
    # The code was not spent by the refused attempt: a new pending login takes it.
    await api_login(client)
    assert (await api_code(client, code_at(secret, clock.now))).status_code == 200


async def test_the_ttl_setting_gives_the_cookie_and_row_their_lifetime(make_app, database):
    app = make_app(MFA_PENDING_TTL=60)
    async with app.test_app():
        await enrolled_user(app)
        client = app.test_client()
        response = await api_login(client)
        assert "Max-Age=60" in set_cookies(response)[pending.COOKIE]
        ((created, expires),) = db_rows(database, "SELECT created_at, expires_at FROM mfa_pending")
        if isinstance(created, str):
            created, expires = datetime.fromisoformat(created), datetime.fromisoformat(expires)
        assert (expires - created).total_seconds() == 60


async def test_the_pending_login_is_bound_to_its_client(app, clock):
    secret, _codes = await enrolled_user(app)
    owner = app.test_client()
    await api_login(owner)
    other = app.test_client()  # another browser: no quart_app_mfa cookie
    response = await api_code(other, code_at(secret, clock.tick()))
    assert response.status_code == 401
    assert auth_cookie(other) is None
    forged = app.test_client()
    forged.set_cookie("localhost", pending.COOKIE, "x" * 43)
    assert (await api_code(forged, code_at(secret, clock.now))).status_code == 401
    # The owner's pending login is untouched.
    assert (await api_code(owner, code_at(secret, clock.now))).status_code == 200


async def test_the_pending_login_dies_after_too_many_wrong_codes(make_app, database, clock):
    app = make_app(LOGIN_RATE_LIMIT="100/minute")
    async with app.test_app():
        secret, _codes = await enrolled_user(app)
        client = app.test_client()
        await api_login(client)
        for n in range(1, pending.MAX_FAILURES):
            response = await api_code(client, "000000")
            assert response.status_code == 401
            assert (await response.get_json())["error"] == pending.WRONG_CODE
            assert pending_rows(database)[0][1] == n
        last = await api_code(client, "000000")
        assert last.status_code == 401
        assert (await last.get_json())["error"] == pending.TOO_MANY_WRONG
        assert pending_rows(database) == []
        assert cookie(client, pending.COOKIE) is None
        right = await api_code(client, code_at(secret, clock.tick()))
        assert right.status_code == 401 and auth_cookie(client) is None
        events = db_rows(database, "SELECT detail FROM auth_events WHERE event = 'mfa_login_failed'")
        assert len(events) == pending.MAX_FAILURES


async def test_logout_ends_the_pending_login(app, database, clock):
    secret, _codes = await enrolled_user(app)
    client = app.test_client()
    await login_form(client)
    assert len(pending_rows(database)) == 1
    await client.post("/logout", form={})  # anonymous: no CSRF token needed
    assert pending_rows(database) == []
    assert (await api_code(client, code_at(secret, clock.tick()))).status_code == 401


async def test_a_new_password_login_replaces_this_clients_pending_login(app, database):
    await enrolled_user(app)
    client = app.test_client()
    await api_login(client)
    first = cookie(client, pending.COOKIE)
    await api_login(client)
    assert cookie(client, pending.COOKIE) != first
    assert len(pending_rows(database)) == 1


async def test_remember_me_applies_to_the_final_session(app, database, clock):
    secret, _codes = await enrolled_user(app)
    plain, remembered = app.test_client(), app.test_client()
    await login_form(plain)
    await login_form(remembered, remember=True)
    assert sorted(row[2] for row in pending_rows(database)) in ([False, True], [0, 1])
    done_plain = await form_code(plain, code_at(secret, clock.tick()))
    done_remembered = await form_code(remembered, code_at(secret, clock.tick()))
    session_cookie = set_cookies(done_plain)["quart_app_auth"]
    persistent = set_cookies(done_remembered)["quart_app_auth"]
    assert "Expires=" not in session_cookie and "Max-Age" not in session_cookie
    assert "Expires=" in persistent or "Max-Age=" in persistent
    if "Expires=" in persistent:
        expires = parsedate_to_datetime(persistent.split("Expires=", 1)[1].split(";", 1)[0])
        assert expires.timestamp() > time.time() + 7 * 24 * 3600
    remembered_flags = db_rows(database, "SELECT remember FROM auth_sessions ORDER BY id")
    assert [bool(flag) for (flag,) in remembered_flags][-2:] == [False, True]


# -- the throttle --------------------------------------------------------------------------


async def test_wrong_codes_count_toward_the_login_throttle(make_app, database, clock):
    app = make_app(LOGIN_RATE_LIMIT="3/minute")
    async with app.test_app():
        secret, _codes = await enrolled_user(app)
        client = app.test_client()
        await api_login(client)
        for _ in range(3):
            assert (await api_code(client, "000000")).status_code == 401
        refused = await api_code(client, code_at(secret, clock.tick()))
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) > 0
        assert auth_cookie(client) is None
        # From this client the password is refused as well, right or not.
        assert (await api_login(client)).status_code == 429


async def test_a_right_password_does_not_reset_the_count_of_wrong_codes(make_app, clock):
    app = make_app(LOGIN_RATE_LIMIT="6/minute")
    async with app.test_app():
        secret, _codes = await enrolled_user(app)
        client = app.test_client()
        await api_login(client)
        for _ in range(4):
            assert (await api_code(client, "000000")).status_code == 401
        await api_login(client)  # a new pending login, the failures kept
        for _ in range(2):
            assert (await api_code(client, "000000")).status_code == 401
        assert (await api_code(client, code_at(secret, clock.tick()))).status_code == 429


async def test_a_right_code_clears_the_accounts_failures(make_app, clock):
    app = make_app(LOGIN_RATE_LIMIT="3/minute")
    async with app.test_app():
        secret, _codes = await enrolled_user(app)
        client = app.test_client()
        await api_login(client)
        for _ in range(2):
            assert (await api_code(client, "000000")).status_code == 401
        assert (await api_code(client, code_at(secret, clock.tick()))).status_code == 200
        assert (await client.post("/api/logout")).status_code == 204
        await api_login(client)
        for _ in range(2):
            assert (await api_code(client, "000000")).status_code == 401
        assert (await api_code(client, code_at(secret, clock.tick()))).status_code == 200


# -- a password reset leaves the factor on -------------------------------------------------


async def test_after_a_password_reset_the_login_still_asks_for_the_code(make_app, smtp_server, clock):
    app = make_app(**mail_settings(smtp_server, FORGOT_PASSWORD_MIN_TIME=0))
    async with app.test_app():
        secret, _codes = await enrolled_user(app)
        client = app.test_client()
        before = len(smtp_server.received)
        assert (await client.post("/api/password/forgot", json={"email": "alice@example.com"})).status_code == 202
        messages = await smtp_server.wait_for(before + 1)
        (link,) = [link for m in messages for link in m.links if "/reset-password/" in link]
        token = link.rsplit("/", 1)[1]
        reset = await client.post("/api/password/reset", json={"token": token, "new_password": NEW_PASSWORD})
        assert reset.status_code in (200, 204), await reset.get_data(as_text=True)

        response = await api_login(client, "alice", NEW_PASSWORD)
        assert response.status_code == 200
        assert (await response.get_json())["mfa_required"] is True
        assert auth_cookie(client) is None
        assert (await api_code(client, code_at(secret, clock.tick()))).status_code == 200


# -- re-authentication ---------------------------------------------------------------------


async def test_reauthenticating_a_2fa_account_asks_for_the_code_too(app, clock):
    secret, _codes = await enrolled_user(app)
    client = app.test_client()
    await login_form(client)
    await form_code(client, code_at(secret, clock.tick()))
    token = await csrf_from(client, "/reauthenticate?next=/account")
    response = await client.post("/reauthenticate?next=/account", form={"password": PASSWORD, "csrf_token": token})
    assert response.status_code == 302
    assert urlsplit(response.headers["Location"]).path == "/login/2fa"
    done = await form_code(client, code_at(secret, clock.tick()))
    assert done.status_code == 302 and done.headers["Location"] == "/account"
    current = await this_session(client)
    assert current["amr"] == ["pwd", "otp"] and current["aal"] == 2


# -- races ---------------------------------------------------------------------------------


async def test_one_recovery_code_sent_twice_at_once_logs_in_once(app, database, clock):
    _secret, codes = await enrolled_user(app)
    first, second = app.test_client(), app.test_client()
    await api_login(first)
    await api_login(second)
    answers = await asyncio.gather(api_code(first, codes[0]), api_code(second, codes[0]))
    assert sorted(answer.status_code for answer in answers) == [200, 401]
    assert sum(auth_cookie(client) is not None for client in (first, second)) == 1
    assert db_rows(database, "SELECT count(*) FROM recovery_codes WHERE used_at IS NOT NULL") == [(1,)]


async def test_one_pending_login_finished_twice_at_once_gives_one_session(app, database, clock):
    secret, codes = await enrolled_user(app)
    client = app.test_client()
    await api_login(client)
    before = db_rows(database, "SELECT count(*) FROM auth_sessions")[0][0]
    answers = await asyncio.gather(api_code(client, code_at(secret, clock.tick())), api_code(client, codes[0]))
    assert sorted(answer.status_code for answer in answers) == [200, 401]
    assert db_rows(database, "SELECT count(*) FROM auth_sessions")[0][0] == before + 1
    # The loser's code was not spent: the recovery code (or the TOTP step) is still unused.
    used = db_rows(database, "SELECT count(*) FROM recovery_codes WHERE used_at IS NOT NULL")[0][0]
    step = db_rows(database, "SELECT last_step FROM user_factors")[0][0]
    assert (used, step == int(clock.now // STEP)) in ((1, False), (0, True))
