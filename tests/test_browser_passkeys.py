"""Passkeys (WebAuthn) in a real browser: Chromium (Playwright) on hypercorn, with Chromium's virtual authenticator.

The page script (static/passkeys.js) as a user meets it: on /account a
"Passkeys" section lists the account's passkeys, adds one ("Add a passkey":
the browser's ``navigator.credentials.create``) and removes one; on /login
"Sign in with a passkey" signs in with the passkey alone (no password
typed) and the session is at AAL 2; the passkeys offered in the username
field's autofill (conditional mediation) sign in too, without getting in
the button's way; on /login/2fa "Use a passkey" finishes a password login of
an account that has one. The refusals are told in words: the authenticator
that already holds a passkey for the account (``excludeCredentials``:
InvalidStateError), a ceremony the user did not complete (NotAllowedError),
and the page still works after them. Without the browser's JSON helpers
(``parse...OptionsFromJSON``, ``toJSON``) the script's own converter does the
same; a browser without WebAuthn is told it cannot add one (and still sees
the list); with passkeys off (the server's 404) the buttons are hidden, and
a session that is not fresh (the server's 401) is sent to /reauthenticate.
No page logs a console error or a Content-Security-Policy violation.

WebAuthn needs a domain for its relying party, so the server is opened as
http://localhost:PORT (its PUBLIC_URL: origin and RP ID ``localhost``);
Chromium maps that name to 127.0.0.1 and nothing else. The authenticator is
the DevTools protocol's virtual one (``WebAuthn.addVirtualAuthenticator``):
a platform authenticator with resident keys and user verification whose
user is present and verified unless a test says otherwise.

With QUART_APP_SCREENSHOT_DIR set (e.g. to docs/screenshots), the login page
with its passkey button and the account's list of passkeys are saved there
(900x700) as passkey-sign-in.png and passkey-account.png:

    QUART_APP_SCREENSHOT_DIR=docs/screenshots .venv/bin/python -m pytest -q tests/test_browser_passkeys.py
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import FAST_HASHING, ROOT
from playwright.async_api import Browser, CDPSession, Page, Response, async_playwright, expect
from servers import Server, client_for, free_port, serving
from test_browser import ACTION_MS, CHROMIUM, CHROMIUM_ARGS, CLOSE_SECONDS, LAUNCH_MS, SCREENSHOTS
from test_browser_mfa import Watched

PASSWORD = "correct horse battery"
# The name the server is opened by: a domain, as WebAuthn's relying party needs (an IP address is refused).
HOST = "localhost"
# test_browser.py's arguments, but for the host resolver: "localhost" goes to 127.0.0.1 too, every other name nowhere.
RESOLVER_RULES = f"--host-resolver-rules=MAP {HOST} 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
BROWSER_ARGS = [RESOLVER_RULES if arg.startswith("--host-resolver-rules=") else arg for arg in CHROMIUM_ARGS]
VIEWPORT = {"width": 900, "height": 700}
SCREENSHOT_DIR_VARIABLE = "QUART_APP_SCREENSHOT_DIR"
# The DevTools protocol's virtual authenticator: a platform one (a laptop's fingerprint reader, say).
AUTHENTICATOR = {
    "protocol": "ctap2",
    "transport": "internal",
    "hasResidentKey": True,
    "hasUserVerification": True,
    "isUserVerified": True,
    "automaticPresenceSimulation": True,
}
# What the pages say (static/passkeys.js, auth/passkeys.py).
NO_PASSKEYS = "No passkeys yet."
ALREADY_REGISTERED = "That passkey is already registered"
CANCELLED = "The passkey request was cancelled or timed out"
CANNOT_ADD = "This browser cannot create passkeys: add one from another browser or device."
NOT_SET_UP = "Passkeys are not set up on this site."
SIGNED_IN_WITH_PASSKEY = "passkey · AAL 2"
PASSWORD_THEN_PASSKEY = "password + passkey · AAL 2"
# Put in a page before its scripts: no passkeys offered in the autofill (the virtual authenticator would answer
# such a request at once, before a test could click anything).
NO_CONDITIONAL_MEDIATION = """
if (window.PublicKeyCredential) {
  Object.defineProperty(PublicKeyCredential, "isConditionalMediationAvailable", {
    value: () => Promise.resolve(false), configurable: true,
  });
}
"""
# ... and a browser without the JSON helpers of WebAuthn level 3: the script converts by itself.
NO_JSON_HELPERS = """
if (window.PublicKeyCredential) {
  delete PublicKeyCredential.parseCreationOptionsFromJSON;
  delete PublicKeyCredential.parseRequestOptionsFromJSON;
  delete PublicKeyCredential.prototype.toJSON;
}
"""

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
def server(tmp_path_factory, migrated_template) -> Iterator[Server]:
    """The app under hypercorn (two workers) on a fresh database, its PUBLIC_URL http://localhost:PORT; no mail."""
    directory = tmp_path_factory.mktemp("browser-passkeys")
    port = free_port()
    settings = {**FAST_HASHING, "MAIL_URL": "off", "PUBLIC_URL": f"http://{HOST}:{port}"}
    db = migrated_template.clone(directory)
    try:
        with serving(db, settings, port=port, log_path=directory / "hypercorn.log") as served:
            yield served
    finally:
        db.drop()


