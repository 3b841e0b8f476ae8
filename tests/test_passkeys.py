"""Passkeys (WebAuthn) through the JSON API (contract: "Passkeys (WebAuthn)" and "Session assurance").

Every ceremony runs end to end: the app's options go to the software
authenticator (tests/webauthn_authenticator.py, a browser plus a platform
passkey), and what it answers (``credential.toJSON()``) goes back to the app,
on the suite's real database. Forged answers (another origin or RP ID, no
user verification, another or a used challenge, a clone's counter) are the
authenticator's overrides; each refusal is checked to store nothing. The
testing app's PUBLIC_URL is http://localhost: RP ID "localhost", origin
"http://localhost", what ``SoftAuthenticator()`` sends by default.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from datetime import timedelta
from types import SimpleNamespace

import cbor2
import pytest
from conftest import auth_cookie, client_with_cookie, db_rows, db_write, mail_settings, register_api
from cryptography.hazmat.primitives import serialization
from test_mfa_account import another_session, api_enrol, second_session
from webauthn_authenticator import ExcludedCredential, SoftAuthenticator, b64url_decode, b64url_encode

from quart_app.auth import passkeys, pending
from quart_login import utcnow

PASSWORD = "correct horse battery"
ORIGIN = "http://localhost"
EVIL_ORIGIN = "https://evil.example"
EVIL_RP_ID = "evil.example"
MFA_COOKIE = pending.COOKIE
STEP_UP = "Confirm it is you with your second factor to do this."
JSON = {"Content-Type": "application/json"}


# -- helpers -----------------------------------------------------------------------------------------


async def text(response) -> str:
    return await response.get_data(as_text=True)


async def creation_options(client) -> dict:
    response = await client.post("/api/webauthn/register/options")
    assert response.status_code == 200, await text(response)
    return await response.get_json()


async def verify_registration(client, credential, **extra):
    return await client.post("/api/webauthn/register/verify", json={"credential": credential, **extra})


async def add_passkey(client, authenticator: SoftAuthenticator, name: str | None = None) -> dict:
    """Register a passkey of ``authenticator`` for the client's account: the 201 answer."""
    options = await creation_options(client)
    extra = {} if name is None else {"name": name}
    response = await verify_registration(client, authenticator.create(options), **extra)
    assert response.status_code == 201, await text(response)
    return await response.get_json()


async def request_options(client) -> dict:
    response = await client.post("/api/webauthn/login/options", json={})
    assert response.status_code == 200, await text(response)
    return await response.get_json()


async def sign_in(client, credential, **extra):
    return await client.post("/api/webauthn/login/verify", json={"credential": credential, **extra})


async def passkey_account(app, username: str = "alice", name: str | None = None) -> SimpleNamespace:
    """A registered account with one passkey: its client (logged in), authenticator, passkey id."""
    client = app.test_client()
    response = await register_api(client, username)
    assert response.status_code == 201, await text(response)
    authenticator = SoftAuthenticator(origin=ORIGIN)
    added = await add_passkey(client, authenticator, name)
    return SimpleNamespace(client=client, authenticator=authenticator, passkey_id=added["id"], username=username)


def passkey_rows(database) -> list[tuple]:
    """What user_factors holds of passkeys, as compared before and after a refusal."""
    return db_rows(
        database,
        "SELECT id, user_id, kind, name, credential_id, public_key, sign_count, last_used_at "
        "FROM user_factors ORDER BY id",
    )


def events(database) -> list[str]:
    return [event for (event,) in db_rows(database, "SELECT event FROM auth_events ORDER BY id")]


def session_count(database) -> int:
    return db_rows(database, "SELECT count(*) FROM auth_sessions")[0][0]


def user_id(database, username: str) -> int:
    [(found,)] = db_rows(database, "SELECT id FROM users WHERE username = ?", username)
    return found


def ago(seconds: float) -> str:
    return (utcnow() - timedelta(seconds=seconds)).isoformat(sep=" ")


def expire_challenges(database) -> None:
    db_write(database, "UPDATE webauthn_challenges SET expires_at = ?", ago(1))


def age_sessions(database, minutes: int = 20) -> None:
    """Every session last presented a factor ``minutes`` ago (FRESH_LOGIN_WINDOW is 15)."""
    db_write(database, "UPDATE auth_sessions SET auth_time = ?", ago(minutes * 60))


async def current_session(client) -> dict:
    response = await client.get("/api/sessions")
    assert response.status_code == 200, await text(response)
    (current,) = [listed for listed in await response.get_json() if listed["current"]]
    return current


def unregistered_authenticator() -> SoftAuthenticator:
    """An authenticator holding a credential for RP ID localhost that this site never registered."""
    stranger = SoftAuthenticator(origin=ORIGIN)
    stranger.create(
        {
            "rp": {"id": "localhost", "name": "Elsewhere"},
            "user": {"id": b64url_encode(os.urandom(32)), "name": "ghost", "displayName": "ghost"},
            "challenge": b64url_encode(os.urandom(32)),
            "pubKeyCredParams": [{"type": "public-key", "alg": -7}],
        }
    )
    return stranger


def with_credential_id(credential: dict, new_id: bytes) -> dict:
    """A registration answer rewritten to carry ``new_id`` ("none" attestation: nothing signs authData)."""
    attestation = cbor2.loads(b64url_decode(credential["response"]["attestationObject"]))
    auth_data = attestation["authData"]
    (length,) = struct.unpack(">H", auth_data[53:55])
    attestation["authData"] = auth_data[:53] + struct.pack(">H", len(new_id)) + new_id + auth_data[55 + length :]
    response = {**credential["response"], "attestationObject": b64url_encode(cbor2.dumps(attestation, canonical=True))}
    return {**credential, "id": b64url_encode(new_id), "rawId": b64url_encode(new_id), "response": response}


