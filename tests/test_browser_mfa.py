"""Two-factor authentication (an authenticator app, TOTP) in a real browser: Chromium (Playwright) on hypercorn.

The enrolment as a user does it: register, /account/2fa, "Set up an
authenticator app", the QR code and the secret on the page, the app's code
(computed with pyotp from the secret read off the page) → the 10 recovery
codes, shown once, and their download as a text file; the page then says it
is on. A login with the password then lands on /login/2fa: a wrong code is
refused there, the next code of the app finishes it (a ``next`` page kept
through both steps) and the account page shows the session as password +
authenticator app at AAL 2. A recovery code logs in once, and is refused the
second time. No page logs a console error or a Content-Security-Policy
violation (every test checks the pages it visited).

Each code is typed once, for a step the account has not used yet: the server
takes a code once and no older one after it (auth/mfa.py), so the tests keep
their own count of the steps used (``Authenticator``).

Pages visited are saved under test-output/screenshots/ as in test_browser.py;
with QUART_APP_SCREENSHOT_DIR set (e.g. to docs/screenshots), the setup page
(QR code and secret) is also saved there as two-factor.png:

    QUART_APP_SCREENSHOT_DIR=docs/screenshots .venv/bin/python -m pytest -q tests/test_browser_mfa.py -k screenshot
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pyotp
import pytest
import pytest_asyncio
from conftest import FAST_HASHING, ROOT
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, Response, async_playwright, expect
from servers import Server, serving
from test_browser import ACTION_MS, CHROMIUM, CHROMIUM_ARGS, CLOSE_SECONDS, LAUNCH_MS, SCREENSHOTS

PASSWORD = "correct horse battery"
# auth/mfa.py: 30-second steps, one step either side accepted; 10 recovery codes as "xxxxx-xxxxx".
STEP_SECONDS = 30
WINDOW = 1
RECOVERY_CODES = 10
RECOVERY_CODE_RE = re.compile(r"[0-9a-hjkmnp-tv-z]{5}-[0-9a-hjkmnp-tv-z]{5}")
SECRET_RE = re.compile(r"[A-Z2-7]{16,}")
WRONG_CODE = "That code is not right. Enter the code your authenticator app shows now, or an unused recovery code."
SIGN_IN_WITH_APP = "password + authenticator app · AAL 2"
SIGN_IN_WITH_RECOVERY_CODE = "password + recovery code · AAL 2"
# The documented screenshot: the viewport it is taken at, and where it goes when asked for.
SCREENSHOT_VIEWPORT = {"width": 900, "height": 700}
SCREENSHOT_DIR_VARIABLE = "QUART_APP_SCREENSHOT_DIR"
# Seconds: the longest a download may take to be written.
DOWNLOAD_SECONDS = 10
# Put in every page before its own scripts: CSP violations reported to the test (see ``watch``).
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.reportCspViolation(`${event.violatedDirective} blocked ${event.blockedURI || "inline"} on ${location.href}`);
});
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
    """The app under hypercorn (hypercorn.toml: two workers) on a fresh database; no mail."""
    directory = tmp_path_factory.mktemp("browser-mfa")
    db = migrated_template.clone(directory)
    try:
        with serving(db, {**FAST_HASHING, "MAIL_URL": "off"}, log_path=directory / "hypercorn.log") as served:
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


class Watched:
    """A browser context whose console errors, uncaught exceptions and CSP violations are collected."""

    def __init__(self, context: BrowserContext) -> None:
        self.context = context
        self.problems: list[str] = []
        self._console_errors: list[tuple[str, str]] = []  # (text, url)
        self._error_pages: set[str] = set()

    async def start(self) -> Watched:
        self.context.on("console", self._console)
        self.context.on("response", self._response)
        self.context.on("weberror", lambda error: self.problems.append(f"uncaught: {error.error}"))
        await self.context.expose_function("reportCspViolation", lambda text: self.problems.append(f"CSP: {text}"))
        await self.context.add_init_script(REPORT_CSP_VIOLATIONS)
        return self

    def _console(self, message: ConsoleMessage) -> None:
        # Chromium logs a CSP violation as an error too ("Refused to ...").
        if message.type in ("error", "assert"):
            self._console_errors.append((message.text, message.location.get("url", "")))

    def _response(self, response: Response) -> None:
        if response.request.resource_type == "document" and response.status >= 400:
            self._error_pages.add(response.url)

    def _expected(self, text: str, url: str) -> bool:
        """Chromium's "Failed to load resource" for a page the test meant to get an error status (each test
        checks that status), or for /favicon.ico (the browser's own request: the app has none, no page asks)."""
        if not text.startswith("Failed to load resource: the server responded with a status of"):
            return False
        return url in self._error_pages or urlsplit(url).path == "/favicon.ico"

    async def close(self) -> None:
        """Close the context, then fail if any page of it logged a problem."""
        await self.context.close()
        problems = self.problems + [
            f"console error: {text} ({url})" for text, url in self._console_errors if not self._expected(text, url)
        ]
        assert problems == [], "\n".join(problems)


async def open_page(browser: Browser, server: Server, **options) -> tuple[Watched, Page]:
    options.setdefault("viewport", {"width": 1024, "height": 640})
    context = await browser.new_context(base_url=server.url, accept_downloads=True, **options)
    context.set_default_timeout(ACTION_MS)
    context.set_default_navigation_timeout(ACTION_MS)
    watched = await Watched(context).start()
    return watched, await context.new_page()


async def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True, timeout=ACTION_MS)