@pytest.fixture(scope="module")
def site(server: Server) -> str:
    """The origin the browser uses: the server by its domain name."""
    return f"http://{HOST}:{server.port}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium: Path, server: Server) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=BROWSER_ARGS, timeout=LAUNCH_MS
        )
        try:
            yield browser
        finally:
            await asyncio.wait_for(browser.close(), CLOSE_SECONDS)


class PasskeyWatched(Watched):
    """``Watched``, and the requests a test means to fail (Chromium logs "Failed to load resource" for them)."""

    def __init__(self, context) -> None:
        super().__init__(context)
        self.failing_paths: set[str] = set()

    def _expected(self, text: str, url: str) -> bool:
        failed = text.startswith("Failed to load resource: the server responded with a status of")
        return super()._expected(text, url) or (failed and any(url.endswith(path) for path in self.failing_paths))


class Authenticators:
    """Chromium's virtual authenticators for one page (the DevTools protocol's WebAuthn domain)."""

    def __init__(self, cdp: CDPSession) -> None:
        self.cdp = cdp

    @classmethod
    async def of(cls, page: Page) -> Authenticators:
        cdp = await page.context.new_cdp_session(page)
        await cdp.send("WebAuthn.enable")
        return cls(cdp)

    async def add(self, **options: Any) -> str:
        answer = await self.cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {**AUTHENTICATOR, **options}})
        return answer["authenticatorId"]

    async def remove(self, authenticator: str) -> None:
        await self.cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": authenticator})

    async def user_verified(self, authenticator: str, verified: bool) -> None:
        """Whether the user passes the authenticator's check (fingerprint, PIN): without it the browser refuses."""
        await self.cdp.send("WebAuthn.setUserVerified", {"authenticatorId": authenticator, "isUserVerified": verified})

    async def user_present(self, authenticator: str, present: bool) -> None:
        """Whether the user answers the authenticator at once; without it a request waits (for a touch)."""
        await self.cdp.send(
            "WebAuthn.setAutomaticPresenceSimulation", {"authenticatorId": authenticator, "enabled": present}
        )

    async def credentials(self, authenticator: str) -> list[dict[str, Any]]:
        return (await self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator}))["credentials"]


async def open_page(
    browser: Browser, site: str, *scripts: str, autofill: bool = False
) -> tuple[PasskeyWatched, Page, Authenticators, str]:
    """A fresh context on ``site`` with one virtual authenticator; ``scripts`` run in each page before its own."""
    context = await browser.new_context(base_url=site, viewport=VIEWPORT, color_scheme="light")
    context.set_default_timeout(ACTION_MS)
    context.set_default_navigation_timeout(ACTION_MS)
    watched = await PasskeyWatched(context).start()
    for script in scripts if autofill else (NO_CONDITIONAL_MEDIATION, *scripts):
        await context.add_init_script(script)
    page = await context.new_page()
    authenticators = await Authenticators.of(page)
    return watched, page, authenticators, await authenticators.add()