def bad_signature(credential: dict) -> dict:
    """An assertion whose signature is no signature of its data (a well-formed DER ECDSA value)."""
    forged = b"\x30\x44\x02\x20" + b"\x11" * 32 + b"\x02\x20" + b"\x22" * 32
    return {**credential, "response": {**credential["response"], "signature": b64url_encode(forged)}}


async def start_pending_login(app, username: str = "alice", **extra):
    """Another client with the right password for ``username`` (an account with a passkey): its pending login."""
    other = app.test_client()
    response = await other.post("/api/login", json={"username": username, "password": PASSWORD, **extra})
    assert response.status_code == 200, await text(response)
    body = await response.get_json()
    assert body["mfa_required"] is True
    assert auth_cookie(other) is None
    return other, body


async def second_step_options(client) -> dict:
    response = await client.post("/api/login/2fa/webauthn", json={})
    assert response.status_code == 200, await text(response)
    return await response.get_json()


async def second_step(client, credential):
    return await client.post("/api/login/2fa/webauthn", json={"credential": credential})


def pending_failures(database, uid: int) -> list[int]:
    return [failures for (failures,) in db_rows(database, "SELECT failures FROM mfa_pending WHERE user_id = ?", uid)]


# -- adding a passkey -----------------------------------------------------------------------------------


async def test_registration_options_ask_for_a_verified_discoverable_passkey_and_exclude_the_accounts_own(
    app, client, database
):
    await register_api(client)
    options = await creation_options(client)
    assert options["rp"]["id"] == "localhost"
    selection = options["authenticatorSelection"]
    assert selection["userVerification"] == "required"
    assert selection["residentKey"] == "preferred"
    assert options["excludeCredentials"] == []
    assert {"type": "public-key", "alg": -7} in options["pubKeyCredParams"]  # ES256
    assert options["timeout"] == 300_000
    assert options["user"]["name"] == "alice"
    # The user handle: 32 opaque bytes, nothing of the account in them.
    handle = b64url_decode(options["user"]["id"])
    assert len(handle) == 32 and b"alice" not in handle and handle != str(user_id(database, "alice")).encode()
    # The challenge: 32 random bytes, kept server-side as its SHA-256 only, for 5 minutes.
    challenge = b64url_decode(options["challenge"])
    assert len(challenge) == 32
    [(digest, purpose, uid)] = db_rows(database, "SELECT digest, purpose, user_id FROM webauthn_challenges")
    assert digest == hashlib.sha256(challenge).hexdigest()
    assert (purpose, uid) == ("register", user_id(database, "alice"))
    assert options["challenge"] not in str(db_rows(database, "SELECT * FROM webauthn_challenges"))

    first = SoftAuthenticator(origin=ORIGIN)
    response = await verify_registration(client, first.create(options), name="Laptop")
    assert response.status_code == 201, await text(response)
    second = await creation_options(client)
    assert [listed["id"] for listed in second["excludeCredentials"]] == [first.credentials[0].id_b64]
    assert second["user"]["id"] == options["user"]["id"]  # the same handle for the same account
    assert second["challenge"] != options["challenge"]
    # A browser whose authenticator holds it refuses to make a second one (InvalidStateError).
    with pytest.raises(ExcludedCredential):
        first.create(second)
    # Another authenticator adds another: both are listed next time.
    other = SoftAuthenticator(origin=ORIGIN)
    assert (await verify_registration(client, other.create(second))).status_code == 201
    third = await creation_options(client)
    assert [listed["id"] for listed in third["excludeCredentials"]] == [
        first.credentials[0].id_b64,
        other.credentials[0].id_b64,
    ]


async def test_adding_a_passkey_stores_it_mails_a_notice_revokes_the_others_and_steps_this_session_up(
    make_app, smtp_server, database
):
    app = make_app(**mail_settings(smtp_server, PUBLIC_URL=ORIGIN))
    async with app.test_app():
        client = app.test_client()
        await register_api(client)
        other = await second_session(app)
        before = auth_cookie(client)
        assert (await current_session(client))["amr"] == ["pwd"]

        authenticator = SoftAuthenticator(origin=ORIGIN)
        options = await creation_options(client)
        response = await verify_registration(client, authenticator.create(options), name="  My laptop  ")
        assert response.status_code == 201, await text(response)
        added = await response.get_json()
        assert set(added) == {"id", "name", "created_at"}
        assert added["name"] == "My laptop"
        assert added["created_at"].endswith("Z")

        [row] = passkey_rows(database)
        stored = authenticator.credentials[0]
        assert row[:4] == (added["id"], user_id(database, "alice"), "webauthn", "My laptop")
        assert bytes(row[4]) == stored.id
        assert bytes(row[5]) == stored.public_key_cose
        assert row[6] == 0 and row[7] is None

        # Every other session is revoked; this one goes on with a new secret, at AAL 2.
        assert (await client_with_cookie(app, other).get("/api/me")).status_code == 401
        assert (await client_with_cookie(app, before).get("/api/me")).status_code == 401
        assert auth_cookie(client) != before
        assert (await client.get("/api/me")).status_code == 200
        current = await current_session(client)
        assert (current["amr"], current["aal"]) == (["pwd", "webauthn"], 2)

        received = await smtp_server.wait_for(2)  # the registration's verification link, then the notice
        [notice] = [m for m in received if "passkey was added" in m.message["Subject"]]
        assert notice.rcpt_tos == ["alice@example.com"]
        assert "My laptop" in notice.text and "Every other session" in notice.text
        assert stored.id_b64 not in notice.text and stored.id_b64 not in notice.html

        # Removing it: 204, a notice of its own, the other sessions revoked again.
        third = await another_session(app, database, amr=("webauthn",))
        deleted = await client.delete(f"/api/webauthn/credentials/{added['id']}")
        assert deleted.status_code == 204, await text(deleted)
        assert passkey_rows(database) == []
        assert (await client_with_cookie(app, third).get("/api/me")).status_code == 401
        assert (await client.get("/api/me")).status_code == 200
        received = await smtp_server.wait_for(3)
        [removed] = [m for m in received if "passkey was removed" in m.message["Subject"]]
        assert removed.rcpt_tos == ["alice@example.com"] and "My laptop" in removed.text
    assert events(database).count("passkey_added") == 1
    assert events(database).count("passkey_removed") == 1


