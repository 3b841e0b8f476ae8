"""The browser pages, row by row of the contract's "Browser pages" table."""

from __future__ import annotations

import re

import pytest
from conftest import auth_cookie, client_with_cookie, csrf_from, db_rows, login_form, register_api

PASSWORD = "correct horse battery"


def users_in(database) -> list[tuple]:
    return db_rows(database, "SELECT id, username, email FROM users ORDER BY id")


async def text(response) -> str:
    return await response.get_data(as_text=True)


async def register_form(client, **fields):
    token = await csrf_from(client, "/register")
    form = {"username": "alice", "email": "alice@example.com", "password": PASSWORD, "csrf_token": token}
    form.update(fields)
    return await client.post("/register", form=form)


# -- GET / -------------------------------------------------------------------


async def test_index_anonymous_links_to_login_and_register(client):
    """Anonymous home page offers log in and register."""
    response = await client.get("/")
    assert response.status_code == 200
    body = await text(response)
    assert 'href="/login"' in body and 'href="/register"' in body
    assert 'action="/logout"' not in body


async def test_index_logged_in_shows_username_and_logout_button(client):
    """Logged-in home page shows the username and a POST log-out form."""
    await register_api(client, "alice")
    body = await text(await client.get("/"))
    assert "alice" in body
    assert re.search(r'<form method="post" action="/logout"', body)


# -- /register ---------------------------------------------------------------


async def test_register_form_has_fields_labels_and_csrf(client):
    """The register form has labelled username, email, password and a csrf_token."""
    response = await client.get("/register")
    body = await text(response)
    assert response.status_code == 200
    for name in ("username", "email", "password"):
        assert f'name="{name}"' in body
        assert f'<label for="{name}"' in body
    assert 'type="hidden" name="csrf_token"' in body


async def test_register_success_stores_user_logs_in_and_redirects_home(client, database):
    """A valid registration stores the user, logs them in and redirects to /."""
    response = await register_form(client)
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    assert users_in(database) == [(1, "alice", "alice@example.com")]
    dashboard = await client.get("/dashboard")
    assert dashboard.status_code == 200
    assert "Hello alice" in await text(dashboard)


async def test_register_invalid_input_shows_form_again_with_typed_fields_not_password(client, database):
    """Invalid input: 400, the message, the typed username and email, never the password."""
    response = await register_form(client, username="al", email="not-an-email", password="short-pw-x1")
    body = await text(response)
    assert response.status_code == 400
    assert 'value="al"' in body and 'value="not-an-email"' in body
    assert "short-pw-x1" not in body
    assert "Username must be 3 to 32 characters" in body
    assert "valid email" in body
    assert users_in(database) == []


async def test_register_short_password_is_refused(client, database):
    """A password under 8 characters is refused with a message and nothing stored."""
    response = await register_form(client, password="1234567")
    assert response.status_code == 400
    assert "at least 8 characters" in await text(response)
    assert users_in(database) == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"username": "ALICE", "email": "other@example.com"}, "Username already taken."),
        ({"username": "bob", "email": "Alice@Example.com"}, "Email already registered."),
    ],
)
async def test_register_taken_is_409_without_regard_to_case(app, fields, message, database):
    """Username or email already used (in any case): 409 with the contract's message."""
    await register_api(app.test_client(), "alice")
    response = await register_form(app.test_client(), **fields)
    assert response.status_code == 409
    assert message in await text(response)
    assert len(users_in(database)) == 1


async def test_register_when_logged_in_redirects_home(client, database):
    """GET and POST /register redirect a logged-in user to / and store nothing."""
    await register_api(client, "alice")
    token = await csrf_from(client, "/")
    assert (await client.get("/register")).headers["Location"] == "/"
    response = await client.post(
        "/register",
        form={"username": "bob", "email": "bob@example.com", "password": PASSWORD, "csrf_token": token},
    )
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert len(users_in(database)) == 1


# -- /login ------------------------------------------------------------------


async def test_login_form_has_username_password_remember(client):
    """The login form has username, password, remember and a csrf_token."""
    body = await text(await client.get("/login"))
    for name in ("username", "password", "remember", "csrf_token"):
        assert f'name="{name}"' in body


async def test_login_success_redirects_home_and_opens_dashboard(app):
    """Correct credentials: 302 to /, then the dashboard greets the user."""
    await register_api(app.test_client(), "alice")
    client = app.test_client()
    response = await login_form(client, "alice")
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert "Hello alice" in await text(await client.get("/dashboard"))


async def test_login_accepts_email_as_username(app):
    """The username field takes the email too, in any case."""
    await register_api(app.test_client(), "alice")
    response = await login_form(app.test_client(), "ALICE@example.com")
    assert response.status_code == 302


async def test_login_follows_next_when_it_is_a_path_on_this_site(app):
    """A same-site ``next`` is where a successful login lands."""
    await register_api(app.test_client(), "alice")
    response = await login_form(app.test_client(), next_="%2Fdashboard%3Ftab%3D1")
    assert response.headers["Location"] == "/dashboard?tab=1"


