"""The mailed flows in a real browser: Chromium (Playwright) on hypercorn, mail to a real SMTP server on 127.0.0.1.

Forgot password → the mailed link → a new password → log in with it; a
change of address → the link mailed to the new address → Confirm. The links
are opened exactly as mailed: the server's PUBLIC_URL is its own loopback
address. Pages visited are saved under test-output/screenshots/ as in
test_browser.py; with QUART_APP_SCREENSHOT_DIR set (e.g. to docs/screenshots), the
reset-password form is also saved there as reset-password.png:

    QUART_APP_SCREENSHOT_DIR=docs/screenshots .venv/bin/python -m pytest -q tests/test_browser_recovery.py -k screenshot
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
from servers import Server, client_for, free_port, serving
from smtp_server import Received, SMTPServer
from test_browser import ACTION_MS, CHROMIUM, CHROMIUM_ARGS, CLOSE_SECONDS, LAUNCH_MS, SCREENSHOTS

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a brand new passphrase"
# Seconds: the longest a message may take to reach the SMTP server.
MAIL_WAIT = 15.0
RESET_SENT = "If an account uses that address, a link to reset its password is on its way."
RESET_DONE = "Your password has been changed. Log in with the new one."
# The documented screenshot: the viewport it is taken at, and where it goes when asked for.
SCREENSHOT_VIEWPORT = {"width": 900, "height": 700}
SCREENSHOT_DIR_VARIABLE = "QUART_APP_SCREENSHOT_DIR"

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's Chromium, as in test_browser.py."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is not installed; .ci/run installs the chromium package")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture(scope="module")
def mail_server() -> Iterator[SMTPServer]:
    """One SMTP server for the module (the app server is started once, pointing at it)."""
    server = SMTPServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, migrated_template, mail_server: SMTPServer) -> Iterator[Server]:
    """The app under hypercorn (two workers), mailing to ``mail_server``; its links point at the server itself."""
    directory = tmp_path_factory.mktemp("browser-recovery")
    port = free_port()
    settings = {
        **FAST_HASHING,
        "MAIL_URL": mail_server.url,
        "MAIL_FROM": "Quart App <no-reply@example.com>",
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "MAIL_POLL_INTERVAL": 0.2,
        "MAIL_RETRY_DELAY": 0.2,
        "MAIL_SEND_TIMEOUT": 5,
        "FORGOT_PASSWORD_MIN_TIME": 0,
    }
    db = migrated_template.clone(directory)
    try:
        with serving(db, settings, port=port, log_path=directory / "hypercorn.log") as served:
            yield served
    finally:
        db.drop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium: Path, server: Server) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS, timeout=LAUNCH_MS
        )
        try:
            yield browser
        finally:
            await asyncio.wait_for(browser.close(), CLOSE_SECONDS)


async def new_context(browser: Browser, server: Server, **options) -> BrowserContext:
    options.setdefault("viewport", {"width": 1024, "height": 640})
    context = await browser.new_context(base_url=server.url, **options)
    context.set_default_timeout(ACTION_MS)
    context.set_default_navigation_timeout(ACTION_MS)
    return context


async def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True, timeout=ACTION_MS)


async def register_user(server: Server, username: str) -> str:
    """An account made over the JSON API; its address."""
    email = f"{username}@example.com"
    async with client_for(server, timeout=10) as client:
        response = await client.post("/api/register", json={"username": username, "email": email, "password": PASSWORD})
    assert response.status_code == 201, response.text
    return email


async def log_in(page: Page, login: str, password: str) -> None:
    await page.goto("/login")
    await page.get_by_label("Username or email").fill(login)
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_role("button", name="Log in").click()


async def mail_to(mail_server: SMTPServer, address: str, kind: str | None = None, count: int = 1) -> list[Received]:
    """The messages to ``address`` (with a ``kind`` link, "reset-password" or "verify-email", if given), once there
    are ``count``; fails after MAIL_WAIT seconds."""
    deadline = time.monotonic() + MAIL_WAIT
    while True:
        found = [
            received
            for received in mail_server.received
            if address.lower() in (rcpt.lower() for rcpt in received.rcpt_tos)
            and (kind is None or any(f"/{kind}/" in link for link in received.links))
        ]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{len(found)} message(s) to {address} ({kind}), expected {count}"
        await asyncio.sleep(0.05)


def link_of(received: Received, server: Server, kind: str) -> str:
    """The ``kind`` link of the message: on the server's own origin, as mailed."""
    links = [link for link in received.links if f"/{kind}/" in link]
    assert len(links) == 1, f"expected one {kind} link in:\n{received.text}"
    assert links[0].startswith(server.url + f"/{kind}/"), links[0]
    return links[0]


def words(received: Received) -> str:
    """The text part with every run of white space (line breaks are CRLF on the wire) one space."""
    return " ".join(received.text.split())


async def ask_for_reset(page: Page, email: str) -> None:
    """From the login page: "Forgot your password?", the address, the "on its way" page."""
    await page.goto("/login")
    await page.get_by_role("link", name="Forgot your password?").click()
    await expect(page.get_by_role("heading", name="Forgot your password?")).to_be_visible()
    await page.get_by_label("Email").fill(email)
    await page.get_by_role("button", name="Mail me a link").click()
    await expect(page.get_by_role("status")).to_have_text(RESET_SENT)


