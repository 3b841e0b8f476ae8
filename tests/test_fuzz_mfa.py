"""Property-based, over the second factor's fields: never a 5xx, and a 4xx stores nothing.

The routes: ``POST /api/login/2fa``, ``/api/2fa/totp/setup``, ``/api/2fa/totp/confirm``,
``/api/2fa/disable`` and ``/api/2fa/recovery-codes`` with any JSON value (or any bytes), and
the forms ``/login/2fa``, ``/account/2fa/totp/confirm``, ``/account/2fa/disable`` and
``/account/2fa/recovery-codes/download`` with any fields (a valid ``csrf_token`` first, to
reach validation). Each example is made in one of these states, afresh on the database
the examples share: alice with an authenticator app just turned on, logged in at AAL 2
("aal2") or with the password only ("aal1"); alice with a login waiting for its code
("pending": the password given, the ``quart_app_mfa`` cookie); nobody ("anonymous"); bob
with a setup begun and not confirmed ("setup"). Codes are drawn as any text, as right-shaped
codes (6 digits; ``xxxxx-xxxxx`` of the recovery alphabet) and near misses, and as the state's
right codes (alice's current TOTP code and two of her recovery codes; bob's setup code),
bare or changed (spaces, dashes, case, fullwidth or Arabic-Indic digits, NUL, doubled, padded
to the 64-character limit): a right code is a 2xx, which may change anything.

"Nothing" is every column of ``users``, ``user_factors`` and ``recovery_codes``; every
column of ``mfa_pending`` but ``failures``; ``auth_sessions`` (every row, every column but
``last_seen_at`` and ``expires_at``, which a request's own session moves as it is used);
and the ``mail_outbox`` (no notice for a refusal). Left out, because a refusal is meant to
record itself there:

- ``auth_events``: a wrong code is audited (``mfa_login_failed``, ``login_failed``).
- ``login_throttle``: turned off here (LOGIN_RATE_LIMIT=off, as test_fuzz_recovery does), so
  that neither a 429 nor the failure that reaches the limit (which ends the session on
  ``/api/2fa/disable``) interferes; with it off it writes nothing.
- ``mfa_pending.failures``, at ``/login/2fa`` and ``/api/login/2fa`` only: a wrong code there
  (401) adds one to the failures of this client's pending login, and the fifth
  (``pending.MAX_FAILURES``) deletes it. Exactly that is allowed, and nothing else: one row,
  by one, and only on a 401; the row gone only when it had 4 failures
  (``test_wrong_codes_on_one_pending_login_count_and_end_it`` walks a login to its end).
"""

from __future__ import annotations

import json
from functools import partial
from types import SimpleNamespace
from urllib.parse import urlencode

import pyotp
import pytest
from backends import _psycopg_sql, _shown, libpq_url
from conftest import CSRF_RE, db_rows, register_api
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from quart_app.auth import mfa, pending
from quart_app.db import get_db
from quart_app.models import User
from quart_login.testing import login_client

# One app per test function, serving every example (starting an app is most of an example's time);
# the states are made afresh in each example.
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

PASSWORD = "correct horse battery"
SETTINGS = {"LOGIN_RATE_LIMIT": "off"}
STEP = 30
T0 = 1_900_000_005.0  # the second factor's clock: the middle of a step, moved on two steps per example

LOGIN_2FA = {"/api/login/2fa", "/login/2fa"}
JSON_POSTS = [
    "/api/login/2fa",
    "/api/2fa/totp/setup",
    "/api/2fa/totp/confirm",
    "/api/2fa/disable",
    "/api/2fa/recovery-codes",
]
FORM_POSTS = [
    "/login/2fa",
    "/account/2fa/totp/confirm",
    "/account/2fa/disable",
    "/account/2fa/recovery-codes/download",
]
STATES = ["aal2", "aal1", "pending", "anonymous", "setup"]
# Where each route does its work (drawn half the time): the rest of the time, any state.
HOME = {
    "/api/login/2fa": "pending",
    "/login/2fa": "pending",
    "/api/2fa/totp/setup": "setup",
    "/api/2fa/totp/confirm": "setup",
    "/account/2fa/totp/confirm": "setup",
    "/api/2fa/disable": "aal2",
    "/account/2fa/disable": "aal2",
    "/api/2fa/recovery-codes": "aal2",
    "/account/2fa/recovery-codes/download": "aal2",
}
FIELDS = ["code", "current_password", "codes", "recovery_code", "password", "csrf_token"]

