"""Property-based: arbitrary input at every field, body and cookie never gives a 5xx, and a 4xx stores nothing."""

from __future__ import annotations

import json
import math

import pytest
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


# -- malformed JSON of every kind: deep nesting, odd numbers, odd text, odd encodings --------------

PROTECTED_JSON_POSTS = {"/api/logout", "/api/password", "/api/sessions/revoke-others"}
# The nesting json_body accepts (quart_app/api/views.py: MAX_JSON_DEPTH).
DEPTH_LIMIT = 32
# (A password no strategy draws: a fuzzed /api/password cannot change it.)
FUZZER = {"username": "fuzzer", "email": "fuzzer@example.com", "password": "the prober keeps this one"}


async def client_for(app, database, path: str):
    """A client that reaches ``path``'s body parser: logged in (as "fuzzer", registered once) for a protected route."""
    client = app.test_client()
    if path in PROTECTED_JSON_POSTS:
        if not db_rows(database, "SELECT id FROM users WHERE username = ?", FUZZER["username"]):
            assert (await client.post("/api/register", json=FUZZER)).status_code == 201
        else:
            credentials = {"username": FUZZER["username"], "password": FUZZER["password"]}
            assert (await client.post("/api/login", json=credentials)).status_code == 200
    return client


async def post_raw(client, path: str, data: bytes):
    return await client.post(path, data=data, headers={"Content-Type": "application/json"})


def nested(depth: int, leaf: str, openers: list[bool]) -> str:
    """``leaf`` inside ``depth`` arrays and objects (``openers[i]``: an object at level i), as JSON text."""
    text = leaf
    for level in range(depth):
        text = f'{{"k": {text}}}' if openers[level % len(openers)] else f"[{text}]"
    return text


@st.composite
def deep_bodies(draw) -> tuple[int, str]:
    """(depth, JSON text) with the nesting anywhere from flat to far past the interpreter's recursion limit."""
    depth = draw(st.one_of(st.integers(0, 40), st.integers(DEPTH_LIMIT - 2, DEPTH_LIMIT + 2), st.integers(40, 5000)))
    openers = draw(st.lists(st.booleans(), min_size=1, max_size=8))
    leaf = draw(st.sampled_from(['"x"', "1", "null", "[]", "{}", '"correct horse battery"']))
    value = nested(depth, leaf, openers)
    depth += leaf in ("[]", "{}")
    where = draw(st.sampled_from(["top", "username", "password", "remember", "extra"]))
    if where == "top":
        return depth, value
    base = {"username": '"alice"', "email": '"alice@example.com"', "password": '"correct horse battery"'}
    base[where] = value
    # +1: the body's own object.
    return depth + 1, "{" + ", ".join(f'"{k}": {v}' for k, v in base.items()) + "}"


# JSON text that Python's json module accepts, or chokes on in ways other than a plain ValueError, each
# with whether the API must refuse it (True) or may take it as ordinary JSON (False).
INT_DIGITS_LIMIT = 100  # the longest integer json_body takes (quart_app/api/views.py: MAX_JSON_INT_DIGITS)


def _exponent(template: str) -> st.SearchStrategy[tuple[str, bool]]:
    # Refused when it overflows a double (it would be read as infinity).
    return st.integers(0, 10**7).map(lambda e: (t := template.format(e), math.isinf(float(t))))


def _string(text: str) -> tuple[str, bool]:
    # Refused when it holds a lone surrogate (no such character exists, it cannot be stored as UTF-8).
    try:
        json.loads(text).encode("utf-8")
    except UnicodeEncodeError:
        return text, True
    return text, False


odd_numbers = st.one_of(
    st.text(alphabet="0123456789", min_size=0, max_size=6000).map(
        lambda d: ("-" * (len(d) % 2) + "1" + d, len(d) + 1 > INT_DIGITS_LIMIT)
    ),
    _exponent("1e{}"),
    _exponent("-2.5E+{}"),
    _exponent("1e-{}"),
    st.sampled_from(
        [
            ("NaN", True),
            ("Infinity", True),
            ("-Infinity", True),
            ("1e400", True),
            ("-1e400", True),
            ("1.7976931348623157e309", True),
            ("0e99999999", False),
            ("1.5", False),
        ]
    ),
)
odd_strings = st.one_of(
    st.sampled_from(
        [
            r'"\ud800"',
            r'"\udfff"',
            r'"abc\ud800defghij"',
            r'"\udc00\ud800"',
            r'"\ud83d"',
            r'"\u0000"',
            r'"a\u0000b@example.com"',
            r'"\ud83d\ude00\ud83d\ude00\ud83d\ude00\ud83d\ude00"',
        ]
    ),
    st.lists(st.sampled_from([r"\ud800", r"\udbff", r"\udc00", "a", r"\u0000", r"\\"]), max_size=12).map(
        lambda parts: '"' + "".join(parts) + '"'
    ),
).map(_string)
odd_values = st.one_of(odd_numbers, odd_strings)
plain_values = st.sampled_from(['"alice"', '"alice@example.com"', '"correct horse battery"']).map(lambda v: (v, False))