async def test_a_default_name_is_given_when_none_is_sent(app, client):
    await register_api(client)
    assert (await add_passkey(client, SoftAuthenticator(origin=ORIGIN)))["name"] == "Passkey 1"
    assert (await add_passkey(client, SoftAuthenticator(origin=ORIGIN), name="   "))["name"] == "Passkey 2"


REGISTRATION_FORGERIES = {
    "wrong origin": lambda ctx, options: ctx.fresh.create(options, origin=EVIL_ORIGIN),
    "origin with another port": lambda ctx, options: ctx.fresh.create(options, origin="http://localhost:8080"),
    "wrong RP ID": lambda ctx, options: ctx.fresh.create(options, rp_id=EVIL_RP_ID),
    "no user verification": lambda ctx, options: ctx.fresh.create(options, uv=False),
    "a challenge never issued": lambda ctx, options: ctx.fresh.create(options, challenge=os.urandom(32)),
    "already registered": lambda ctx, options: with_credential_id(ctx.fresh.create(options), ctx.first_id),
}


@pytest.mark.parametrize("forgery", sorted(REGISTRATION_FORGERIES))
async def test_a_forged_registration_is_400_and_stores_nothing(app, database, forgery):
    alice = await passkey_account(app)
    ctx = SimpleNamespace(
        app=app, fresh=SoftAuthenticator(origin=ORIGIN), first_id=alice.authenticator.credentials[0].id
    )
    before, logged = passkey_rows(database), events(database)
    options = await creation_options(alice.client)
    response = await verify_registration(alice.client, REGISTRATION_FORGERIES[forgery](ctx, options))
    assert response.status_code == 400, (forgery, await text(response))
    assert passkey_rows(database) == before
    assert events(database) == logged
    assert (await current_session(alice.client))["amr"] == ["pwd", "webauthn"]


async def test_an_expired_challenge_is_400(app, database):
    alice = await passkey_account(app)
    before = passkey_rows(database)
    options = await creation_options(alice.client)
    expire_challenges(database)
    response = await verify_registration(alice.client, SoftAuthenticator(origin=ORIGIN).create(options))
    assert response.status_code == 400, await text(response)
    assert passkey_rows(database) == before
    # Within its 5 minutes it works.
    options = await creation_options(alice.client)
    db_write(database, "UPDATE webauthn_challenges SET expires_at = ?", ago(-5))
    assert (
        await verify_registration(alice.client, SoftAuthenticator(origin=ORIGIN).create(options))
    ).status_code == 201


async def test_another_accounts_challenge_is_400_and_stays_its_own(app, database):
    alice = await passkey_account(app)
    bob = app.test_client()
    await register_api(bob, "bob")
    before = passkey_rows(database)
    bobs_options = await creation_options(bob)
    response = await verify_registration(alice.client, SoftAuthenticator(origin=ORIGIN).create(bobs_options))
    assert response.status_code == 400, await text(response)
    assert passkey_rows(database) == before
    # Not used up by alice's attempt: bob's own answer to it is kept, as bob's.
    bobs = SoftAuthenticator(origin=ORIGIN)
    response = await verify_registration(bob, bobs.create(bobs_options))
    assert response.status_code == 201, await text(response)
    assert passkey_rows(database)[-1][1] == user_id(database, "bob")


async def test_a_sign_in_challenge_does_not_register(app, database):
    alice = await passkey_account(app)
    before = passkey_rows(database)
    options = await creation_options(alice.client)
    login = await request_options(app.test_client())
    answer = SoftAuthenticator(origin=ORIGIN).create(options, challenge=login["challenge"])
    assert (await verify_registration(alice.client, answer)).status_code == 400
    assert passkey_rows(database) == before


async def test_a_challenge_registers_once_and_a_refused_answer_uses_it_up(app, database):
    await register_api(client := app.test_client())
    options = await creation_options(client)
    authenticator = SoftAuthenticator(origin=ORIGIN)
    answer = authenticator.create(options)
    assert (await verify_registration(client, answer)).status_code == 201
    stored = passkey_rows(database)
    # The same answer again, and another credential on the same challenge: 400.
    again = await verify_registration(client, answer)
    assert again.status_code == 400, await text(again)
    assert (await verify_registration(client, SoftAuthenticator(origin=ORIGIN).create(options))).status_code == 400
    assert passkey_rows(database) == stored
    # A refused answer (another origin) uses its challenge up: the right answer to it comes too late.
    options = await creation_options(client)
    fresh = SoftAuthenticator(origin=ORIGIN)
    assert (await verify_registration(client, fresh.create(options, origin=EVIL_ORIGIN))).status_code == 400
    assert (await verify_registration(client, fresh.create(options))).status_code == 400
    assert passkey_rows(database) == stored
    assert db_rows(database, "SELECT count(*) FROM webauthn_challenges") == [(0,)]


