"""quart_login on its own: a bare Quart app, a SQLite database of its own, Flask-Login's behaviours."""

from __future__ import annotations

import ast
import contextlib
import itertools
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from quart import Blueprint, Quart, get_flashed_messages, render_template_string, request, websocket
from quart.testing import WebsocketResponseError
from sqlalchemy import Boolean, DateTime, ForeignKey, String, event, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import quart_login
from quart_login import (
    AnonymousUserMixin,
    AuthSessionStore,
    LoginManager,
    NewSession,
    Resolved,
    UserMixin,
    confirm_login,
    current_user,
    fresh_login_required,
    login_required,
    login_user,
    logout_user,
    new_token,
    token_digest,
    utcnow,
)
from quart_login.sqlalchemy_store import AuthSessionMixin, SQLAlchemyAuthSessionStore
from quart_login.store import AuthSession as SessionRecord
from quart_login.testing import login_client, logout_client

ROOT = Path(__file__).resolve().parents[1]
COOKIE = "quart_login"


# -- the app's models (what an application declares) --------------------------------


class Base(DeclarativeBase):
    pass


class User(UserMixin, Base):
    __tablename__ = "ql_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    display_name: Mapped[str] = mapped_column(String(100))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AuthSession(AuthSessionMixin, Base):
    __tablename__ = "ql_auth_sessions"

    user_id: Mapped[int] = mapped_column(ForeignKey("ql_users.id", ondelete="CASCADE"), index=True)


SEED = {
    "alice": {"display_name": "Alice Liddell", "is_admin": True, "is_active": True},
    "bob": {"display_name": "Bob Builder", "is_admin": False, "is_active": True},
    "carol": {"display_name": "Carol Idle", "is_admin": False, "is_active": False},
}


# -- helpers --------------------------------------------------------------------------


def set_cookies(response) -> dict[str, str]:
    """The response's Set-Cookie headers by cookie name."""
    return {header.split("=", 1)[0]: header for header in response.headers.getlist("Set-Cookie")}


def cookie_value(response, name: str = COOKIE) -> str:
    """The value the response sets for cookie ``name``."""
    return set_cookies(response)[name].split(";", 1)[0].split("=", 1)[1]


def deletes(header: str) -> bool:
    return "Max-Age=0" in header or "01 Jan 1970" in header


def with_cookie(value: str, name: str = COOKIE) -> dict[str, str]:
    """Headers of a fresh client presenting only this cookie."""
    return {"Cookie": f"{name}={value}"}


def build_app(load_user: Callable[[str], Awaitable[Any]], config: dict | None = None) -> Quart:
    """A bare Quart app with the login, logout and protected views the tests use."""
    app = Quart(__name__)
    app.config.update(SECRET_KEY="quart-login-tests", TESTING=True)
    app.config.update(config or {})

    @app.get("/login")
    async def login():
        return {"flashed": get_flashed_messages(with_categories=True)}

    @app.get("/reauth")
    async def reauth():
        return {"flashed": get_flashed_messages(with_categories=True)}

    @app.post("/do-login/<name>")
    async def do_login(name):
        args = request.args
        user = await load_user(name)
        ok = await login_user(
            user,
            remember=args.get("remember") == "1",
            force=args.get("force") == "1",
            fresh=args.get("fresh", "1") == "1",
            amr=tuple(args.get("amr", "pwd").split(",")),
            aal=int(args["aal"]) if "aal" in args else None,
        )
        return {"ok": ok, "current": getattr(current_user, "display_name", None)}

    @app.post("/logout")
    async def logout():
        await logout_user()
        return "bye"

    @app.route("/protected", methods=["GET", "OPTIONS"])
    @login_required
    async def protected():
        return f"hello {getattr(current_user, 'display_name', 'anonymous')}"

    @app.route("/fresh", methods=["GET", "POST"])
    @fresh_login_required
    async def fresh():
        return "fresh"

    @app.post("/confirm")
    @login_required
    async def confirm():
        await confirm_login()
        return "confirmed"

    @app.get("/whoami")
    async def whoami():
        user = current_user._get_current_object()
        return {
            "authenticated": current_user.is_authenticated,
            "anonymous": current_user.is_anonymous,
            "id": current_user.get_id(),
            "class": type(user).__name__,
            "display_name": getattr(user, "display_name", None),
        }

    @app.websocket("/ws")
    async def ws():
        await websocket.send_json(
            {
                "authenticated": current_user.is_authenticated,
                "display_name": getattr(current_user, "display_name", None),
            }
        )

    @app.websocket("/ws/protected")
    @login_required
    async def ws_protected():
        await websocket.send(f"hello {current_user.display_name}")

    return app


@dataclass
class Env:
    """One test's app, manager, store and database."""

    app: Quart
    manager: LoginManager
    store: SQLAlchemyAuthSessionStore
    engine: AsyncEngine
    maker: async_sessionmaker
    ids: dict[str, int]

    def client(self):
        return self.app.test_client()

    @property
    def lifetimes(self):
        return self.app.extensions["quart_login"].lifetimes

    async def user(self, name: str) -> User:
        async with self.maker() as db:
            return (await db.execute(select(User).where(User.email == name))).scalar_one()

    async def sessions(self) -> list[AuthSession]:
        async with self.maker() as db:
            return list((await db.execute(select(AuthSession).order_by(AuthSession.id))).scalars())

    async def execute(self, statement) -> None:
        async with self.maker() as db:
            await db.execute(statement)
            await db.commit()

    async def age_sessions(self, **values: Any) -> None:
        """Change every session row (to move its times)."""
        await self.execute(update(AuthSession).values(**values))

    async def login(self, client, name: str = "alice", **args: str):
        response = await client.post(f"/do-login/{name}", query_string=args)
        assert response.status_code == 200
        return response


@pytest.fixture
async def make_env(tmp_path):
    """A factory of fresh apps, each on its own SQLite file: ``await make_env(config, routes=..., manager=...)``."""
    counter = itertools.count()
    async with contextlib.AsyncExitStack() as stack:

        async def make(
            config: dict | None = None,
            *,
            manager: LoginManager | None = None,
            routes: Callable[[Quart, async_sessionmaker], None] | None = None,
            store_options: dict | None = None,
        ) -> Env:
            engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / f'login{next(counter)}.sqlite'}")
            stack.push_async_callback(engine.dispose)
            async with engine.begin() as connection:
                await connection.run_sync(Base.metadata.create_all)
            maker = async_sessionmaker(engine, expire_on_commit=False)
            async with maker() as db:
                users = {name: User(email=name, **values) for name, values in SEED.items()}
                db.add_all(users.values())
                await db.commit()
                ids = {name: user.id for name, user in users.items()}

            async def load_user(name: str) -> User:
                async with maker() as db:
                    return (await db.execute(select(User).where(User.email == name))).scalar_one()

            app = build_app(load_user, config)
            if routes is not None:
                routes(app, maker)
            store = SQLAlchemyAuthSessionStore(AuthSession, User, sessionmaker=maker, **(store_options or {}))
            manager = manager or LoginManager()
            manager.init_app(app, store=store)
            await stack.enter_async_context(app.test_app())
            return Env(app, manager, store, engine, maker, ids)

        yield make