class Authenticator:
    """The user's authenticator app, from the secret on the setup page: each code for a step not used yet."""

    def __init__(self, secret: str) -> None:
        self.totp = pyotp.TOTP(secret)
        self.last_step: int | None = None

    @staticmethod
    def current_step() -> int:
        return int(time.time()) // STEP_SECONDS

    async def code(self) -> str:
        """The code of the current step, or of the step after the last one used (the server's window takes it)."""
        step = self.current_step() if self.last_step is None else max(self.current_step(), self.last_step + 1)
        if step > self.current_step() + WINDOW:  # only if codes are asked for faster than one a step
            await asyncio.sleep((step - WINDOW) * STEP_SECONDS - time.time() + 0.1)
        self.last_step = step
        return self.totp.generate_otp(step)

    def wrong_code(self) -> str:
        """Six digits that are no code the server could take now (nor a moment later)."""
        current = self.current_step()
        taken = {self.totp.generate_otp(step) for step in range(current - WINDOW - 1, current + WINDOW + 2)}
        return next(code for code in (f"{n:06d}" for n in range(123_456, 10**6)) if code not in taken)


async def register(page: Page, server: Server, username: str) -> None:
    """The registration form (it logs the new account in)."""
    await page.goto("/register")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Email").fill(f"{username}@example.com")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Register").click()
    await expect(page).to_have_url(server.url + "/")
    await expect(page.get_by_role("heading", name=f"Welcome, {username}")).to_be_visible()


async def open_setup(page: Page, server: Server) -> str:
    """From /account/2fa: "Set up an authenticator app"; the QR code and the secret are shown. The secret."""
    await page.goto("/account/2fa")
    await expect(page.get_by_role("heading", name="Two-factor authentication", exact=True)).to_be_visible()
    await expect(page.locator("#totp-state .badge")).to_have_text("off")
    await page.get_by_role("button", name="Set up an authenticator app").click()
    await expect(page).to_have_url(server.url + "/account/2fa/totp/setup")
    qr = page.get_by_role("figure", name="QR code for your authenticator app")
    await expect(qr).to_be_visible()
    svg = page.locator("figure.qr > svg")
    await expect(svg).to_be_visible()
    await expect(svg.locator("path").first).to_be_attached()
    box = await svg.bounding_box()
    assert box is not None and box["width"] >= 100 and box["height"] >= 100, box
    secret_element = page.locator("#totp-secret")
    await expect(secret_element).to_be_visible()
    secret = await secret_element.get_attribute("data-secret")
    assert secret is not None and SECRET_RE.fullmatch(secret), secret
    # The grouped key shown to type by hand is the same secret.
    assert (await secret_element.inner_text()).replace(" ", "") == secret
    await expect(page.get_by_label("Code from the app")).to_be_focused()
    return secret