async def test_a_challenge_refused_as_already_registered_is_used_up(app, database):
    alice = await passkey_account(app)
    options = await creation_options(alice.client)
    fresh = SoftAuthenticator(origin=ORIGIN)
    duplicate = with_credential_id(fresh.create(options), alice.authenticator.credentials[0].id)
    refused = await verify_registration(alice.client, duplicate)
    assert refused.status_code == 400
    assert (await refused.get_json())["error"] == passkeys.ALREADY_REGISTERED
    assert db_rows(database, "SELECT count(*) FROM webauthn_challenges") == [(0,)]
    again = await verify_registration(alice.client, SoftAuthenticator(origin=ORIGIN).create(options))
    assert again.status_code == 400


async def test_malformed_registration_bodies_are_400_and_use_nothing_up(app, database):
    await register_api(client := app.test_client())
    options = await creation_options(client)
    answer = SoftAuthenticator(origin=ORIGIN).create(options)
    bodies = [
        {},
        {"credential": None},
        {"credential": "not an object"},
        {"credential": [answer]},
        {"credential": {}},
        {"credential": {**answer, "response": "x"}},
        {"credential": {key: value for key, value in answer.items() if key != "rawId"}},
        {"credential": answer, "name": "x" * (passkeys.NAME_MAX + 1)},
        {"credential": answer, "name": "line\nbreak"},
        {"credential": answer, "name": "nul\x00"},
        {"credential": answer, "name": "del\x7f"},
        {"credential": answer, "name": 42},
    ]
    for body in bodies:
        response = await client.post("/api/webauthn/register/verify", json=body)
        assert response.status_code == 400, (body, await text(response))
    assert (await client.post("/api/webauthn/register/verify", data="{", headers=JSON)).status_code == 400
    assert passkey_rows(database) == []
    # Nothing was used up: the same answer, with a name of the longest length, is kept.
    response = await verify_registration(client, answer, name="é" * passkeys.NAME_MAX)
    assert response.status_code == 201, await text(response)


async def test_an_account_with_a_second_factor_adds_one_only_from_a_session_at_aal_2(app, database):
    client = app.test_client()
    await register_api(client)
    await api_enrol(client)
    password_only = client_with_cookie(app, await another_session(app, database, amr=("pwd",)))
    response = await password_only.post("/api/webauthn/register/options")
    assert response.status_code == 401
    assert await response.get_json() == {"error": STEP_UP}
    # Options from the session at AAL 2 do not help the session at AAL 1 either.
    options = await creation_options(client)
    response = await verify_registration(password_only, SoftAuthenticator(origin=ORIGIN).create(options))
    assert response.status_code == 401
    assert [kind for (_, _, kind, *_rest) in passkey_rows(database)] == ["totp"]
    assert (await verify_registration(client, SoftAuthenticator(origin=ORIGIN).create(options))).status_code == 201


# -- signing in without a password ---------------------------------------------------------------------------


async def test_a_passkey_signs_in_without_any_username_at_aal_2(app, database):
    alice = await passkey_account(app)
    browser = app.test_client()
    options = await request_options(browser)
    assert options["allowCredentials"] == [] and options["userVerification"] == "required"
    assert options["rpId"] == "localhost"
    response = await sign_in(browser, alice.authenticator.get(options))
    assert response.status_code == 200, await text(response)
    assert await response.get_json() == {
        "id": user_id(database, "alice"),
        "username": "alice",
        "email": "alice@example.com",
    }
    assert auth_cookie(browser) is not None
    current = await current_session(browser)
    assert (current["amr"], current["aal"]) == (["webauthn"], 2)
    # Two factors: a sensitive action is allowed at once.
    assert (await browser.post("/api/webauthn/register/options")).status_code == 200
    # The counter moved forward and the use is recorded.
    [row] = passkey_rows(database)
    assert row[6] == 1 and row[7] is not None
    assert events(database)[-2:] == ["passkey_used", "login"]


async def test_remember_me_gives_a_lasting_cookie_and_must_be_a_boolean(app):
    alice = await passkey_account(app)
    browser = app.test_client()

    def auth_set_cookie(response) -> str:
        (header,) = [h for h in response.headers.getlist("Set-Cookie") if h.startswith("quart_app_auth=")]
        return header

    response = await sign_in(browser, alice.authenticator.get(await request_options(browser)))
    assert response.status_code == 200
    assert "Max-Age=" not in auth_set_cookie(response)  # a browser session's cookie
    response = await sign_in(browser, alice.authenticator.get(await request_options(browser)), remember=True)
    assert response.status_code == 200
    assert "Max-Age=" in auth_set_cookie(response)
    response = await sign_in(browser, alice.authenticator.get(await request_options(browser)), remember="yes")
    assert response.status_code == 400


async def test_an_authenticator_without_a_counter_signs_in_each_time(app, database):
    alice = await passkey_account(app)
    for _ in range(2):
        browser = app.test_client()
        response = await sign_in(browser, alice.authenticator.get(await request_options(browser), counter=0))
        assert response.status_code == 200, await text(response)
    assert passkey_rows(database)[0][6] == 0


SIGN_IN_FORGERIES = {
    "unknown credential": lambda ctx, options: unregistered_authenticator().get(options),
    "wrong origin": lambda ctx, options: ctx.authenticator.get(options, origin=EVIL_ORIGIN),
    "wrong RP ID": lambda ctx, options: ctx.authenticator.get(options, rp_id=EVIL_RP_ID),
    "no user verification": lambda ctx, options: ctx.authenticator.get(options, uv=False),
    "a challenge never issued": lambda ctx, options: ctx.authenticator.get(options, challenge=os.urandom(32)),
    "a registration challenge": lambda ctx, options: ctx.authenticator.get(options, challenge=ctx.register_challenge),
    "bad signature": lambda ctx, options: bad_signature(ctx.authenticator.get(options)),
    "another user handle": lambda ctx, options: {
        **(answer := ctx.authenticator.get(options)),
        "response": {**answer["response"], "userHandle": b64url_encode(os.urandom(32))},
    },
}