@pytest.mark.parametrize(
    "payload",
    [
        "//evil.example",
        "https:evil.example",
        "https://evil.example/",
        "/\\evil.example",
        "javascript:alert(1)",
        "%2F%2Fevil.example",
        "%2F%5Cevil.example",
        "/%09/evil.example",
        "evil.example",
        "",
    ],
)
async def test_login_open_redirect_payloads_fall_back_to_home(app, payload):
    """``next`` pointing off-site (or anywhere odd) is ignored: the login lands on /."""
    await register_api(app.test_client(), "alice")
    response = await login_form(app.test_client(), next_=payload)
    assert response.status_code == 302
    assert response.headers["Location"] == "/"


async def test_login_failure_is_the_same_for_unknown_user_and_wrong_password(app):
    """Unknown user and wrong password: same status, same message, same page."""
    await register_api(app.test_client(), "alice")
    wrong = await login_form(app.test_client(), "alice", "wrong password!")
    unknown = await login_form(app.test_client(), "nobody", "wrong password!")
    assert wrong.status_code == unknown.status_code == 401
    wrong_body, unknown_body = await text(wrong), await text(unknown)
    assert "Incorrect username or password." in wrong_body

    def normalise(body: str, name: str) -> str:
        body = re.sub(r'name="csrf_token" value="[^"]+"', "", body)
        return body.replace(f'value="{name}"', 'value="X"')

    assert normalise(wrong_body, "alice") == normalise(unknown_body, "nobody")
    assert auth_cookie(app.test_client()) is None


async def test_login_failure_keeps_username_never_password(app):
    """After a failed login the username is kept in the form, the password is not."""
    response = await login_form(app.test_client(), "alice", "my-secret-guess")
    body = await text(response)
    assert 'value="alice"' in body
    assert "my-secret-guess" not in body


async def test_login_when_logged_in_redirects_home(client):
    """GET and POST /login redirect a logged-in user to /."""
    await register_api(client, "alice")
    token = await csrf_from(client, "/")
    assert (await client.get("/login")).headers["Location"] == "/"
    response = await client.post("/login", form={"username": "x", "password": "y", "csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/"


async def test_login_without_remember_sets_a_session_cookie(app):
    """Without remember the auth cookie has no Max-Age/Expires (dies with the browser)."""
    await register_api(app.test_client(), "alice")
    response = await login_form(app.test_client(), remember=False)
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith("quart_app_auth="))
    assert "Max-Age" not in cookie and "Expires" not in cookie
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


async def test_login_with_remember_sets_a_persistent_cookie(app):
    """With remember the auth cookie lasts the configured duration."""
    await register_api(app.test_client(), "alice")
    response = await login_form(app.test_client(), remember=True)
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith("quart_app_auth="))
    assert f"Max-Age={30 * 24 * 3600}" in cookie


# -- POST /logout ------------------------------------------------------------


async def test_logout_anonymous_redirects_to_login(client):
    """An anonymous POST /logout lands on the login page."""
    response = await client.post("/logout")
    assert response.status_code == 302 and response.headers["Location"] == "/login"