# -- strategies ----------------------------------------------------------------------------------

any_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=1100),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "\ud800",
            "123456\ud800",
            "1" * 65,
            "1" * 5000,
            "0" * 70_000,  # (over MAX_CONTENT_LENGTH: 413)
            "😀" * 300,
            PASSWORD,
            "null",
            "[]",
        ]
    ),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), any_text)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3), max_leaves=6
)
# (A form's text is UTF-8 on the wire: no lone surrogate.)
form_text = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
    st.sampled_from(["", " ", "\x00", "1" * 65, "1" * 5000, "😀" * 300]),
)

ALPHABET = mfa.RECOVERY_ALPHABET
six_digits = st.text(alphabet="0123456789", min_size=6, max_size=6)
recovery_shaped = st.tuples(
    st.text(alphabet=ALPHABET, min_size=5, max_size=5), st.text(alphabet=ALPHABET, min_size=5, max_size=5)
).map("-".join)
near_misses = st.one_of(
    st.text(alphabet="0123456789", min_size=0, max_size=12),
    st.text(alphabet="0123456789 -\t", min_size=5, max_size=9),
    st.text(alphabet=ALPHABET + "ilouILOU-ABCXYZ ", min_size=9, max_size=13),
    st.text(alphabet=ALPHABET, min_size=10, max_size=10),
    st.text(alphabet="٠١٢٣٤٥٦٧٨٩０１２３４５６７８９", min_size=6, max_size=6),
)

FULLWIDTH = str.maketrans({c: chr(ord(c) + 0xFEE0) for c in "0123456789abcdefghijklmnopqrstuvwxyz"})
ARABIC_INDIC = str.maketrans({str(d): chr(0x0660 + d) for d in range(10)})
# What a person (or a program) may do to a right code on its way: some still right, most not.
CHANGES = {
    "as is": lambda c: c,
    "spaced": lambda c: f"  {c}\t\n",
    "split with a space": lambda c: c[:3] + " " + c[3:],
    "split with a dash": lambda c: c[:3] + "-" + c[3:],
    "no dash": lambda c: c.replace("-", ""),
    "upper case": lambda c: c.upper(),
    "o for 0, l for 1": lambda c: c.replace("0", "o").replace("1", "l"),
    "fullwidth": lambda c: c.translate(FULLWIDTH),
    "Arabic-Indic digits": lambda c: c.translate(ARABIC_INDIC),
    "no-break space": lambda c: c[:3] + "\u00a0" + c[3:],
    "zero-width space": lambda c: c[:3] + "\u200b" + c[3:],
    "NUL inside": lambda c: c[:3] + "\x00" + c[3:],
    "one more digit": lambda c: c + "7",
    "one less": lambda c: c[:-1],
    "twice": lambda c: c + c,
    "padded to 64": lambda c: c.center(64),
    "padded to 65": lambda c: c.center(65),
    "in a sentence": lambda c: f"my code is {c}",
}


def changed(right: list[str]) -> st.SearchStrategy[str]:
    """One of the state's right codes, as is or changed (``CHANGES``)."""
    pairs = st.tuples(st.sampled_from(right), st.sampled_from(sorted(CHANGES)))
    return pairs.map(lambda pair: CHANGES[pair[1]](pair[0]))


def code_texts(right: list[str], text: st.SearchStrategy[str] = any_text) -> st.SearchStrategy[str]:
    """A code as text: any ``text``, right-shaped, a near miss, or one of ``right`` bare or changed."""
    return st.one_of(text, six_digits, recovery_shaped, near_misses, *([changed(right)] if right else []))


password_variants = st.sampled_from([PASSWORD.upper(), f" {PASSWORD}", "x"])
passwords = st.one_of(st.just(PASSWORD), password_variants, any_text)
form_passwords = st.one_of(st.just(PASSWORD), password_variants, form_text)


def json_bodies(right: list[str]) -> st.SearchStrategy[object]:
    """Any JSON value; an object of known fields with any values; a right-shaped one with extra fields;
    or the right code (as is or changed) with, most often, the right password: past every check."""
    code = code_texts(right)
    values = st.one_of(json_values, code)
    extras = st.dictionaries(st.one_of(st.sampled_from(FIELDS), any_text), values, max_size=3)

    def with_extras(fields: st.SearchStrategy[dict]) -> st.SearchStrategy[dict]:
        return st.tuples(fields, extras).map(lambda pair: {**pair[1], **pair[0]})

    shaped = st.fixed_dictionaries({"code": st.one_of(code, json_values)}, optional={"current_password": passwords})
    bodies = [json_values, st.dictionaries(st.sampled_from(FIELDS), values, max_size=4), with_extras(shaped)]
    if right:
        fields = {"code": changed(right), "current_password": st.one_of(st.just(PASSWORD), passwords)}
        bodies.append(with_extras(st.fixed_dictionaries(fields)))
    return st.one_of(*bodies, st.just({}))