@pytest.mark.parametrize("forgery", sorted(SIGN_IN_FORGERIES))
async def test_a_forged_sign_in_is_401_and_logs_nobody_in(app, database, forgery):
    alice = await passkey_account(app)
    register_challenge = (await creation_options(alice.client))["challenge"]
    ctx = SimpleNamespace(authenticator=alice.authenticator, register_challenge=register_challenge)
    browser = app.test_client()
    before, sessions = passkey_rows(database), session_count(database)
    response = await sign_in(browser, SIGN_IN_FORGERIES[forgery](ctx, await request_options(browser)))
    assert response.status_code == 401, (forgery, await text(response))
    assert await response.get_json() == {"error": passkeys.SIGN_IN_REFUSED}
    assert auth_cookie(browser) is None
    assert (await browser.get("/api/me")).status_code == 401
    assert session_count(database) == sessions
    assert passkey_rows(database) == before  # neither the counter nor last_used_at moved
    assert "passkey_used" not in events(database)
    # The passkey itself still signs in.
    assert (await sign_in(browser, alice.authenticator.get(await request_options(browser)))).status_code == 200


async def test_an_expired_sign_in_challenge_is_401(app, database):
    alice = await passkey_account(app)
    browser = app.test_client()
    options = await request_options(browser)
    expire_challenges(database)
    assert (await sign_in(browser, alice.authenticator.get(options))).status_code == 401
    assert auth_cookie(browser) is None


async def test_a_sign_in_answer_works_once(app, database):
    alice = await passkey_account(app)
    browser = app.test_client()
    options = await request_options(browser)
    answer = alice.authenticator.get(options)
    assert (await sign_in(browser, answer)).status_code == 200
    sessions = session_count(database)
    elsewhere = app.test_client()
    assert (await sign_in(elsewhere, answer)).status_code == 401  # replayed as it was
    # A new signature (its counter ahead) on the used challenge: 401 too.
    assert (await sign_in(elsewhere, alice.authenticator.get(options))).status_code == 401
    assert auth_cookie(elsewhere) is None
    assert session_count(database) == sessions
    assert passkey_rows(database)[0][6] == 1


async def test_a_cloned_authenticators_counter_going_back_is_401_and_audited(app, database):
    alice = await passkey_account(app)
    clone = alice.authenticator.clone()
    browser = app.test_client()
    assert (await sign_in(browser, alice.authenticator.get(await request_options(browser)))).status_code == 200
    copied = app.test_client()
    response = await sign_in(copied, clone.get(await request_options(copied)))  # counter 1 again
    assert response.status_code == 401
    assert await response.get_json() == {"error": passkeys.COUNTER_WENT_BACK}
    assert auth_cookie(copied) is None
    [(uid, detail)] = db_rows(
        database, "SELECT user_id, detail FROM auth_events WHERE event = 'passkey_counter_regression'"
    )
    assert uid == user_id(database, "alice")
    assert "counter 1 after 1" in detail
    # A counter of 0 after a counted one is a regression too; the stored count did not move.
    response = await sign_in(copied, alice.authenticator.get(await request_options(copied), counter=0))
    assert response.status_code == 401
    assert events(database).count("passkey_counter_regression") == 2
    assert passkey_rows(database)[0][6] == 1
    # A counter ahead of the stored one goes on.
    assert (await sign_in(copied, alice.authenticator.get(await request_options(copied), counter=2))).status_code == 200


async def test_an_unsigned_assertion_is_not_taken_for_a_counter_regression(app, database):
    alice = await passkey_account(app)
    browser = app.test_client()
    assert (await sign_in(browser, alice.authenticator.get(await request_options(browser)))).status_code == 200
    attacker = app.test_client()
    forged = bad_signature(alice.authenticator.get(await request_options(attacker), counter=0))
    response = await sign_in(attacker, forged)
    assert response.status_code == 401
    assert await response.get_json() == {"error": passkeys.SIGN_IN_REFUSED}
    assert "passkey_counter_regression" not in events(database)


async def test_an_inactive_account_does_not_sign_in(app, database):
    alice = await passkey_account(app)
    db_write(database, "UPDATE users SET is_active = ? WHERE username = ?", False, "alice")
    browser = app.test_client()
    response = await sign_in(browser, alice.authenticator.get(await request_options(browser)))
    assert response.status_code == 401
    assert await response.get_json() == {"error": passkeys.SIGN_IN_REFUSED}
    assert auth_cookie(browser) is None
    db_write(database, "UPDATE users SET is_active = ? WHERE username = ?", True, "alice")
    assert (await sign_in(browser, alice.authenticator.get(await request_options(browser)))).status_code == 200


async def test_failed_sign_ins_are_throttled_per_client(make_app, database):
    app = make_app(TOKEN_RATE_LIMIT="3/minute")
    async with app.test_app():
        alice = await passkey_account(app)
        browser = app.test_client()
        # Malformed bodies are 400 and count for nothing.
        for body in ({}, {"credential": "x"}, {"credential": {}}):
            assert (await browser.post("/api/webauthn/login/verify", json=body)).status_code == 400
        for _ in range(3):
            forged = alice.authenticator.get(await request_options(browser), origin=EVIL_ORIGIN)
            assert (await sign_in(browser, forged)).status_code == 401
        stranger = unregistered_authenticator()
        refused = await sign_in(browser, stranger.get(await request_options(browser)))
        assert refused.status_code == 429, await text(refused)
        assert int(refused.headers["Retry-After"]) >= 1
        # Even the right passkey waits, from this client.
        right = await sign_in(browser, alice.authenticator.get(await request_options(browser)))
        assert right.status_code == 429
        assert int(right.headers["Retry-After"]) >= 1
        assert auth_cookie(browser) is None
    assert passkey_rows(database)[0][6] == 0 and "passkey_used" not in events(database)