async def test_logout_revokes_session_clears_cookie_and_flashes(app, client):
    """Logout: 302 to / with a flash, the cookie cleared, and the captured cookie dead."""
    await register_api(client, "alice")
    captured = auth_cookie(client)
    assert (await client_with_cookie(app, captured).get("/dashboard")).status_code == 200
    token = await csrf_from(client, "/")
    response = await client.post("/logout", form={"csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert any(c.startswith("quart_app_auth=;") for c in response.headers.getlist("Set-Cookie"))
    assert "Logged out successfully." in await text(await client.get("/"))
    assert (await client_with_cookie(app, captured).get("/dashboard")).status_code == 302


async def test_logout_by_get_is_not_allowed(client):
    """Logout is POST only: a GET (a link, an <img>) cannot log anyone out."""
    await register_api(client, "alice")
    assert (await client.get("/logout")).status_code == 405
    assert (await client.get("/dashboard")).status_code == 200


# -- GET /dashboard ----------------------------------------------------------


async def test_dashboard_anonymous_browser_redirects_to_login_with_next_and_flash(client):
    """A browser is sent to /login?next=%2Fdashboard and told to log in first."""
    response = await client.get("/dashboard", headers={"Accept": "text/html,*/*;q=0.8"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=%2Fdashboard"
    assert "Please log in first." in await text(await client.get("/login?next=%2Fdashboard"))


@pytest.mark.parametrize(
    "headers",
    [
        {"Accept": "application/json"},
        {"Accept": "application/json, text/html;q=0.5"},
        {"X-Requested-With": "XMLHttpRequest"},
    ],
)
async def test_dashboard_anonymous_json_client_gets_401_json(client, headers):
    """A client that asks for JSON gets 401 with the error shape, not a redirect."""
    response = await client.get("/dashboard", headers=headers)
    assert response.status_code == 401
    assert await response.get_json() == {"error": "Authentication required."}


async def test_dashboard_logged_in_says_hello(client):
    """The dashboard says Hello <username>."""
    await register_api(client, "alice")
    response = await client.get("/dashboard")
    assert response.status_code == 200
    assert "Hello alice" in await text(response)
    assert response.headers["Cache-Control"] == "no-store"


# -- CSRF --------------------------------------------------------------------


async def test_post_without_csrf_token_is_403_and_changes_nothing(client, database):
    """A form POST without the csrf_token is refused and stores nothing."""
    response = await client.post(
        "/register", form={"username": "mallory", "email": "m@example.com", "password": PASSWORD}
    )
    assert response.status_code == 403
    assert users_in(database) == []


async def test_post_with_another_sessions_csrf_token_is_403(app, database):
    """A token from another browser session does not pass."""
    other_token = await csrf_from(app.test_client(), "/register")
    client = app.test_client()
    await client.get("/register")
    response = await client.post(
        "/register",
        form={"username": "mallory", "email": "m@example.com", "password": PASSWORD, "csrf_token": other_token},
    )
    assert response.status_code == 403
    assert users_in(database) == []


async def test_logout_without_csrf_token_is_403_and_keeps_session(client):
    """A forged logout (no token) is refused; the user stays logged in."""
    await register_api(client, "alice")
    assert (await client.post("/logout")).status_code == 403
    assert (await client.get("/dashboard")).status_code == 200


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://localhost.evil.example"])
async def test_post_with_foreign_origin_is_403_even_with_valid_token(client, database, origin):
    """A valid token does not help a POST whose Origin is another site."""
    token = await csrf_from(client, "/register")
    response = await client.post(
        "/register",
        form={"username": "mallory", "email": "m@example.com", "password": PASSWORD, "csrf_token": token},
        headers={"Origin": origin},
    )
    assert response.status_code == 403
    assert users_in(database) == []


async def test_post_with_same_origin_is_accepted(client, database):
    """An Origin of this very site passes."""
    token = await csrf_from(client, "/register")
    response = await client.post(
        "/register",
        form={"username": "alice", "email": "alice@example.com", "password": PASSWORD, "csrf_token": token},
        headers={"Origin": "http://localhost"},
    )
    assert response.status_code == 302
    assert len(users_in(database)) == 1


# -- headers -----------------------------------------------------------------


async def test_pages_carry_security_headers(client):
    """Every page forbids framing and sniffing and has a CSP its markup satisfies."""
    response = await client.get("/login")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    body = await text(response)
    assert not re.search(r"<script(?![^>]*\bsrc=)", body), "inline script breaks the CSP"
    assert "style=" not in body


async def test_security_headers_appear_once_and_static_files_stay_cacheable(client):
    """Each security header is sent once on a page; static files are not marked no-store."""
    response = await client.get("/login")
    for name in ("X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy", "Content-Security-Policy"):
        assert len(response.headers.getlist(name)) == 1, name
    assert response.headers.getlist("Cache-Control") == ["no-store"]
    static = await client.get("/static/style.css")
    assert "no-store" not in static.headers.get("Cache-Control", "")


async def test_page_links_follow_the_script_root_of_each_request(client):
    """Links are built for the prefix the app is mounted under, request by request (not once for all)."""
    await register_api(client, "alice")
    for root in ("", "/prefix", "/other", ""):
        body = await text(await client.get(f"{root}/dashboard", root_path=root))
        assert f'href="{root}/account"' in body, root
        assert f'action="{root}/logout"' in body, root
        assert f'href="{root}/static/style.css"' in body, root


async def test_stylesheet_is_served_locally(client):
    """The stylesheet is a static file of the app (no CDN)."""
    response = await client.get("/static/style.css")
    assert response.status_code == 200
    assert "text/css" in response.headers["Content-Type"]


async def test_logged_in_csrf_token_is_bound_to_the_auth_session(app):
    """Logged in, the token changes with each login and a token of an earlier session is refused."""
    client = app.test_client()
    await register_api(client, "alice")
    first = await csrf_from(client, "/account")
    assert await csrf_from(client, "/dashboard") == first
    await client.post("/api/login", json={"username": "alice", "password": PASSWORD})
    second = await csrf_from(client, "/account")
    assert second != first
    refused = await client.post("/account/sessions/revoke-others", form={"csrf_token": first})
    assert refused.status_code == 403
    accepted = await client.post("/account/sessions/revoke-others", form={"csrf_token": second})
    assert accepted.status_code == 302


async def test_protected_pages_do_not_write_the_session_cookie(client):
    """Once the flash is shown, browsing logged in sets no cookie at all."""
    await register_api(client, "alice")
    await client.get("/")  # shows (and consumes) any flash
    for path in ("/dashboard", "/account", "/"):
        response = await client.get(path)
        assert response.status_code == 200
        assert "Set-Cookie" not in response.headers, path
