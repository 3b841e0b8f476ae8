"""Account recovery and email verification (the contract's sections), over a real SMTP server on 127.0.0.1.

Each test reads the messages the server received: the links in them are the
only way to the tokens (the database keeps digests).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import statistics
import time

import pytest
from conftest import auth_cookie, client_with_cookie, csrf_from, db_rows, db_write, mail_settings, register_api

from quart_app.auth import service

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a brand new passphrase"
LINK_RE = re.compile(r"(https?://[^/\s]+)/(reset-password|verify-email)/([A-Za-z0-9_-]+)")
MAIL_WAIT = 15.0


@pytest.fixture
async def smtp_app(make_app, smtp_server):
    """The app with mail to the suite's SMTP server, quick retries, and no minimum time on reset requests."""
    app = make_app(**mail_settings(smtp_server, FORGOT_PASSWORD_MIN_TIME=0))
    async with app.test_app():
        yield app


@pytest.fixture
def client(smtp_app):
    return smtp_app.test_client()


def text_of(received) -> str:
    return received.text


def to_of(received) -> str:
    return str(received.message["To"]).lower()


async def mail_to(smtp_server, address: str, count: int = 1, *, wait: float = MAIL_WAIT) -> list:
    """The messages to ``address`` once there are ``count`` of them (fails after ``wait`` seconds)."""
    deadline = time.monotonic() + wait
    while True:
        found = [m for m in smtp_server.received if address.lower() in to_of(m)]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{len(found)} message(s) to {address}, expected {count}"
        await asyncio.sleep(0.05)


async def no_more_mail(smtp_server, address: str, count: int, *, settle: float = 1.0) -> None:
    """Still exactly ``count`` messages to ``address`` after the sender had time to send more."""
    await asyncio.sleep(settle)
    assert len([m for m in smtp_server.received if address.lower() in to_of(m)]) == count


def link_in(message, kind: str) -> tuple[str, str]:
    """(origin, token) of the ``kind`` link ("reset-password" or "verify-email") in the message's text part."""
    for origin, found, token in LINK_RE.findall(text_of(message)):
        if found == kind:
            return origin, token
    raise AssertionError(f"no {kind} link in:\n{text_of(message)}")


async def verification_token(smtp_server, address: str, count: int = 1) -> str:
    """The verify-email token of the ``count``-th message to ``address`` (waiting for it)."""
    messages = await mail_to(smtp_server, address, count)
    return link_in(messages[count - 1], "verify-email")[1]


async def forgot(client, email: str):
    return await client.post("/api/password/forgot", json={"email": email})


async def reset_token(client, smtp_server, address: str, count: int = 1) -> str:
    response = await forgot(client, address)
    assert response.status_code == 202, await response.get_data(as_text=True)
    messages = [m for m in await mail_to(smtp_server, address, count) if "reset-password" in text_of(m)]
    return link_in(messages[-1], "reset-password")[1]


async def api_login(client, username: str, password: str):
    return await client.post("/api/login", json={"username": username, "password": password})


# -- registration and verification ------------------------------------------------------------


async def test_registration_mails_a_link_and_the_address_is_unverified_until_it_is_confirmed(client, smtp_server):
    """The account works at once; GET of the link only shows a button; the POST verifies; /api/me says so."""
    assert (await register_api(client, "alice")).status_code == 201
    me = await (await client.get("/api/me")).get_json()
    assert me["email_verified"] is False
    (message,) = await mail_to(smtp_server, "alice@example.com")
    origin, token = link_in(message, "verify-email")
    assert origin == "https://app.example.com"  # QUART_APP_PUBLIC_URL
    page = await client.get(f"/verify-email/{token}")
    body = await page.get_data(as_text=True)
    assert page.status_code == 200 and 'method="post"' in body and "alice@example.com" in body
    assert (await (await client.get("/api/me")).get_json())["email_verified"] is False  # GET consumed nothing
    form = {"csrf_token": await csrf_from(client, f"/verify-email/{token}")}
    confirmed = await client.post(f"/verify-email/{token}", form=form)
    assert confirmed.status_code == 302 and confirmed.headers["Location"] == "/"
    assert (await (await client.get("/api/me")).get_json())["email_verified"] is True
    account = await (await client.get("/account")).get_data(as_text=True)
    assert "verified" in account and "not verified" not in account
    again = await client.post(f"/verify-email/{token}", form=form)
    assert again.status_code == 400 and "invalid or has expired" in await again.get_data(as_text=True)