async def test_the_sign_in_options_tell_nothing_about_accounts(app, database):
    nobody_yet = await request_options(app.test_client())
    alice = await passkey_account(app)
    bob = await passkey_account(app, "bob")
    pending_client, _ = await start_pending_login(app, "alice")
    answers = [
        nobody_yet,
        await request_options(app.test_client()),
        await request_options(alice.client),
        await request_options(bob.client),
        await request_options(pending_client),
    ]
    for answer in answers:
        assert set(answer) == set(nobody_yet)
        assert answer["allowCredentials"] == []
        assert {key: value for key, value in answer.items() if key != "challenge"} == {
            key: value for key, value in nobody_yet.items() if key != "challenge"
        }
        assert "user" not in answer
        assert len(b64url_decode(answer["challenge"])) == 32
    assert len({answer["challenge"] for answer in answers}) == len(answers)
    purposes = db_rows(database, "SELECT purpose, user_id FROM webauthn_challenges WHERE purpose = 'login'")
    assert purposes and all(uid is None for _, uid in purposes)


# -- the second step of a pending login ---------------------------------------------------------------------


async def test_a_pending_login_is_finished_with_a_passkey_at_aal_2(app, database):
    alice = await passkey_account(app)
    other, answer = await start_pending_login(app)
    assert answer == {"mfa_required": True, "methods": ["webauthn"]}
    options = await second_step_options(other)
    assert [listed["id"] for listed in options["allowCredentials"]] == [alice.authenticator.credentials[0].id_b64]
    assert options["userVerification"] == "required" and options["rpId"] == "localhost"
    response = await second_step(other, alice.authenticator.get(options))
    assert response.status_code == 200, await text(response)
    assert await response.get_json() == {
        "id": user_id(database, "alice"),
        "username": "alice",
        "email": "alice@example.com",
        "recovery_codes_left": None,
    }
    current = await current_session(other)
    assert (current["amr"], current["aal"]) == (["pwd", "webauthn"], 2)
    assert db_rows(database, "SELECT count(*) FROM mfa_pending") == [(0,)]
    assert not any(cookie.name == MFA_COOKIE for cookie in other.cookie_jar)  # the pending login's cookie cleared
    # Finished: neither its options nor another answer work again.
    assert (await other.post("/api/login/2fa/webauthn", json={})).status_code == 401
    assert passkey_rows(database)[0][6] == 1


async def test_an_account_with_an_app_and_a_passkey_is_offered_both(app, database):
    alice = await passkey_account(app)
    _secret, codes = await api_enrol(alice.client)
    other, answer = await start_pending_login(app)
    assert answer["methods"] == ["totp", "webauthn", "recovery_code"]
    response = await second_step(other, alice.authenticator.get(await second_step_options(other)))
    assert response.status_code == 200, await text(response)
    assert (await response.get_json())["recovery_codes_left"] is None
    assert (await current_session(other))["amr"] == ["pwd", "webauthn"]
    unused = db_rows(database, "SELECT count(*) FROM recovery_codes WHERE used_at IS NULL")
    assert unused == [(len(codes),)]


async def test_refused_passkeys_count_toward_the_pending_login_and_five_end_it(app, database):
    alice = await passkey_account(app)
    uid = user_id(database, "alice")
    other, _ = await start_pending_login(app)
    clone = alice.authenticator.clone()
    # The clone's counter goes back only once the original has signed: one right second step first.
    first, _ = await start_pending_login(app)
    assert (await second_step(first, alice.authenticator.get(await second_step_options(first)))).status_code == 200
    sign_in_challenge = (await request_options(app.test_client()))["challenge"]
    refusals = [
        lambda options: alice.authenticator.get(options, origin=EVIL_ORIGIN),
        lambda options: alice.authenticator.get(options, uv=False),
        lambda options: alice.authenticator.get(options, challenge=sign_in_challenge),
        lambda options: clone.get(options),
        lambda options: bad_signature(alice.authenticator.get(options)),
    ]
    assert len(refusals) == pending.MAX_FAILURES
    for n, refusal in enumerate(refusals, 1):
        response = await second_step(other, refusal(await second_step_options(other)))
        assert response.status_code == 401, (n, await text(response))
        assert auth_cookie(other) is None
        if n < pending.MAX_FAILURES:
            assert await response.get_json() == {"error": pending.PASSKEY_REFUSED}
            assert pending_failures(database, uid) == [n]
        else:
            assert await response.get_json() == {"error": pending.TOO_MANY_WRONG}
    assert pending_failures(database, uid) == []
    assert "passkey_counter_regression" in events(database)
    failed = db_rows(database, "SELECT detail FROM auth_events WHERE event = 'mfa_login_failed' ORDER BY id")
    assert len(failed) == pending.MAX_FAILURES and all("passkey refused" in detail for (detail,) in failed)
    assert "pending login ended" in failed[-1][0]
    # Ended: the right passkey finds no pending login.
    late = await other.post("/api/login/2fa/webauthn", json={})
    assert late.status_code == 401 and await late.get_json() == {"error": pending.NO_PENDING}