async def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True, timeout=ACTION_MS)


async def documented_shot(page: Page, name: str) -> None:
    """The page as it is in the viewport (900x700), to $QUART_APP_SCREENSHOT_DIR/<name>.png when that is set."""
    await shot(page, name)
    target = os.environ.get(SCREENSHOT_DIR_VARIABLE)
    if target:
        directory = Path(target) if Path(target).is_absolute() else ROOT / target
        directory.mkdir(parents=True, exist_ok=True)
        await page.evaluate("document.fonts.ready")
        await page.screenshot(path=directory / f"{name}.png", animations="disabled", timeout=ACTION_MS)


async def register(page: Page, site: str, username: str) -> None:
    """The registration form (it logs the new account in, with its password)."""
    await page.goto("/register")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Email").fill(f"{username}@example.com")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Register").click()
    await expect(page).to_have_url(site + "/")


async def register_over_api(server: Server, username: str) -> None:
    async with client_for(server, timeout=10) as client:
        response = await client.post(
            "/api/register", json={"username": username, "email": f"{username}@example.com", "password": PASSWORD}
        )
    assert response.status_code == 201, response.text


async def log_in_with_password(page: Page, username: str, next_page: str | None = None) -> None:
    await page.goto("/login" if next_page is None else f"/login?next={next_page}")
    await page.get_by_label("Username or email").fill(username)
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()


async def log_out(page: Page, site: str) -> None:
    await page.get_by_role("button", name="Log out", exact=True).click()
    await expect(page).to_have_url(site + "/")
    await expect(page.get_by_role("navigation", name="Account").get_by_role("link", name="Log in")).to_be_visible()


def message(page: Page):
    """The page's passkey messages (an aria-live region)."""
    return page.locator("#passkey-message")


def passkey_names(page: Page):
    return page.locator("#passkey-list .passkey-name")


async def open_passkeys(page: Page) -> None:
    """/account, its "Passkeys" section loaded."""
    await page.goto("/account")
    await expect(page.get_by_role("heading", name="Passkeys")).to_be_visible()


async def add_passkey(page: Page, name: str) -> None:
    """On /account: a name, "Add a passkey", the browser's ceremony; the page says it is added."""
    await page.get_by_label("Name of a new passkey").fill(name)
    await page.get_by_role("button", name="Add a passkey").click()
    await expect(message(page)).to_have_text(f"Passkey “{name}” added. Your other sessions were logged out.")


async def sign_in_with_passkey(page: Page, site: str, *, path: str = "/login", lands_on: str = "/dashboard") -> None:
    """/login, "Sign in with a passkey", nothing typed: the page it lands on."""
    await page.goto(path)
    await page.get_by_role("button", name="Sign in with a passkey").click()
    await expect(page).to_have_url(site + lands_on)


def this_session(page: Page):
    """How this session signed in, from /account's table of sessions."""
    return page.locator("table.sessions tr.current td.sign-in .amr").locator("xpath=..")


# -- add, sign in with it alone, a second one, remove one -------------------------------------------------------