async def test_api_verification_is_204_then_400(client, smtp_server):
    await register_api(client, "alice")
    token = await verification_token(smtp_server, "alice@example.com")
    await client.post("/api/logout")  # the link may be opened anywhere: no login needed
    response = await client.post("/api/email/verify", json={"token": token})
    assert response.status_code == 204
    assert (await client.post("/api/email/verify", json={"token": token})).status_code == 400
    assert await login_and_me(client, "alice") == (True, "alice@example.com")


async def login_and_me(client, username: str, password: str = PASSWORD) -> tuple[bool, str]:
    response = await api_login(client, username, password)
    assert response.status_code == 200, await response.get_data(as_text=True)
    me = await (await client.get("/api/me")).get_json()
    return me["email_verified"], me["email"]


async def test_a_dead_verification_link_is_a_400_page(client):
    for token in ("x" * 43, "not-a-token", "A" * 200):
        page = await client.get(f"/verify-email/{token}")
        assert page.status_code == 400
        assert "This link is invalid or has expired." in await page.get_data(as_text=True)


async def test_resend_mails_a_new_link_the_old_one_dies_and_409_once_verified(client, smtp_server):
    await register_api(client, "alice")
    first = await verification_token(smtp_server, "alice@example.com")
    response = await client.post("/api/email/resend")
    assert response.status_code == 202 and await response.get_json() == {}
    second = await verification_token(smtp_server, "alice@example.com", 2)
    assert second != first
    assert (await client.post("/api/email/verify", json={"token": first})).status_code == 400
    assert (await client.post("/api/email/verify", json={"token": second})).status_code == 204
    refused = await client.post("/api/email/resend")
    assert refused.status_code == 409
    assert (await refused.get_json())["error"] == "Your email address is already verified."
    await no_more_mail(smtp_server, "alice@example.com", 2)


async def test_resend_needs_a_login_and_is_throttled(make_app, smtp_server):
    app = make_app(**mail_settings(smtp_server), EMAIL_RESEND_RATE_LIMIT="2/hour")
    async with app.test_app():
        client = app.test_client()
        assert (await client.post("/api/email/resend")).status_code == 401
        await register_api(client, "alice")
        assert [(await client.post("/api/email/resend")).status_code for _ in range(2)] == [202, 202]
        throttled = await client.post("/api/email/resend")
        assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 0
        # The HTML form: the same limit.
        form = {"csrf_token": await csrf_from(client, "/account")}
        assert (await client.post("/account/email/resend", form=form)).status_code == 429


async def test_html_resend_redirects_to_the_account_page_with_a_flash(client, smtp_server):
    await register_api(client, "alice")
    form = {"csrf_token": await csrf_from(client, "/account")}
    response = await client.post("/account/email/resend", form=form)
    assert response.status_code == 302 and response.headers["Location"] == "/account"
    page = await (await client.get("/account")).get_data(as_text=True)
    assert "A new link is on its way to alice@example.com." in page
    token = await verification_token(smtp_server, "alice@example.com", 2)
    assert (await client.post("/api/email/verify", json={"token": token})).status_code == 204
    form = {"csrf_token": await csrf_from(client, "/account")}
    refused = await client.post("/account/email/resend", form=form)
    assert refused.status_code == 409 and "already verified" in await refused.get_data(as_text=True)


# -- password reset -------------------------------------------------------------------------


async def test_forgot_password_is_the_same_page_for_known_and_unknown_addresses(client, smtp_server):
    """200 and one page either way; only the known address gets mail."""
    await register_api(client, "alice")
    await client.post("/api/logout")
    pages = []
    for address in ("alice@example.com", "nobody@example.com"):
        form = {"email": address, "csrf_token": await csrf_from(client, "/forgot-password")}
        response = await client.post("/forgot-password", form=form)
        assert response.status_code == 200
        pages.append(re.sub(r'value="[^"]*"', "", await response.get_data(as_text=True)))
    assert pages[0] == pages[1]
    assert "If an account uses that address, a link to reset its password is on its way." in pages[0]
    messages = await mail_to(smtp_server, "alice@example.com", 2)
    assert "reset-password" in text_of(messages[-1])
    assert not [m for m in smtp_server.received if "nobody@example.com" in to_of(m)]