async def test_without_a_pending_login_the_second_step_is_401(app, database):
    alice = await passkey_account(app)
    stranger = app.test_client()
    assert (await stranger.post("/api/login/2fa/webauthn", json={})).status_code == 401
    answer = alice.authenticator.get(await request_options(stranger))
    response = await second_step(stranger, answer)
    assert response.status_code == 401 and await response.get_json() == {"error": pending.NO_PENDING}
    assert auth_cookie(stranger) is None
    # An expired pending login: the same.
    other, _ = await start_pending_login(app)
    options = await second_step_options(other)
    db_write(database, "UPDATE mfa_pending SET expires_at = ?", ago(1))
    assert (await other.post("/api/login/2fa/webauthn", json={})).status_code == 401
    response = await second_step(other, alice.authenticator.get(options))
    assert response.status_code == 401 and auth_cookie(other) is None
    # A malformed credential is a 400 before anything else.
    other, _ = await start_pending_login(app)
    assert (await other.post("/api/login/2fa/webauthn", json={"credential": "x"})).status_code == 400
    assert pending_failures(database, user_id(database, "alice"))[-1] == 0


async def test_another_accounts_passkey_does_not_finish_this_pending_login(app, database):
    alice = await passkey_account(app)
    bob = await passkey_account(app, "bob")
    other, _ = await start_pending_login(app, "alice")
    options = await second_step_options(other)
    # Bob's passkey signs alice's challenge (a browser would not offer it: allowCredentials lists alice's).
    answer = bob.authenticator.get({**options, "allowCredentials": []})
    response = await second_step(other, answer)
    assert response.status_code == 401, await text(response)
    assert auth_cookie(other) is None
    assert pending_failures(database, user_id(database, "alice")) == [1]
    # Bob's passkey did not get used, and alice's own still finishes it.
    assert [row[6] for row in passkey_rows(database)] == [0, 0]
    response = await second_step(other, alice.authenticator.get(await second_step_options(other)))
    assert response.status_code == 200 and (await response.get_json())["username"] == "alice"
    assert (await current_session(other))["amr"] == ["pwd", "webauthn"]


# -- the account's list, and removing one -----------------------------------------------------------------


async def test_the_list_gives_names_dates_and_last_use(app, database):
    alice = await passkey_account(app, name="Laptop")
    phone = SoftAuthenticator(origin=ORIGIN)
    second = await add_passkey(alice.client, phone)
    response = await alice.client.get("/api/webauthn/credentials")
    assert response.status_code == 200
    listed = await response.get_json()
    assert [entry["name"] for entry in listed] == ["Laptop", "Passkey 2"]
    assert [entry["id"] for entry in listed] == [alice.passkey_id, second["id"]]
    for entry in listed:
        assert set(entry) == {"id", "name", "created_at", "last_used_at"}
        assert entry["created_at"].endswith("Z") and entry["last_used_at"] is None
    browser = app.test_client()
    assert (await sign_in(browser, phone.get(await request_options(browser)))).status_code == 200
    listed = await (await alice.client.get("/api/webauthn/credentials")).get_json()
    assert listed[0]["last_used_at"] is None
    assert listed[1]["last_used_at"] is not None and listed[1]["last_used_at"] >= listed[1]["created_at"]
    # Bob sees only his own.
    bob = await passkey_account(app, "bob")
    assert [entry["name"] for entry in await (await bob.client.get("/api/webauthn/credentials")).get_json()] == [
        "Passkey 1"
    ]


async def test_a_removed_passkey_no_longer_signs_in_and_anothers_or_none_is_404(app, database):
    alice = await passkey_account(app)
    spare = SoftAuthenticator(origin=ORIGIN)
    spare_id = (await add_passkey(alice.client, spare))["id"]
    bob = await passkey_account(app, "bob")
    for missing in (bob.passkey_id, 999_999):
        response = await alice.client.delete(f"/api/webauthn/credentials/{missing}")
        assert response.status_code == 404, missing
    assert len(passkey_rows(database)) == 3
    assert (await alice.client.delete(f"/api/webauthn/credentials/{alice.passkey_id}")).status_code == 204
    listed = await (await alice.client.get("/api/webauthn/credentials")).get_json()
    assert [entry["id"] for entry in listed] == [spare_id]
    assert (await alice.client.delete(f"/api/webauthn/credentials/{alice.passkey_id}")).status_code == 404
    browser = app.test_client()
    response = await sign_in(browser, alice.authenticator.get(await request_options(browser)))
    assert response.status_code == 401 and auth_cookie(browser) is None
    # Nor at a pending login's second step.
    other, _ = await start_pending_login(app)
    options = await second_step_options(other)
    assert (await second_step(other, alice.authenticator.get({**options, "allowCredentials": []}))).status_code == 401
    # The other passkeys are untouched.
    assert (await sign_in(browser, spare.get(await request_options(browser)))).status_code == 200
    assert (await sign_in(app.test_client(), bob.authenticator.get(await request_options(browser)))).status_code == 200
    # An id that is no number: 404 as well.
    assert (await alice.client.delete("/api/webauthn/credentials/abc")).status_code == 404


async def test_with_mfa_required_the_last_factor_stays(make_app, database):
    app = make_app(MFA_REQUIRED=True)
    async with app.test_app():
        client = app.test_client()
        await register_api(client)
        first = SoftAuthenticator(origin=ORIGIN)
        added = await add_passkey(client, first)  # allowed before any factor: the way to get one
        response = await client.delete(f"/api/webauthn/credentials/{added['id']}")
        assert response.status_code == 409, await text(response)
        assert await response.get_json() == {"error": passkeys.LAST_FACTOR}
        assert len(passkey_rows(database)) == 1
        second = await add_passkey(client, SoftAuthenticator(origin=ORIGIN))
        assert (await client.delete(f"/api/webauthn/credentials/{added['id']}")).status_code == 204
        assert (await client.delete(f"/api/webauthn/credentials/{second['id']}")).status_code == 409
        assert [row[0] for row in passkey_rows(database)] == [second["id"]]


