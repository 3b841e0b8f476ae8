"""Property-based: arbitrary input at every field, body and cookie never gives a 5xx, and a 4xx stores nothing."""

from __future__ import annotations

import json

from conftest import CSRF_RE, db_rows, register_api
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# One app per test function, reused across examples (the invariant is checked
# per example by counting rows before and after).
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

FIELDS = ["username", "email", "password", "remember", "current_password", "new_password", "csrf_token"]
any_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=2000),
    st.sampled_from(["", " ", "\x00", "alice", "alice@example.com", "a" * 5000, "😀" * 300, "\ud800x"]),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), any_text)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=8,
)
json_bodies = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
    st.fixed_dictionaries({"username": any_text, "email": any_text, "password": any_text}),
    json_values,
)
form_bodies = st.dictionaries(
    st.sampled_from(FIELDS[:-1]), st.text(alphabet=st.characters(codec="utf-8"), max_size=300), max_size=5
)

JSON_POSTS = ["/api/register", "/api/login", "/api/logout", "/api/password", "/api/sessions/revoke-others"]
FORM_POSTS = [
    "/register",
    "/login",
    "/logout",
    "/account/password",
    "/account/sessions/revoke-others",
    "/reauthenticate",
]


def counts(database) -> tuple[int, int]:
    [(users, sessions)] = db_rows(database, "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM auth_sessions)")
    return users, sessions


async def check(response, before, database):
    assert response.status_code < 500, (response.status_code, await response.get_data(as_text=True))
    if response.status_code >= 400:
        assert counts(database) == before


@FUZZ
@given(path=st.sampled_from(JSON_POSTS), body=json_bodies)
async def test_json_bodies_never_5xx_and_4xx_store_nothing(make_app, database, path, body):
    """Any JSON value at any API route: < 500, and nothing stored on a 4xx."""
    app = make_app(LOGIN_RATE_LIMIT="off")
    async with app.test_app():
        before = counts(database)
        data = json.dumps(body, ensure_ascii=True)
        response = await app.test_client().post(path, data=data, headers={"Content-Type": "application/json"})
        await check(response, before, database)


@FUZZ
@given(
    path=st.sampled_from(JSON_POSTS + FORM_POSTS),
    raw=st.binary(max_size=3000),
    content_type=st.sampled_from(
        [
            "application/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "multipart/form-data",
            "text/plain",
            "application/json; charset=latin-1",
            "",
        ]
    ),
)
async def test_raw_bytes_never_5xx(make_app, database, path, raw, content_type):
    """Arbitrary bytes under any content type: < 500, nothing stored on a 4xx."""
    app = make_app(LOGIN_RATE_LIMIT="off")
    async with app.test_app():
        before = counts(database)
        headers = {"Content-Type": content_type} if content_type else {}
        response = await app.test_client().post(path, data=raw, headers=headers)
        await check(response, before, database)


@FUZZ
@given(path=st.sampled_from(FORM_POSTS), form=form_bodies)
async def test_forms_with_a_valid_token_never_5xx(make_app, database, path, form):
    """Any form fields (with a valid CSRF token, to reach validation): < 500, nothing stored on a 4xx."""
    app = make_app(LOGIN_RATE_LIMIT="off")
    async with app.test_app():
        client = app.test_client()
        token = CSRF_RE.search(await (await client.get("/register")).get_data(as_text=True)).group(1)
        before = counts(database)
        response = await client.post(path, form={**form, "csrf_token": token})
        await check(response, before, database)


@FUZZ
@given(
    auth=st.one_of(st.text(max_size=400), st.sampled_from(["", "x.y.z", "IkFBQSI.abc.def", "a" * 4000])),
    session=st.text(max_size=200),
    path=st.sampled_from(["/", "/dashboard", "/account", "/api/me", "/api/sessions", "/login"]),
)
async def test_arbitrary_cookies_are_anonymous_never_5xx(make_app, database, auth, session, path):
    """Any auth or session cookie value: anonymous, never a 5xx."""
    app = make_app()
    async with app.test_app():
        client = app.test_client()
        cookie = "; ".join(
            f"{name}={value}"
            for name, value in (("quart_app_auth", auth), ("quart_app_session", session))
            if all(32 < ord(c) < 127 and c not in ';,"\\' for c in value)
        )
        response = await client.get(path, headers={"Cookie": cookie} if cookie else {})
        assert response.status_code < 500
        if path.startswith("/api/"):
            assert response.status_code == 401


@FUZZ
@given(username=any_text, email=any_text, password=any_text)
async def test_registration_fields_never_5xx(make_app, database, username, email, password):
    """Any username, email and password at /api/register: 201, 400 or 409 only."""
    app = make_app()
    async with app.test_app():
        before = counts(database)
        response = await register_api(app.test_client(), username, email=email, password=password)
        assert response.status_code in {201, 400, 409}
        await check(response, before, database)