async def turn_on(page: Page, app: Authenticator) -> list[str]:
    """The app's code typed into the setup form, "Turn on": the recovery codes page. The codes it shows."""
    await page.get_by_label("Code from the app").fill(await app.code())
    await page.get_by_role("button", name="Turn on").click()
    await expect(page.get_by_role("heading", name="Your recovery codes")).to_be_visible()
    await expect(page.get_by_role("status")).to_contain_text("Two-factor authentication is on.")
    codes = (await page.locator("pre#recovery-codes").inner_text()).split()
    assert len(codes) == RECOVERY_CODES and len(set(codes)) == RECOVERY_CODES, codes
    assert all(RECOVERY_CODE_RE.fullmatch(code) for code in codes), codes
    return codes


async def enrol(page: Page, server: Server, username: str) -> tuple[Authenticator, list[str]]:
    """A new account with an authenticator app turned on, in this page: the app and the recovery codes."""
    await register(page, server, username)
    app = Authenticator(await open_setup(page, server))
    return app, await turn_on(page, app)


async def log_out(page: Page) -> None:
    await page.locator("header").get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("status")).to_contain_text("Logged out successfully.")


async def password_step(page: Page, server: Server, username: str) -> None:
    """The login form on the page, filled with the right password: the browser is sent on to /login/2fa."""
    await page.get_by_label("Username or email").fill(username)
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(server.url + "/login/2fa")
    await expect(page.get_by_role("heading", name="Two-factor authentication")).to_be_visible()
    await expect(page.get_by_label("Code")).to_be_focused()


async def refused_code(page: Page, server: Server, code: str) -> None:
    """A code /login/2fa refuses: 401, the form again (the login still waits) with the error on the field."""
    await page.get_by_label("Code").fill(code)
    async with page.expect_response(lambda response: response.request.method == "POST") as posted:
        await page.get_by_role("button", name="Verify").click()
    assert (await posted.value).status == 401
    await expect(page).to_have_url(server.url + "/login/2fa")
    await expect(page.get_by_role("alert")).to_have_text(WRONG_CODE)
    await expect(page.locator("#code-error")).to_have_text(WRONG_CODE)
    await expect(page.get_by_label("Code")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("header").get_by_role("button", name="Log out")).to_have_count(0)


async def this_session_sign_in(page: Page) -> str:
    """How /account says this session signed in ("password + ... · AAL n")."""
    await page.goto("/account")
    await expect(page.get_by_role("heading", name="Your account")).to_be_visible()
    row = page.locator("tr.current")
    await expect(row).to_contain_text("(this session)")
    return " ".join((await row.locator("td.sign-in").inner_text()).split("\n")[0].split())


# -- the enrolment --------------------------------------------------------------------------------


async def test_enrolment_shows_the_qr_code_then_recovery_codes_to_download(browser, server):
    watched, page = await open_page(browser, server)
    await register(page, server, "ada")
    secret = await open_setup(page, server)
    app = Authenticator(secret)
    codes = await turn_on(page, app)
    await shot(page, "recovery-codes")

    async with page.expect_download(timeout=ACTION_MS) as downloading:
        await page.get_by_role("button", name="Download as a text file").click()
    download = await downloading.value
    assert download.suggested_filename == "recovery-codes.txt"
    path = await asyncio.wait_for(download.path(), DOWNLOAD_SECONDS)
    text = path.read_text()
    assert RECOVERY_CODE_RE.findall(text) == codes, text
    assert "recovery codes for ada" in text
    await expect(page).to_have_url(server.url + "/account/2fa/totp/confirm")  # a download: the page stays

    await page.get_by_role("link", name="I have saved them: back to two-factor authentication").click()
    await expect(page).to_have_url(server.url + "/account/2fa")
    await expect(page.locator("#totp-state .badge")).to_have_text("on")
    await expect(page.locator("#totp-state")).to_contain_text("An authenticator app is set up")
    await expect(page.locator("#codes-left")).to_contain_text(f"{RECOVERY_CODES} of {RECOVERY_CODES} recovery codes")
    await expect(page.locator("#totp-secret")).to_have_count(0)  # the secret is not shown again
    await shot(page, "two-factor-on")
    # The session that turned it on has presented the app's code.
    assert await this_session_sign_in(page) == SIGN_IN_WITH_APP
    await watched.close()


# -- a login with the app's code -------------------------------------------------------------------


