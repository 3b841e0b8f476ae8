"""One email address in any of its Unicode forms is one account (issue "Hardening…", item 4).

The same normalisation (``quart_app.auth.validation.email_key``: NFKC and case
folding of the local part, IDNA with UTS-46 mapping of the domain) decides at
registration, at login, in the unique index ``uq_users_email_key`` and in the
throttle's keys. The migration that adds the key is tested on adopted Flask
databases in tests/test_adoption.py.

Every test runs on the suite's backend (SQLite, or PostgreSQL: tests/backends.py).
"""

from __future__ import annotations

import asyncio
import sqlite3
import unicodedata
from collections import Counter

import pytest
from conftest import FAST_HASHING, db_rows, register_api
from email_validator import EmailNotValidError, validate_email
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from quart_app import create_app
from quart_app.auth import service, validation

PASSWORD = "correct horse battery"
EMAIL_TAKEN = {"error": "Email already registered."}
LOGIN_FAILED = {"error": "Incorrect username or password."}


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


# Groups of spellings of one address, with the key they all share.
EQUIVALENT = {
    "non-ASCII case and NFC/NFD": (
        "\u00e4rger@example.com",
        ["\u00c4rger@example.com", "\u00e4rger@example.com", "\u00c4RGER@EXAMPLE.COM", nfd("\u00c4rger@example.com")],
    ),
    "punycode and Unicode domain": (
        "user@xn--bcher-kva.example",
        [
            "user@b\u00fccher.example",
            "user@xn--bcher-kva.example",
            "user@XN--BCHER-KVA.EXAMPLE",
            "USER@B\u00dcCHER.example",
            nfd("user@b\u00fccher.example"),
            "user@b\u00fccher.example.",
        ],
    ),
    "fullwidth and ideographic full stop": (
        "joe@example.com",
        [
            "joe@example.com",
            "\uff4a\uff4f\uff45@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0e\uff43\uff4f\uff4d",
            "JOE@example\u3002com",
        ],
    ),
    "case folding beyond lower()": ("strasse@example.com", ["stra\u00dfe@example.com", "STRASSE@example.com"]),
    "Greek final sigma": (
        "\u03bf\u03c3\u03bf\u03c3@example.com",
        ["\u039f\u03a3\u039f\u03a3@example.com", "\u03bf\u03c3\u03bf\u03c2@example.com"],
    ),
}


# -- email_key ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "spellings"), [pytest.param(key, spellings, id=name) for name, (key, spellings) in EQUIVALENT.items()]
)
def test_every_spelling_of_an_address_has_one_key(key, spellings):
    assert {spelling: validation.email_key(spelling) for spelling in spellings} == dict.fromkeys(spellings, key)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("a@example.com", "b@example.com"),
        ("\u00e4rger@example.com", "arger@example.com"),
        # IDNA2008 (non-transitional UTS-46): straße.de and strasse.de are two domains.
        ("user@stra\u00dfe.de", "user@strasse.de"),
        ("user@example.com", "user@example.org"),
        ("a.b@example.com", "ab@example.com"),
    ],
)
def test_different_addresses_keep_different_keys(one, other):
    assert validation.email_key(one) != validation.email_key(other)


@pytest.mark.parametrize(
    "text", ["", "@", "no-at-sign", "user@", "@example.com", "u@a..b", "u@[127.0.0.1]", "u@" + "x" * 300, "u@-x.com"]
)
def test_the_key_of_text_that_is_no_domain_name_is_still_a_folded_string(text):
    key = validation.email_key(text)
    assert key == validation.email_key(text.upper())
    assert key == validation.email_key(nfd(text))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_email_key_takes_any_text(local, domain):
    for text in (local, f"{local}@{domain}"):
        key = validation.email_key(text)
        assert isinstance(key, str)
        assert validation.email_key(nfd(text)) == key
        assert validation.email_key(unicodedata.normalize("NFKC", text)) == key


LOCAL_CHARS = st.characters(categories=["Lu", "Ll", "Lt", "Lo", "Mn", "Nd"], max_codepoint=0x2FFFF)
DOMAINS = [
    "example.com",
    "EXAMPLE.com",
    "b\u00fccher.example",
    "xn--bcher-kva.example",
    nfd("B\u00dcCHER.example"),
    "\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0e\uff43\uff4f\uff4d",
    "\u4f8b\u3048.\u30c6\u30b9\u30c8",
    "stra\u00dfe.de",
    "\u0440\u0444.example",
]