def form_pairs(right: list[str]) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Form fields as (name, value) pairs, names repeated or missing, the known ones most often; or the right
    code (as is or changed) and, most often, the right password first; or several right codes (the download's)."""
    names = st.one_of(st.sampled_from(FIELDS[:-1]), st.sampled_from(["code", "code", "current_password"]), form_text)
    code = code_texts(right, form_text)
    pairs = st.lists(st.tuples(names, st.one_of(form_text, code, form_passwords)), max_size=12)

    def first(fields: st.SearchStrategy[tuple]) -> st.SearchStrategy[list[tuple[str, str]]]:
        return st.tuples(fields, pairs).map(lambda both: [*both[0], *both[1]])

    options = [
        pairs,
        first(st.tuples(st.tuples(st.just("code"), code), st.tuples(st.just("current_password"), form_passwords))),
    ]
    if right:
        password = st.one_of(st.just(PASSWORD), form_passwords)
        options.append(
            first(
                st.tuples(st.tuples(st.just("code"), changed(right)), st.tuples(st.just("current_password"), password))
            )
        )
        options.append(first(st.lists(st.tuples(st.just("code"), changed(right)), min_size=1, max_size=12).map(tuple)))
    return st.one_of(*options)


# -- the states ----------------------------------------------------------------------------------


class Clock:
    """The second factor's time (``mfa.clock``), moved on a step at a time: every example's codes are new."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> float:
        self.now += STEP
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(mfa, "clock", clock)
    return clock


@pytest.fixture
async def app(make_app, clock):
    """One app per test function, serving every example (starting one is most of an example's time)."""
    app = make_app(**SETTINGS)
    async with app.test_app():
        yield app


def code_at(secret: str, now: float) -> str:
    return pyotp.TOTP(secret).at(now)


@pytest.fixture
def rows(database):
    """``db_rows`` of this test's database, on one connection for the whole test on PostgreSQL
    (a connection per read, six per snapshot, was most of an example's time there)."""
    if database.is_sqlite:
        yield partial(db_rows, database)
        return
    import psycopg

    with psycopg.connect(libpq_url(database.url), autocommit=True) as conn:
        yield lambda sql, *params: [
            tuple(_shown(value) for value in row) for row in conn.execute(_psycopg_sql(sql), params).fetchall()
        ]


def user_id(rows, username: str) -> int | None:
    found = rows("SELECT id FROM users WHERE username = ?", username)
    return found[0][0] if found else None


async def factors_afresh(app, username: str, *, confirm: bool) -> tuple[str, list[str]]:
    """Every factor of ``username`` removed, then a new TOTP setup (confirmed at the clock's time if ``confirm``)."""
    async with app.test_request_context("/"):
        db = get_db()
        user = (await db.execute(select(User).where(User.username == username))).scalar_one()
        await mfa.remove_all_factors(user)
        secret, _uri = await mfa.begin_totp_setup(user)
        codes = await mfa.confirm_totp(user, code_at(secret, mfa.clock())) if confirm else []
        await db.commit()
    return secret, codes


async def arrive(app, rows, clock: Clock, state: str):
    """A client in ``state`` and the state's right codes (made now: last example's may have been used)."""
    for username in ("alice", "bob"):
        if user_id(rows, username) is None:
            assert (await register_api(app.test_client(), username)).status_code == 201
    clock.tick()
    secret, recovery = await factors_afresh(app, "alice", confirm=True)
    bob_secret, _ = await factors_afresh(app, "bob", confirm=False)
    now = clock.tick()  # a step after the confirming code's: alice's code of now is unused
    client = app.test_client()
    right = [code_at(secret, now), *recovery[:2]]
    if state in ("aal2", "aal1"):
        amr = ("pwd", "otp") if state == "aal2" else ("pwd",)
        await login_client(client, SimpleNamespace(id=user_id(rows, "alice")), amr=amr)
    elif state == "pending":
        response = await client.post("/api/login", json={"username": "alice", "password": PASSWORD})
        assert (await response.get_json()) == {"mfa_required": True, "methods": list(pending.METHODS)}
    elif state == "setup":
        await login_client(client, SimpleNamespace(id=user_id(rows, "bob")))
        right = [code_at(bob_secret, now)]
    return client, right


async def csrf_of(client) -> str:
    return CSRF_RE.search(await (await client.get("/forgot-password")).get_data(as_text=True)).group(1)


# -- what is stored ------------------------------------------------------------------------------

PENDING_COLUMNS = "id, user_id, secret_hash, created_at, expires_at, remember, next, failures"
SESSION_COLUMNS = "id, user_id, token_hash, remember, created_at, auth_time, ip, user_agent, amr, aal"


def stored(rows) -> dict[str, list[tuple]]:
    return {
        "users": rows("SELECT * FROM users ORDER BY id"),
        "user_factors": rows("SELECT * FROM user_factors ORDER BY id"),
        "recovery_codes": rows("SELECT * FROM recovery_codes ORDER BY id"),
        "mfa_pending": rows(f"SELECT {PENDING_COLUMNS} FROM mfa_pending ORDER BY id"),
        "auth_sessions": rows(f"SELECT {SESSION_COLUMNS} FROM auth_sessions ORDER BY id"),
        "mail_outbox": rows("SELECT id, kind, recipient, user_id FROM mail_outbox ORDER BY id"),
    }


def failure_counted(before: list[tuple], after: list[tuple]) -> bool:
    """Whether ``after`` is ``before`` with one wrong code counted on one pending login (or that login ended by it)."""
    changed = [row for row in before if row not in after]
    added = [row for row in after if row not in before]
    if len(changed) != 1 or len(added) > 1:
        return False
    [old] = changed
    if not added:  # ended: it had the failures one short of the limit
        return old[-1] == pending.MAX_FAILURES - 1 and len(after) == len(before) - 1
    [new] = added
    return new[:-1] == old[:-1] and new[-1] == old[-1] + 1 and len(after) == len(before)


async def check(response, before: dict, rows, path: str) -> None:
    text = await response.get_data(as_text=True)
    assert response.status_code < 500, (path, response.status_code, text[:500])
    event(f"{path}: {response.status_code}")  # (--hypothesis-show-statistics: what the examples reached)
    if response.status_code < 400:
        return
    after = stored(rows)
    assert {k: v for k, v in after.items() if k != "mfa_pending"} == {
        k: v for k, v in before.items() if k != "mfa_pending"
    }, (path, response.status_code, text[:300])
    if after["mfa_pending"] != before["mfa_pending"]:
        assert path in LOGIN_2FA and response.status_code == 401, (path, response.status_code, text[:300])
        assert failure_counted(before["mfa_pending"], after["mfa_pending"]), (before["mfa_pending"], after)


async def post_json(client, path: str, body: object):
    data = json.dumps(body, ensure_ascii=True)
    return await client.post(path, data=data, headers={"Content-Type": "application/json"})


async def post_form(client, path: str, pairs: list[tuple[str, str]]):
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return await client.post(path, data=urlencode(pairs), headers=headers)


# -- the properties ------------------------------------------------------------------------------


def state_for(data, path: str) -> str:
    return data.draw(st.one_of(st.just(HOME[path]), st.sampled_from(STATES)), label="state")


@FUZZ
@given(path=st.sampled_from(JSON_POSTS), data=st.data())
async def test_json_bodies_never_5xx_and_4xx_store_nothing(app, rows, clock, path, data):
    """Any JSON value, any fields, any code at every JSON route, in every state: < 500, nothing stored on a 4xx."""
    state = state_for(data, path)
    client, right = await arrive(app, rows, clock, state)
    body = data.draw(json_bodies(right), label="body")
    before = stored(rows)
    await check(await post_json(client, path, body), before, rows, path)


@FUZZ
@given(path=st.sampled_from(FORM_POSTS), data=st.data())
async def test_forms_never_5xx_and_4xx_store_nothing(app, rows, clock, path, data):
    """Any form fields (a valid csrf_token first), any code, repeated or not, in every state: < 500, none on a 4xx."""
    state = state_for(data, path)
    client, right = await arrive(app, rows, clock, state)
    pairs = data.draw(form_pairs(right), label="form")
    token = await csrf_of(client)
    before = stored(rows)
    await check(await post_form(client, path, [("csrf_token", token), *pairs]), before, rows, path)


@settings(FUZZ, max_examples=25)
@given(
    path=st.sampled_from(JSON_POSTS),
    state=st.sampled_from(["aal2", "pending", "setup"]),
    raw=st.one_of(st.binary(max_size=300), st.sampled_from([b'{"code": "123456"', b'{"code": 123456}', b"\xff"])),
    content_type=st.sampled_from(
        ["application/json", "application/x-www-form-urlencoded", "text/plain", "application/json; charset=latin-1", ""]
    ),
)
async def test_raw_bytes_never_5xx(app, rows, clock, path, state, raw, content_type):
    """Arbitrary bytes under any content type at the JSON routes: < 500, nothing stored on a 4xx."""
    client, _right = await arrive(app, rows, clock, state)
    before = stored(rows)
    headers = {"Content-Type": content_type} if content_type else {}
    await check(await client.post(path, data=raw, headers=headers), before, rows, path)


@settings(FUZZ, max_examples=25)
@given(
    attempts=st.lists(
        st.tuples(st.sampled_from(sorted(LOGIN_2FA)), st.one_of(six_digits, recovery_shaped, near_misses, form_text)),
        min_size=1,
        max_size=pending.MAX_FAILURES + 2,
    )
)
async def test_wrong_codes_on_one_pending_login_count_and_end_it(app, rows, clock, attempts):
    """Wrong codes one after another, by JSON and by form, on one pending login: each a 4xx that stores nothing
    but its failure; the fifth ends the login, and every later code is a 401 that changes nothing at all."""
    client, right = await arrive(app, rows, clock, "pending")
    [(mine,)] = rows("SELECT max(id) FROM mfa_pending")  # this client's pending login
    token = await csrf_of(client)
    counted = 0
    for path, code in attempts:
        before = stored(rows)
        if path == "/login/2fa":
            response = await post_form(client, path, [("csrf_token", token), ("code", code)])
        else:
            response = await post_json(client, path, {"code": code})
        await check(response, before, rows, path)
        if response.status_code < 400:  # (a right code drawn by chance: the login is over)
            return
        counted += stored(rows)["mfa_pending"] != before["mfa_pending"]
    left = rows("SELECT failures FROM mfa_pending WHERE id = ?", mine)
    if counted < pending.MAX_FAILURES:
        assert left == [(counted,)]
    else:  # ended by the fifth: a right code now finds no pending login, and changes nothing
        assert counted == pending.MAX_FAILURES and left == []
        before = stored(rows)
        response = await post_json(client, "/api/login/2fa", {"code": right[0]})
        assert response.status_code == 401
        assert stored(rows) == before
    assert rows("SELECT count(*) FROM login_throttle") == [(0,)]  # (off: the module's docstring)


async def test_states_are_what_they_say(app, rows, clock):
    """The fuzzed states themselves: each right code works where it should (so the fuzzing reaches past the checks)."""
    client, right = await arrive(app, rows, clock, "pending")
    assert (await post_json(client, "/api/login/2fa", {"code": right[0]})).status_code == 200
    client, right = await arrive(app, rows, clock, "pending")
    assert (await post_json(client, "/api/login/2fa", {"code": right[1].upper()})).status_code == 200
    client, right = await arrive(app, rows, clock, "setup")
    assert (await post_json(client, "/api/2fa/totp/confirm", {"code": right[0]})).status_code == 200
    client, right = await arrive(app, rows, clock, "aal2")
    assert (await post_json(client, "/api/2fa/recovery-codes", {})).status_code == 200
    client, right = await arrive(app, rows, clock, "aal2")
    body = {"current_password": PASSWORD, "code": right[0]}
    assert (await post_json(client, "/api/2fa/disable", body)).status_code == 204
    client, right = await arrive(app, rows, clock, "aal1")
    assert (await post_json(client, "/api/2fa/recovery-codes", {})).status_code in (401, 403)
    client, right = await arrive(app, rows, clock, "aal2")
    token = await csrf_of(client)
    response = await post_form(client, "/account/2fa/disable", [("csrf_token", token), ("code", right[2])])
    assert response.status_code == 400  # no password: the form again, nothing changed
    response = await post_form(
        client, "/account/2fa/recovery-codes/download", [("csrf_token", token), *(("code", c) for c in right[1:])]
    )
    assert response.status_code == 200 and right[1] in await response.get_data(as_text=True)
