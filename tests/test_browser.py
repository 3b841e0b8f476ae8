"""A real browser (Debian's Chromium, driven by Playwright) on the app served by hypercorn.

What the other modules check request by request, seen the way a user sees it:
forms typed into, cookies kept or dropped by the browser, the back button,
the keyboard. Each page visited is saved as a PNG under test-output/screenshots/.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from conftest import FAST_HASHING, ROOT
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
from servers import AUTH_COOKIE, Server, client_for, start_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Loopback only: no proxy, and every host name but 127.0.0.1 fails to resolve.
    "--no-proxy-server",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
SCREENSHOTS = ROOT / "test-output" / "screenshots"
PASSWORD = "correct horse battery"
# Milliseconds: the longest any one browser action or check may wait.
ACTION_MS = 10_000
LAUNCH_MS = 30_000
# Seconds: closing the browser and its driver.
CLOSE_SECONDS = 20

# One browser for the module (a launch costs about a second); each test opens
# its own contexts, which share nothing, like separate browser profiles.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's Chromium: Playwright's own browser download does not work on these machines."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is not installed; .ci/run installs the chromium package")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture(scope="module")
def server(tmp_path_factory, migrated_template) -> Iterator[Server]:
    """The app under hypercorn (hypercorn.toml: two workers) on a fresh database migrated by Alembic."""
    yield from start_server(tmp_path_factory.mktemp("browser"), migrated_template, FAST_HASHING)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium: Path, server: Server) -> AsyncIterator[Browser]:
    # Playwright turns the back/forward cache off by default; a user's
    # browser has it on, and the back-button test is about exactly that.
    # (With it on, Chromium keeps our pages out of it, giving the reason
    # "response-cache-control-no-store": the app's Cache-Control: no-store.)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium),
            headless=True,
            args=CHROMIUM_ARGS,
            ignore_default_args=["--disable-back-forward-cache"],
            timeout=LAUNCH_MS,
        )
        try:
            yield browser
        finally:
            await asyncio.wait_for(browser.close(), CLOSE_SECONDS)


async def new_context(browser: Browser, server: Server, **options) -> BrowserContext:
    context = await browser.new_context(base_url=server.url, viewport={"width": 1024, "height": 640}, **options)
    context.set_default_timeout(ACTION_MS)
    context.set_default_navigation_timeout(ACTION_MS)
    return context


async def shot(page: Page, name: str) -> None:
    """Save what the page shows now as test-output/screenshots/NAME.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True, timeout=ACTION_MS)


async def register_user(server: Server, username: str) -> None:
    """An account made over HTTP (the JSON API), for tests that start at the login page."""
    async with client_for(server, timeout=10) as client:
        response = await client.post(
            "/api/register", json={"username": username, "email": f"{username}@example.com", "password": PASSWORD}
        )
    assert response.status_code == 201, response.text


async def log_in(page: Page, username: str, *, remember: bool = False, path: str = "/login") -> None:
    await page.goto(path)
    await page.get_by_label("Username or email").fill(username)
    await page.get_by_label("Password").fill(PASSWORD)
    if remember:
        await page.get_by_label("Remember me").check()
    await page.get_by_role("button", name="Log in").click()


async def restarted(browser: Browser, server: Server, context: BrowserContext) -> BrowserContext:
    """A browser restart: a new context that keeps only ``context``'s persistent cookies (session cookies die)."""
    state = await context.storage_state()
    await context.close()
    kept = [cookie for cookie in state["cookies"] if cookie["expires"] != -1]
    return await new_context(browser, server, storage_state={"cookies": kept, "origins": []})


def auth_cookie_of(cookies: list[dict]) -> dict | None:
    return next((cookie for cookie in cookies if cookie["name"] == AUTH_COOKIE), None)


# -- register, dashboard, log out ------------------------------------------------


async def test_register_form_logs_in_and_the_dashboard_shows_the_user(browser, server):
    context = await new_context(browser, server)
    page = await context.new_page()
    await page.goto("/")
    await shot(page, "index-anonymous")
    await page.get_by_role("link", name="Register").first.click()
    await expect(page).to_have_url(server.url + "/register")
    await expect(page.get_by_role("heading", name="Create an account")).to_be_visible()
    await shot(page, "register")

    await page.get_by_label("Username").fill("ada")
    await page.get_by_label("Email").fill("ada@example.com")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Register").click()

    await expect(page).to_have_url(server.url + "/")
    await expect(page.get_by_role("heading", name="Welcome, ada")).to_be_visible()
    await expect(page.get_by_role("status")).to_contain_text("Registration successful, welcome ada!")
    await shot(page, "index-logged-in")

    await page.get_by_role("navigation").get_by_role("link", name="Dashboard").click()
    await expect(page).to_have_url(server.url + "/dashboard")
    await expect(page.get_by_role("heading", name="Hello ada")).to_be_visible()
    await expect(page.locator("main")).to_contain_text("ada@example.com")
    await shot(page, "dashboard")
    await context.close()


async def test_back_after_logout_shows_no_account_data(browser, server):
    await register_user(server, "grace")
    context = await new_context(browser, server)
    page = await context.new_page()
    await log_in(page, "grace")
    await page.goto("/dashboard")
    await expect(page.get_by_role("heading", name="Hello grace")).to_be_visible()

    await page.locator("header").get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(server.url + "/")
    await expect(page.get_by_role("status")).to_contain_text("Logged out successfully.")
    await shot(page, "logged-out")

    await page.go_back(wait_until="load")
    # Not the dashboard as it was: the browser asked again and was sent to log in.
    await expect(page).to_have_url(server.url + "/login?next=%2Fdashboard")
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    html = await page.content()
    assert "grace" not in html
    await shot(page, "back-after-logout")
    await context.close()