async def test_api_forgot_is_202_empty_in_every_case_and_mails_only_active_accounts(smtp_app, client, smtp_server):
    await register_api(client, "alice")
    await register_api(client, "bob")
    async with smtp_app.test_request_context("/"):  # deactivated as `users deactivate` does
        bob = await service.find_user("bob")
        await service.set_active(bob, False)
    for address in ("alice@example.com", "ALICE@Example.com", "bob@example.com", "nobody@example.com"):
        response = await forgot(client, address)
        assert response.status_code == 202 and await response.get_json() == {}
    resets = [m for m in await mail_to(smtp_server, "alice@example.com", 3) if "reset-password" in text_of(m)]
    assert len(resets) == 2
    await no_more_mail(smtp_server, "bob@example.com", 1)  # the verification only
    bad = await forgot(client, "not an address")
    assert bad.status_code == 400 and "email" in (await bad.get_json())["fields"]


async def test_forgot_password_takes_about_the_same_time_for_known_and_unknown_addresses(make_app, smtp_server):
    """Medians of repeated tries (alternating) are within a few milliseconds: the time tells nothing."""
    app = make_app(
        **mail_settings(smtp_server),
        FORGOT_PASSWORD_RATE_LIMIT="off",
        FORGOT_PASSWORD_IP_RATE_LIMIT="off",
        FORGOT_PASSWORD_MIN_TIME=0.1,
    )
    async with app.test_app():
        client = app.test_client()
        await register_api(client, "alice")
        times: dict[str, list[float]] = {"alice@example.com": [], "nobody@example.com": []}
        for _ in range(9):
            for address, spent in times.items():
                started = time.perf_counter()
                assert (await forgot(client, address)).status_code == 202
                spent.append(time.perf_counter() - started)
    known, unknown = (statistics.median(spent) for spent in times.values())
    assert known >= 0.1 and unknown >= 0.1
    assert abs(known - unknown) < 0.03, (known, unknown)


async def test_forgot_password_is_throttled_per_address_and_per_ip(make_app, smtp_server):
    app = make_app(
        **mail_settings(smtp_server),
        FORGOT_PASSWORD_RATE_LIMIT="2/hour",
        FORGOT_PASSWORD_IP_RATE_LIMIT="5/hour",
        FORGOT_PASSWORD_MIN_TIME=0,
    )
    async with app.test_app():
        client = app.test_client()
        statuses = [(await forgot(client, "victim@example.com")).status_code for _ in range(3)]
        assert statuses == [202, 202, 429]
        # The same address in another spelling is the same address.
        throttled = await forgot(client, "VICTIM@example.com")
        assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 0
        # Other addresses from this client: its own limit (5), which every request above counted towards.
        assert [(await forgot(client, f"other{i}@example.com")).status_code for i in range(2)] == [202, 429]
        form = {"email": "x@example.com", "csrf_token": await csrf_from(client, "/forgot-password")}
        page = await client.post("/forgot-password", form=form)
        assert page.status_code == 429 and "Retry-After" in page.headers