async def test_add_a_passkey_sign_in_with_it_alone_add_another_remove_one(browser, server, site):
    watched, page, authenticators, laptop = await open_page(browser, site)
    await register(page, site, "ada")
    await open_passkeys(page)
    await expect(page.get_by_text(NO_PASSKEYS)).to_be_visible()
    await add_passkey(page, "Laptop")
    await expect(passkey_names(page)).to_have_text(["Laptop"])
    await expect(page.locator("#passkey-list")).to_contain_text("never used")
    assert len(await authenticators.credentials(laptop)) == 1
    # This session has presented the passkey too (the page is loaded again once it is added).
    await expect(this_session(page)).to_contain_text(PASSWORD_THEN_PASSKEY)

    # The same authenticator again: the browser refuses (excludeCredentials), the page says why, nothing is added.
    await page.get_by_label("Name of a new passkey").fill("Laptop again")
    await page.get_by_role("button", name="Add a passkey").click()
    await expect(message(page)).to_contain_text(ALREADY_REGISTERED)
    await expect(message(page)).to_have_class("passkey-message error")
    await expect(passkey_names(page)).to_have_text(["Laptop"])
    await expect(page.get_by_role("button", name="Add a passkey")).to_be_enabled()
    assert len(await authenticators.credentials(laptop)) == 1

    # Out, then in with the passkey alone: no password typed.
    await log_out(page, site)
    await page.goto("/login")
    await expect(page.get_by_role("button", name="Sign in with a passkey")).to_be_visible()
    await expect(page.get_by_label("Username or email")).to_have_attribute("autocomplete", "username webauthn")
    await documented_shot(page, "passkey-sign-in")
    await page.get_by_role("button", name="Sign in with a passkey").click()
    await expect(page).to_have_url(site + "/dashboard")
    await expect(page.get_by_role("heading", name="Hello ada")).to_be_visible()
    await open_passkeys(page)
    await expect(this_session(page)).to_contain_text(SIGNED_IN_WITH_PASSKEY)
    await expect(this_session(page)).not_to_contain_text("password")
    await expect(page.locator("#passkey-list")).to_contain_text("last used")

    # A second passkey, on a second authenticator (a phone, say: the laptop is not around).
    await authenticators.remove(laptop)
    phone = await authenticators.add()
    await add_passkey(page, "Phone")
    await expect(passkey_names(page)).to_have_text(["Laptop", "Phone"])
    await documented_shot(page, "passkey-account")

    # Remove the first: the list has the other one only; the other still signs in.
    await page.get_by_role("button", name="Remove passkey Laptop").click()
    await expect(message(page)).to_have_text("Passkey “Laptop” removed. Your other sessions were logged out.")
    await expect(passkey_names(page)).to_have_text(["Phone"])
    await log_out(page, site)
    await sign_in_with_passkey(page, site, path="/login?next=/account", lands_on="/account")
    await expect(this_session(page)).to_contain_text(SIGNED_IN_WITH_PASSKEY)
    await expect(passkey_names(page)).to_have_text(["Phone"])
    assert len(await authenticators.credentials(phone)) == 1
    await watched.close()


# -- the autofill (conditional mediation) and the button side by side --------------------------------------------


async def test_passkeys_in_the_autofill_sign_in_and_the_button_still_works(browser, site):
    watched, page, authenticators, authenticator = await open_page(browser, site, autofill=True)
    await register(page, site, "bea")
    assert await page.evaluate("PublicKeyCredential.isConditionalMediationAvailable()") is True
    await open_passkeys(page)
    await add_passkey(page, "Laptop")
    await log_out(page, site)

    # The login page asks for the autofill's passkeys as it loads: the (virtual) user picks one at once.
    await page.goto("/login?next=/account")
    await expect(page).to_have_url(site + "/account")
    await expect(this_session(page)).to_contain_text(SIGNED_IN_WITH_PASSKEY)
    await log_out(page, site)

    # While the autofill's request waits (no one touches the authenticator), the button still signs in.
    verified: list[Response] = []
    page.on("response", lambda response: verified.append(response) if "/login/verify" in response.url else None)
    await authenticators.user_present(authenticator, False)
    async with page.expect_response("**/api/webauthn/login/options"):
        await page.goto("/login")
    await expect(page.get_by_role("button", name="Sign in with a passkey")).to_be_visible()
    await page.wait_for_timeout(300)  # the autofill's request is under way
    await authenticators.user_present(authenticator, True)
    await page.get_by_role("button", name="Sign in with a passkey").click()
    await expect(page).to_have_url(site + "/dashboard")
    assert [response.status for response in verified] == [200]
    await watched.close()