# -- forgot password → mail → link → new password → login ------------------------------------


async def test_forgot_password_by_mailed_link_then_log_in_with_the_new_password(browser, server, mail_server):
    email = await register_user(server, "curie")
    context = await new_context(browser, server)
    page = await context.new_page()
    await ask_for_reset(page, email)
    await expect(page).to_have_url(server.url + "/forgot-password")
    await shot(page, "forgot-password-sent")

    (message,) = await mail_to(mail_server, email, "reset-password")
    link = link_of(message, server, "reset-password")
    await page.goto(link)
    await expect(page.get_by_role("heading", name="Choose a new password")).to_be_visible()
    await expect(page.locator("main")).to_contain_text("For the account curie.")
    await page.get_by_label("New password").fill(NEW_PASSWORD)
    await page.get_by_role("button", name="Set the new password").click()

    await expect(page).to_have_url(server.url + "/login")
    await expect(page.get_by_role("status")).to_contain_text(RESET_DONE)
    await shot(page, "reset-password-done")
    await log_in(page, "curie", NEW_PASSWORD)
    await expect(page).to_have_url(server.url + "/")
    await page.goto("/dashboard")
    await expect(page.get_by_role("heading", name="Hello curie")).to_be_visible()
    await context.close()

    # The old password no longer opens the account, and the link works once.
    context = await new_context(browser, server)
    page = await context.new_page()
    await log_in(page, "curie", PASSWORD)
    await expect(page).to_have_url(server.url + "/login")
    await expect(page.get_by_role("alert")).to_have_text("Incorrect username or password.")
    response = await page.goto(link)
    assert response is not None and response.status == 400
    await expect(page.get_by_role("alert")).to_have_text("This link is invalid or has expired.")
    await context.close()


# -- change of address → the new address confirms -----------------------------------------------


async def test_change_of_address_takes_effect_when_the_link_to_the_new_one_is_confirmed(browser, server, mail_server):
    old = await register_user(server, "noether")
    new = "emmy@new.example"
    context = await new_context(browser, server)
    page = await context.new_page()
    await log_in(page, "noether", PASSWORD)
    await expect(page).to_have_url(server.url + "/")
    await page.goto("/account")
    section = page.get_by_role("region", name="Email address")
    await expect(section.locator("strong")).to_have_text(old)
    await section.get_by_label("New address").fill(new)
    await section.get_by_label("Current password").fill(PASSWORD)
    await section.get_by_role("button", name="Change address").click()

    await expect(page).to_have_url(server.url + "/account")
    requested = f"Open the link we mailed to {new} to make it your address."
    await expect(page.get_by_role("status")).to_contain_text(requested)
    await expect(section.locator("strong")).to_have_text(old)  # not yet
    await shot(page, "account-email-change-requested")

    (confirm,) = await mail_to(mail_server, new, "verify-email")
    # The old address: its verification link at registration, then a notice of the request, with no link to act on.
    notice = (await mail_to(mail_server, old, count=2))[-1]
    assert f"asked to change the email address of your account to {new}." in words(notice), notice.text
    assert not [link for link in notice.links if "/reset-password/" in link or "/verify-email/" in link]
    await page.goto(link_of(confirm, server, "verify-email"))
    await expect(page.get_by_role("heading", name="Confirm your email address")).to_be_visible()
    await expect(page.locator("main")).to_contain_text(f"Confirm {new} as the address of the account noether.")
    await shot(page, "verify-email-change")
    await page.get_by_role("button", name="Confirm").click()

    await expect(page).to_have_url(server.url + "/")
    await expect(page.get_by_role("status")).to_contain_text(f"Thank you: {new} is verified.")
    await page.goto("/account")
    section = page.get_by_role("region", name="Email address")
    await expect(section.locator("strong")).to_have_text(new)
    await expect(section.locator(".badge")).to_have_text("verified")
    await context.close()

    # Once confirmed, the old address is told the change happened (and, again, gets no link to act on).
    changed = (await mail_to(mail_server, old, count=3))[-1]
    assert f"was changed to {new}." in words(changed), changed.text
    assert not [link for link in changed.links if "/reset-password/" in link or "/verify-email/" in link]
    assert len(await mail_to(mail_server, new)) == 1


# -- the screenshot of the reset page -------------------------------------------------------------


async def test_screenshot_of_the_reset_password_form(browser, server, mail_server):
    """The form of a live link at 900x700; written to $QUART_APP_SCREENSHOT_DIR/reset-password.png when that is set."""
    email = await register_user(server, "ada")
    context = await new_context(browser, server, viewport=SCREENSHOT_VIEWPORT, color_scheme="light")
    page = await context.new_page()
    await ask_for_reset(page, email)
    (message,) = await mail_to(mail_server, email, "reset-password")
    response = await page.goto(link_of(message, server, "reset-password"))
    assert response is not None and response.status == 200
    await expect(page.get_by_role("heading", name="Choose a new password")).to_be_visible()
    await expect(page.get_by_label("New password")).to_be_focused()
    await page.evaluate("document.fonts.ready")
    await shot(page, "reset-password")
    target = os.environ.get(SCREENSHOT_DIR_VARIABLE)
    if target:
        directory = Path(target) if Path(target).is_absolute() else ROOT / target
        directory.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=directory / "reset-password.png", animations="disabled", timeout=ACTION_MS)
    await context.close()
