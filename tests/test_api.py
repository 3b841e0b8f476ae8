"""The JSON API, row by row of the contract's "JSON API" table, plus its input rules."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import auth_cookie, client_with_cookie, db_rows, register_api

PASSWORD = "correct horse battery"


def user_count(database) -> int:
    return db_rows(database, "SELECT count(*) FROM users")[0][0]


def stored_hash(database, username: str) -> str:
    return db_rows(database, "SELECT password_hash FROM users WHERE username = ?", username)[0][0]


# -- POST /api/register ------------------------------------------------------


async def test_api_register_returns_201_public_user_and_sets_cookie(client, database):
    """201 with {id, username, email}, the auth cookie set, never the password or its hash."""
    response = await register_api(client, "alice")
    assert response.status_code == 201
    assert await response.get_json() == {"id": 1, "username": "alice", "email": "alice@example.com"}
    assert auth_cookie(client)
    raw = await response.get_data(as_text=True)
    assert PASSWORD not in raw and "argon2" not in raw
    assert stored_hash(database, "alice").startswith("$argon2id$")


async def test_api_register_then_me(client):
    """The cookie from registration opens /api/me."""
    await register_api(client, "alice")
    response = await client.get("/api/me")
    assert response.status_code == 200
    assert await response.get_json() == {
        "id": 1,
        "username": "alice",
        "email": "alice@example.com",
        "email_verified": False,
    }


async def test_api_register_normalises_email_domain(client):
    """The email's domain is stored lower-cased (the address stays the same mailbox)."""
    response = await register_api(client, "alice", email="Alice@EXAMPLE.com")
    assert (await response.get_json())["email"] == "Alice@example.com"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "a@example.com", "password": PASSWORD}, "username"),
        ({"username": "ab", "email": "a@example.com", "password": PASSWORD}, "username"),
        ({"username": "a" * 33, "email": "a@example.com", "password": PASSWORD}, "username"),
        ({"username": "has space", "email": "a@example.com", "password": PASSWORD}, "username"),
        ({"username": "émile", "email": "a@example.com", "password": PASSWORD}, "username"),
        ({"username": 12345, "email": "a@example.com", "password": PASSWORD}, "username"),
        ({"username": None, "email": "a@example.com", "password": PASSWORD}, "username"),
        ({"username": "alice", "email": "nope", "password": PASSWORD}, "email"),
        ({"username": "alice", "email": ["a@example.com"], "password": PASSWORD}, "email"),
        ({"username": "alice", "email": "a" * 110 + "@example.com", "password": PASSWORD}, "email"),
        ({"username": "alice", "email": "a@example.com", "password": "1234567"}, "password"),
        ({"username": "alice", "email": "a@example.com", "password": "x" * 1025}, "password"),
        ({"username": "alice", "email": "a@example.com", "password": 12345678}, "password"),
        ({"username": "alice", "email": "a@example.com"}, "password"),
    ],
)
async def test_api_register_invalid_input_is_400_with_fields_and_stores_nothing(client, database, body, field):
    """Each invalid field: 400 {"error", "fields": {field: message}} and no user stored."""
    response = await client.post("/api/register", json=body)
    assert response.status_code == 400
    payload = await response.get_json()
    assert payload["error"]
    assert field in payload["fields"]
    assert user_count(database) == 0
    assert auth_cookie(client) is None


@pytest.mark.parametrize("password", ["7z3kq9wm", "x" * 1024, "пароль-пароль", "🔑🔑🔑🔑🔑🔑🔑🔑", "tab\tand\nnewline"])
async def test_api_register_accepts_any_unicode_password_of_8_to_1024_chars(app, password):
    """Passwords of 8 to 1024 characters, any Unicode, register and then log in."""
    response = await register_api(app.test_client(), "alice", password=password)
    assert response.status_code == 201
    login = await app.test_client().post("/api/login", json={"username": "alice", "password": password})
    assert login.status_code == 200