# -- refusals: cancelled, and the page goes on ---------------------------------------------------------------------


async def test_a_cancelled_ceremony_says_so_and_the_page_still_works(browser, site):
    watched, page, authenticators, authenticator = await open_page(browser, site)
    await register(page, site, "cyd")
    await open_passkeys(page)

    # The user does not pass the authenticator's check: the browser gives NotAllowedError, nothing is added.
    await authenticators.user_verified(authenticator, False)
    await page.get_by_label("Name of a new passkey").fill("Laptop")
    await page.get_by_role("button", name="Add a passkey").click()
    await expect(message(page)).to_contain_text(CANCELLED)
    await expect(page.get_by_text(NO_PASSKEYS)).to_be_visible()
    await expect(page.get_by_role("button", name="Add a passkey")).to_be_enabled()
    await authenticators.user_verified(authenticator, True)
    await page.get_by_role("button", name="Add a passkey").click()
    await expect(message(page)).to_have_text("Passkey “Laptop” added. Your other sessions were logged out.")
    await expect(passkey_names(page)).to_have_text(["Laptop"])
    await log_out(page, site)

    # The same at sign-in: the message, the button enabled again, then it works; the password form too.
    await page.goto("/login")
    await authenticators.user_verified(authenticator, False)
    await page.get_by_role("button", name="Sign in with a passkey").click()
    await expect(message(page)).to_contain_text(CANCELLED)
    await expect(page).to_have_url(site + "/login")
    await expect(page.get_by_role("button", name="Sign in with a passkey")).to_be_enabled()
    await page.get_by_label("Username or email").fill("cyd")
    await authenticators.user_verified(authenticator, True)
    await page.get_by_role("button", name="Sign in with a passkey").click()
    await expect(page).to_have_url(site + "/dashboard")
    await watched.close()


# -- the second step of a password login --------------------------------------------------------------------------


async def test_a_password_login_of_an_account_with_a_passkey_is_finished_with_it(browser, site):
    watched, page, authenticators, authenticator = await open_page(browser, site)
    await register(page, site, "dee")
    await open_passkeys(page)
    await add_passkey(page, "Laptop")
    await log_out(page, site)

    await log_in_with_password(page, "dee", next_page="/account")
    await expect(page).to_have_url(site + "/login/2fa")
    # An account whose only second factor is a passkey is asked for no code.
    await expect(page.get_by_text("Confirm it is you with one of your passkeys.")).to_be_visible()
    await expect(page.get_by_label("Code")).to_have_count(0)
    # A cancel first: the message, and the button is still there.
    await authenticators.user_verified(authenticator, False)
    await page.get_by_role("button", name="Use a passkey").click()
    await expect(message(page)).to_contain_text(CANCELLED)
    await authenticators.user_verified(authenticator, True)
    await page.get_by_role("button", name="Use a passkey").click()
    # next survives the pending login and the passkey.
    await expect(page).to_have_url(site + "/account")
    await expect(this_session(page)).to_contain_text(PASSWORD_THEN_PASSKEY)
    await watched.close()


# -- a browser without the JSON helpers; passkeys off ------------------------------------------------------------


async def test_without_the_browsers_json_helpers_the_scripts_own_converter_works(browser, site):
    watched, page, _, _ = await open_page(browser, site, NO_JSON_HELPERS)
    await register(page, site, "eve")
    helpers = "[typeof PublicKeyCredential.parseRequestOptionsFromJSON, typeof PublicKeyCredential.prototype.toJSON]"
    assert await page.evaluate(helpers) == ["undefined", "undefined"]
    await open_passkeys(page)
    await add_passkey(page, "Laptop")
    await log_out(page, site)
    await sign_in_with_passkey(page, site)
    await watched.close()


