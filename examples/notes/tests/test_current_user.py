"""``current_user`` is the app's own User, every column read from the database on each request."""

from helpers import auth_cookie, execute, login, page, register


async def test_extra_columns_are_read_through_current_user(client):
    await register(client, "zed", display_name="Zed Example")

    status, body = await page(client, "/")
    assert status == 200
    assert "Hi Zed Example" in body

    response = await client.get("/api/notes")
    assert response.status_code == 200
    assert await response.get_json() == {
        "user": {"id": 1, "username": "zed", "display_name": "Zed Example", "is_admin": False},
        "notes": [],
    }


async def test_display_name_defaults_to_username(client):
    await register(client, "plain")
    assert "Hi plain" in (await page(client, "/"))[1]


async def test_admin_rule_follows_the_database_on_the_next_request(app, client):
    await register(client, "alice")
    cookie = auth_cookie(app, client)

    status, body = await page(client, "/admin")
    assert status == 403
    assert 'href="/admin"' not in (await page(client, "/"))[1]

    await execute(app, "UPDATE users SET is_admin = 1 WHERE username = :name", name="alice")
    status, body = await page(client, "/admin")
    assert status == 200
    assert "<td>alice</td>" in body
    assert 'href="/admin"' in (await page(client, "/"))[1]
    assert (await (await client.get("/api/notes")).get_json())["user"]["is_admin"] is True
    # The same session throughout: no new login happened.
    assert auth_cookie(app, client) == cookie

    await execute(app, "UPDATE users SET is_admin = 0 WHERE username = :name", name="alice")
    assert (await client.get("/admin")).status_code == 403


async def test_a_deactivated_user_is_logged_out_on_the_next_request(app, client):
    await register(client, "bob")
    assert (await client.get("/")).status_code == 200

    await execute(app, "UPDATE users SET is_active = 0 WHERE username = :name", name="bob")
    response = await client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=%2F"
    assert auth_cookie(app, client) is None  # the dead cookie was cleared

    response = await login(client, "bob")
    assert response.status_code == 401
    assert "This account is disabled." in await response.get_data(as_text=True)