@settings(max_examples=300, deadline=None)
@given(st.text(LOCAL_CHARS, min_size=1, max_size=12), st.sampled_from(DOMAINS))
def test_what_registration_stores_has_the_key_of_what_was_typed(local, domain):
    """email-validator's normalized form (NFC, Unicode domain) and the typed text share one key."""
    typed = f"{local}@{domain}"
    try:
        normalized = validate_email(typed, check_deliverability=False).normalized
    except EmailNotValidError:
        assume(False)
    assert validation.email_key(normalized) == validation.email_key(typed)


def test_the_throttle_folds_an_email_like_the_login_and_a_username_by_ascii_case():
    assert validation.login_key("\u00c4rger@B\u00dcCHER.example") == validation.login_key(
        nfd("\u00e4rger@xn--bcher-kva.example")
    )
    assert validation.login_key("Alice") == "alice"


# -- registration and login --------------------------------------------------------------------


async def login(app, identifier: str, password: str = PASSWORD, ip: str = "10.0.0.1"):
    response = await app.test_client().post(
        "/api/login", json={"username": identifier, "password": password}, scope_base={"client": (ip, 40000)}
    )
    return response.status_code, await response.get_json()


async def test_a_non_ascii_case_variant_of_a_registered_email_is_409(app, client, database):
    """Ärger@example.com, then ärger@example.com: one account."""
    assert (await register_api(client, "first", "\u00c4rger@example.com")).status_code == 201
    for i, variant in enumerate(["\u00e4rger@example.com", "\u00c4RGER@example.com"]):
        response = await register_api(app.test_client(), f"second{i}", variant)
        assert (response.status_code, await response.get_json()) == (409, EMAIL_TAKEN)
    assert db_rows(database, "SELECT username, email FROM users") == [("first", "\u00c4rger@example.com")]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("jos\u00e9@example.com", nfd("jos\u00e9@example.com"), id="NFC then NFD"),
        pytest.param(nfd("J\u00f6rg@example.com"), "j\u00f6rg@example.com", id="NFD then NFC"),
        pytest.param("user@xn--bcher-kva.example", "user@b\u00fccher.example", id="punycode then Unicode"),
        pytest.param("user@B\u00dcCHER.example", "user@xn--bcher-kva.example", id="Unicode then punycode"),
        pytest.param("\uff4a\uff4f\uff45@example.com", "joe@example.com", id="fullwidth then ASCII"),
        pytest.param(
            "joe@example.com", "joe@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com", id="ASCII then fullwidth"
        ),
        pytest.param("\u00c4rger@example.com", "\u00e4rger@EXAMPLE.com", id="non-ASCII case"),
    ],
)
async def test_two_forms_of_one_address_register_once_and_either_logs_in(app, client, first, second):
    response = await register_api(client, "owner", first)
    assert response.status_code == 201
    user = await response.get_json()
    response = await register_api(app.test_client(), "intruder", second)
    assert (response.status_code, await response.get_json()) == (409, EMAIL_TAKEN)
    for identifier in (first, second, second.upper()):
        assert await login(app, identifier) == (200, user), identifier


async def test_login_by_email_ignores_the_case_and_form_of_non_ascii_letters(app, client):
    response = await register_api(client, "aerger", "\u00c4rger@b\u00fccher.example")
    user = await response.get_json()
    for identifier in [
        "\u00e4rger@b\u00fccher.example",
        "\u00c4RGER@B\u00dcCHER.EXAMPLE",
        nfd("\u00e4rger@b\u00fccher.example"),
        "\u00e4rger@xn--bcher-kva.example",
    ]:
        assert await login(app, identifier) == (200, user), identifier
    assert await login(app, "arger@b\u00fccher.example") == (401, LOGIN_FAILED)


async def test_the_stored_email_is_the_typed_one_and_its_key_beside_it(client, database):
    """users.email keeps what was typed (as email-validator normalizes it); users.email_key is the canonical form."""
    response = await register_api(client, "aerger", "\u00c4rger@XN--BCHER-KVA.example")
    assert (await response.get_json())["email"] == "\u00c4rger@b\u00fccher.example"
    assert db_rows(database, "SELECT email, email_key FROM users") == [
        ("\u00c4rger@b\u00fccher.example", "\u00e4rger@xn--bcher-kva.example")
    ]


