"""The second factor's service (quart_app/auth/mfa.py) against the suite's real database: TOTP and recovery codes.

Codes are computed here with pyotp from the secret the setup gives, at times
the test chooses (the service's ``now``), so that the clock's edges are hit
exactly. Races run two sessions of their own at once.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import xml.etree.ElementTree as ET
from contextlib import asynccontextmanager
from urllib.parse import parse_qs, unquote, urlsplit

import pyotp
import pytest
from conftest import alembic, db_rows, register_api
from sqlalchemy import delete, select

from quart_app.auth import mfa
from quart_app.core.config import ConfigError, load_settings
from quart_app.core.crypto import CannotDecrypt, Cipher
from quart_app.db import get_database, get_db
from quart_app.mail.crypto import ContentCipher
from quart_app.models import User

# A moment in the middle of a step, well past any real clock (steps are 30 s).
T0 = 1_900_000_005.0
STEP = 30
CODE_RE = re.compile(r"[0-9a-hjkmnp-tv-z]{5}-[0-9a-hjkmnp-tv-z]{5}")
SVG = "{http://www.w3.org/2000/svg}"


def code_at(secret: str, now: float, offset: int = 0) -> str:
    """The code an authenticator app shows at ``now``, ``offset`` steps later (pyotp, as the app computes it)."""
    return pyotp.TOTP(secret).at(now, counter_offset=offset)


@asynccontextmanager
async def service(app):
    """The request's AsyncSession in an app context, committed at the end (rolled back on an exception)."""
    async with app.app_context():
        db = get_db()
        yield db
        await db.commit()


async def own_session(app, work):
    """``work(db)`` on a session of its own (not the request's), committed: for races."""
    async with get_database().get_sessionmaker()() as db:
        result = await work(db)
        await db.commit()
        return result


async def user_named(app, username: str = "alice") -> User:
    async with service(app) as db:
        return (await db.execute(select(User).where(User.username == username))).scalar_one()


async def new_user(app, username: str = "alice") -> User:
    response = await register_api(app.test_client(), username)
    assert response.status_code == 201, await response.get_data(as_text=True)
    return await user_named(app, username)


async def enrolled(app, username: str = "alice", now: float = T0) -> tuple[User, str, list[str]]:
    """A user with a confirmed authenticator app: (user, base32 secret, recovery codes)."""
    user = await new_user(app, username)
    async with service(app):
        secret, _uri = await mfa.begin_totp_setup(user, now=now)
    async with service(app):
        codes = await mfa.confirm_totp(user, code_at(secret, now), now=now)
    return user, secret, codes


async def verify(app, user, code, now) -> bool:
    async with service(app):
        return await mfa.verify_totp(user, code, now=now)


async def use_code(app, user, code) -> int | None:
    async with service(app):
        return await mfa.use_recovery_code(user, code)


async def left(app, user) -> int:
    async with service(app):
        return await mfa.recovery_codes_left(user)


# -- setup and confirmation ------------------------------------------------------------------


async def test_setup_gives_a_secret_and_its_otpauth_uri_and_is_not_yet_a_factor(make_app):
    app = make_app(MFA_ISSUER="Example Co")
    async with app.test_app():
        user = await new_user(app)
        async with service(app):
            secret, uri = await mfa.begin_totp_setup(user, now=T0)
        assert re.fullmatch(r"[A-Z2-7]{32}", secret)  # 160 bits of base32
        parts = urlsplit(uri)
        assert (parts.scheme, parts.netloc, unquote(parts.path)) == ("otpauth", "totp", "/Example Co:alice")
        query = parse_qs(parts.query)
        assert query["secret"] == [secret] and query["issuer"] == ["Example Co"]
        assert pyotp.parse_uri(uri).now() == pyotp.TOTP(secret).now()
        async with service(app):
            assert not await mfa.has_second_factor(user)
            assert await mfa.factors_of(user) == []
            assert await mfa.recovery_codes_left(user) == 0
            # A setup is not a factor: its code logs nobody in.
            assert not await mfa.verify_totp(user, code_at(secret, T0), now=T0)