async def test_reset_by_link_sets_the_password_ends_every_session_and_mails_a_notice(smtp_app, client, smtp_server):
    await register_api(client, "alice")
    other_device = auth_cookie(client)
    await client.post("/api/logout")
    await api_login(client, "alice", PASSWORD)
    this_device = auth_cookie(client)
    first = await reset_token(client, smtp_server, "alice@example.com", 2)
    token = await reset_token(client, smtp_server, "alice@example.com", 3)
    page = await client.get(f"/reset-password/{token}")
    assert page.status_code == 200 and 'name="new_password"' in await page.get_data(as_text=True)
    form = {"new_password": NEW_PASSWORD, "csrf_token": await csrf_from(client, f"/reset-password/{token}")}
    done = await client.post(f"/reset-password/{token}", form=form)
    assert done.status_code == 302 and done.headers["Location"] == "/login"
    login_page = await (await client.get("/login")).get_data(as_text=True)
    assert "Your password has been changed." in login_page
    for cookie in (other_device, this_device):
        assert (await client_with_cookie(smtp_app, cookie).get("/api/me")).status_code == 401
    assert (await api_login(smtp_app.test_client(), "alice", PASSWORD)).status_code == 401
    assert (await api_login(smtp_app.test_client(), "alice", NEW_PASSWORD)).status_code == 200
    # The link is single-use, and the earlier one died with the reset.
    form["csrf_token"] = await csrf_from(client, "/login")  # (a new identity, a new CSRF token)
    again = await client.post(f"/reset-password/{token}", form=form)
    assert again.status_code == 400 and "invalid or has expired" in await again.get_data(as_text=True)
    assert (await client.get(f"/reset-password/{first}")).status_code == 400
    notice = (await mail_to(smtp_server, "alice@example.com", 4))[-1]
    assert "reset-password/" not in text_of(notice) and "alice" in text_of(notice)
    assert "forgot-password" in text_of(notice)


async def test_api_reset_is_204_and_a_second_use_is_400(client, smtp_server):
    await register_api(client, "alice")
    token = await reset_token(client, smtp_server, "alice@example.com", 2)
    response = await client.post("/api/password/reset", json={"token": token, "new_password": NEW_PASSWORD})
    assert response.status_code == 204
    assert (await client.get("/api/me")).status_code == 401  # this session ended with every other
    second = await client.post("/api/password/reset", json={"token": token, "new_password": "yet another passphrase"})
    assert second.status_code == 400
    assert (await second.get_json())["error"] == "This link is invalid or has expired."
    assert (await api_login(client, "alice", NEW_PASSWORD)).status_code == 200


async def test_a_refused_password_is_400_and_leaves_the_link_usable(client, smtp_server, database):
    await register_api(client, "alice")
    token = await reset_token(client, smtp_server, "alice@example.com", 2)
    before = db_rows(database, "SELECT password_hash FROM users WHERE username = ?", "alice")
    for password in ("short", "password1", "alice-in-wonderland"):
        response = await client.post("/api/password/reset", json={"token": token, "new_password": password})
        assert response.status_code == 400, password
        assert "new_password" in (await response.get_json())["fields"]
    assert db_rows(database, "SELECT password_hash FROM users WHERE username = ?", "alice") == before
    ok = await client.post("/api/password/reset", json={"token": token, "new_password": NEW_PASSWORD})
    assert ok.status_code == 204


async def test_an_expired_token_is_refused(client, smtp_server, database):
    await register_api(client, "alice")
    token = await reset_token(client, smtp_server, "alice@example.com", 2)
    db_write(database, "UPDATE email_tokens SET expires_at = created_at WHERE purpose = 'reset'")
    assert (await client.get(f"/reset-password/{token}")).status_code == 400
    response = await client.post("/api/password/reset", json={"token": token, "new_password": NEW_PASSWORD})
    assert response.status_code == 400


async def test_a_token_of_another_purpose_is_refused(client, smtp_server):
    await register_api(client, "alice")
    verify = await verification_token(smtp_server, "alice@example.com")
    reset = await reset_token(client, smtp_server, "alice@example.com", 2)
    assert (await client.get(f"/reset-password/{verify}")).status_code == 400
    refused = await client.post("/api/password/reset", json={"token": verify, "new_password": NEW_PASSWORD})
    assert refused.status_code == 400
    assert (await client.post("/api/email/verify", json={"token": reset})).status_code == 400
    assert (await client.get(f"/verify-email/{reset}")).status_code == 400


