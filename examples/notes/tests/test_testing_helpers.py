"""``quart_login.testing``: log a test client in as a user without going through the form."""

from quart_login.testing import login_client, logout_client

from helpers import add_user, page


async def test_login_client_and_logout_client(app, client):
    user = await add_user(app, "frank", display_name="Frank Direct")

    await login_client(client, user)
    status, body = await page(client, "/")
    assert status == 200
    assert "Hi Frank Direct" in body
    assert (await client.get("/admin")).status_code == 403

    await logout_client(client)
    response = await client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=%2F"


async def test_login_client_as_an_admin(app, client):
    admin = await add_user(app, "root", is_admin=True)
    await login_client(client, admin)
    status, body = await page(client, "/admin")
    assert status == 200
    assert "<td>root</td>" in body