async def test_a_stale_session_is_401_for_each_account_route(app, database):
    alice = await passkey_account(app)
    options = await creation_options(alice.client)
    before = passkey_rows(database)
    age_sessions(database)
    assert (await alice.client.post("/api/webauthn/register/options")).status_code == 401
    answer = SoftAuthenticator(origin=ORIGIN).create(options)
    assert (await verify_registration(alice.client, answer)).status_code == 401
    assert (await alice.client.get("/api/webauthn/credentials")).status_code == 401
    assert (await alice.client.delete(f"/api/webauthn/credentials/{alice.passkey_id}")).status_code == 401
    assert passkey_rows(database) == before
    # Anonymous: 401 on each.
    anonymous = app.test_client()
    assert (await anonymous.post("/api/webauthn/register/options")).status_code == 401
    assert (await verify_registration(anonymous, answer)).status_code == 401
    assert (await anonymous.get("/api/webauthn/credentials")).status_code == 401
    assert (await anonymous.delete(f"/api/webauthn/credentials/{alice.passkey_id}")).status_code == 401
    assert passkey_rows(database) == before
    # A passkey sign-in is a fresh factor again.
    browser = app.test_client()
    assert (await sign_in(browser, alice.authenticator.get(await request_options(browser)))).status_code == 200
    assert (await browser.get("/api/webauthn/credentials")).status_code == 200


# -- audit rows and signals ---------------------------------------------------------------------------------


async def test_each_passkey_event_is_an_audit_row_and_a_signal(app, database):
    from quart_app.auth import events as signals

    names = {
        "passkey_added": signals.passkey_added,
        "passkey_used": signals.passkey_used,
        "passkey_removed": signals.passkey_removed,
        "passkey_counter_regression": signals.passkey_counter_regression,
    }
    received: list[tuple[str, str | None, str | None]] = []
    receivers = {}
    for name, signal in names.items():
        receivers[name] = lambda sender, name=name, user=None, detail=None, **extra: received.append(
            (name, getattr(user, "username", None), detail)
        )
        signal.connect(receivers[name], weak=False)
    try:
        alice = await passkey_account(app)
        clone = alice.authenticator.clone()
        browser = app.test_client()
        assert (await sign_in(browser, alice.authenticator.get(await request_options(browser)))).status_code == 200
        other, _ = await start_pending_login(app)
        options = await second_step_options(other)
        assert (await second_step(other, alice.authenticator.get(options))).status_code == 200
        copied = app.test_client()
        assert (await sign_in(copied, clone.get(await request_options(copied)))).status_code == 401
        assert (await alice.client.delete(f"/api/webauthn/credentials/{alice.passkey_id}")).status_code == 204
    finally:
        for name, signal in names.items():
            signal.disconnect(receivers[name])
    assert [(name, username) for name, username, _ in received] == [
        ("passkey_added", "alice"),
        ("passkey_used", "alice"),
        ("passkey_used", "alice"),
        ("passkey_counter_regression", "alice"),
        ("passkey_removed", "alice"),
    ]
    assert "without a password" in received[1][2] and "second factor" in received[2][2]
    uid = user_id(database, "alice")
    rows = db_rows(database, "SELECT event, user_id FROM auth_events WHERE event LIKE 'passkey%' ORDER BY id")
    assert rows == [
        ("passkey_added", uid),
        ("passkey_used", uid),
        ("passkey_used", uid),
        ("passkey_counter_regression", uid),
        ("passkey_removed", uid),
    ]


# -- what is kept, and what is shown ------------------------------------------------------------------------


def encodings(data: bytes) -> list[str]:
    return [b64url_encode(data), base64.b64encode(data).decode(), data.hex(), data.hex().upper()]


async def test_the_database_holds_no_private_key_and_the_api_shows_no_credential(app, database):
    alice = await passkey_account(app, name="Laptop")
    spare = SoftAuthenticator(origin=ORIGIN)
    shown = [
        await (await verify_registration(alice.client, spare.create(await creation_options(alice.client)))).get_data()
    ]
    browser = app.test_client()
    login = await sign_in(browser, alice.authenticator.get(await request_options(browser)))
    shown.append(await login.get_data())
    other, _ = await start_pending_login(app)
    shown.append(await (await second_step(other, spare.get(await second_step_options(other)))).get_data())
    for client in (alice.client, browser, other):
        for path in ("/api/webauthn/credentials", "/api/sessions", "/api/me"):
            response = await client.get(path)
            assert response.status_code == 200, path
            shown.append(await response.get_data())
    shown.append(await (await app.test_client().post("/api/webauthn/login/options", json={})).get_data())
    shown_text = b"\n".join(shown).decode()

    credentials = alice.authenticator.credentials + spare.credentials
    for credential in credentials:
        for form in encodings(credential.id) + encodings(credential.public_key_cose):
            assert form not in shown_text, form

    tables = [
        name
        for (name,) in db_rows(
            database,
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            if database.is_sqlite
            else "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()",
        )
    ]
    stored = b""
    for table in tables:
        for row in db_rows(database, f"SELECT * FROM {table}"):
            for value in row:
                stored += (bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()) + b"\0"
    keys = db_rows(database, "SELECT credential_id, public_key FROM user_factors ORDER BY id")
    assert [(bytes(cid), bytes(key)) for cid, key in keys] == [(c.id, c.public_key_cose) for c in credentials]
    for credential in credentials:
        private = credential.private_key
        secret = private.private_numbers().private_value.to_bytes(32, "big")
        der = private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        forms = [secret, der, *(form.encode() for form in encodings(secret))]
        for form in forms:
            assert form not in stored
        if database.is_sqlite:  # the file and its write-ahead log, as copied
            for path in (database.path, database.path.with_name(database.path.name + "-wal")):
                if path.exists():
                    assert secret not in path.read_bytes()
