"""Logging out revokes the session on the server: a copy of the old cookie opens nothing."""

from helpers import auth_cookie, register


async def test_logout_kills_the_cookie_everywhere(app, client):
    await register(client, "carol")
    cookie = auth_cookie(app, client)
    assert cookie
    name = app.extensions["quart_login"].cookie.cookie_name

    # Before logout, the cookie alone is enough to be carol, from another client.
    thief = app.test_client()
    thief.set_cookie("localhost", name, cookie)
    assert (await thief.get("/")).status_code == 200

    response = await client.post("/logout")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login"
    assert auth_cookie(app, client) is None
    assert (await client.get("/")).status_code == 302

    replay = app.test_client()
    replay.set_cookie("localhost", name, cookie)
    response = await replay.get("/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=%2F"
    response = await replay.get("/api/notes", headers={"Accept": "application/json"})
    assert response.status_code == 401


async def test_logout_page_says_so(client):
    await register(client, "dave")
    response = await client.post("/logout")
    body = await (await client.get(response.headers["Location"])).get_data(as_text=True)
    assert "You are logged out." in body