async def test_failed_logins_on_an_unknown_address_count_together_in_every_form(app):
    """Five failures spread over five spellings of one unknown address: the sixth attempt is 429."""
    address = "nobody.jos\u00e9@b\u00fccher.example"
    spellings = [
        address,
        nfd(address),
        address.upper(),
        "nobody.jos\u00e9@xn--bcher-kva.example",
        "NOBODY.JOS\u00c9@\uff42\u00fc\uff43\uff48\uff45\uff52.example",
    ]
    assert [(await login(app, spelling, "a wrong password"))[0] for spelling in spellings] == [401] * 5
    status, body = await login(app, address, "a wrong password")
    assert status == 429, body


async def test_failures_on_an_address_in_another_form_lock_the_account(app, client):
    """A known address: every spelling finds the account, whose failures count together."""
    await register_api(client, "aerger", "\u00c4rger@example.com")
    for spelling in [
        "\u00e4rger@example.com",
        nfd("\u00c4rger@example.com"),
        "aerger",
        "\u00c4RGER@example.com",
        "AERGER",
    ]:
        assert (await login(app, spelling, "a wrong password"))[0] == 401
    assert (await login(app, "\u00c4rger@example.com"))[0] == 429


RACE_VARIANTS = [
    "\u00c4rger@example.com",
    "\u00e4rger@example.com",
    "\u00c4RGER@EXAMPLE.COM",
    nfd("\u00c4rger@example.com"),
    nfd("\u00e4rger@Example.com"),
    "\u00e4rger@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com",
    "\uff41\u0308rger@example.com",
    "\u00e4RGER@example.com",
]


async def test_racing_registrations_of_variants_of_one_address_give_one_201_and_409s(app, database):
    """Registrations of one address in case and Unicode variants, all at once: one 201, the rest 409."""
    responses = await asyncio.gather(
        *(register_api(app.test_client(), f"racer{i}", email) for i, email in enumerate(RACE_VARIANTS * 3))
    )
    statuses = Counter(response.status_code for response in responses)
    assert statuses == {201: 1, 409: len(responses) - 1}, statuses
    assert [await r.get_json() for r in responses if r.status_code == 409] == [EMAIL_TAKEN] * (len(responses) - 1)
    assert db_rows(database, "SELECT count(*) FROM users") == [(1,)]


async def test_the_unique_index_refuses_a_variant_that_the_pre_check_let_through(app, client, database, monkeypatch):
    """When two registrations race past the pre-check, uq_users_email_key decides; the loser gets the email's 409."""
    assert (await register_api(client, "first", "\u00c4rger@example.com")).status_code == 201
    real = service._taken_message
    calls = []

    async def missed_once(username: str, email: str):
        calls.append(email)
        return None if len(calls) == 1 else await real(username, email)

    monkeypatch.setattr(service, "_taken_message", missed_once)
    # (Fullwidth a and a combining diaeresis: neither email-validator's NFC nor any lower() makes it "ä".)
    response = await register_api(app.test_client(), "second", "\uff41\u0308RGER@example.com")
    assert (response.status_code, await response.get_json()) == (409, EMAIL_TAKEN)
    assert len(calls) == 2  # the pre-check, then the message after the IntegrityError
    assert db_rows(database, "SELECT username FROM users") == [("first",)]


def integrity_error(database) -> type[Exception]:
    if database.is_sqlite:
        return sqlite3.IntegrityError
    import psycopg

    return psycopg.errors.IntegrityError


def test_the_database_refuses_a_second_row_with_the_same_key(database):
    insert = "INSERT INTO users (username, email, email_key, password_hash) VALUES (?, ?, ?, 'x')"
    database.write(insert, "first", "\u00c4rger@example.com", "\u00e4rger@example.com")
    # (SQLite names the column of a unique index on one, PostgreSQL the index.)
    with pytest.raises(integrity_error(database), match=r"uq_users_email_key|users\.email_key"):
        database.write(insert, "second", nfd("\u00e4rger@example.com"), "\u00e4rger@example.com")


def test_cli_users_create_refuses_a_unicode_variant_of_a_taken_email(database):
    app = create_app({"ENV": "testing", "DATABASE_URL": database.url, **FAST_HASHING})
    runner = app.test_cli_runner()
    created = runner.invoke(args=["users", "create", "first", "user@b\u00fccher.example"], input="a long password\n")
    assert created.exit_code == 0, created.output
    result = runner.invoke(args=["users", "create", "second", "USER@xn--bcher-kva.example"], input="a long password\n")
    assert result.exit_code == 1
    assert "Email already registered." in result.output
    assert db_rows(database, "SELECT email_key FROM users") == [("user@xn--bcher-kva.example",)]
