"""Property-based, over the fields of the mailed-link flows: never a 5xx, and a 4xx stores nothing.

"Nothing" is the accounts (every column), their tokens and the outbox; the
throttle's counters and the audit trail are meant to record refusals.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from conftest import CSRF_RE, db_rows, register_api
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

FIELDS = ["email", "token", "new_password", "current_password", "new_email"]
any_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=1100),
    st.sampled_from(
        ["", " ", "\x00", "alice@example.com", "ALICE@EXAMPLE.COM", "a@b", "x" * 43, "correct horse battery", "\ud800"]
    ),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), any_text)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3), max_leaves=6
)
json_bodies = st.one_of(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5), json_values)
form_bodies = st.dictionaries(st.sampled_from(FIELDS), st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
tokens = st.one_of(st.text(min_size=1, max_size=120), st.sampled_from(["x" * 43, "..", "%00", "a/b"]))

JSON_POSTS = ["/api/password/forgot", "/api/password/reset", "/api/email/verify", "/api/email/resend", "/api/email"]
FORM_POSTS = ["/forgot-password", "/account/email", "/account/email/resend", "/reset-password/{}", "/verify-email/{}"]
LIMITS_OFF = {
    "LOGIN_RATE_LIMIT": "off",
    "FORGOT_PASSWORD_RATE_LIMIT": "off",
    "FORGOT_PASSWORD_IP_RATE_LIMIT": "off",
    "EMAIL_RESEND_RATE_LIMIT": "off",
    "TOKEN_RATE_LIMIT": "off",
    "FORGOT_PASSWORD_MIN_TIME": 0,
}


def stored(database) -> tuple:
    users = db_rows(database, "SELECT * FROM users ORDER BY id")
    live_tokens = db_rows(database, "SELECT id, purpose, used_at FROM email_tokens ORDER BY id")
    outbox = db_rows(database, "SELECT id, kind, recipient FROM mail_outbox ORDER BY id")
    return users, live_tokens, outbox


async def check(response, before, database) -> None:
    assert response.status_code < 500, (response.status_code, await response.get_data(as_text=True))
    if response.status_code >= 400:
        assert stored(database) == before


async def logged_in(app, logged: bool):
    client = app.test_client()
    response = await register_api(client, "alice")
    if response.status_code == 409:  # (the database lives across examples)
        response = await client.post("/api/login", json={"username": "alice", "password": "correct horse battery"})
    assert response.status_code in (200, 201)
    if not logged:
        await client.post("/api/logout")
    return client


@FUZZ
@given(path=st.sampled_from(JSON_POSTS), body=json_bodies, logged=st.booleans())
async def test_json_bodies_never_5xx_and_4xx_store_nothing(make_app, database, path, body, logged):
    app = make_app(**LIMITS_OFF)
    async with app.test_app():
        client = await logged_in(app, logged)
        before = stored(database)
        data = json.dumps(body, ensure_ascii=True)
        response = await client.post(path, data=data, headers={"Content-Type": "application/json"})
        await check(response, before, database)


@FUZZ
@given(path=st.sampled_from(FORM_POSTS), token=tokens, form=form_bodies, logged=st.booleans())
async def test_forms_never_5xx_and_4xx_store_nothing(make_app, database, path, token, form, logged):
    app = make_app(**LIMITS_OFF)
    async with app.test_app():
        client = await logged_in(app, logged)
        csrf = CSRF_RE.search(await (await client.get("/forgot-password")).get_data(as_text=True)).group(1)
        before = stored(database)
        response = await client.post(path.format(quote(token, safe="")), form={**form, "csrf_token": csrf})
        await check(response, before, database)


@FUZZ
@given(path=st.sampled_from(["/reset-password/{}", "/verify-email/{}"]), token=tokens)
async def test_opening_any_link_never_5xx_and_changes_nothing(make_app, database, path, token):
    app = make_app(**LIMITS_OFF)
    async with app.test_app():
        await logged_in(app, False)
        before = stored(database)
        response = await app.test_client().get(path.format(quote(token, safe="")))
        assert response.status_code < 500
        assert stored(database) == before