@pytest.fixture
async def env(make_env) -> Env:
    return await make_env()


@contextlib.contextmanager
def receiving(signal, receiver):
    """Connect ``receiver`` to ``signal`` for the block."""
    signal.connect(receiver, weak=False)
    try:
        yield
    finally:
        signal.disconnect(receiver)


# -- 1-3: login_required's answers to anonymous clients --------------------------------


async def test_login_required_answers_401_without_login_view(env):
    """With the default LOGIN_VIEW (None), login_required answers 401 to an anonymous client."""
    response = await env.client().get("/protected")
    assert response.status_code == 401
    assert "Location" not in response.headers


@pytest.mark.parametrize("where", ["attribute", "config"])
async def test_login_required_redirects_browsers_to_login_view_with_next_and_flash(make_env, where):
    """With a login view, a browser is redirected there with next (query kept) and LOGIN_MESSAGE is flashed."""
    env = await make_env({"QUART_LOGIN_LOGIN_VIEW": "login"} if where == "config" else None)
    if where == "attribute":
        env.manager.login_view = "login"
    client = env.client()
    response = await client.get("/protected?a=1&b=two", headers={"Accept": "text/html,*/*;q=0.8"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=%2Fprotected%3Fa%3D1%26b%3Dtwo"
    page = await (await client.get("/login")).get_json()
    assert page["flashed"] == [["message", quart_login.DEFAULTS["LOGIN_MESSAGE"]]]


@pytest.mark.parametrize("headers", [{"X-Requested-With": "XMLHttpRequest"}, {"Accept": "application/json"}])
async def test_login_required_answers_401_to_script_clients_even_with_login_view(env, headers):
    """A client sending X-Requested-With or preferring JSON gets 401, not the login redirect."""
    env.manager.login_view = "login"
    response = await env.client().get("/protected", headers=headers)
    assert response.status_code == 401


async def test_login_view_attribute_wins_over_config(make_env):
    """login_manager.login_view set in code takes precedence over QUART_LOGIN_LOGIN_VIEW."""
    env = await make_env({"QUART_LOGIN_LOGIN_VIEW": "/elsewhere"})
    client = env.client()
    assert (await client.get("/protected")).headers["Location"] == "/elsewhere?next=%2Fprotected"
    env.manager.login_view = "login"
    assert (await client.get("/protected")).headers["Location"] == "/login?next=%2Fprotected"


async def test_blueprint_login_views_redirect_to_the_blueprints_login(make_env):
    """A blueprint listed in blueprint_login_views sends its anonymous clients to its own login view."""

    def routes(app, maker):
        admin = Blueprint("admin", __name__, url_prefix="/admin")

        @admin.get("/login")
        async def login():
            return "admin login"

        @admin.get("/secret")
        @login_required
        async def secret():
            return "secret"

        app.register_blueprint(admin)

    env = await make_env(routes=routes)
    env.manager.blueprint_login_views["admin"] = "admin.login"
    client = env.client()
    response = await client.get("/admin/secret")
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/login?next=%2Fadmin%2Fsecret"
    assert (await client.get("/protected")).status_code == 401  # the app's own views: no login view


# -- 4-5: current_user is the app's User, loaded in one query ---------------------------


async def test_current_user_is_the_apps_user_with_every_column_in_views_and_templates(make_env):
    """current_user is a detached instance of the app's User, every column loaded, read without await."""

    def routes(app, maker):
        @app.get("/probe")
        @login_required
        async def probe():
            user = current_user._get_current_object()
            state = sa_inspect(user)
            return {
                "is_user": type(user) is User,
                "detached": state.detached,
                "unloaded": sorted(state.unloaded),
                "values": {key: str(getattr(current_user, key)) for key in state.mapper.column_attrs.keys()},
                "template": await render_template_string(
                    "{{ current_user.display_name }}|{{ current_user.is_admin }}|{{ current_user.email }}"
                ),
            }

        @app.post("/rename")
        @login_required
        async def rename():
            async with maker() as db:
                db.add(current_user._get_current_object())
                current_user.display_name = "Alice Renamed"
                await db.commit()
            return "renamed"

    env = await make_env(routes=routes)
    client = env.client()
    await env.login(client)
    probe = await (await client.get("/probe")).get_json()
    assert probe["is_user"] is True
    assert probe["detached"] is True
    assert probe["unloaded"] == []
    alice = await env.user("alice")
    assert probe["values"] == {
        "id": str(alice.id),
        "email": "alice",
        "display_name": "Alice Liddell",
        "is_admin": "True",
        "is_active": "True",
        "created_at": str(alice.created_at),
    }
    assert probe["template"] == "Alice Liddell|True|alice"

    assert (await client.post("/rename")).status_code == 200
    assert (await env.user("alice")).display_name == "Alice Renamed"
    assert await (await client.get("/protected")).get_data(as_text=True) == "hello Alice Renamed"


async def test_a_protected_request_with_a_recent_session_is_one_statement(env):
    """Once the session is recent (touch interval not elapsed), a protected GET runs exactly one statement."""
    client = env.client()
    await env.login(client)
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(env.engine.sync_engine, "before_cursor_execute", count)
    try:
        response = await client.get("/protected")
    finally:
        event.remove(env.engine.sync_engine, "before_cursor_execute", count)
    assert response.status_code == 200
    assert len(statements) == 1, statements


# -- 6-8: logout, remember, inactive users ----------------------------------------------


async def test_a_cookie_with_a_bad_signature_is_anonymous_and_dropped(env):
    """A tampered auth cookie opens nothing and the response deletes it."""
    value = cookie_value(await env.login(env.client()))
    response = await env.client().get("/whoami", headers=with_cookie(value[:-2] + "xx"))
    assert (await response.get_json())["anonymous"] is True
    assert deletes(set_cookies(response)[COOKIE])


async def test_logout_revokes_the_session_server_side_and_deletes_the_cookie(env):
    """After logout_user the old cookie opens nothing, and the logout response deletes it."""
    client = env.client()
    value = cookie_value(await env.login(client))
    assert (await env.client().get("/protected", headers=with_cookie(value))).status_code == 200
    response = await client.post("/logout")
    assert deletes(set_cookies(response)[COOKIE])
    assert await env.sessions() == []
    assert (await env.client().get("/protected", headers=with_cookie(value))).status_code == 401
    assert (await client.get("/protected")).status_code == 401


@pytest.mark.parametrize("remember", [True, False])
async def test_remember_decides_between_persistent_and_session_cookie(env, remember):
    """remember=True sets a persistent cookie (Max-Age/Expires); remember=False a session cookie."""
    response = await env.login(env.client(), remember="1" if remember else "0")
    header = set_cookies(response)[COOKIE]
    assert ("Max-Age=" in header) is remember
    assert ("Expires=" in header) is remember
    [row] = await env.sessions()
    assert row.remember is remember
    lifetime = quart_login.DEFAULTS["REMEMBER_DURATION" if remember else "SESSION_IDLE_TIMEOUT"]
    assert row.expires_at == row.created_at + timedelta(seconds=lifetime)


async def test_inactive_user_is_refused_unless_forced(env):
    """login_user refuses an inactive user (False, no session); force=True logs them in."""
    client = env.client()
    response = await env.login(client, "carol")
    assert await response.get_json() == {"ok": False, "current": None}
    assert COOKIE not in set_cookies(response)
    assert await env.sessions() == []

    response = await env.login(client, "carol", force="1")
    assert await response.get_json() == {"ok": True, "current": "Carol Idle"}
    assert COOKIE in set_cookies(response)
    [row] = await env.sessions()
    assert row.user_id == env.ids["carol"]


async def test_user_deactivated_after_login_is_anonymous_next_request(env):
    """A user made inactive after logging in is anonymous on the next request (active_column)."""
    client = env.client()
    await env.login(client)
    assert (await client.get("/protected")).status_code == 200
    await env.execute(update(User).where(User.id == env.ids["alice"]).values(is_active=False))
    response = await client.get("/whoami")
    assert (await response.get_json())["anonymous"] is True
    assert deletes(set_cookies(response)[COOKIE])


# -- 9: freshness -------------------------------------------------------------------------


async def test_fresh_login_required_accepts_fresh_refuses_stale_until_confirmed(env):
    """fresh_login_required: fresh passes, fresh=False gets 401, confirm_login fixes it, an old auth_time is stale."""
    client = env.client()
    assert (await client.get("/fresh")).status_code == 401  # anonymous
    await env.login(client)
    assert (await client.get("/fresh")).status_code == 200

    await env.login(client, fresh="0")
    assert (await client.get("/fresh")).status_code == 401
    assert (await client.get("/protected")).status_code == 200
    assert (await env.sessions())[0].auth_time is None

    assert (await client.post("/confirm")).status_code == 200
    assert (await env.sessions())[0].auth_time is not None
    assert (await client.get("/fresh")).status_code == 200

    window = quart_login.DEFAULTS["FRESH_LOGIN_WINDOW"]
    await env.age_sessions(auth_time=utcnow() - timedelta(seconds=window + 5))
    assert (await client.get("/fresh")).status_code == 401
    assert (await client.get("/protected")).status_code == 200


async def test_stale_session_redirects_to_refresh_view_with_message(make_env):
    """With REFRESH_VIEW, a stale session is redirected there and NEEDS_REFRESH_MESSAGE flashed."""
    env = await make_env({"QUART_LOGIN_REFRESH_VIEW": "reauth", "QUART_LOGIN_FRESH_LOGIN_WINDOW": 60})
    client = env.client()
    await env.login(client)
    await env.age_sessions(auth_time=utcnow() - timedelta(seconds=61))
    response = await client.get("/fresh")
    assert response.status_code == 302
    assert response.headers["Location"] == "/reauth?next=%2Ffresh"
    page = await (await client.get("/reauth")).get_json()
    assert page["flashed"] == [["message", quart_login.DEFAULTS["NEEDS_REFRESH_MESSAGE"]]]


async def test_a_stale_form_post_comes_back_to_the_page_the_form_was_on(make_env):
    """A POST cannot be redirected to: next is the path of a same-origin Referer, else there is none."""
    env = await make_env({"QUART_LOGIN_REFRESH_VIEW": "reauth", "QUART_LOGIN_FRESH_LOGIN_WINDOW": 60})
    client = env.client()
    await env.login(client)
    await env.age_sessions(auth_time=utcnow() - timedelta(seconds=61))
    cases = [
        ({"Referer": "http://localhost/settings?tab=2"}, "/reauth?next=%2Fsettings%3Ftab%3D2"),
        ({"Referer": "https://evil.example/settings"}, "/reauth"),
        ({"Referer": "javascript:alert(1)"}, "/reauth"),
        ({}, "/reauth"),
    ]
    for headers, location in cases:
        response = await client.post("/fresh", headers=headers)
        assert response.status_code == 302, headers
        assert response.headers["Location"] == location, headers


# -- 10: signals --------------------------------------------------------------------------


async def test_signals_reach_sync_and_async_receivers_with_app_and_user(env):
    """Each signal is sent with the app as sender and the user (and auth_session), to sync and async receivers."""
    names = [
        "user_logged_in",
        "user_logged_out",
        "user_unauthorized",
        "user_needs_refresh",
        "user_login_confirmed",
        "user_accessed",
    ]
    calls: list[tuple[str, str, Any, dict]] = []
    receivers = []
    for name in names:

        def sync_receiver(sender, _name=name, **kwargs):
            calls.append(("sync", _name, sender, kwargs))

        async def async_receiver(sender, _name=name, **kwargs):
            calls.append(("async", _name, sender, kwargs))

        receivers += [(getattr(quart_login, name), sync_receiver), (getattr(quart_login, name), async_receiver)]

    with contextlib.ExitStack() as stack:
        for signal, receiver in receivers:
            stack.enter_context(receiving(signal, receiver))
        client = env.client()
        await client.get("/protected")  # unauthorized
        await env.login(client, fresh="0")  # logged_in
        await client.get("/fresh")  # accessed, needs_refresh
        await client.post("/confirm")  # accessed, login_confirmed
        await client.post("/logout")  # accessed, logged_out

    alice_id = str(env.ids["alice"])
    for kind in ("sync", "async"):
        got = {name: [kwargs for k, n, sender, kwargs in calls if k == kind and n == name] for name in names}
        assert all(sender is env.app for _, _, sender, _ in calls)
        assert got["user_unauthorized"] == [{}]
        [logged_in] = got["user_logged_in"]
        assert logged_in["user"].get_id() == alice_id
        assert isinstance(logged_in["auth_session"], SessionRecord)
        assert logged_in["auth_session"].user_id == env.ids["alice"]
        [logged_out] = got["user_logged_out"]
        assert logged_out["user"].get_id() == alice_id
        assert logged_out["auth_session"].id == logged_in["auth_session"].id
        assert [call["user"].get_id() for call in got["user_login_confirmed"]] == [alice_id]
        assert got["user_needs_refresh"] == [{}]
        assert [call["user"].get_id() for call in got["user_accessed"]] == [alice_id] * 3


# -- 11-13: the callbacks ----------------------------------------------------------------


class LoadedUser(UserMixin):
    """A user a callback builds, not the store's model."""

    def __init__(self, id: Any, display_name: str) -> None:
        self.id = id
        self.display_name = display_name


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_user_loader_replaces_the_joined_user_and_gets_a_str_id(env, kind):
    """A registered user_loader gets the user id as a str; what it returns is current_user, None is anonymous."""
    seen: list[Any] = []
    refuse = False

    def load(user_id):
        seen.append(user_id)
        return None if refuse else LoadedUser(user_id, f"loaded {user_id}")

    async def load_async(user_id):
        return load(user_id)

    env.manager.user_loader(load if kind == "sync" else load_async)
    client = env.client()
    await env.login(client)
    alice_id = str(env.ids["alice"])
    who = await (await client.get("/whoami")).get_json()
    assert who == {
        "authenticated": True,
        "anonymous": False,
        "id": alice_id,
        "class": "LoadedUser",
        "display_name": f"loaded {alice_id}",
    }
    assert seen == [alice_id] and type(seen[0]) is str

    refuse = True
    response = await client.get("/whoami")
    assert (await response.get_json())["anonymous"] is True
    assert (await client.get("/protected")).status_code == 401


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_request_loader_logs_in_a_bearer_request_without_cookie(env, kind):
    """A cookieless request whose Authorization header the request_loader accepts is logged in."""

    def load(req):
        if req.headers.get("Authorization") == "Bearer key-of-bob":
            return LoadedUser(env.ids["bob"], "Bob by key")
        return None

    async def load_async(req):
        return load(req)

    env.manager.request_loader(load if kind == "sync" else load_async)
    loaded: list[Any] = []

    def on_loaded(sender, user, **kwargs):
        loaded.append((sender, user))

    with receiving(quart_login.user_loaded_from_request, on_loaded):
        client = env.client()
        response = await client.get("/protected", headers={"Authorization": "Bearer key-of-bob"})
        assert await response.get_data(as_text=True) == "hello Bob by key"
        assert (await client.get("/protected", headers={"Authorization": "Bearer wrong"})).status_code == 401
        assert (await client.get("/protected")).status_code == 401
    [(sender, user)] = loaded
    assert sender is env.app and user.display_name == "Bob by key"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_unauthorized_and_needs_refresh_handlers_replace_the_defaults(env, kind):
    """unauthorized_handler and needs_refresh_handler (sync or async) give the answer instead of 401/redirect."""
    env.manager.login_view = "login"

    def unauthorized():
        return "custom unauthorized", 418

    def needs_refresh():
        return "custom refresh", 403

    async def unauthorized_async():
        return unauthorized()

    async def needs_refresh_async():
        return needs_refresh()

    env.manager.unauthorized_handler(unauthorized if kind == "sync" else unauthorized_async)
    env.manager.needs_refresh_handler(needs_refresh if kind == "sync" else needs_refresh_async)
    client = env.client()
    response = await client.get("/protected")
    assert (response.status_code, await response.get_data(as_text=True)) == (418, "custom unauthorized")
    await env.login(client, fresh="0")
    response = await client.get("/fresh")
    assert (response.status_code, await response.get_data(as_text=True)) == (403, "custom refresh")


# -- 14-15: exemptions and the anonymous user ---------------------------------------------


async def test_exempt_methods_pass_login_required(env):
    """An OPTIONS request passes login_required (EXEMPT_METHODS) while GET does not."""
    client = env.client()
    assert (await client.get("/protected")).status_code == 401
    response = await client.options("/protected")
    assert (response.status_code, await response.get_data(as_text=True)) == (200, "hello anonymous")


async def test_login_disabled_lets_everything_through(make_env):
    """QUART_LOGIN_LOGIN_DISABLED=True makes login_required and fresh_login_required do nothing."""
    env = await make_env({"QUART_LOGIN_LOGIN_DISABLED": True})
    client = env.client()
    assert (await client.get("/protected")).status_code == 200
    assert (await client.get("/fresh")).status_code == 200


async def test_anonymous_user_is_a_new_custom_instance_per_request(make_env):
    """A custom anonymous_user class is current_user without a session, a fresh instance each request."""

    class Guest(AnonymousUserMixin):
        display_name = "Guest"

        def __init__(self) -> None:
            self.visits: list[str] = []

    def routes(app, maker):
        @app.get("/visit")
        async def visit():
            current_user.visits.append(request.path)
            return {"class": type(current_user._get_current_object()).__name__, "visits": len(current_user.visits)}

    env = await make_env(routes=routes)
    env.manager.anonymous_user = Guest
    client = env.client()
    for _ in range(2):
        assert await (await client.get("/visit")).get_json() == {"class": "Guest", "visits": 1}
    who = await (await client.get("/whoami")).get_json()
    assert (who["class"], who["display_name"], who["anonymous"]) == ("Guest", "Guest", True)


# -- 16-17: lifetimes and replacement ---------------------------------------------------


async def test_idle_and_absolute_lifetimes_slide_and_cap_and_expired_rows_are_refused(make_env):
    """Activity past the touch interval slides expires_at, capped at created_at + absolute; expired is refused."""
    env = await make_env(
        {
            "QUART_LOGIN_SESSION_IDLE_TIMEOUT": 100,
            "QUART_LOGIN_SESSION_ABSOLUTE_TIMEOUT": 1000,
            "QUART_LOGIN_SESSION_TOUCH_INTERVAL": 10,
        }
    )
    client = env.client()
    await env.login(client)
    [row] = await env.sessions()
    assert row.expires_at == row.created_at + timedelta(seconds=100)

    # Within the touch interval: nothing written.
    now = utcnow()
    await env.age_sessions(last_seen_at=now - timedelta(seconds=5), expires_at=now + timedelta(seconds=95))
    before = (await env.sessions())[0]
    assert (await client.get("/protected")).status_code == 200
    [after] = await env.sessions()
    assert (after.last_seen_at, after.expires_at) == (before.last_seen_at, before.expires_at)

    # Past it: last_seen_at and expires_at slide to now + idle.
    now = utcnow()
    await env.age_sessions(
        created_at=now - timedelta(seconds=30),
        last_seen_at=now - timedelta(seconds=20),
        expires_at=now + timedelta(seconds=80),
    )
    assert (await client.get("/protected")).status_code == 200
    [row] = await env.sessions()
    assert row.last_seen_at >= now
    assert now + timedelta(seconds=100) <= row.expires_at <= utcnow() + timedelta(seconds=100)

    # Near the absolute limit: the slide stops at created_at + absolute.
    now = utcnow()
    created = now - timedelta(seconds=950)
    await env.age_sessions(
        created_at=created, last_seen_at=now - timedelta(seconds=20), expires_at=now + timedelta(seconds=50)
    )
    assert (await client.get("/protected")).status_code == 200
    [row] = await env.sessions()
    assert row.last_seen_at >= now
    assert row.expires_at == created + timedelta(seconds=1000)

    # Expired: refused, and the browser is told to drop the cookie.
    await env.age_sessions(expires_at=utcnow() - timedelta(seconds=1))
    response = await client.get("/protected")
    assert response.status_code == 401
    assert deletes(set_cookies(response)[COOKIE])


async def test_logging_in_again_replaces_the_browsers_session(env):
    """A second login in the same browser replaces its session: one row, the old cookie dead."""
    client = env.client()
    old = cookie_value(await env.login(client))
    new = cookie_value(await env.login(client, "bob"))
    assert old != new
    [row] = await env.sessions()
    assert row.user_id == env.ids["bob"]
    assert (await env.client().get("/protected", headers=with_cookie(old))).status_code == 401
    response = await env.client().get("/protected", headers=with_cookie(new))
    assert await response.get_data(as_text=True) == "hello Bob Builder"


# -- 18: the SQLAlchemy store ----------------------------------------------------------------


def new_session(user_id: int) -> NewSession:
    return NewSession(user_id=user_id, remember=False, fresh=True, ip="127.0.0.1", user_agent="tests")


async def test_store_list_and_revoke(env):
    """list_user gives live sessions most recent first; revoke_id refuses another user's; revoke_user counts."""
    store, lifetimes = env.store, env.lifetimes
    alice, bob = env.ids["alice"], env.ids["bob"]
    started = [await store.start(new_session(alice), lifetimes) for _ in range(4)]
    s1, s2, s3, s4 = (record for _, record in started)
    _, bobs = await store.start(new_session(bob), lifetimes)
    now = utcnow()
    for record, ago in ((s1, 30), (s2, 10), (s3, 20), (s4, 5)):
        await env.execute(
            update(AuthSession).where(AuthSession.id == record.id).values(last_seen_at=now - timedelta(seconds=ago))
        )
    await env.execute(update(AuthSession).where(AuthSession.id == s4.id).values(expires_at=now - timedelta(seconds=1)))

    assert [record.id for record in await store.list_user(alice)] == [s2.id, s3.id, s1.id]
    assert [record.id for record in await store.list_user(bob)] == [bobs.id]

    assert await store.revoke_id(bob, s1.id) is False
    assert s1.id in [record.id for record in await store.list_user(alice)]
    assert await store.revoke_id(alice, s1.id) is True
    assert await store.revoke_id(alice, s1.id) is False

    assert await store.revoke_user(alice, keep=s2.id) == 2  # s3 and the expired s4
    assert [record.id for record in await store.list_user(alice)] == [s2.id]
    assert await store.revoke_user(bob) == 1
    assert await store.list_user(bob) == []


async def test_store_joins_the_callers_transaction(env):
    """start(db=...) and revoke_user(db=...) join the caller's AsyncSession: visible on commit, gone on rollback."""
    store, lifetimes, bob = env.store, env.lifetimes, env.ids["bob"]
    async with env.maker() as db:
        token, _ = await store.start(new_session(bob), lifetimes, db=db)
        assert await store.is_live(token) is False
        await db.rollback()
    assert await store.is_live(token) is False
    assert await env.sessions() == []

    async with env.maker() as db:
        token, _ = await store.start(new_session(bob), lifetimes, db=db)
        other, _ = await store.start(new_session(bob), lifetimes, db=db)
        assert await store.is_live(token) is False
        await db.commit()
    assert await store.is_live(token) and await store.is_live(other)

    async with env.maker() as db:
        assert await store.revoke_user(bob, db=db) == 2
        assert len(await store.list_user(bob)) == 2
        await db.rollback()
    assert len(await store.list_user(bob)) == 2

    async with env.maker() as db:
        assert await store.revoke_user(bob, db=db) == 2
        assert len(await store.list_user(bob)) == 2
        await db.commit()
    assert await store.list_user(bob) == []


# -- 19: the protocol ---------------------------------------------------------------------


class MemoryStore:
    """The whole AuthSessionStore protocol in a dict: digest -> record."""

    def __init__(self) -> None:
        self.sessions: dict[str, SessionRecord] = {}
        self._ids = itertools.count(1)

    async def start(self, new, lifetimes, *, replaces=None):
        if replaces is not None:
            self.sessions.pop(token_digest(replaces), None)
        token, now = new_token(), utcnow()
        record = SessionRecord(
            id=next(self._ids),
            user_id=new.user_id,
            remember=new.remember,
            created_at=now,
            last_seen_at=now,
            expires_at=lifetimes.expiry(remember=new.remember, created_at=now, now=now, duration=new.duration),
            auth_time=now if new.fresh else None,
            ip=new.ip,
            user_agent=new.user_agent,
            amr=new.amr,
            aal=new.aal,
        )
        self.sessions[token_digest(token)] = record
        return token, record

    async def resolve(self, token, lifetimes):
        record = self.sessions.get(token_digest(token))
        if record is None or record.expires_at <= utcnow():
            return None
        return Resolved(record, None)

    async def is_live(self, token):
        return await self.resolve(token, None) is not None

    async def is_open(self, session_id):
        return any(r.id == session_id and r.expires_at > utcnow() for r in self.sessions.values())

    async def rotate(self, auth_session):
        for digest, record in list(self.sessions.items()):
            if record.id == auth_session.id:
                del self.sessions[digest]
                token = new_token()
                self.sessions[token_digest(token)] = record
                return token
        return None

    async def confirm(self, auth_session, *, amr=None, aal=None):
        changes = {"auth_time": utcnow()}
        if amr is not None:
            changes["amr"] = tuple(amr)
        if aal is not None:
            changes["aal"] = aal
        changed = auth_session.with_changes(**changes)
        for digest, record in self.sessions.items():
            if record.id == auth_session.id:
                self.sessions[digest] = changed
        return changed

    async def revoke(self, token):
        return self.sessions.pop(token_digest(token), None) is not None

    async def revoke_id(self, user_id, session_id):
        for digest, record in list(self.sessions.items()):
            if record.id == session_id and record.user_id == user_id:
                del self.sessions[digest]
                return True
        return False

    async def revoke_user(self, user_id, *, keep=None):
        doomed = [d for d, r in self.sessions.items() if r.user_id == user_id and r.id != keep]
        for digest in doomed:
            del self.sessions[digest]
        return len(doomed)

    async def list_user(self, user_id):
        live = [r for r in self.sessions.values() if r.user_id == user_id and r.expires_at > utcnow()]
        return sorted(live, key=lambda r: r.last_seen_at, reverse=True)


async def test_an_in_memory_store_is_all_the_manager_needs():
    """A small in-memory AuthSessionStore with a user_loader serves login, a protected request and logout."""
    users = {"1": LoadedUser(1, "Memory One")}

    async def load_user(name):
        return users[name]

    app = build_app(load_user)
    store = MemoryStore()
    assert isinstance(store, AuthSessionStore)
    assert not isinstance(object(), AuthSessionStore)
    manager = LoginManager(store=store)
    manager.user_loader(users.get)
    manager.init_app(app)
    async with app.test_app():
        client = app.test_client()
        assert (await client.get("/protected")).status_code == 401
        response = await client.post("/do-login/1")
        assert (await response.get_json())["ok"] is True
        value = cookie_value(response)
        assert len(store.sessions) == 1
        assert await (await client.get("/protected")).get_data(as_text=True) == "hello Memory One"
        assert (await client.post("/logout")).status_code == 200
        assert store.sessions == {}
        assert (await client.get("/protected")).status_code == 401
        assert (await app.test_client().get("/protected", headers=with_cookie(value))).status_code == 401


# -- 20-22: testing helpers, the stored secret, one manager for two apps -------------------


async def test_testing_login_client_and_logout_client(env):
    """quart_login.testing.login_client logs a test client in, logout_client logs it out (server-side)."""
    client = env.client()
    record = await login_client(client, await env.user("alice"))
    assert [row.id for row in await env.sessions()] == [record.id]
    assert await (await client.get("/protected")).get_data(as_text=True) == "hello Alice Liddell"
    await logout_client(client)
    assert await env.sessions() == []
    assert (await client.get("/protected")).status_code == 401


async def test_database_keeps_only_the_sha256_of_the_cookies_secret(env):
    """The session row holds SHA-256(secret) and never the secret carried by the signed cookie."""
    value = cookie_value(await env.login(env.client()))
    token = env.app.extensions["quart_login"].cookie.load_token(value, app=env.app)
    assert token
    [row] = await env.sessions()
    assert row.token_hash == token_digest(token)
    assert len(row.token_hash) == 64 and row.token_hash != token
    stored = [str(getattr(row, column.key)) for column in sa_inspect(AuthSession).column_attrs]
    assert not any(token in field or value in field for field in stored)


async def test_one_manager_serves_two_apps_with_their_own_store_and_cookie(make_env):
    """A module-level LoginManager init_app'd on two apps: each uses its own store and cookie settings."""
    manager = LoginManager(store=MemoryStore())  # a default store: the ones given to init_app win
    one = await make_env({"QUART_LOGIN_COOKIE_NAME": "one"}, manager=manager)
    two = await make_env({"QUART_LOGIN_COOKIE_NAME": "two", "SECRET_KEY": "another-secret"}, manager=manager)
    assert one.app.extensions["quart_login"].store is one.store
    assert two.app.extensions["quart_login"].store is two.store

    client_one, client_two = one.client(), two.client()
    response = await one.login(client_one)
    assert set(set_cookies(response)) >= {"one"} and "two" not in set_cookies(response)
    assert len(await one.sessions()) == 1 and await two.sessions() == []
    response = await two.login(client_two, "bob")
    assert "two" in set_cookies(response) and "one" not in set_cookies(response)
    assert len(await one.sessions()) == 1 and len(await two.sessions()) == 1

    assert await (await client_one.get("/protected")).get_data(as_text=True) == "hello Alice Liddell"
    assert await (await client_two.get("/protected")).get_data(as_text=True) == "hello Bob Builder"
    value = cookie_value(response, "two")
    assert (await one.client().get("/protected", headers=with_cookie(value, "one"))).status_code == 401


# -- 23-24: the import rule, websockets ---------------------------------------------------


def test_quart_login_never_imports_quart_app():
    """No module of quart_login imports quart_app, statically or at run time."""
    offenders = []
    for path in sorted((ROOT / "quart_login").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [f"{path}: {name}" for name in names if name == "quart_app" or name.startswith("quart_app.")]
    assert offenders == []
    code = (
        "import quart_login, quart_login.sqlalchemy_store, quart_login.testing, sys; "
        "assert not any(m == 'quart_app' or m.startswith('quart_app.') for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, timeout=60)


async def test_current_user_is_resolved_for_websockets(env):
    """A websocket handler sees the logged-in user (from the cookie), or an anonymous one."""
    client = env.client()
    await env.login(client)
    async with client.websocket("/ws") as ws:
        assert await ws.receive_json() == {"authenticated": True, "display_name": "Alice Liddell"}
    async with env.client().websocket("/ws") as ws:
        assert await ws.receive_json() == {"authenticated": False, "display_name": None}


async def test_login_required_on_a_websocket_refuses_anonymous_handshakes(env):
    """login_required on a websocket route lets a logged-in client in and refuses an anonymous one with 401."""
    client = env.client()
    await env.login(client)
    async with client.websocket("/ws/protected") as ws:
        assert await ws.receive() == "hello Alice Liddell"
    with pytest.raises(WebsocketResponseError) as refused:
        async with env.client().websocket("/ws/protected") as ws:
            await ws.receive()
    assert refused.value.response.status_code == 401


# -- requirements: checks login_required makes of a logged-in user ----------------------


def _requirement_routes(app: Quart, _maker) -> None:
    @app.post("/leave")
    @login_required
    @quart_login.exempt_from("admin")
    async def leave():
        return "left"

    @app.get("/fresh-admin")
    @fresh_login_required
    async def fresh_admin():
        return "fresh admin"


async def test_a_requirement_answers_its_handler_and_exempt_views_skip_it(make_env):
    """``requirement`` runs on every login_required view; ``exempt_from`` opts one out; anonymous users get 401."""
    manager = LoginManager()
    failed: list[str] = []

    @manager.requirement("admin")
    async def is_admin(user) -> bool:
        return user.is_admin

    @manager.requirement_failed_handler
    def refused(name: str):
        failed.append(name)
        return {"unmet": name}, 403

    env = await make_env(manager=manager, routes=_requirement_routes)
    anonymous = env.client()
    assert (await anonymous.get("/protected")).status_code == 401
    bob = env.client()
    await env.login(bob, "bob")
    for path in ("/protected", "/fresh-admin"):
        response = await bob.get(path)
        assert response.status_code == 403 and await response.get_json() == {"unmet": "admin"}
    assert (await bob.post("/leave")).status_code == 200  # exempt
    alice = env.client()
    await env.login(alice, "alice")
    assert (await alice.get("/protected")).status_code == 200
    assert (await alice.get("/fresh-admin")).status_code == 200
    assert failed == ["admin", "admin"]


async def test_a_requirement_without_a_handler_is_403(make_env):
    manager = LoginManager()
    manager.requirement("admin")(lambda user: user.is_admin)
    env = await make_env(manager=manager)
    bob = env.client()
    await env.login(bob, "bob")
    assert (await bob.get("/protected")).status_code == 403


# -- assurance: amr, aal, step-up, aal_required, factor_within ----------------------------


STEP_UP_MESSAGE = quart_login.DEFAULTS["STEP_UP_MESSAGE"]
JSON = {"Accept": "application/json"}


def _assurance_routes(app: Quart, _maker) -> None:
    @app.post("/step-up")
    @login_required
    async def do_step_up():
        aal = request.args.get("aal")
        record = await quart_login.step_up(request.args["methods"].split(","), aal=int(aal) if aal else None)
        return {
            "amr": list(record.amr),
            "aal": record.aal,
            "current_aal": quart_login.current_aal(),
            "auth_age": quart_login.auth_age(),
        }

    @app.get("/assurance")
    async def assurance():
        record = quart_login.current_auth_session()
        return {
            "amr": None if record is None else list(record.amr),
            "aal": quart_login.current_aal(),
            "auth_age": quart_login.auth_age(),
        }

    @app.get("/aal2")
    @quart_login.aal_required(2)
    async def aal2():
        return "aal2"

    async def level_of(user) -> int:
        return 2 if user.is_admin else 1

    @app.get("/aal-admin")
    @quart_login.aal_required(level_of)
    async def aal_admin():
        return "aal admin"

    @app.get("/within")
    @quart_login.factor_within(60)
    async def within():
        return "within"

    @app.get("/within-td")
    @quart_login.factor_within(timedelta(minutes=1))
    async def within_td():
        return "within td"

    @app.get("/both")
    @quart_login.aal_required(2)
    @quart_login.factor_within(60)
    async def both():
        return "both"

    @app.websocket("/ws/aal2")
    @quart_login.aal_required(2)
    async def ws_aal2():
        await websocket.send("aal2")


@pytest.fixture
async def assured(make_env) -> Env:
    return await make_env(routes=_assurance_routes)


@pytest.mark.parametrize(
    ("amr", "aal"),
    [
        ((), 1),
        (("pwd",), 1),
        (("otp",), 1),  # one factor, whichever it is
        (("rec",), 1),
        (("pwd", "otp"), 2),
        (("pwd", "rec"), 2),
        (("pwd", "webauthn"), 2),
        (("webauthn",), 2),  # a passkey with user verification
        (("pwd", "sms-ish"), 1),  # a name the extension does not know adds nothing
    ],
)
def test_assurance_level_is_two_for_two_kinds_of_factor_or_a_passkey(amr, aal):
    assert quart_login.assurance_level(amr) == aal


@pytest.mark.parametrize("bad", ["pwd,otp", "", "PWD", "a" * 17, 7, ["pwd", None]])
def test_a_bad_method_name_is_refused(bad):
    from quart_login.store import normalize_amr

    with pytest.raises(ValueError):
        normalize_amr(bad if isinstance(bad, list) else [bad])


def test_methods_are_kept_once_in_the_order_first_presented():
    from quart_login.store import normalize_amr

    assert normalize_amr("otp") == ("otp",)
    assert normalize_amr(["pwd", "otp", "pwd", "rec"]) == ("pwd", "otp", "rec")
    with pytest.raises(ValueError):
        normalize_amr([f"m{i:02d}" for i in range(20)])  # longer than the column's 64 characters


@pytest.mark.parametrize(
    ("args", "amr", "aal"),
    [
        ({}, ("pwd",), 1),
        ({"amr": "pwd,otp"}, ("pwd", "otp"), 2),
        ({"amr": "webauthn"}, ("webauthn",), 2),
        ({"amr": "webauthn", "aal": "1"}, ("webauthn",), 1),  # a passkey without user verification
    ],
)
async def test_login_user_records_the_methods_and_their_level(assured, args, amr, aal):
    """login_user keeps amr (a tuple; "pwd,otp" in the column) and aal on the row and this request's record."""
    client = assured.client()
    await assured.login(client, **args)
    [row] = await assured.sessions()
    assert (row.amr, row.aal) == (amr, aal)
    async with assured.engine.connect() as connection:
        [stored] = (await connection.exec_driver_sql("SELECT amr FROM ql_auth_sessions")).scalars()
    assert stored == ",".join(amr)
    seen = await (await client.get("/assurance")).get_json()
    assert (tuple(seen["amr"]), seen["aal"]) == (amr, aal)
    assert 0 <= seen["auth_age"] < 60


async def test_step_up_adds_the_factor_raises_the_level_and_moves_auth_time(assured):
    """step_up: the method joins amr, aal is recomputed (never lowered), auth_time is now; user_stepped_up is sent."""
    client = assured.client()
    await assured.login(client, fresh="0")
    assert (await assured.sessions())[0].auth_time is None
    sent: list[dict] = []

    def receiver(sender, **kwargs):
        sent.append(kwargs)

    with receiving(quart_login.user_stepped_up, receiver):
        body = await (await client.post("/step-up", query_string={"methods": "otp"})).get_json()
    assert body["amr"] == ["pwd", "otp"] and body["aal"] == 2 and body["current_aal"] == 2
    assert 0 <= body["auth_age"] < 5
    [row] = await assured.sessions()
    assert (row.amr, row.aal) == (("pwd", "otp"), 2)
    assert row.auth_time is not None
    [signal] = sent
    assert signal["methods"] == ("otp",) and signal["auth_session"].aal == 2
    assert signal["user"].get_id() == str(assured.ids["alice"])

    # A password presented again later: auth_time moves, the methods and the level stay.
    old = utcnow() - timedelta(hours=1)
    await assured.age_sessions(auth_time=old)
    body = await (await client.post("/step-up", query_string={"methods": "pwd"})).get_json()
    assert body["amr"] == ["pwd", "otp"] and body["aal"] == 2
    [row] = await assured.sessions()
    assert row.auth_time > old + timedelta(minutes=59)
    # An explicit level raises it, never lowers it.
    body = await (await client.post("/step-up", query_string={"methods": "pwd", "aal": "1"})).get_json()
    assert body["aal"] == 2
    body = await (await client.post("/step-up", query_string={"methods": "webauthn", "aal": "3"})).get_json()
    assert (body["amr"], body["aal"]) == (["pwd", "otp", "webauthn"], 3)


async def test_confirm_login_records_a_password_and_keeps_flask_logins_signal(assured):
    """confirm_login(): auth_time now, "pwd" in amr (already there), user_login_confirmed, not user_stepped_up."""
    client = assured.client()
    await assured.login(client, amr="otp")  # (an odd login, to see "pwd" join)
    stepped: list[dict] = []
    with receiving(quart_login.user_stepped_up, lambda sender, **kwargs: stepped.append(kwargs)):
        assert (await client.post("/confirm")).status_code == 200
    [row] = await assured.sessions()
    assert (row.amr, row.aal) == (("otp", "pwd"), 2)
    assert stepped == []


async def test_aal_required_answers_a_step_up_until_a_second_factor(assured):
    """aal_required(2): anonymous 401 (unauthorized); AAL 1: 401 {"error": STEP_UP_MESSAGE}; after step_up: 200."""
    client = assured.client()
    assert (await client.get("/aal2", headers=JSON)).status_code == 401
    await assured.login(client)
    response = await client.get("/aal2", headers=JSON)
    assert response.status_code == 401
    assert await response.get_json() == {"error": STEP_UP_MESSAGE}
    assert (await client.get("/aal2")).status_code == 401  # no STEP_UP_VIEW: 401 for browsers too
    await client.post("/step-up", query_string={"methods": "otp"})
    assert await (await client.get("/aal2")).get_data(as_text=True) == "aal2"

    other = assured.client()
    await assured.login(other, amr="pwd,rec")
    assert (await other.get("/aal2")).status_code == 200


async def test_aal_required_takes_a_level_per_user(assured):
    """aal_required(level_of): the level may depend on the user (async here): 2 for alice, 1 for bob."""
    alice, bob = assured.client(), assured.client()
    await assured.login(alice, "alice")
    await assured.login(bob, "bob")
    assert (await alice.get("/aal-admin")).status_code == 401
    assert (await bob.get("/aal-admin")).status_code == 200
    await alice.post("/step-up", query_string={"methods": "webauthn"})
    assert (await alice.get("/aal-admin")).status_code == 200


async def test_factor_within_refuses_an_old_or_missing_auth_time(assured):
    """factor_within(60): a factor 61 s ago or never (fresh=False) gets the step-up answer; a step-up cures it."""
    client = assured.client()
    await assured.login(client)
    for path in ("/within", "/within-td"):
        assert (await client.get(path)).status_code == 200
    await assured.age_sessions(auth_time=utcnow() - timedelta(seconds=61))
    for path in ("/within", "/within-td"):
        response = await client.get(path, headers=JSON)
        assert response.status_code == 401 and await response.get_json() == {"error": STEP_UP_MESSAGE}
    assert (await client.get("/protected")).status_code == 200  # still logged in
    await client.post("/step-up", query_string={"methods": "pwd"})
    assert (await client.get("/within")).status_code == 200

    await assured.login(client, fresh="0")
    assert (await client.get("/within")).status_code == 401


async def test_aal_required_and_factor_within_stack(assured):
    client = assured.client()
    await assured.login(client, amr="pwd,otp")
    assert (await client.get("/both")).status_code == 200
    await assured.age_sessions(auth_time=utcnow() - timedelta(seconds=61))
    assert (await client.get("/both")).status_code == 401  # AAL 2, but not recent
    await assured.login(client)
    assert (await client.get("/both")).status_code == 401  # recent, but AAL 1


async def test_step_up_view_redirects_browsers_with_the_message(make_env):
    """With STEP_UP_VIEW, a browser is redirected there with next and STEP_UP_MESSAGE flashed; JSON still 401."""
    env = await make_env({"QUART_LOGIN_STEP_UP_VIEW": "reauth"}, routes=_assurance_routes)
    client = env.client()
    await env.login(client)
    response = await client.get("/aal2?x=1", headers={"Accept": "text/html"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/reauth?next=%2Faal2%3Fx%3D1"
    page = await (await client.get("/reauth")).get_json()
    assert page["flashed"] == [["message", STEP_UP_MESSAGE]]
    assert (await client.get("/aal2", headers=JSON)).status_code == 401
    env.manager.step_up_view = "login"  # the attribute wins, as for the other views
    assert (await client.get("/aal2")).headers["Location"] == "/login?next=%2Faal2"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_needs_step_up_handler_gets_the_level_or_the_age_asked(assured, kind):
    """needs_step_up_handler (sync or async) answers instead of the default, with aal= and max_age=."""
    asked: list[dict] = []

    def handler(**kwargs):
        asked.append(kwargs)
        return {"step_up": kwargs}, 403

    async def handler_async(**kwargs):
        return handler(**kwargs)

    assured.manager.needs_step_up_handler(handler if kind == "sync" else handler_async)
    signalled: list[dict] = []
    client = assured.client()
    await assured.login(client, fresh="0")
    with receiving(quart_login.user_needs_step_up, lambda sender, **kwargs: signalled.append(kwargs)):
        response = await client.get("/aal2")
        assert (response.status_code, await response.get_json()) == (403, {"step_up": {"aal": 2, "max_age": None}})
        response = await client.get("/within")
        assert (response.status_code, await response.get_json()) == (403, {"step_up": {"aal": None, "max_age": 60}})
    assert asked == signalled == [{"aal": 2, "max_age": None}, {"aal": None, "max_age": 60.0}]


async def test_assurance_decorators_keep_requirements_and_exemptions(make_env):
    """aal_required runs the requirements first (their answer wins) and honours exempt_from."""
    manager = LoginManager()
    manager.requirement("admin")(lambda user: user.is_admin)

    def routes(app, maker):
        _assurance_routes(app, maker)

        @app.get("/aal2-exempt")
        @quart_login.aal_required(2)
        @quart_login.exempt_from("admin")
        async def aal2_exempt():
            return "exempt"

    env = await make_env(manager=manager, routes=routes)
    bob = env.client()
    await env.login(bob, "bob", amr="pwd,otp")
    assert (await bob.get("/aal2")).status_code == 403  # the requirement
    assert (await bob.get("/aal2-exempt")).status_code == 200


async def test_aal_required_on_a_websocket_refuses_the_handshake(assured):
    client = assured.client()
    await assured.login(client)
    with pytest.raises(WebsocketResponseError) as refused:
        async with client.websocket("/ws/aal2") as ws:
            await ws.receive()
    assert refused.value.response.status_code == 401
    await client.post("/step-up", query_string={"methods": "otp"})
    async with client.websocket("/ws/aal2") as ws:
        assert await ws.receive() == "aal2"


def test_decorators_refuse_a_bad_level_or_window():
    with pytest.raises(ValueError):
        quart_login.aal_required(0)
    with pytest.raises(ValueError):
        quart_login.factor_within(-1)


async def test_a_request_at_aal_2_through_aal_required_is_one_statement(assured):
    """The extra columns ride on the one resolve query: aal_required and factor_within cost no statement."""
    client = assured.client()
    await assured.login(client, amr="pwd,otp")
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(assured.engine.sync_engine, "before_cursor_execute", count)
    try:
        response = await client.get("/both")
    finally:
        event.remove(assured.engine.sync_engine, "before_cursor_execute", count)
    assert response.status_code == 200
    assert len(statements) == 1, statements


async def test_a_raw_lookup_decodes_amr_as_the_store_does(assured):
    """compile_for's resolve statement (a driver's own connection) gives amr as a tuple too."""
    import sqlite3

    from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

    response = await assured.login(assured.client(), amr="pwd,otp")
    token = assured.app.extensions["quart_login"].cookie.load_token(cookie_value(response), app=assured.app)
    resolve = assured.store.compile_for(sqlite_dialect())["resolve"]
    path = assured.engine.url.database
    with contextlib.closing(sqlite3.connect(path)) as connection:
        found = connection.execute(resolve.sql, resolve.params(digest=token_digest(token), now=utcnow())).fetchone()
    record = assured.store.build(resolve.decode(found)).auth_session
    assert (record.amr, record.aal) == (("pwd", "otp"), 2)


async def test_the_in_memory_store_steps_up_too():
    """The protocol's confirm(amr=, aal=) in a store of one's own: MemoryStore serves aal_required."""
    users = {"1": LoadedUser(1, "Memory One")}

    async def load_user(name):
        return users[name]

    app = build_app(load_user)
    _assurance_routes(app, None)
    store = MemoryStore()
    manager = LoginManager(store=store)
    manager.user_loader(users.get)
    manager.init_app(app)
    async with app.test_app():
        client = app.test_client()
        await client.post("/do-login/1")
        assert (await client.get("/aal2")).status_code == 401
        await client.post("/step-up", query_string={"methods": "otp"})
        assert (await client.get("/aal2")).status_code == 200
        [record] = store.sessions.values()
        assert (record.amr, record.aal) == (("pwd", "otp"), 2)


async def test_login_client_takes_the_methods(assured):
    record = await login_client(client := assured.client(), await assured.user("alice"), amr=("pwd", "otp"))
    assert (record.amr, record.aal) == (("pwd", "otp"), 2)
    assert (await client.get("/aal2")).status_code == 200


# Known names and others (at most 6 characters: eight of them still fit the column's 64).
_METHOD_NAMES = st.one_of(
    st.sampled_from(["pwd", "otp", "rec", "webauthn"]), st.from_regex(r"[a-z][a-z0-9_-]{0,5}", fullmatch=True)
)


@settings(max_examples=200, deadline=None)
@given(first=st.lists(_METHOD_NAMES, max_size=4), more=st.lists(_METHOD_NAMES, max_size=4))
def test_amr_round_trips_and_the_level_never_drops_as_methods_are_added(first, more):
    """Any valid list: the column's text reads back as the same tuple; adding methods never lowers the level."""
    from quart_login.sqlalchemy_store import MethodList
    from quart_login.store import normalize_amr

    amr = normalize_amr(first)
    assert normalize_amr(amr) == amr
    column = MethodList()
    stored = column.process_bind_param(amr, None)
    assert "," not in "".join(amr) and len(stored) <= 64
    assert column.process_result_value(stored, None) == amr
    merged = normalize_amr((*amr, *more))
    assert merged[: len(amr)] == amr
    assert quart_login.assurance_level(merged) >= quart_login.assurance_level(amr)
    assert quart_login.assurance_level(merged) in (1, 2)