async def test_login_asks_for_the_code_refuses_a_wrong_one_and_keeps_next(browser, server):
    watched, page = await open_page(browser, server)
    app, _ = await enrol(page, server, "grace")
    await page.goto("/dashboard")
    await log_out(page)

    await page.goto("/account")
    await expect(page).to_have_url(server.url + "/login?next=%2Faccount")
    await password_step(page, server, "grace")
    # Not logged in yet: the header still offers to log in.
    await expect(page.locator("header").get_by_role("link", name="Log in")).to_be_visible()
    await shot(page, "login-2fa")

    await refused_code(page, server, app.wrong_code())
    await shot(page, "login-2fa-wrong-code")

    await page.get_by_label("Code").fill(await app.code())
    await page.get_by_role("button", name="Verify").click()
    await expect(page).to_have_url(server.url + "/account")
    await expect(page.get_by_role("status")).to_contain_text("Welcome back, grace!")
    assert await this_session_sign_in(page) == SIGN_IN_WITH_APP
    await watched.close()


# -- a recovery code --------------------------------------------------------------------------------


async def test_a_recovery_code_logs_in_once(browser, server):
    watched, page = await open_page(browser, server)
    _, codes = await enrol(page, server, "lovelace")
    await page.goto("/")
    await log_out(page)

    await page.goto("/login")
    await password_step(page, server, "lovelace")
    await page.get_by_label("Code").fill(codes[0])
    await page.get_by_role("button", name="Verify").click()
    await expect(page).to_have_url(server.url + "/")
    await expect(page.get_by_role("status")).to_contain_text(f"You used a recovery code: {RECOVERY_CODES - 1} left.")
    await expect(page.get_by_role("heading", name="Welcome, lovelace")).to_be_visible()
    assert await this_session_sign_in(page) == SIGN_IN_WITH_RECOVERY_CODE
    await page.goto("/account/2fa")
    await expect(page.locator("#codes-left")).to_contain_text(f"{RECOVERY_CODES - 1} of {RECOVERY_CODES}")
    await log_out(page)

    # The same code again: refused; another one still works.
    await page.goto("/login")
    await password_step(page, server, "lovelace")
    await refused_code(page, server, codes[0])
    await shot(page, "login-2fa-used-recovery-code")
    await page.get_by_label("Code").fill(codes[1])
    await page.get_by_role("button", name="Verify").click()
    await expect(page).to_have_url(server.url + "/")
    await expect(page.get_by_role("status")).to_contain_text(f"You used a recovery code: {RECOVERY_CODES - 2} left.")
    await watched.close()


# -- the watcher of console errors and CSP violations is not blind ---------------------------------


async def test_an_injected_inline_script_is_reported_as_a_csp_violation(browser, server):
    watched, page = await open_page(browser, server)
    await page.goto("/login")
    await page.evaluate("""() => {
        const script = document.createElement("script");
        script.textContent = "window.ran = true";
        document.body.append(script);
    }""")
    deadline = time.monotonic() + ACTION_MS / 1000
    while not any(problem.startswith("CSP: script-src") for problem in watched.problems):
        assert time.monotonic() < deadline, f"no CSP violation reported: {watched.problems}"
        await asyncio.sleep(0.05)
    assert await page.evaluate("window.ran === undefined"), "the CSP blocks inline script"
    await watched.context.close()


# -- the screenshot of the setup page ----------------------------------------------------------------


async def test_screenshot_of_the_authenticator_app_setup(browser, server):
    """The setup page (QR code and key) at 900x700; written to $QUART_APP_SCREENSHOT_DIR/two-factor.png when set."""
    watched, page = await open_page(browser, server, viewport=SCREENSHOT_VIEWPORT, color_scheme="light")
    await register(page, server, "noether")
    await open_setup(page, server)
    # Both the QR code and the key to type are in view, without scrolling.
    for element in (page.locator("figure.qr > svg"), page.locator("#totp-secret")):
        await expect(element).to_be_in_viewport(ratio=1)
    await page.evaluate("document.fonts.ready")
    await shot(page, "two-factor")
    target = os.environ.get(SCREENSHOT_DIR_VARIABLE)
    if target:
        directory = Path(target) if Path(target).is_absolute() else ROOT / target
        directory.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=directory / "two-factor.png", animations="disabled", timeout=ACTION_MS)
    await watched.close()