async def test_api_register_lone_surrogate_is_400(client, database):
    """A string that is not valid text (a lone surrogate) is a clear 400, not a 500."""
    body = '{"username": "alice", "email": "a@example.com", "password": "abc\\ud800defgh"}'
    response = await client.post("/api/register", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "password" in (await response.get_json())["fields"]
    assert user_count(database) == 0


@pytest.mark.parametrize(
    ("existing", "attempt", "message"),
    [
        (("alice", "alice@example.com"), ("Alice", "other@example.com"), "Username already taken."),
        (("alice", "alice@example.com"), ("bob", "ALICE@example.com"), "Email already registered."),
    ],
)
async def test_api_register_taken_is_409(app, database, existing, attempt, message):
    """Taken username or email, without regard to case: 409 with the contract's message."""
    await register_api(app.test_client(), existing[0], email=existing[1])
    response = await register_api(app.test_client(), attempt[0], email=attempt[1])
    assert response.status_code == 409
    assert await response.get_json() == {"error": message}
    assert user_count(database) == 1


async def test_racing_registrations_of_one_name_give_exactly_one_201(app, database):
    """Concurrent registrations of one username in case variants: one 201, the rest 409."""
    names = ["racer", "RACER", "Racer", "rAcer", "raCer", "racEr", "racER", "RaCeR"] * 3
    responses = await asyncio.gather(
        *(register_api(app.test_client(), name, email=f"r{i}@example.com") for i, name in enumerate(names))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 1
    assert statuses.count(409) == len(names) - 1
    assert user_count(database) == 1


async def test_distinct_concurrent_registrations_are_all_stored(app, database):
    """Many different users registering at once are all stored and can all log in."""
    names = [f"user{i}" for i in range(30)]
    responses = await asyncio.gather(*(register_api(app.test_client(), n) for n in names))
    assert [r.status_code for r in responses] == [201] * len(names)
    assert user_count(database) == len(names)
    logins = await asyncio.gather(
        *(app.test_client().post("/api/login", json={"username": n, "password": PASSWORD}) for n in names)
    )
    assert [r.status_code for r in logins] == [200] * len(names)


# -- POST /api/login ---------------------------------------------------------


async def test_api_login_returns_200_public_user_and_sets_cookie(app):
    """200 with {id, username, email} and an auth cookie that opens /api/me."""
    await register_api(app.test_client(), "alice")
    client = app.test_client()
    response = await client.post("/api/login", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    assert await response.get_json() == {"id": 1, "username": "alice", "email": "alice@example.com"}
    assert (await client.get("/api/me")).status_code == 200


async def test_api_login_by_email(app):
    """The username field also takes the email."""
    await register_api(app.test_client(), "alice")
    response = await app.test_client().post("/api/login", json={"username": "alice@example.com", "password": PASSWORD})
    assert response.status_code == 200


async def test_api_login_failures_are_indistinguishable(app):
    """Unknown user and wrong password: 401 with the same body."""
    await register_api(app.test_client(), "alice")
    wrong = await app.test_client().post("/api/login", json={"username": "alice", "password": "nope-nope"})
    unknown = await app.test_client().post("/api/login", json={"username": "ghost", "password": "nope-nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert await wrong.get_json() == await unknown.get_json() == {"error": "Incorrect username or password."}


async def test_api_login_remember_sets_persistent_cookie(app):
    """remember: true gives a persistent cookie; without it a session cookie."""
    await register_api(app.test_client(), "alice")
    plain = await app.test_client().post("/api/login", json={"username": "alice", "password": PASSWORD})
    kept = await app.test_client().post(
        "/api/login", json={"username": "alice", "password": PASSWORD, "remember": True}
    )
    assert "Max-Age" not in plain.headers["Set-Cookie"]
    assert "Max-Age=" in kept.headers["Set-Cookie"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"username": "alice"},
        {"password": PASSWORD},
        {"username": ["alice"], "password": PASSWORD},
        {"username": "alice", "password": PASSWORD, "remember": 3},
    ],
)
async def test_api_login_malformed_body_is_400(app, body):
    """Missing or mistyped fields: 400 with the error shape, no cookie."""
    await register_api(app.test_client(), "alice")
    client = app.test_client()
    response = await client.post("/api/login", json=body)
    assert response.status_code == 400
    assert "error" in await response.get_json()
    assert auth_cookie(client) is None


# -- POST /api/logout, GET /api/me -------------------------------------------


async def test_api_logout_is_204_and_the_cookie_is_dead_afterwards(app, client):
    """Logout: 204; the cookie captured before it is refused by /api/me afterwards."""
    await register_api(client, "alice")
    captured = auth_cookie(client)
    assert (await client_with_cookie(app, captured).get("/api/me")).status_code == 200
    response = await client.post("/api/logout")
    assert response.status_code == 204
    assert (await client_with_cookie(app, captured).get("/api/me")).status_code == 401
    assert (await client.get("/api/me")).status_code == 401


async def test_api_logout_when_not_logged_in_is_401(client):
    """Logging out without a session is 401 JSON."""
    response = await client.post("/api/logout")
    assert response.status_code == 401
    assert await response.get_json() == {"error": "Authentication required."}


async def test_api_me_anonymous_is_401(client):
    """/api/me without a session: 401 JSON."""
    response = await client.get("/api/me")
    assert response.status_code == 401
    assert await response.get_json() == {"error": "Authentication required."}


# -- bodies ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/register", "/api/login"])
async def test_api_post_of_a_form_is_415(client, path):
    """A form-encoded POST to a JSON route is 415 with the error shape."""
    response = await client.post(path, form={"username": "alice", "password": PASSWORD})
    assert response.status_code == 415
    assert "error" in await response.get_json()


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'"text"', b"null", b"{"])
async def test_api_malformed_json_is_400(client, database, raw):
    """Bodies that are not a JSON object: 400 with a clear message, nothing stored."""
    response = await client.post("/api/register", data=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert (await response.get_json())["error"]
    assert user_count(database) == 0


async def test_oversized_body_is_413(client, database):
    """A body over MAX_CONTENT_LENGTH is refused with 413 and stores nothing."""
    body = json.dumps({"username": "alice", "email": "a@example.com", "password": "x" * 100_000})
    response = await client.post("/api/register", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert await response.get_json() == {"error": "Request body too large."}
    assert user_count(database) == 0


async def test_unknown_api_route_is_404_json(client):
    """Unknown API paths answer in the API's error shape."""
    response = await client.get("/api/nope")
    assert response.status_code == 404
    assert await response.get_json() == {"error": "Not found."}


async def test_api_wrong_method_is_405_json(client):
    """GET on a POST route is 405 JSON with Allow."""
    response = await client.get("/api/login")
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert "error" in await response.get_json()


async def test_api_post_with_foreign_origin_is_403(client, database):
    """A cross-site Origin is refused on the API too."""
    response = await client.post(
        "/api/register",
        json={"username": "alice", "email": "a@example.com", "password": PASSWORD},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 403
    assert user_count(database) == 0


async def test_exhausted_connection_pool_is_503_not_500(make_app, database):
    """No free database connection in time: 503 with Retry-After, nothing stored."""
    app = make_app(DB_POOL_SIZE=1, DB_POOL_TIMEOUT=0.05)
    async with app.test_app():
        engine = app.extensions["quart_app.db"].engine
        held = [await engine.connect() for _ in range(1 + 10)]  # the pool and its overflow
        try:
            response = await register_api(app.test_client(), "alice")
        finally:
            for connection in held:
                await connection.close()
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert user_count(database) == 0


@pytest.mark.parametrize("path", ["/api/login", "/api/register"])
async def test_a_nul_character_in_a_name_is_a_400_on_every_backend(client, path):
    """A NUL in the username (or email) is refused as invalid text: PostgreSQL's text cannot hold it (no 500)."""
    body = {"username": "ali\x00ce", "email": "alice@example.com", "password": "correct horse battery"}
    response = await client.post(path, json=body)
    assert response.status_code == 400
    assert (await response.get_json())["fields"]["username"] == "Contains characters that are not valid text."