@st.composite
def odd_bodies(draw) -> tuple[bytes, bool]:
    """(body, malformed): an object with odd numbers, lone surrogates, duplicate keys, BOMs or another encoding."""
    fields = draw(st.dictionaries(st.sampled_from(FIELDS[:-1]), st.one_of(odd_values, plain_values), max_size=5))
    pairs = [(f'"{k}"', v) for k, (v, _) in fields.items()]
    malformed = any(bad for _, bad in fields.values())
    if fields and draw(st.booleans()):  # a duplicate key, or the same key spelled with escapes
        key = draw(st.sampled_from(sorted(fields)))
        spelling = draw(st.sampled_from([f'"{key}"', '"' + "".join(f"\\u{ord(c):04x}" for c in key) + '"']))
        pairs.insert(draw(st.integers(0, len(pairs))), (spelling, draw(odd_values)[0]))
        malformed = True
    if draw(st.booleans()):  # an odd key
        key, bad = draw(odd_strings)
        if key not in {k for k, _ in pairs}:
            pairs.append((key, '"x"'))
            malformed |= bad
    text = "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
    encoding = draw(
        st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-bom", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
    )
    if encoding == "utf-8-bom":
        return b"\xef\xbb\xbf" + text.encode(), True
    return text.encode(encoding), malformed or encoding != "utf-8"


async def check_refused_cleanly(response, before, database) -> dict:
    """A 4xx with a clear JSON ``{"error": ...}`` and nothing stored; the body, for more checks."""
    text = await response.get_data(as_text=True)
    assert 400 <= response.status_code < 500, (response.status_code, text[:300])
    payload = json.loads(text)
    assert isinstance(payload.get("error"), str) and payload["error"], payload
    assert counts(database) == before
    return payload


@FUZZ
@given(path=st.sampled_from(JSON_POSTS), deep=deep_bodies())
async def test_deeply_nested_json_is_a_clean_400(make_app, database, path, deep):
    """JSON nested up to thousands of levels, at the top or in a field: never a 5xx; past the limit a 400 saying so."""
    depth, text = deep
    app = make_app(LOGIN_RATE_LIMIT="off")
    async with app.test_app():
        client = await client_for(app, database, path)
        before = counts(database)
        response = await post_raw(client, path, text.encode())
        if depth > DEPTH_LIMIT:
            payload = await check_refused_cleanly(response, before, database)
            assert response.status_code == 400
            assert payload["error"] == "The JSON body is nested too deeply."
        else:
            await check(response, before, database)


@FUZZ
@given(path=st.sampled_from(JSON_POSTS), odd=odd_bodies())
async def test_odd_json_never_5xx_and_4xx_store_nothing(make_app, database, path, odd):
    """Huge numbers, NaN, Infinity, lone surrogates, duplicate keys, BOMs, UTF-16/32: < 500, the malformed 400."""
    raw, malformed = odd
    app = make_app(LOGIN_RATE_LIMIT="off")
    async with app.test_app():
        client = await client_for(app, database, path)
        before = counts(database)
        response = await post_raw(client, path, raw)
        await check(response, before, database)
        if malformed:
            assert response.status_code == 400, (raw[:200], await response.get_data(as_text=True))
        if response.status_code >= 400:
            await check_refused_cleanly(response, before, database)


def deep(depth: int) -> str:
    return "[" * depth + '"x"' + "]" * depth