async def test_a_reset_token_issued_before_a_password_change_is_refused(client, smtp_server):
    await register_api(client, "alice")
    token = await reset_token(client, smtp_server, "alice@example.com", 2)
    changed = await client.post("/api/password", json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert changed.status_code == 204
    refused = await client.post("/api/password/reset", json={"token": token, "new_password": "yet another passphrase"})
    assert refused.status_code == 400
    # The change mailed a notice to the account's address.
    notice = (await mail_to(smtp_server, "alice@example.com", 3))[-1]
    assert "password" in notice.message["Subject"].lower() and "reset-password/" not in text_of(notice)


async def test_links_are_built_on_the_public_url_whatever_host_the_request_names(make_app, smtp_server):
    app = make_app(**mail_settings(smtp_server, PUBLIC_URL="https://accounts.example.org"))
    async with app.test_app():
        client = app.test_client()
        await register_api(client, "alice")
        await client.post("/api/password/forgot", json={"email": "alice@example.com"}, headers={"Host": "evil.example"})
        messages = await mail_to(smtp_server, "alice@example.com", 2)
    origins = {link_in(messages[0], "verify-email")[0], link_in(messages[1], "reset-password")[0]}
    assert origins == {"https://accounts.example.org"}
    assert all("evil.example" not in text_of(m) for m in messages)


async def test_tokens_are_stored_only_as_digests(client, smtp_server, database):
    await register_api(client, "alice")
    verify = await verification_token(smtp_server, "alice@example.com")
    reset = await reset_token(client, smtp_server, "alice@example.com", 2)
    stored = {row[0] for row in db_rows(database, "SELECT digest FROM email_tokens")}
    assert stored == {hashlib.sha256(t.encode()).hexdigest() for t in (verify, reset)}
    assert len(reset) >= 22  # at least 128 bits in base64url
    dump = repr(db_rows(database, "SELECT * FROM email_tokens")) + repr(db_rows(database, "SELECT * FROM mail_outbox"))
    assert verify not in dump and reset not in dump


async def test_bad_tokens_are_throttled_per_client(make_app, smtp_server):
    app = make_app(**mail_settings(smtp_server), TOKEN_RATE_LIMIT="3/minute")
    async with app.test_app():
        client = app.test_client()
        statuses = [
            (
                await client.post("/api/password/reset", json={"token": "x" * 43, "new_password": NEW_PASSWORD})
            ).status_code
            for _ in range(4)
        ]
        assert statuses == [400, 400, 400, 429]
        assert (await client.get(f"/reset-password/{'y' * 43}")).status_code == 429


# -- change of address -------------------------------------------------------------------------


async def test_change_of_address_takes_effect_only_when_the_new_address_confirms(smtp_app, client, smtp_server):
    await register_api(client, "alice")
    await register_api(smtp_app.test_client(), "bob")
    wrong = await client.post("/api/email", json={"current_password": "not my password", "new_email": "a@new.example"})
    assert wrong.status_code == 400
    taken = await client.post("/api/email", json={"current_password": PASSWORD, "new_email": "BOB@example.com"})
    assert taken.status_code == 409 and (await taken.get_json())["error"] == "Email already registered."
    asked = await client.post("/api/email", json={"current_password": PASSWORD, "new_email": "alice@new.example"})
    assert asked.status_code == 202
    assert (await (await client.get("/api/me")).get_json())["email"] == "alice@example.com"
    (confirm,) = await mail_to(smtp_server, "alice@new.example")
    notice = (await mail_to(smtp_server, "alice@example.com", 2))[-1]
    assert "alice@new.example" in text_of(notice) and "verify-email/" not in text_of(notice)
    token = link_in(confirm, "verify-email")[1]
    assert (await client.post("/api/email/verify", json={"token": token})).status_code == 204
    me = await (await client.get("/api/me")).get_json()
    assert (me["email"], me["email_verified"]) == ("alice@new.example", True)
    changed = (await mail_to(smtp_server, "alice@example.com", 3))[-1]
    assert "alice@new.example" in text_of(changed)
    assert (await api_login(smtp_app.test_client(), "alice@new.example", PASSWORD)).status_code == 200
    assert (await api_login(smtp_app.test_client(), "alice@example.com", PASSWORD)).status_code == 401


async def test_html_change_of_address_and_confirmation(smtp_app, client, smtp_server):
    await register_api(client, "alice")
    form = {
        "current_password": PASSWORD,
        "new_email": "alice@new.example",
        "csrf_token": await csrf_from(client, "/account"),
    }
    response = await client.post("/account/email", form=form)
    assert response.status_code == 302 and response.headers["Location"] == "/account"
    (confirm,) = await mail_to(smtp_server, "alice@new.example")
    token = link_in(confirm, "verify-email")[1]
    page = await client.get(f"/verify-email/{token}")
    assert page.status_code == 200 and "alice@new.example" in await page.get_data(as_text=True)
    done = await client.post(f"/verify-email/{token}", form={"csrf_token": await csrf_from(client, "/account")})
    assert done.status_code == 302
    assert "alice@new.example" in await (await client.get("/account")).get_data(as_text=True)
    bad = {**form, "new_email": "not an address", "csrf_token": await csrf_from(client, "/account")}
    refused = await client.post("/account/email", form=bad)
    assert refused.status_code == 400 and "valid email address" in await refused.get_data(as_text=True)
    wrong = {**form, "new_email": "alice@other.example", "current_password": "not my password"}
    refused = await client.post("/account/email", form=wrong)
    assert refused.status_code == 400 and "Current password is incorrect." in await refused.get_data(as_text=True)
    await register_api(smtp_app.test_client(), "bob")
    taken = {**form, "new_email": "Bob@Example.com"}
    refused = await client.post("/account/email", form=taken)
    assert refused.status_code == 409 and "Email already registered." in await refused.get_data(as_text=True)


async def test_a_pending_change_dies_with_a_password_change(client, smtp_server):
    await register_api(client, "alice")
    await client.post("/api/email", json={"current_password": PASSWORD, "new_email": "alice@new.example"})
    token = link_in((await mail_to(smtp_server, "alice@new.example"))[0], "verify-email")[1]
    await client.post("/api/password", json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert (await client.post("/api/email/verify", json={"token": token})).status_code == 400
    assert (await (await client.get("/api/me")).get_json())["email"] == "alice@example.com"


# -- QUART_APP_REQUIRE_VERIFIED_EMAIL and QUART_APP_MAIL_URL=off ------------------------------


async def test_require_verified_email_answers_like_a_missing_login_until_verified(make_app, smtp_server):
    app = make_app(**mail_settings(smtp_server), REQUIRE_VERIFIED_EMAIL=True)
    async with app.test_app():
        client = app.test_client()
        await register_api(client, "alice")
        me = await client.get("/api/me")
        assert me.status_code == 403 and await me.get_json() == {"error": "Email address not verified."}
        page = await client.get("/dashboard")
        body = await page.get_data(as_text=True)
        assert page.status_code == 403 and "Email address not verified." in body and "Mail me a new link" in body
        assert (await client.post("/api/email/resend")).status_code == 202  # (the way out stays open)
        token = await verification_token(smtp_server, "alice@example.com", 2)
        assert (await client.post("/api/email/verify", json={"token": token})).status_code == 204
        assert (await client.get("/api/me")).status_code == 200
        assert (await client.get("/dashboard")).status_code == 200


async def test_mail_off_answers_404_and_sends_nothing(make_app, smtp_server):
    app = make_app(MAIL_URL="off")
    async with app.test_app():
        client = app.test_client()
        assert (await register_api(client, "alice")).status_code == 201
        for method, path, body in (
            ("POST", "/api/password/forgot", {"email": "alice@example.com"}),
            ("POST", "/api/password/reset", {"token": "x" * 43, "new_password": NEW_PASSWORD}),
            ("POST", "/api/email/verify", {"token": "x" * 43}),
            ("POST", "/api/email/resend", None),
            ("POST", "/api/email", {"current_password": PASSWORD, "new_email": "a@new.example"}),
            ("GET", "/forgot-password", None),
            ("GET", f"/reset-password/{'x' * 43}", None),
            ("GET", f"/verify-email/{'x' * 43}", None),
        ):
            response = await client.open(path, method=method, json=body)
            assert response.status_code == 404, path
        assert "Forgot your password?" not in await (await client.get("/login")).get_data(as_text=True)
    await asyncio.sleep(0.5)
    assert smtp_server.received == []


# -- the outbox under an SMTP outage --------------------------------------------------------


async def test_fifty_resets_while_smtp_is_down_all_answer_normally_and_all_arrive_later(make_app, smtp_server):
    app = make_app(
        **mail_settings(smtp_server, MAIL_RETRY_DELAY_MAX=0.5, MAIL_SEND_TIMEOUT=2),
        FORGOT_PASSWORD_RATE_LIMIT="off",
        FORGOT_PASSWORD_IP_RATE_LIMIT="off",
        FORGOT_PASSWORD_MIN_TIME=0,
    )
    async with app.test_app():
        client = app.test_client()
        names = [f"user{i:02d}" for i in range(50)]
        for name in names:
            assert (await register_api(app.test_client(), name)).status_code == 201
        await mail_to(smtp_server, "user49@example.com")
        smtp_server.stop()
        responses = await asyncio.gather(*(forgot(client, f"{name}@example.com") for name in names))
        assert [r.status_code for r in responses] == [202] * 50
        assert {str(await r.get_json()) for r in responses} == {"{}"}
        await asyncio.sleep(1.0)  # the sender tries, and fails, meanwhile
        smtp_server.start()
        for name in names:
            messages = await mail_to(smtp_server, f"{name}@example.com", 2, wait=30)
            assert len([m for m in messages if "reset-password" in text_of(m)]) == 1
        await asyncio.sleep(1.0)
        resets = [m for m in smtp_server.received if "reset-password" in text_of(m)]
        assert len(resets) == 50  # every one, once


# -- the audit trail and the signals ---------------------------------------------------------


async def test_each_step_is_an_audit_row_and_a_signal(smtp_app, client, smtp_server, database):
    """Reset requested and done, verification sent and confirmed, change requested and done: rows and signals."""
    from quart_app.auth import events

    received: list[str] = []
    names = {
        "password_reset_requested": events.password_reset_requested,
        "password_reset": events.password_reset,
        "verification_sent": events.verification_sent,
        "email_verified": events.email_verified,
        "email_change_requested": events.email_change_requested,
        "email_changed": events.email_changed,
    }
    receivers = {}
    for name, signal in names.items():
        receivers[name] = lambda app, name=name, **extra: received.append(name)
        signal.connect(receivers[name], weak=False)
    try:
        await register_api(client, "alice")
        token = await verification_token(smtp_server, "alice@example.com")
        await client.post("/api/email/verify", json={"token": token})
        await client.post("/api/email", json={"current_password": PASSWORD, "new_email": "alice@new.example"})
        change = link_in((await mail_to(smtp_server, "alice@new.example"))[0], "verify-email")[1]
        await client.post("/api/email/verify", json={"token": change})
        reset = await reset_token(client, smtp_server, "alice@new.example", 2)
        await client.post("/api/password/reset", json={"token": reset, "new_password": NEW_PASSWORD})
    finally:
        for name, signal in names.items():
            signal.disconnect(receivers[name])
    assert received == [
        "verification_sent",
        "email_verified",
        "email_change_requested",
        "email_changed",
        "password_reset_requested",
        "password_reset",
    ]
    rows = [event for (event,) in db_rows(database, "SELECT event FROM auth_events ORDER BY id")]
    for event in (
        "verification_sent",
        "email_verified",
        "email_change_requested",
        "email_changed",
        "reset_requested",
        "password_reset",
    ):
        assert event in rows, event
    assert all(token not in repr(db_rows(database, "SELECT detail FROM auth_events")) for token in (token, reset))


async def test_two_requests_racing_with_one_link_cannot_both_use_it(smtp_app, client, smtp_server, database):
    """Both find the link live, both hash their password; one conditional UPDATE lets only one through."""
    await register_api(client, "alice")
    token = await reset_token(client, smtp_server, "alice@example.com", 2)
    passwords = ["first racing passphrase", "second racing passphrase"]
    responses = await asyncio.gather(
        *(
            smtp_app.test_client().post("/api/password/reset", json={"token": token, "new_password": password})
            for password in passwords
        )
    )
    assert sorted(r.status_code for r in responses) == [204, 400]
    winner = passwords[[r.status_code for r in responses].index(204)]
    loser = passwords[1 - passwords.index(winner)]
    assert (await api_login(smtp_app.test_client(), "alice", winner)).status_code == 200
    assert (await api_login(smtp_app.test_client(), "alice", loser)).status_code == 401
    assert db_rows(database, "SELECT count(*) FROM email_tokens WHERE used_at IS NULL AND purpose = 'reset'") == [(0,)]