async def test_a_right_code_confirms_and_gives_ten_recovery_codes_shown_once(app, database):
    user = await new_user(app)
    async with service(app):
        secret, _ = await mfa.begin_totp_setup(user, now=T0)
    async with service(app):
        codes = await mfa.confirm_totp(user, code_at(secret, T0), now=T0)
    assert len(codes) == len(set(codes)) == mfa.RECOVERY_CODE_COUNT == 10
    assert all(CODE_RE.fullmatch(code) for code in codes), codes
    async with service(app):
        assert await mfa.has_second_factor(user)
        [factor] = await mfa.factors_of(user)
        assert (factor.kind, factor.confirmed_at is not None, factor.last_step) == ("totp", True, int(T0 // STEP))
        assert await mfa.recovery_codes_left(user) == 10
        # The code that confirmed counts as used: it does not log in after.
        assert not await mfa.verify_totp(user, code_at(secret, T0), now=T0 + 1)
    assert db_rows(database, "SELECT count(*) FROM user_factors WHERE user_id = ?", user.id) == [(1,)]


@pytest.mark.parametrize("offset", [-2, 2, None])
async def test_a_wrong_code_does_not_confirm(app, offset):
    user = await new_user(app)
    async with service(app):
        secret, _ = await mfa.begin_totp_setup(user, now=T0)
    wrong = f"{(int(code_at(secret, T0)) + 1) % 10**6:06d}" if offset is None else code_at(secret, T0, offset)
    async with app.app_context():
        with pytest.raises(mfa.WrongCode) as raised:
            await mfa.confirm_totp(user, wrong, now=T0)
    assert raised.value.status == 400 and set(raised.value.fields) == {"code"}
    async with service(app):
        assert not await mfa.has_second_factor(user)
    # The setup is still there: the right code confirms it.
    async with service(app):
        assert len(await mfa.confirm_totp(user, code_at(secret, T0), now=T0)) == 10


async def test_a_new_setup_replaces_the_unconfirmed_one(app, database):
    user = await new_user(app)
    async with service(app):
        first, _ = await mfa.begin_totp_setup(user, now=T0)
    async with service(app):
        second, _ = await mfa.begin_totp_setup(user, now=T0)
    assert first != second
    assert db_rows(database, "SELECT count(*) FROM user_factors WHERE user_id = ?", user.id) == [(1,)]
    async with app.app_context():
        with pytest.raises(mfa.WrongCode):
            await mfa.confirm_totp(user, code_at(first, T0), now=T0)
    async with service(app):
        await mfa.confirm_totp(user, code_at(second, T0), now=T0)


async def test_confirm_without_a_setup_and_setup_while_on_are_refused(app):
    user = await new_user(app)
    async with app.app_context():
        with pytest.raises(mfa.NoSetupPending) as raised:
            await mfa.confirm_totp(user, "123456", now=T0)
    assert raised.value.status == 400
    async with service(app):
        secret, _ = await mfa.begin_totp_setup(user, now=T0)
    async with service(app):
        await mfa.confirm_totp(user, code_at(secret, T0), now=T0)
    async with app.app_context():
        with pytest.raises(mfa.NoSetupPending):  # confirmed already: nothing waits
            await mfa.confirm_totp(user, code_at(secret, T0 + STEP), now=T0 + STEP)
        with pytest.raises(mfa.AlreadyEnabled) as raised:
            await mfa.begin_totp_setup(user, now=T0)
    assert raised.value.status == 409


async def test_two_confirmations_racing_turn_it_on_once(app, database):
    """The same right code sent twice at once: one confirmation, one set of recovery codes."""
    user = await new_user(app)
    async with service(app):
        secret, _ = await mfa.begin_totp_setup(user, now=T0)
    code = code_at(secret, T0)

    async def confirm(db):
        try:
            return await mfa.confirm_totp(user, code, db=db, now=T0)
        except (mfa.AlreadyEnabled, mfa.NoSetupPending):
            return None

    async with app.app_context():
        results = await asyncio.gather(own_session(app, confirm), own_session(app, confirm))
    assert sorted(result is None for result in results) == [False, True]
    assert db_rows(database, "SELECT count(*) FROM recovery_codes WHERE user_id = ?", user.id) == [(10,)]
    assert db_rows(database, "SELECT count(*) FROM user_factors WHERE confirmed_at IS NOT NULL") == [(1,)]


# -- the clock ---------------------------------------------------------------------------------


@pytest.mark.parametrize("within", [0.0, 15.0, 29.999], ids=["step start", "mid step", "step end"])
async def test_the_previous_and_next_steps_are_accepted_and_two_off_refused(app, within):
    user, secret, _ = await enrolled(app)
    # Each case at a later step than the last: no earlier acceptance stands in its way.
    base = (int(T0 // STEP) + 10) * STEP
    for case, (offset, accepted) in enumerate([(-2, False), (2, False), (-1, True), (0, True), (1, True)]):
        now = base + case * 10 * STEP + within
        assert await verify(app, user, code_at(secret, now, offset), now) is accepted, (offset, within)


async def test_the_clock_function_is_the_default_time_source(app, monkeypatch):
    user, secret, _ = await enrolled(app)
    later = T0 + 100 * STEP
    monkeypatch.setattr(mfa, "clock", lambda: later)
    assert await verify(app, user, code_at(secret, later), None)
    assert not await verify(app, user, code_at(secret, later + 3 * STEP), None)


async def test_a_code_is_accepted_once_and_never_an_older_one_after_it(app, database):
    user, secret, _ = await enrolled(app)
    now = T0 + 10 * STEP
    code = code_at(secret, now)
    assert await verify(app, user, code, now)
    assert not await verify(app, user, code, now)  # replayed at once
    assert not await verify(app, user, code, now + 20)  # later within the step
    assert not await verify(app, user, code_at(secret, now, -1), now)  # the previous step, within the window
    assert db_rows(database, "SELECT last_step FROM user_factors WHERE user_id = ?", user.id) == [(int(now // STEP),)]
    assert await verify(app, user, code_at(secret, now + STEP), now + STEP)  # the next step's code


async def test_a_code_for_the_next_step_used_early_blocks_the_current_one(app):
    user, secret, _ = await enrolled(app)
    now = T0 + 10 * STEP
    assert await verify(app, user, code_at(secret, now, 1), now)
    assert not await verify(app, user, code_at(secret, now), now)
    assert await verify(app, user, code_at(secret, now + 2 * STEP), now + 2 * STEP)


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "١٢٣٤٥٦", None, 123456, "1" * 10_000])
async def test_malformed_codes_are_refused(app, code):
    user, _secret, _ = await enrolled(app)
    assert not await verify(app, user, code, T0 + 10 * STEP)


async def test_spaces_in_a_code_are_ignored(app):
    user, secret, _ = await enrolled(app)
    now = T0 + 10 * STEP
    code = code_at(secret, now)
    assert await verify(app, user, f" {code[:3]} {code[3:]} ", now)


async def test_two_verifications_racing_with_one_code_pass_at_most_once(app, monkeypatch):
    """Both read the factor before either writes: only the conditional UPDATE stands between them."""
    user, secret, _ = await enrolled(app)
    now = T0 + 10 * STEP
    code = code_at(secret, now)
    barrier = asyncio.Barrier(2)
    read_factors = mfa._totp_factors

    async def both_read_first(db, user_id, *, confirmed):
        found = await read_factors(db, user_id, confirmed=confirmed)
        await barrier.wait()
        return found

    monkeypatch.setattr(mfa, "_totp_factors", both_read_first)

    async def attempt(db):
        return await mfa.verify_totp(user, code, db=db, now=now)

    async with app.app_context():
        results = await asyncio.wait_for(asyncio.gather(own_session(app, attempt), own_session(app, attempt)), 30)
    assert sorted(results) == [False, True]


# -- recovery codes ----------------------------------------------------------------------------


async def test_each_recovery_code_works_once_and_says_how_many_are_left(app):
    user, _secret, codes = await enrolled(app)
    assert await use_code(app, user, codes[0]) == 9
    assert await use_code(app, user, codes[0]) is None
    assert await use_code(app, user, codes[1]) == 8
    assert await left(app, user) == 8


async def test_recovery_codes_are_read_in_any_case_with_or_without_dashes(app):
    user, _secret, codes = await enrolled(app)
    forms = [
        codes[0].upper(),
        codes[1].replace("-", ""),
        f"  {codes[2][:3]} {codes[2][3:].replace('-', ' ')} ",
        # o for 0, i and l for 1: what a reader may take them for.
        codes[3].replace("0", "O").replace("1", "l"),
    ]
    for count, form in enumerate(forms, start=1):
        assert await use_code(app, user, form) == 10 - count, form


@pytest.mark.parametrize("code", ["", "abcde-fghij", "uuuuu-uuuuu", None, 12345, "a" * 10_000])
async def test_malformed_or_unknown_recovery_codes_are_refused(app, code):
    user, _secret, _codes = await enrolled(app)
    assert await use_code(app, user, code) is None
    assert await left(app, user) == 10


async def test_a_recovery_code_is_only_its_own_users(app):
    alice, _, alice_codes = await enrolled(app, "alice")
    bob, _, _ = await enrolled(app, "bob")
    assert await use_code(app, bob, alice_codes[0]) is None
    assert await use_code(app, alice, alice_codes[0]) == 9


async def test_one_recovery_code_sent_twice_at_once_is_used_once(app):
    user, _secret, codes = await enrolled(app)

    async def attempt(db):
        return await mfa.use_recovery_code(user, codes[0], db=db)

    async with app.app_context():
        results = await asyncio.wait_for(asyncio.gather(*(own_session(app, attempt) for _ in range(2))), 30)
    assert sorted(results, key=str) == [9, None]
    assert await left(app, user) == 9


async def test_regenerating_replaces_every_code(app, database):
    user, _secret, old = await enrolled(app)
    assert await use_code(app, user, old[0]) == 9
    async with service(app):
        new = await mfa.regenerate_recovery_codes(user)
    assert len(new) == 10 and not set(new) & set(old)
    assert db_rows(database, "SELECT count(*) FROM recovery_codes WHERE user_id = ?", user.id) == [(10,)]
    for code in old:
        assert await use_code(app, user, code) is None
    assert await use_code(app, user, new[0]) == 9


async def test_no_recovery_codes_without_a_second_factor(app):
    user = await new_user(app)
    async with app.app_context():
        with pytest.raises(mfa.NoSecondFactor) as raised:
            await mfa.regenerate_recovery_codes(user)
    assert raised.value.status == 409


def test_recovery_codes_have_at_least_50_bits():
    assert len(mfa.RECOVERY_ALPHABET) == len(set(mfa.RECOVERY_ALPHABET)) == 32
    assert not set("ilou") & set(mfa.RECOVERY_ALPHABET)
    code = mfa.new_recovery_code()
    assert CODE_RE.fullmatch(code)
    assert len(code.replace("-", "")) * 5 >= 50
    assert len({mfa.new_recovery_code() for _ in range(1000)}) == 1000


# -- removal -----------------------------------------------------------------------------------


async def test_remove_all_factors_removes_factors_setups_and_codes(app, database):
    alice, secret, codes = await enrolled(app, "alice")
    bob, _, _ = await enrolled(app, "bob")
    async with service(app):
        assert await mfa.remove_all_factors(alice) == 1
    async with service(app):
        assert not await mfa.has_second_factor(alice) and await mfa.has_second_factor(bob)
        assert await mfa.factors_of(alice) == []
    for table in ("user_factors", "recovery_codes"):
        assert db_rows(database, f"SELECT count(*) FROM {table} WHERE user_id = ?", alice.id) == [(0,)]
        assert db_rows(database, f"SELECT count(*) FROM {table} WHERE user_id = ?", bob.id) != [(0,)]
    now = T0 + 10 * STEP
    assert not await verify(app, alice, code_at(secret, now), now)
    assert await use_code(app, alice, codes[0]) is None
    # And a new authenticator app can be set up.
    async with service(app):
        secret, _ = await mfa.begin_totp_setup(alice, now=now)
    async with service(app):
        assert len(await mfa.confirm_totp(alice, code_at(secret, now), now=now)) == 10


async def test_a_deleted_user_takes_its_factors_and_codes_along(app, database):
    user, _secret, _codes = await enrolled(app)
    async with service(app) as db:
        await db.execute(delete(User).where(User.id == user.id))
    for table in ("user_factors", "recovery_codes"):
        assert db_rows(database, f"SELECT count(*) FROM {table}") == [(0,)]


# -- at rest -----------------------------------------------------------------------------------


def stored_text(database, *tables: str) -> bytes:
    """Every value of every row of ``tables``, as bytes (text and binary alike)."""
    found = b""
    for table in tables:
        for row in db_rows(database, f"SELECT * FROM {table}"):
            for value in row:
                found += bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
                found += b"\0"
    return found


async def test_a_copy_of_the_database_gives_neither_the_secret_nor_a_code(app, database):
    user, secret, codes = await enrolled(app)
    assert await use_code(app, user, codes[0]) == 9
    forms = [secret, secret.lower(), *codes, *(code.replace("-", "") for code in codes)]
    stored = stored_text(database, "user_factors", "recovery_codes")
    for form in forms:
        assert form.encode() not in stored, form
    if database.is_sqlite:  # the whole file and its write-ahead log, as copied
        for path in (database.path, database.path.with_name(database.path.name + "-wal")):
            if path.exists():
                raw = path.read_bytes()
                assert not any(form.encode() in raw for form in forms)
    # What is stored is the secret under the MFA key, and nothing else opens it.
    [(token,)] = db_rows(database, "SELECT secret FROM user_factors")
    settings = app.extensions["quart_app.settings"]
    assert Cipher(settings.mfa_keys, mfa.INFO).decrypt(token).decode() == secret
    with pytest.raises(CannotDecrypt):
        Cipher([settings.SECRET_KEY], b"quart_app.mail.outbox").decrypt(token)
    with pytest.raises(CannotDecrypt):
        ContentCipher(settings.SECRET_KEY).decrypt(token)


async def test_rotating_the_mfa_key_keeps_secrets_and_codes_and_writes_them_again(make_app, database):
    old, new, other = (secrets.token_urlsafe(48) for _ in range(3))
    app = make_app(MFA_KEY=old)
    async with app.test_app():
        user, secret, codes = await enrolled(app)
    [(before,)] = db_rows(database, "SELECT secret FROM user_factors")

    # A key that is neither the key nor a fallback reads nothing.
    app = make_app(MFA_KEY=other)
    async with app.test_app():
        now = T0 + 10 * STEP
        assert not await verify(app, user, code_at(secret, now), now)
        assert await use_code(app, user, codes[0]) is None

    app = make_app(MFA_KEY=new, MFA_KEY_FALLBACKS=f"{other}, {old}")
    async with app.test_app():
        assert await verify(app, user, code_at(secret, now), now)
        assert await use_code(app, user, codes[0]) == 9
    [(after,)] = db_rows(database, "SELECT secret FROM user_factors")
    assert bytes(after) != bytes(before)

    # Used once with the new key, the secret needs the old one no more.
    app = make_app(MFA_KEY=new)
    async with app.test_app():
        later = now + STEP
        assert await verify(app, user, code_at(secret, later), later)


async def test_moving_from_the_secret_key_to_an_mfa_key_of_its_own(make_app):
    secret_key, mfa_key = secrets.token_urlsafe(48), secrets.token_urlsafe(48)
    app = make_app(SECRET_KEY=secret_key)
    async with app.test_app():
        user, secret, codes = await enrolled(app)
    app = make_app(SECRET_KEY=secret_key, MFA_KEY=mfa_key, MFA_KEY_FALLBACKS=secret_key)
    async with app.test_app():
        now = T0 + 10 * STEP
        assert await verify(app, user, code_at(secret, now), now)
        assert await use_code(app, user, codes[0]) == 9
    app = make_app(SECRET_KEY=secret_key, MFA_KEY=mfa_key)
    async with app.test_app():
        assert await verify(app, user, code_at(secret, now + STEP), now + STEP)


# -- the QR code -------------------------------------------------------------------------------


async def test_the_qr_code_is_an_svg_with_nothing_but_drawing(app):
    user = await new_user(app)
    async with service(app):
        _secret, uri = await mfa.begin_totp_setup(user, now=T0)
    svg = mfa.qr_svg(uri)
    assert "<script" not in svg.lower() and "<?xml" not in svg
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    for element in root.iter():
        assert element.tag in {f"{SVG}svg", f"{SVG}title", f"{SVG}path", f"{SVG}g"}, element.tag
        for name in element.attrib:
            assert not name.lower().startswith("on") and "href" not in name.lower(), name
    assert "secret" not in svg.lower()


# -- settings ----------------------------------------------------------------------------------

PRODUCTION = {"QUART_APP_SECRET_KEY": "k" * 40, "QUART_APP_MAIL_URL": "off"}


def test_mfa_settings_defaults_and_key_material():
    settings = load_settings(environ=PRODUCTION)
    assert (settings.MFA_KEY, settings.MFA_PENDING_TTL, settings.MFA_REQUIRED, settings.MFA_ISSUER) == (
        "",
        300,
        False,
        "Quart App",
    )
    assert settings.mfa_keys == ["k" * 40]
    settings = load_settings(environ={**PRODUCTION, "QUART_APP_SECRET_KEY_FALLBACKS": "o" * 40})
    assert settings.mfa_keys == ["k" * 40, "o" * 40]
    settings = load_settings(
        environ={
            **PRODUCTION,
            "QUART_APP_MFA_KEY": "m" * 32,
            "QUART_APP_MFA_KEY_FALLBACKS": " a" * 20 + ", " + "b" * 40,
            "QUART_APP_MFA_REQUIRED": "on",
            "QUART_APP_MFA_PENDING_TTL": "120",
        }
    )
    assert settings.mfa_keys == ["m" * 32, ("a " * 20).strip(), "b" * 40]
    assert settings.MFA_REQUIRED is True and settings.MFA_PENDING_TTL == 120


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"QUART_APP_MFA_KEY": "m" * 31}, "MFA_KEY is too short"),
        ({"QUART_APP_MFA_KEY": "m" * 40, "QUART_APP_MFA_KEY_FALLBACKS": "short"}, "MFA_KEY_FALLBACKS holds a key"),
        ({"QUART_APP_MFA_KEY_FALLBACKS": "f" * 40}, "MFA_KEY_FALLBACKS is set while"),
        ({"QUART_APP_MFA_ISSUER": "Bad:Name"}, "MFA_ISSUER"),
        ({"QUART_APP_MFA_ISSUER": "  "}, "MFA_ISSUER"),
        ({"QUART_APP_MFA_PENDING_TTL": "0"}, "MFA_PENDING_TTL"),
        ({"QUART_APP_MFA_REQUIRED": "maybe"}, "MFA_REQUIRED"),
    ],
)
def test_malformed_mfa_settings_stop_the_start(extra, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={**PRODUCTION, **extra})


def test_a_short_mfa_key_is_fine_outside_production():
    settings = load_settings(environ={"QUART_APP_ENV": "testing", "QUART_APP_MFA_KEY": "short"})
    assert settings.mfa_keys == ["short"]


# -- the migration -----------------------------------------------------------------------------


def test_the_factors_revision_downgrades_and_upgrades(database):
    user = "INSERT INTO users (username, email, email_key, password_hash) VALUES ('a', 'a@example.com', 'a@x', 'x')"
    database.write(user)
    database.write(
        "INSERT INTO user_factors (user_id, kind, created_at) SELECT id, 'totp', '2026-01-01 00:00:00' FROM users"
    )
    alembic("downgrade", "session_assurance", url=database.url)  # below factors (and mfa_pending on it)
    tables = (
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        if database.is_sqlite
        else "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    )
    names = {name for (name,) in db_rows(database, tables)}
    assert "users" in names and not names & {"user_factors", "recovery_codes", "mfa_pending"}
    alembic("upgrade", "head", url=database.url)
    names = {name for (name,) in db_rows(database, tables)}
    assert {"user_factors", "recovery_codes", "mfa_pending"} <= names
    assert db_rows(database, "SELECT count(*) FROM user_factors") == [(0,)]
    assert db_rows(database, "SELECT username FROM users") == [("a",)]
