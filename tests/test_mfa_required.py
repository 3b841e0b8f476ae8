"""QUART_APP_MFA_REQUIRED: an account without a second factor is sent to /account/2fa.

The contract (Session assurance): with it on, every ``login_required`` route
but that page and logout sends such an account to ``/account/2fa`` (403
JSON ``{"error": "Second factor required."}`` on the API). The ways to meet
it (the page, its forms and the API calls that set a factor up) and to leave
are open; once a factor is on, everything is. While it is required, the last
factor cannot be turned off (support's ``users reset-2fa`` starts again).
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
from conftest import FAST_HASHING, auth_cookie, client_with_cookie, csrf_from, db_rows, mail_settings, register_api
from sqlalchemy import event
from test_mfa_account import PASSWORD, api_enrol, code_of, csrf_of, factor_rows, text

from quart_app import create_app
from quart_app.db import get_database

REQUIRED = "Second factor required."


@pytest.fixture
async def app(make_app):
    app = make_app(MFA_REQUIRED=True)
    async with app.test_app():
        yield app


def path_of(response) -> str:
    return urlsplit(response.headers["Location"]).path


async def test_an_account_without_a_factor_is_sent_to_set_one_up(app, client):
    await register_api(client)
    for path in ("/dashboard", "/account"):
        response = await client.get(path)
        assert response.status_code == 302, path
        assert path_of(response) == "/account/2fa"
    page = await client.get("/account/2fa")
    assert page.status_code == 200
    assert "Set up two-factor authentication to continue." in await text(page)
    for method, path in (("GET", "/api/me"), ("GET", "/api/sessions"), ("POST", "/api/sessions/revoke-others")):
        response = await client.open(path, method=method)
        assert response.status_code == 403, path
        assert await response.get_json() == {"error": REQUIRED}


async def test_setting_a_factor_up_through_the_api_opens_everything(app, client):
    await register_api(client)
    assert (await client.get("/api/me")).status_code == 403
    await api_enrol(client)
    assert (await client.get("/api/me")).status_code == 200
    assert (await client.get("/dashboard")).status_code == 200
    assert (await client.get("/account")).status_code == 200


async def test_setting_a_factor_up_on_the_page_opens_everything(app, client):
    await register_api(client)
    html = await text(await client.get("/account/2fa"))
    setup = await client.post("/account/2fa/totp/setup", form={"csrf_token": csrf_of(html)})
    assert setup.status_code == 200
    html = await text(setup)
    secret = html.split('data-secret="', 1)[1].split('"', 1)[0]
    form = {"csrf_token": csrf_of(html), "code": code_of(secret)}
    confirmed = await client.post("/account/2fa/totp/confirm", form=form)
    assert confirmed.status_code == 200
    codes_page = await text(confirmed)
    # The codes page lets the user download them (a way out as well).
    download = await client.post(
        "/account/2fa/recovery-codes/download",
        form={"csrf_token": csrf_of(codes_page), "code": codes_page.split('name="code" value="', 1)[1].split('"')[0]},
    )
    assert download.status_code == 200
    assert (await client.get("/dashboard")).status_code == 200


async def test_logging_out_is_open_without_a_factor(app, client):
    await register_api(client)
    assert (await client.post("/api/logout")).status_code == 204
    assert auth_cookie(client) is None
    page_client = app.test_client()
    await register_api(page_client, "bob")
    cookie = auth_cookie(page_client)
    token = await csrf_from(page_client, "/account/2fa")
    response = await page_client.post("/logout", form={"csrf_token": token})
    assert response.status_code == 302 and path_of(response) == "/"
    assert (await client_with_cookie(app, cookie).get("/account/2fa")).status_code == 302


async def test_a_stale_session_goes_to_reauthenticate_then_back_to_the_setup(app, client, database):
    """The setup page needs a fresh login; /reauthenticate is open, so there is no loop between the two."""
    await register_api(client)
    database.write("UPDATE auth_sessions SET auth_time = NULL")
    response = await client.get("/dashboard")
    assert path_of(response) == "/account/2fa"
    response = await client.get("/account/2fa")
    assert path_of(response) == "/reauthenticate"
    token = await csrf_from(client, "/reauthenticate")
    again = await client.post("/reauthenticate?next=/account/2fa", form={"csrf_token": token, "password": PASSWORD})
    assert again.status_code == 302 and path_of(again) == "/account/2fa"
    assert (await client.get("/account/2fa")).status_code == 200


async def test_the_factor_cannot_be_turned_off_while_it_is_required(app, client, database):
    await register_api(client)
    secret, _codes = await api_enrol(client)
    response = await client.post("/api/2fa/disable", json={"current_password": PASSWORD, "code": code_of(secret, 1)})
    assert response.status_code == 409
    assert "requires two-factor authentication" in (await response.get_json())["error"]
    assert factor_rows(database) == (1, 10)
    html = await text(await client.get("/account/2fa"))
    assert 'id="mfa-required"' in html
    assert 'action="/account/2fa/disable"' not in html
    refused = await client.post(
        "/account/2fa/disable", form={"csrf_token": csrf_of(html), "current_password": PASSWORD, "code": "123456"}
    )
    assert refused.status_code == 409
    assert factor_rows(database) == (1, 10)


async def test_off_by_default_an_account_without_a_factor_goes_anywhere(make_app):
    app = make_app()
    async with app.test_app():
        client = app.test_client()
        await register_api(client)
        assert (await client.get("/api/me")).status_code == 200
        assert (await client.get("/dashboard")).status_code == 200


async def test_with_verified_email_also_required_each_can_be_met_first(make_app, smtp_server, database):
    """Neither requirement blocks the way to meet the other: enrol while unverified, then resend the link."""
    app = make_app(**mail_settings(smtp_server, REQUIRE_VERIFIED_EMAIL=True, MFA_REQUIRED=True))
    async with app.test_app():
        client = app.test_client()
        await register_api(client)
        assert (await client.get("/account/2fa")).status_code == 200
        await api_enrol(client)
        # Now only the address is missing: the 403 names it, and resending is open.
        response = await client.get("/api/me")
        assert response.status_code == 403
        assert await response.get_json() == {"error": "Email address not verified."}
        assert (await client.post("/api/email/resend")).status_code == 202


async def test_a_session_that_presented_the_factor_costs_no_query_for_the_check(make_app):
    """A session at AAL 2 meets the requirement from its own row: the protected request runs the same statements."""
    counts = {}
    for required in (False, True):
        app = make_app(MFA_REQUIRED=required, SPEEDUPS="none")
        async with app.test_app():
            client = app.test_client()
            await register_api(client, f"user{int(required)}")
            await api_enrol(client)
            statements: list[str] = []

            def count(conn, cursor, statement, parameters, context, executemany, into=statements):
                into.append(statement)

            async with app.app_context():
                engine = get_database().engine.sync_engine
            await client.get("/api/me")  # any touch of the session is done before counting
            event.listen(engine, "before_cursor_execute", count)
            try:
                assert (await client.get("/api/me")).status_code == 200
            finally:
                event.remove(engine, "before_cursor_execute", count)
            counts[required] = statements
    assert len(counts[True]) == len(counts[False]), counts


def test_after_support_resets_the_factor_the_next_login_is_sent_to_set_one_up(database):
    app = create_app({"ENV": "testing", "DATABASE_URL": database.url, "MFA_REQUIRED": True, **FAST_HASHING})

    async def enrol():
        async with app.test_app():
            client = app.test_client()
            await register_api(client)
            await api_enrol(client)

    asyncio.run(enrol())
    result = app.test_cli_runner().invoke(args=["users", "reset-2fa", "alice"])
    assert result.exit_code == 0, result.output
    assert db_rows(database, "SELECT count(*) FROM auth_sessions") == [(0,)]

    async def login_again():
        async with app.test_app():
            client = app.test_client()
            response = await client.post("/api/login", json={"username": "alice", "password": PASSWORD})
            assert response.status_code == 200
            assert "mfa_required" not in await response.get_json()
            return (await client.get("/api/me")).status_code, path_of(await client.get("/dashboard"))

    assert asyncio.run(login_again()) == (403, "/account/2fa")
