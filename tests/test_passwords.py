"""Password screening: listed passwords and ones built on the user's names are refused, 400 with the reason, on
registration and password change (forms and JSON); no composition rules; the optional range check (k-anonymity),
against a real HTTP server on 127.0.0.1 that speaks the range API."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import html
import logging
import re
import runpy
import secrets
import unicodedata
from pathlib import Path

import pytest
from conftest import ROOT, csrf_from, db_rows, free_port, register_api

from quart_app.auth import passwords
from quart_app.exceptions import ValidationError

PASSWORD = "correct horse battery"
LISTED = "This password is on a list of common or breached passwords; choose another."
HAS_USERNAME = "The password must not contain your username."
HAS_EMAIL_NAME = "The password must not contain your email address's name (the part before the @)."
BREACHED = "This password has appeared in a data breach; choose another."
DATA = ROOT / "quart_app" / "data"


def users(database) -> list[tuple]:
    return db_rows(database, "SELECT username, email FROM users ORDER BY id")


async def register_form(client, username="alice", email=None, password=PASSWORD):
    token = await csrf_from(client, "/register")
    form = {"username": username, "email": email or f"{username}@example.com", "password": password}
    return await client.post("/register", form={**form, "csrf_token": token})


async def refused_json(response, field: str) -> str:
    """The message on ``field`` of a 400 JSON answer."""
    assert response.status_code == 400, await response.get_data(as_text=True)
    body = await response.get_json()
    assert body["error"] == "Please correct the highlighted fields."
    return body["fields"][field]


async def page_text(response) -> str:
    return html.unescape(await response.get_data(as_text=True))


# -- the list ---------------------------------------------------------------------------------------------------


def test_the_list_holds_over_100000_folded_sorted_unique_passwords_as_its_readme_says():
    """The committed file: ≥100,000 entries, each folded, of 8+ (decomposed) characters, sorted, unique."""
    entries = gzip.decompress((DATA / "common-passwords.txt.gz").read_bytes()).decode("utf-8").split("\n")
    assert entries.pop() == ""  # every line ends in LF
    assert len(entries) >= 100_000
    assert entries == sorted(set(entries))
    assert all(passwords.fold(entry) == entry for entry in entries)
    assert all(len(unicodedata.normalize("NFKD", entry)) >= 8 for entry in entries)
    assert not [entry for entry in entries if "\r" in entry]
    assert len(passwords.common_passwords()) == len(entries)
    assert f"**{len(entries):,} entries**" in (DATA / "README.md").read_text()


def test_the_build_script_folds_as_the_app_does():
    """scripts/build-password-list's fold is the app's (the list's entries and candidates must fold alike)."""
    script = runpy.run_path(str(ROOT / "scripts" / "build-password-list"), run_name="build_password_list")
    for text in ("PassWord1", "ＰＡＳＳＷＯＲＤ１", "Straße", "mu\u0308nchen", "ǰ", "ﬃ", "ᾈ", "\u212b"):
        assert script["fold"](text) == passwords.fold(text)


# -- registration -----------------------------------------------------------------------------------------------

LISTED_PASSWORDS = ["password1", "iloveyou1", "qwertyuiop", "PassWord1", "QWERTYUIOP", "ｉｌｏｖｅｙｏｕ１"]


@pytest.mark.parametrize("password", LISTED_PASSWORDS)
async def test_json_registration_refuses_a_listed_password_and_stores_nothing(client, database, password):
    """400 on the password field with the reason, in any letter case or width; no user row."""
    response = await register_api(client, "alice", password=password)
    assert await refused_json(response, "password") == LISTED
    assert users(database) == []
    assert (await client.get("/api/me")).status_code == 401


async def test_form_registration_refuses_a_listed_password_with_the_message(client, database):
    """The form comes back (400) with the reason under the password field, and no account exists."""
    response = await register_form(client, "alice", password="Iloveyou1")
    assert response.status_code == 400
    body = await page_text(response)
    assert LISTED in body
    assert 'value="alice"' in body  # what was typed comes back, but not the password
    assert "Iloveyou1" not in body
    assert users(database) == []


@pytest.mark.parametrize(
    ("username", "email", "password", "message"),
    [
        ("alice", "alice.w@example.com", "my alice secret 99", HAS_USERNAME),
        ("alice", "alice.w@example.com", "my ALICE secret 99", HAS_USERNAME),
        ("alice", "alice.w@example.com", "my ａｌｉｃｅ secret 99", HAS_USERNAME),  # fullwidth letters
        ("robert", "tables.bobby@example.com", "little Tables.Bobby here", HAS_EMAIL_NAME),
        ("robert", "Tables.Bobby@example.com", "little tables.bobby here", HAS_EMAIL_NAME),
        ("robert", "tables.bobby@example.com", "little ＴＡＢＬＥＳ．ＢＯＢＢＹ here", HAS_EMAIL_NAME),
        ("straw", "strasse@example.com", "ein STRAẞE-fest 2024", HAS_EMAIL_NAME),  # ẞ folds to ss
    ],
)
async def test_registration_refuses_a_password_containing_the_username_or_the_emails_name(
    client, database, username, email, password, message
):
    response = await register_api(client, username, email=email, password=password)
    assert await refused_json(response, "password") == message
    assert users(database) == []


async def test_form_registration_refuses_a_password_containing_the_username(client, database):
    response = await register_form(client, "marjorie", password="Marjorie's own garden")
    assert response.status_code == 400
    assert HAS_USERNAME in await page_text(response)
    assert users(database) == []


async def test_an_email_name_of_fewer_than_3_characters_is_not_looked_for(client, database):
    """'jo@…': a password with "jo" in it is fine (a one- or two-letter name would refuse nearly everything)."""
    response = await register_api(client, "joanna", email="jo@example.com", password="major journey of hope")
    assert response.status_code == 201, await response.get_data(as_text=True)
    assert users(database) == [("joanna", "jo@example.com")]


@pytest.mark.parametrize(
    "password",
    [
        "tangerine lighthouse marmalade quiver",  # a passphrase
        "zebrafishmoonlightparade",  # lowercase letters only, not listed: no composition rules
        "汉字密码安全很重要的事情",  # no Latin letter at all
    ],
)
async def test_registration_accepts_unlisted_passwords_whatever_their_character_classes(client, database, password):
    response = await register_api(client, "alice", password=password)
    assert response.status_code == 201, await response.get_data(as_text=True)
    assert users(database) == [("alice", "alice@example.com")]


async def test_registration_accepts_a_random_passphrase_and_a_1024_character_password(app, database):
    words = [secrets.token_hex(4) for _ in range(6)]
    first = await register_api(app.test_client(), "alice", password=" ".join(words))
    assert first.status_code == 201, await first.get_data(as_text=True)
    longest = secrets.token_urlsafe(800)[:1024]
    second = await register_api(app.test_client(), "bobby", password=longest)
    assert second.status_code == 201, await second.get_data(as_text=True)
    login = await app.test_client().post("/api/login", json={"username": "bobby", "password": longest})
    assert login.status_code == 200
    assert len(users(database)) == 2


# -- password change --------------------------------------------------------------------------------------------


async def logged_in(app, username="alice", email=None):
    client = app.test_client()
    response = await register_api(client, username, email=email)
    assert response.status_code == 201, await response.get_data(as_text=True)
    return client


def password_hash(database, username="alice") -> str:
    return db_rows(database, "SELECT password_hash FROM users WHERE username = ?", username)[0][0]


@pytest.mark.parametrize(
    ("new_password", "message"),
    [("password1", LISTED), ("PASSWORD1", LISTED), ("new alice password", HAS_USERNAME)],
)
async def test_api_password_change_refuses_a_listed_or_named_password_and_keeps_the_old(
    app, database, new_password, message
):
    client = await logged_in(app, "alice", email="a.liddell@example.com")
    before = password_hash(database)
    response = await client.post("/api/password", json={"current_password": PASSWORD, "new_password": new_password})
    assert await refused_json(response, "new_password") == message
    assert password_hash(database) == before
    old = await app.test_client().post("/api/login", json={"username": "alice", "password": PASSWORD})
    assert old.status_code == 200


async def test_api_password_change_refuses_the_emails_name_in_another_form(app, database):
    client = await logged_in(app, "alice", email="a.liddell@example.com")
    before = password_hash(database)
    response = await client.post(
        "/api/password", json={"current_password": PASSWORD, "new_password": "dear Ａ．ＬＩＤＤＥＬＬ 1865"}
    )
    assert await refused_json(response, "new_password") == HAS_EMAIL_NAME
    assert password_hash(database) == before


async def test_form_password_change_refuses_a_listed_password_with_the_message(app, database):
    client = await logged_in(app)
    before = password_hash(database)
    token = await csrf_from(client, "/account")
    response = await client.post(
        "/account/password",
        form={"current_password": PASSWORD, "new_password": "qwertyuiop", "csrf_token": token},
    )
    assert response.status_code == 400
    assert LISTED in await page_text(response)
    assert password_hash(database) == before


async def test_password_change_accepts_an_unlisted_lowercase_password(app, database):
    client = await logged_in(app)
    before = password_hash(database)
    response = await client.post(
        "/api/password", json={"current_password": PASSWORD, "new_password": "quietlyorbitingpelicans"}
    )
    assert response.status_code == 204, await response.get_data(as_text=True)
    assert password_hash(database) != before


async def test_the_check_works_without_an_app():
    """check_new_password is usable standalone (no app context: the list and the names, no range check)."""
    with pytest.raises(ValidationError) as refused:
        await passwords.check_new_password("Password1", username="someone", email="x@example.com", field="pw")
    assert refused.value.status == 400 and refused.value.fields == {"pw": LISTED}
    await passwords.check_new_password(PASSWORD, username="someone", email="x@example.com", field="pw")
    assert passwords.screen("x" * 1024, username="someone", email="x@example.com") is None


# -- the range check (k-anonymity) ------------------------------------------------------------------------------


def sha1(password: str) -> str:
    return hashlib.sha1(password.encode("utf-8")).hexdigest().upper()


BREACHED_PASSWORD = "umbrella cactus 7 violin"  # not on the local list
PADDED_PASSWORD = "saffron kettle 9 glacier"  # its suffix is in the answer with count 0 (padding)


class RangeAPI:
    """A minimal HTTP/1.1 server on 127.0.0.1 that answers GET /range/XXXXX like the Pwned Passwords API.

    ``mode``: "ok" (a range list, padded), "slow" (no answer until the test ends), "503", or "garbage".
    It records every request's head, to show what left the app.
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.counts = {sha1(BREACHED_PASSWORD): 1234, sha1(PADDED_PASSWORD): 0}
        self.requests: list[bytes] = []
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def paths(self) -> list[str]:
        return [head.split(b" ")[1].decode() for head in self.requests]

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/range"

    async def stop(self) -> None:
        self._release.set()
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _answer(self, prefix: str) -> bytes:
        lines = [f"{full[5:]}:{count}" for full, count in self.counts.items() if full.startswith(prefix)]
        # Padding: other suffixes with count 0, as the real API adds with Add-Padding.
        lines += [f"{secrets.token_hex(18)[:35].upper()}:0" for _ in range(300)]
        lines += ["0018A45C4D1DEF81644B54AB7F969B88D65:3"]  # a real-looking entry of someone else
        return "\r\n".join(lines).encode()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            path = head.split(b" ")[1].decode()
            if self.mode == "slow":
                await self._release.wait()
                return
            if self.mode == "503":
                status, body = "503 Service Unavailable", b"busy"
            elif self.mode == "garbage":
                status, body = "200 OK", b"<html>this is no range list</html>"
            else:
                match = re.fullmatch(r"/range/([0-9A-F]{5})", path)
                status, body = ("200 OK", self._answer(match.group(1))) if match else ("404 Not Found", b"")
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._tasks.discard(asyncio.current_task())


@pytest.fixture
async def range_api():
    server = RangeAPI()
    url = await server.start()
    server.url = url
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def range_app(make_app, range_api):
    app = make_app(PWNED_PASSWORDS_URL=range_api.url, PWNED_PASSWORDS_TIMEOUT=0.3)
    async with app.test_app():
        yield app


def assert_nothing_logged_of(caplog, password: str) -> None:
    """No log line holds the password, its SHA-1 or the part of it that is sent; the HTTP client's, not the prefix."""
    digest = sha1(password)
    for record in caplog.records:
        text = f"{record.getMessage()} {record.args!r}".upper()
        assert password.upper() not in text
        assert digest[5:] not in text and f"RANGE/{digest[:5]}" not in text
        if record.name.startswith(("quart_app.auth.passwords", "httpx", "httpcore")):
            assert digest[:5] not in text, record.getMessage()


async def test_only_five_hex_digits_of_the_hash_leave_and_a_breached_password_is_refused(
    range_app, range_api, database, caplog
):
    caplog.set_level(logging.DEBUG)  # httpx logs each request's URL at INFO: that line must not show the prefix
    response = await register_api(range_app.test_client(), "alice", password=BREACHED_PASSWORD)
    assert await refused_json(response, "password") == BREACHED
    assert users(database) == []
    digest = sha1(BREACHED_PASSWORD)
    assert range_api.paths == [f"/range/{digest[:5]}"]
    (head,) = range_api.requests
    assert re.fullmatch(r"/range/[0-9A-F]{5}", range_api.paths[0])
    assert digest[5:].encode() not in head.upper() and BREACHED_PASSWORD.encode() not in head
    assert b"\r\nadd-padding: true\r\n" in head.lower()
    assert_nothing_logged_of(caplog, BREACHED_PASSWORD)


async def test_a_suffix_counted_0_and_an_absent_one_are_accepted(range_app, range_api, database):
    """Padding lines (count 0) are no breach, nor is a suffix the answer does not hold."""
    first = await register_api(range_app.test_client(), "alice", password=PADDED_PASSWORD)
    assert first.status_code == 201, await first.get_data(as_text=True)
    second = await register_api(range_app.test_client(), "bobby", password=PASSWORD)
    assert second.status_code == 201, await second.get_data(as_text=True)
    assert range_api.paths == [f"/range/{sha1(PADDED_PASSWORD)[:5]}", f"/range/{sha1(PASSWORD)[:5]}"]
    assert len(users(database)) == 2


async def test_the_range_check_covers_password_change(range_app, range_api, database):
    client = range_app.test_client()
    assert (await register_api(client, "alice")).status_code == 201
    before = password_hash(database)
    response = await client.post(
        "/api/password", json={"current_password": PASSWORD, "new_password": BREACHED_PASSWORD}
    )
    assert await refused_json(response, "new_password") == BREACHED
    assert password_hash(database) == before


async def test_a_listed_password_is_refused_without_asking_the_range_api(range_app, range_api, database):
    response = await register_api(range_app.test_client(), "alice", password="password1")
    assert await refused_json(response, "password") == LISTED
    assert range_api.requests == []


@pytest.mark.parametrize(
    ("mode", "why"),
    [("slow", "no answer within 0.3 s"), ("503", "HTTP 503"), ("garbage", "not a range list")],
)
async def test_a_slow_or_failing_range_api_lets_the_password_through_with_a_warning(
    range_app, range_api, database, caplog, mode, why
):
    """Fail-open: the account is made, and a warning says the check was skipped and why, without the password."""
    range_api.mode = mode
    caplog.set_level(logging.DEBUG)
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await register_api(range_app.test_client(), "alice", password=BREACHED_PASSWORD)
    assert response.status_code == 201, await response.get_data(as_text=True)
    if mode == "slow":
        assert loop.time() - started < 5  # the timeout held (0.3 s), not the server's pace
    assert users(database) == [("alice", "alice@example.com")]
    (warning,) = [r for r in caplog.records if r.name == "quart_app.auth.passwords" and r.levelno == logging.WARNING]
    assert "range check skipped" in warning.getMessage() and why in warning.getMessage()
    assert_nothing_logged_of(caplog, BREACHED_PASSWORD)


async def test_a_range_api_that_is_down_lets_the_password_through_with_a_warning(make_app, database, caplog):
    app = make_app(PWNED_PASSWORDS_URL=f"http://127.0.0.1:{free_port()}/range", PWNED_PASSWORDS_TIMEOUT=0.3)
    caplog.set_level(logging.DEBUG)
    async with app.test_app():
        response = await register_api(app.test_client(), "alice", password=BREACHED_PASSWORD)
    assert response.status_code == 201, await response.get_data(as_text=True)
    assert users(database) == [("alice", "alice@example.com")]
    (warning,) = [r for r in caplog.records if r.name == "quart_app.auth.passwords" and r.levelno == logging.WARNING]
    assert "range check skipped" in warning.getMessage() and "ConnectError" in warning.getMessage()
    assert_nothing_logged_of(caplog, BREACHED_PASSWORD)


async def test_one_http_client_serves_the_apps_range_checks_and_is_closed_when_it_stops(make_app, range_api):
    app = make_app(PWNED_PASSWORDS_URL=range_api.url, PWNED_PASSWORDS_TIMEOUT=0.3)
    if passwords.EXTENSION not in app.extensions:  # (until create_app calls it)
        passwords.init_app(app)
    shared = app.extensions[passwords.EXTENSION]
    async with app.test_app():
        for name in ("alice", "bobby"):
            assert (await register_api(app.test_client(), name)).status_code == 201
        client = shared.client
        assert client is not None and not client.is_closed
        assert len(range_api.requests) == 2
    assert client.is_closed and shared.client is None


def test_the_data_file_ships_with_the_package():
    """pyproject's package-data takes quart_app/data/*: the list is installed with the app."""
    assert Path(passwords.LIST_PATH).is_file()
    assert (
        'quart_app = ["templates/*.html", "templates/mail/*", "static/*", "data/*"]'
        in (ROOT / "pyproject.toml").read_text()
    )
