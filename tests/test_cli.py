"""The users command group, through Quart's CLI runner on a real database."""

from __future__ import annotations

import asyncio

import pytest
from conftest import FAST_HASHING, auth_cookie, client_with_cookie, db_rows

from quart_app import create_app


@pytest.fixture
def cli_app(database):
    return create_app({"ENV": "testing", "DATABASE_URL": database.url, **FAST_HASHING})


def invoke(app, *args, input=None):
    return app.test_cli_runner().invoke(args=["users", *args], input=input)


rows = db_rows


def logged_in_cookie(app, username, password):
    async def go():
        async with app.test_app():
            client = app.test_client()
            response = await client.post("/api/login", json={"username": username, "password": password})
            assert response.status_code == 200
            return auth_cookie(client)

    return asyncio.run(go())


def me_status(app, cookie):
    async def go():
        async with app.test_app():
            return (await client_with_cookie(app, cookie).get("/api/me")).status_code

    return asyncio.run(go())


def test_create_reads_the_password_from_stdin_and_the_user_can_log_in(cli_app, database):
    """users create USERNAME EMAIL with the password on standard input."""
    result = invoke(cli_app, "create", "carol", "carol@example.com", input="a long password\n")
    assert result.exit_code == 0, result.output
    assert "Created user carol" in result.output
    assert rows(database, "SELECT username, email FROM users") == [("carol", "carol@example.com")]
    assert logged_in_cookie(cli_app, "carol", "a long password")


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("create", "x", "carol@example.com"), "a long password\n", "username"),
        (("create", "carol", "nope"), "a long password\n", "email"),
        (("create", "carol", "carol@example.com"), "short\n", "at least 8"),
        (("create", "carol", "carol@example.com"), "", "no password"),
    ],
)
def test_create_with_bad_input_fails_clearly_and_stores_nothing(cli_app, database, args, stdin, message):
    """Bad input: a clear message, exit status 1, no user."""
    result = invoke(cli_app, *args, input=stdin)
    assert result.exit_code == 1
    assert message in result.output
    assert rows(database, "SELECT count(*) FROM users") == [(0,)]


def test_create_taken_username_fails(cli_app):
    """A username taken in another case is refused like on the web."""
    invoke(cli_app, "create", "carol", "carol@example.com", input="a long password\n")
    result = invoke(cli_app, "create", "CAROL", "other@example.com", input="a long password\n")
    assert result.exit_code == 1
    assert "Username already taken." in result.output


def test_list_shows_every_account(cli_app):
    """users list prints id, username, email and whether the account is active."""
    for name in ("carol", "dave"):
        invoke(cli_app, "create", name, f"{name}@example.com", input="a long password\n")
    result = invoke(cli_app, "list")
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 3
    assert "carol@example.com" in lines[1] and lines[1].rstrip().endswith("yes")


def test_deactivate_revokes_sessions_at_once_and_activate_restores_login(cli_app, database):
    """Deactivation refuses the live session and new logins; activation allows logging in again."""
    invoke(cli_app, "create", "carol", "carol@example.com", input="a long password\n")
    cookie = logged_in_cookie(cli_app, "carol", "a long password")
    assert me_status(cli_app, cookie) == 200
    result = invoke(cli_app, "deactivate", "Carol")
    assert result.exit_code == 0, result.output
    assert me_status(cli_app, cookie) == 401
    assert rows(database, "SELECT count(*) FROM auth_sessions") == [(0,)]
    assert rows(database, "SELECT event FROM auth_events WHERE event = 'deactivated'") == [("deactivated",)]
    assert invoke(cli_app, "activate", "carol").exit_code == 0
    assert logged_in_cookie(cli_app, "carol", "a long password")


def test_revoke_sessions_logs_the_user_out_everywhere(cli_app):
    """users revoke-sessions ends every session of the user."""
    invoke(cli_app, "create", "carol", "carol@example.com", input="a long password\n")
    cookies = [logged_in_cookie(cli_app, "carol", "a long password") for _ in range(2)]
    result = invoke(cli_app, "revoke-sessions", "carol")
    assert result.exit_code == 0 and "Revoked 2 session(s)" in result.output
    assert [me_status(cli_app, c) for c in cookies] == [401, 401]


@pytest.mark.parametrize("command", ["deactivate", "activate", "revoke-sessions"])
def test_unknown_user_is_a_clear_error(cli_app, command):
    """Unknown users: a message naming them and a non-zero exit status."""
    result = invoke(cli_app, command, "nobody")
    assert result.exit_code == 1
    assert "no user named 'nobody'" in result.output


def test_verify_email_marks_the_address_verified(cli_app, database):
    """users verify-email USERNAME: an administrator's verification, no link needed."""
    invoke(cli_app, "create", "carol", "carol@example.com", input="a long password\n")
    assert rows(database, "SELECT email_verified FROM users") == [(False,)]
    result = invoke(cli_app, "verify-email", "carol")
    assert result.exit_code == 0, result.output
    assert "Verified carol@example.com for carol." in result.output
    assert rows(database, "SELECT email_verified FROM users") == [(True,)]
    unknown = invoke(cli_app, "verify-email", "nobody")
    assert unknown.exit_code == 1 and "nobody" in unknown.output


def test_passkeys_lists_and_remove_passkey_removes_one_and_revokes_every_session(cli_app, database):
    from webauthn_authenticator import SoftAuthenticator

    authenticator = SoftAuthenticator()

    async def add():
        async with cli_app.test_app():
            client = cli_app.test_client()
            account = {"username": "alice", "email": "a@example.com", "password": "correct horse battery"}
            response = await client.post("/api/register", json=account)
            assert response.status_code == 201
            options = await (await client.post("/api/webauthn/register/options")).get_json()
            added = await client.post(
                "/api/webauthn/register/verify", json={"credential": authenticator.create(options), "name": "Laptop"}
            )
            assert added.status_code == 201, await added.get_data(as_text=True)
            return (await added.get_json())["id"], auth_cookie(client)

    passkey_id, cookie = asyncio.run(add())
    listed = invoke(cli_app, "passkeys", "alice")
    assert listed.exit_code == 0, listed.output
    assert f"{passkey_id:>6}  Laptop  added " in listed.output and "last used never" in listed.output
    assert invoke(cli_app, "remove-passkey", "alice", "999").exit_code == 1
    assert rows(database, "SELECT count(*) FROM user_factors") == [(1,)]
    removed = invoke(cli_app, "remove-passkey", "alice", str(passkey_id))
    assert removed.exit_code == 0, removed.output
    assert rows(database, "SELECT count(*) FROM user_factors") == [(0,)]
    assert me_status(cli_app, cookie) == 401
    assert "has no passkey" in invoke(cli_app, "passkeys", "alice").output
    assert rows(database, "SELECT event FROM auth_events ORDER BY id DESC LIMIT 1") == [("passkey_removed",)]
