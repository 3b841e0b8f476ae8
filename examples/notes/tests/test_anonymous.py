"""Anonymous clients: browsers go to the login page (with ``next`` and the flash), JSON clients get 401."""

from helpers import login, page, register


async def test_browser_is_sent_to_login_with_next_and_message(client):
    response = await client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=%2F"

    status, body = await page(client, response.headers["Location"])
    assert status == 200
    assert "Please log in first." in body
    assert 'name="next" value="/"' in body


async def test_json_client_gets_401_not_a_redirect(client):
    response = await client.get("/api/notes", headers={"Accept": "application/json"})
    assert response.status_code == 401
    assert await response.get_json() == {"error": "Unauthorized"}

    response = await client.get("/api/notes", headers={"X-Requested-With": "XMLHttpRequest"})
    assert response.status_code == 401

    # The same URL in a browser is a redirect to the login page.
    response = await client.get("/api/notes", headers={"Accept": "text/html"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=%2Fapi%2Fnotes"


async def test_admin_page_sends_anonymous_to_login_not_403(client):
    response = await client.get("/admin")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=%2Fadmin"


async def test_login_follows_next_on_this_site_only(app):
    await register(app.test_client(), "ann")
    for next_url, expected in [
        ("/api/notes", "/api/notes"),
        ("/admin?tab=users", "/admin?tab=users"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example/", "/"),
        ("javascript:alert(1)", "/"),
    ]:
        response = await login(app.test_client(), "ann", next_url=next_url)
        assert response.status_code == 302, next_url
        assert response.headers["Location"] == expected, next_url


async def test_wrong_password_is_refused(client):
    await register(client, "ann")
    await client.post("/logout")
    response = await login(client, "ann", password="not the password")
    assert response.status_code == 401
    assert "Wrong username or password." in await response.get_data(as_text=True)
    assert (await client.get("/")).status_code == 302