async def test_a_browser_without_webauthn_is_told_and_can_still_see_its_passkeys(browser, site):
    watched, page, _, _ = await open_page(browser, site, "delete window.PublicKeyCredential;")
    await register(page, site, "hal")
    assert await page.evaluate("typeof window.PublicKeyCredential") == "undefined"
    await open_passkeys(page)
    await expect(page.get_by_text(NO_PASSKEYS)).to_be_visible()
    await expect(page.get_by_role("button", name="Add a passkey")).to_be_disabled()
    await expect(message(page)).to_have_text(CANNOT_ADD)
    await log_out(page, site)
    await page.goto("/login")
    await expect(page.get_by_role("button", name="Log in")).to_be_visible()
    await expect(page.locator("#passkey-signin")).to_be_hidden()
    await watched.close()


async def test_with_passkeys_off_the_buttons_are_hidden(browser, server, site):
    """The server's answer while passkeys are off (404 on every passkey route), stood in for by the test."""
    await register_over_api(server, "fay")
    watched, page, _, _ = await open_page(browser, site, autofill=True)
    watched.failing_paths.update(("/api/webauthn/login/options", "/api/webauthn/credentials"))
    passkeys_off = False

    async def answer(route):
        if passkeys_off:
            await route.fulfill(status=404, json={"error": NOT_SET_UP})
        else:
            await route.continue_()

    await page.route("**/api/webauthn/**", answer)
    # On as the page loads, off by the click: the button goes, the message says why, the form stays.
    async with page.expect_response("**/api/webauthn/login/options"):
        await page.goto("/login")
    await expect(page.get_by_role("button", name="Sign in with a passkey")).to_be_visible()
    passkeys_off = True
    await page.get_by_role("button", name="Sign in with a passkey").click()
    await expect(message(page)).to_have_text(NOT_SET_UP)
    await expect(page.locator("#passkey-signin")).to_be_hidden()

    # Off from the start: no button, nothing said.
    async with page.expect_response("**/api/webauthn/login/options"):
        await page.reload()
    await expect(page.get_by_role("button", name="Log in")).to_be_visible()
    await page.wait_for_timeout(200)  # the script has read the answer
    await expect(page.locator("#passkey-signin")).to_be_hidden()
    await expect(message(page)).to_be_empty()

    # No "Passkeys" section on the account page.
    await log_in_with_password(page, "fay")
    await expect(page).to_have_url(site + "/")
    async with page.expect_response("**/api/webauthn/credentials"):
        await page.goto("/account")
    await expect(page.get_by_role("heading", name="Change password")).to_be_visible()
    await page.wait_for_timeout(200)
    await expect(page.locator("#passkeys")).to_be_hidden()
    await watched.close()


async def test_a_session_that_is_not_fresh_is_sent_to_confirm_it_is_you(browser, site):
    """The server's 401 for a session without a recent factor (its FRESH_LOGIN_WINDOW over), stood in for."""
    watched, page, _, _ = await open_page(browser, site)
    watched.failing_paths.update(("/api/webauthn/credentials", "/api/webauthn/register/options"))
    await register(page, site, "gus")

    async def stale(route):
        await route.fulfill(status=401, json={"error": "Please reauthenticate to access this page."})

    # The list: a link to confirm it is you, no "Add a passkey".
    await page.route("**/api/webauthn/credentials", stale)
    await open_passkeys(page)
    link = message(page).get_by_role("link", name="confirm it is you")
    await expect(link).to_have_attribute("href", "/reauthenticate?next=/account")
    await expect(page.get_by_role("button", name="Add a passkey")).to_be_hidden()
    await page.unroute("**/api/webauthn/credentials")

    # "Add a passkey": straight to /reauthenticate, back to /account after it.
    await page.route("**/api/webauthn/register/options", stale)
    await open_passkeys(page)
    await expect(page.get_by_text(NO_PASSKEYS)).to_be_visible()
    await page.get_by_role("button", name="Add a passkey").click()
    await expect(page).to_have_url(site + "/reauthenticate?next=/account")
    await watched.close()