# -- remember me across a browser restart ------------------------------------------


async def test_remember_me_survives_a_browser_restart(browser, server):
    await register_user(server, "hopper")
    context = await new_context(browser, server)
    page = await context.new_page()
    await log_in(page, "hopper", remember=True)
    await expect(page).to_have_url(server.url + "/")
    cookie = auth_cookie_of(await context.cookies())
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert cookie["expires"] > time.time() + 86_400, "a remember-me cookie outlives the browser"

    context = await restarted(browser, server, context)
    page = await context.new_page()
    await page.goto("/dashboard")
    await expect(page).to_have_url(server.url + "/dashboard")
    await expect(page.get_by_role("heading", name="Hello hopper")).to_be_visible()
    await context.close()


async def test_without_remember_me_a_browser_restart_logs_out(browser, server):
    await register_user(server, "lovelace")
    context = await new_context(browser, server)
    page = await context.new_page()
    await log_in(page, "lovelace")
    await expect(page).to_have_url(server.url + "/")
    await expect(page.get_by_role("heading", name="Welcome, lovelace")).to_be_visible()
    cookie = auth_cookie_of(await context.cookies())
    assert cookie is not None and cookie["expires"] == -1, "without remember me the cookie dies with the browser"

    context = await restarted(browser, server, context)
    page = await context.new_page()
    await page.goto("/dashboard")
    await expect(page).to_have_url(server.url + "/login?next=%2Fdashboard")
    assert "lovelace" not in await page.content()
    await context.close()


# -- errors and next --------------------------------------------------------------------


async def test_bad_password_shows_the_contract_message_on_the_login_page(browser, server):
    await register_user(server, "turing")
    context = await new_context(browser, server)
    page = await context.new_page()
    await page.goto("/login")
    await shot(page, "login")
    await page.get_by_label("Username or email").fill("turing")
    await page.get_by_label("Password").fill("not the password")
    async with page.expect_response(lambda response: response.request.method == "POST") as posted:
        await page.get_by_role("button", name="Log in").click()
    assert (await posted.value).status == 401

    await expect(page).to_have_url(server.url + "/login")
    await expect(page.get_by_role("alert")).to_have_text("Incorrect username or password.")
    await expect(page.get_by_label("Username or email")).to_have_value("turing")
    await expect(page.get_by_label("Password")).to_have_value("")
    await shot(page, "login-bad-password")
    await context.close()


async def test_protected_page_sends_to_login_then_back_to_it(browser, server):
    await register_user(server, "knuth")
    context = await new_context(browser, server)
    page = await context.new_page()
    await page.goto("/account")
    await expect(page).to_have_url(server.url + "/login?next=%2Faccount")
    await expect(page.get_by_role("status")).to_contain_text("Please log in first.")
    await shot(page, "login-next")

    await page.get_by_label("Username or email").fill("knuth")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(server.url + "/account")
    await expect(page.get_by_role("heading", name="Your account")).to_be_visible()
    await expect(page.locator("tr.current")).to_contain_text("(this session)")
    await shot(page, "account")
    await context.close()


async def test_unknown_page_shows_the_error_page(browser, server):
    context = await new_context(browser, server)
    page = await context.new_page()
    response = await page.goto("/no-such-page")
    assert response is not None and response.status == 404
    await expect(page.get_by_role("heading", name="404")).to_be_visible()
    await expect(page.get_by_role("alert")).to_have_text("Not found.")
    await shot(page, "error-404")
    await context.close()


# -- the keyboard alone -------------------------------------------------------------


async def focused_name(page: Page) -> str | None:
    return await page.evaluate("document.activeElement && document.activeElement.getAttribute('name')")


async def test_register_with_the_keyboard_alone(browser, server):
    context = await new_context(browser, server)
    page = await context.new_page()
    await page.goto("/register")
    assert await focused_name(page) == "username", "the first field has the focus"
    await page.keyboard.type("babbage")
    await page.keyboard.press("Tab")
    assert await focused_name(page) == "email"
    await page.keyboard.type("babbage@example.com")
    await page.keyboard.press("Tab")
    assert await focused_name(page) == "password"
    await page.keyboard.type(PASSWORD)
    await page.keyboard.press("Enter")

    await expect(page).to_have_url(server.url + "/")
    await expect(page.get_by_role("heading", name="Welcome, babbage")).to_be_visible()
    await context.close()


async def test_log_in_with_the_keyboard_alone(browser, server):
    await register_user(server, "hamilton")
    context = await new_context(browser, server)
    page = await context.new_page()
    await page.goto("/login")
    assert await focused_name(page) == "username", "the first field has the focus"
    await page.keyboard.type("hamilton")
    await page.keyboard.press("Tab")
    assert await focused_name(page) == "password"
    await page.keyboard.type(PASSWORD)
    await page.keyboard.press("Tab")
    assert await focused_name(page) == "remember"
    await page.keyboard.press("Space")
    await expect(page.get_by_label("Remember me")).to_be_checked()
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("button", name="Log in")).to_be_focused()
    await page.keyboard.press("Enter")

    await expect(page).to_have_url(server.url + "/")
    await expect(page.get_by_role("heading", name="Welcome, hamilton")).to_be_visible()
    cookie = auth_cookie_of(await context.cookies())
    assert cookie is not None and cookie["expires"] != -1, "the checkbox ticked with Space was sent"
    await context.close()