CREDENTIALS = '{"username": "alice", "password": "correct horse battery", '
# Each is malformed (or past a documented limit) and must be refused before anything is done.
MALFORMED = {
    "nested 1000 deep in a field": '{"username": ' + deep(1000) + "}",
    "nested 33 deep in a field": '{"username": ' + deep(DEPTH_LIMIT) + "}",
    "nested 30000 deep": deep(30_000),  # (60 KB: under MAX_CONTENT_LENGTH)
    "objects nested 1000 deep": '{"a": ' * 1000 + "1" + "}" * 1000,
    "a 5000-digit integer": '{"username": "alice", "password": "correct horse battery", "remember": '
    + "9" * 5000
    + "}",
    "a 4300-digit integer": '{"username": "alice", "password": "correct horse battery", "remember": '
    + "9" * 4300
    + "}",
    "a huge exponent": '{"username": "alice", "password": "correct horse battery", "remember": 1e999999}',
    "a float past double": '{"username": "alice", "password": "correct horse battery", "remember": 1e309}',
    "NaN": '{"username": "alice", "password": "correct horse battery", "remember": NaN}',
    "Infinity": '{"username": "alice", "password": "correct horse battery", "remember": -Infinity}',
    "a lone surrogate in a field": r'{"username": "alice", "password": "correct horse battery", "x": "\ud800"}',
    "a lone surrogate in a key": r'{"username": "alice", "password": "correct horse battery", "\udfff": 1}',
    "a duplicate key": (
        '{"username": "mallory", "username": "bob", "email": "bob@example.com", "password": "correct horse battery"}'
    ),
    "a duplicate key spelled with an escape": (
        '{"username": "bob", "\\u0075sername": "eve", "email": "bob@example.com", "password": "correct horse battery"}'
    ),
}
MALFORMED_BYTES = {
    "invalid UTF-8": b'{"username": "\xff\xfe", "password": "correct horse battery"}',
    "a UTF-8 byte order mark": (
        b'\xef\xbb\xbf{"username": "bob", "email": "bob@example.com", "password": "correct horse battery"}'
    ),
    "UTF-16 with a BOM": '{"username": "bob", "email": "bob@example.com", "password": "correct horse battery"}'.encode(
        "utf-16"
    ),
    "UTF-16-BE": '{"username": "bob", "email": "bob@example.com", "password": "correct horse battery"}'.encode(
        "utf-16-be"
    ),
    "UTF-32": '{"username": "bob", "email": "bob@example.com", "password": "correct horse battery"}'.encode("utf-32"),
    "overlong UTF-8": b'{"username": "\xc0\xaf", "password": "correct horse battery"}',
    "an encoded surrogate": b'{"username": "\xed\xa0\x80", "password": "correct horse battery"}',
}


@pytest.mark.parametrize("path", JSON_POSTS)
@pytest.mark.parametrize(
    "raw", [*(v.encode() for v in MALFORMED.values()), *MALFORMED_BYTES.values()], ids=[*MALFORMED, *MALFORMED_BYTES]
)
async def test_each_malformed_body_is_a_clear_4xx_that_changes_nothing(make_app, database, path, raw):
    """Every kind of malformed JSON at every JSON route: 400 {"error": ...}; nothing stored, the session kept."""
    app = make_app(LOGIN_RATE_LIMIT="off")
    async with app.test_app():
        client = await client_for(app, database, path)
        before = counts(database)
        response = await post_raw(client, path, raw)
        await check_refused_cleanly(response, before, database)
        assert response.status_code == 400
        if path in PROTECTED_JSON_POSTS:  # still logged in: the malformed logout did not log out
            assert (await client.get("/api/me")).status_code == 200


async def test_json_nested_to_the_limit_is_parsed(make_app, database):
    """Nesting up to the limit is ordinary JSON: it reaches validation (400 per field), not the depth refusal."""
    app = make_app()
    async with app.test_app():
        body = '{"username": ' + deep(DEPTH_LIMIT - 1) + ', "password": "correct horse battery"}'
        response = await post_raw(app.test_client(), "/api/login", body.encode())
        assert response.status_code == 400
        assert (await response.get_json())["fields"]["username"] == "Must be a string."


@pytest.mark.parametrize("nesting", ["flat", "deep"])
async def test_bodies_at_and_over_max_content_length(make_app, database, nesting):
    """A body of exactly MAX_CONTENT_LENGTH bytes is parsed; one byte more is 413 {"error": ...}; nothing stored."""
    limit = 4096
    app = make_app(MAX_CONTENT_LENGTH=limit)
    async with app.test_app():

        def body_of(size: int) -> bytes:
            if nesting == "flat":
                head = b'{"username": "alice", "password": "'
                return head + b"p" * (size - len(head) - 2) + b'"}'
            levels = (size - 3) // 2
            return b"[" * levels + b'"' + b"x" * (size - 2 * levels - 2) + b'"' + b"]" * levels

        before = counts(database)
        at = await post_raw(app.test_client(), "/api/register", body_of(limit))
        assert len(body_of(limit)) == limit
        if nesting == "flat":
            assert at.status_code == 400  # parsed: validation says the email is missing
            assert "email" in (await at.get_json())["fields"]
        else:
            assert at.status_code == 400
            assert (await at.get_json())["error"] == "The JSON body is nested too deeply."
        over = await post_raw(app.test_client(), "/api/register", body_of(limit + 1))
        assert over.status_code == 413
        assert (await over.get_json())["error"]
        assert counts(database) == before
