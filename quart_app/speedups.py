"""Every measured speed-up of the app, in one place, each switchable by ``QUART_APP_SPEEDUPS``.

``QUART_APP_SPEEDUPS`` is ``all`` (the default), ``none``, a comma-separated
list of names, or ``all`` minus some (``all,-gc_freeze``). Each entry below
says what it does and which library internals it relies on; with it off, the
app runs the plain library path, so ``bench/ab.py`` can measure it
(``bench/ab.py HEAD HEAD --old-env QUART_APP_SPEEDUPS=all,-NAME``).

=========================  ==================================================================
name                       what, and the library internals it touches
=========================  ==================================================================
``gc_freeze``              objects made at startup are frozen out of full garbage collections
                           (``gc.freeze`` in before_serving): those passes walked every module
                           and paused the event loop for tens of milliseconds. Public API.
``sync_templates``         pages render with Jinja's plain (sync) mode through an overlay of
                           ``app.jinja_env`` (same loader, globals, filters): Quart compiles in
                           async mode, where every piece of output passes an async generator.
                           Touches ``Quart.update_template_context`` (its 0.22 and 0.23
                           signatures), ``quart.globals.app_ctx`` and Quart's template signals.
``link_cache``             ``url_for`` in templates remembers plain links per script root and
                           host (a page builds the same six links each time). Public API.
``cookie_serializers``     itsdangerous serializers built once per set of keys, not per request
                           (Quart's ``SecureCookieSessionInterface.get_signing_serializer`` and
                           Quart-Auth's ``dump_token``/``load_token`` are overridden), and no
                           zlib on what they sign (itsdangerous' ``URLSafeSerializerMixin``
                           ``dump_payload``, whose base class is called directly).
``verified_cookies``       an auth cookie whose signature checked out is remembered per worker
                           (bounded; its max age still applies; forgotten on a key change):
                           no HMAC per page view. Revocation is unaffected (the row is read on
                           every request). Overrides Quart-Auth's ``load_token``.
``no_sync_context_processor``  blueprints drop Flask's sync default context processor
                           (``flask.templating._default_template_ctx_processor``, private),
                           which Quart ran on a thread for every render; the app's async one
                           gives the same names.
``raw_session_lookup``     the per-request session lookup (and the live channel's check) runs
                           the store's own compiled statements on each SQLite thread's sqlite3
                           connection, or on a pooled asyncpg connection, with no Session or
                           ORM in between. Uses ``SQLCompiler.positiontup``/``binds`` and the
                           types' bind and result processors (quart_login's ``compile_raw``).
``asyncpg_pool``           on PostgreSQL, those statements run on a pool of plain asyncpg
                           connections (``quart_app.db.StatementPool``) instead of connections
                           checked out of SQLAlchemy's pool: no pre-ping (three round trips
                           with asyncpg), no reset query on release, no overflow connections
                           opened and closed with each burst; a connection the server ended
                           is replaced and the statement run once more. Needs
                           ``raw_session_lookup``. asyncpg's public ``create_pool(reset=...)``.
=========================  ==================================================================
"""

from __future__ import annotations

import gc
import inspect
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from flask.templating import _default_template_ctx_processor as flask_default_context_processor
from itsdangerous import BadSignature, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode
from itsdangerous.url_safe import URLSafeSerializerMixin
from quart import Quart, current_app, has_request_context, request
from quart.globals import app_ctx
from quart.sessions import SecureCookieSessionInterface
from quart.signals import before_render_template, template_rendered
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from quart_login import Lifetimes, LoginManager
from quart_login.cookie import AuthCookie
from quart_login.sqlalchemy_store import SQLAlchemyAuthSessionStore

from .core.config import ConfigError, Settings
from .db import Database, StatementPool, asyncpg_connection, run_sqlite
from .rendering import RENDERER

SPEEDUPS = (
    "gc_freeze",
    "sync_templates",
    "link_cache",
    "cookie_serializers",
    "verified_cookies",
    "no_sync_context_processor",
    "raw_session_lookup",
    "asyncpg_pool",
)
EXTENSION = "quart_app.speedups"


def parse(text: str) -> frozenset[str]:
    """The speed-ups a ``QUART_APP_SPEEDUPS`` value turns on."""
    chosen: set[str] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part == "all":
            chosen.update(SPEEDUPS)
        elif part == "none":
            chosen.clear()
        elif part.startswith("-") and part[1:] in SPEEDUPS:
            chosen.discard(part[1:])
        elif part in SPEEDUPS:
            chosen.add(part)
        else:
            raise ConfigError(
                f"QUART_APP_SPEEDUPS: unknown speed-up {part!r} (known: all, none, {', '.join(SPEEDUPS)})"
            )
    return frozenset(chosen)


def prepare_login_manager(manager: LoginManager, settings: Settings) -> None:
    """Before ``init_app``: the auth cookie's class, with the cookie speed-ups that are on."""
    chosen = parse(settings.SPEEDUPS)
    bases: list[type] = []
    if "verified_cookies" in chosen:
        bases.append(VerifiedCookies)
    if "cookie_serializers" in chosen:
        bases.append(CachedSerializers)
    if bases:
        manager.cookie_class = type("FastAuthCookie", (*bases, AuthCookie), {})


def install(app: Quart, settings: Settings, *, database: Database, store: SQLAlchemyAuthSessionStore) -> None:
    """After the app is built: the rest of the speed-ups that are on."""
    chosen = parse(settings.SPEEDUPS)
    app.extensions[EXTENSION] = chosen
    if "cookie_serializers" in chosen:
        app.session_interface = CachedSessionInterface()
    if "sync_templates" in chosen or "link_cache" in chosen:
        app.extensions[RENDERER] = Pages(app, sync="sync_templates" in chosen, links="link_cache" in chosen).render
    if "no_sync_context_processor" in chosen:
        for name, processors in app.template_context_processors.items():
            if name is not None:
                processors[:] = [p for p in processors if p is not flask_default_context_processor]
    if "raw_session_lookup" in chosen:
        pool = StatementPool(settings) if "asyncpg_pool" in chosen else None

        @app.before_serving
        async def _raw_lookup() -> None:
            await install_raw_lookup(store, database, pool)

        @app.after_serving
        async def _close_pool() -> None:
            if pool is not None:
                await pool.close()

    if "gc_freeze" in chosen:
        # Registered last, so that it runs once everything is built.
        @app.before_serving
        async def _freeze() -> None:
            gc.collect()
            gc.freeze()

        @app.after_serving
        async def _unfreeze() -> None:
            gc.unfreeze()


# -- templates: sync_templates, link_cache --------------------------------------

# Quart 0.23 passes the app context to update_template_context; 0.22 does not.
_CONTEXT_TAKES_APP_CTX = "ctx" in inspect.signature(Quart.update_template_context).parameters
_LINKS_KEPT = 512  # links remembered per app (a few dozen in practice)


class Pages:
    """``render`` for one app: plain-mode Jinja and/or remembered links."""

    def __init__(self, app: Quart, *, sync: bool, links: bool) -> None:
        self.app = app
        # Its own template cache: a copy of the async environment's would hold
        # templates compiled for async mode.
        self.environment = app.jinja_env.overlay(enable_async=False, cache_size=400) if sync else None
        self.links = links
        self._links: dict[tuple, str] = {}

    def url_for(self, root: tuple[str, str]) -> Callable[..., str]:
        """``url_for`` for the pages of a request with this script root and host."""
        app, links = self.app, self._links

        def url_for(endpoint: str, **values: Any) -> str:
            # Blueprint-relative names and _external/_anchor/... go to Quart.
            if endpoint.startswith(".") or any(name.startswith("_") for name in values):
                return app.url_for(endpoint, **values)
            key = (root, endpoint, tuple(sorted(values.items())))
            try:
                link = links.get(key)
            except TypeError:  # a value that cannot be a key (a list, ...)
                return app.url_for(endpoint, **values)
            if link is None:
                link = app.url_for(endpoint, **values)
                if len(links) >= _LINKS_KEPT:
                    links.clear()
                links[key] = link
            return link

        return url_for

    async def render(self, template_name: str, context: dict[str, Any]) -> str:
        app = self.app
        if self.links and has_request_context() and not any(app.url_default_functions.values()):
            context.setdefault("url_for", self.url_for((request.root_path, request.host)))
        if self.environment is None:
            from quart import render_template

            return await render_template(template_name, **context)
        if _CONTEXT_TAKES_APP_CTX:
            await app.update_template_context(app_ctx._get_current_object(), context)
        else:
            await app.update_template_context(context)
        template = self.environment.get_template(template_name)
        if before_render_template.receivers:
            await before_render_template.send_async(
                app, _sync_wrapper=app.ensure_async, template=template, context=context
            )
        page = template.render(context)
        if template_rendered.receivers:
            await template_rendered.send_async(app, _sync_wrapper=app.ensure_async, template=template, context=context)
        return page


# -- cookies: cookie_serializers, verified_cookies ------------------------------


class PlainPayload:
    """For a URL-safe itsdangerous serializer: write the payload uncompressed (read either form)."""

    def dump_payload(self, obj: Any) -> bytes:
        # The JSON as Serializer writes it, base64 without the compression step.
        return base64_encode(super(URLSafeSerializerMixin, self).dump_payload(obj))  # type: ignore[misc]


class PlainSerializer(PlainPayload, URLSafeTimedSerializer):
    pass


def signing_keys(app: Quart) -> tuple[Any, ...]:
    """Fallback keys first, the current key last (what itsdangerous expects)."""
    return (*(app.config.get("SECRET_KEY_FALLBACKS") or ()), app.secret_key)


class SerializerCache:
    """One serializer per set of keys; rebuilt only if the keys change."""

    def __init__(self, build: Callable[[list[Any]], URLSafeTimedSerializer]) -> None:
        self._build = build
        self._keys: tuple[Any, ...] | None = None
        self._serializer: URLSafeTimedSerializer | None = None

    def get(self, app: Quart) -> URLSafeTimedSerializer:
        keys = signing_keys(app)
        if self._serializer is None or keys != self._keys:
            self._serializer = self._build(list(keys))
            self._keys = keys
        return self._serializer


class CachedSessionInterface(SecureCookieSessionInterface):
    """Quart's signed-cookie session, with its serializer cached and its payload uncompressed."""

    def __init__(self) -> None:
        self._cache = SerializerCache(
            lambda keys: PlainSerializer(
                keys,
                salt=self.salt,
                serializer=self.serializer,
                signer_kwargs={"key_derivation": self.key_derivation, "digest_method": self.digest_method},
            )
        )

    def get_signing_serializer(self, app: Quart) -> URLSafeTimedSerializer | None:
        if not app.secret_key:
            return None
        return self._cache.get(app)


class CachedSerializers:
    """Mixed into the auth cookie: Quart-Auth's serializer (SHA-512), built once per key set, uncompressed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        plain = type("PlainAuthSerializer", (PlainPayload, self.serializer_class), {})
        self._serializers = SerializerCache(lambda keys: plain(keys, self.salt))

    def serializer(self, app: Quart | None = None) -> URLSafeTimedSerializer:
        return self._serializers.get(app or current_app)

    def dump_token(self, auth_id: str, app: Quart | None = None) -> str:
        return self.serializer(app).dumps(auth_id)

    def load_token(self, token: str, app: Quart | None = None) -> str | None:
        try:
            return self.serializer(app).loads(token, max_age=self.duration)
        except BadSignature:  # SignatureExpired is one
            return None


VERIFIED_COOKIES = 4096  # remembered per worker process


class VerifiedCookies:
    """Mixed into the auth cookie: a cookie that verified is remembered with its signing time and keys."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # token -> (auth id, signing time, the keys that verified it)
        self._verified: dict[str, tuple[str, float, tuple]] = {}

    def load_token(self, token: str, app: Quart | None = None) -> str | None:
        app = app or current_app
        keys = signing_keys(app)
        known = self._verified.get(token)
        if known is not None and known[2] == keys and time.time() - known[1] <= self.duration:
            return known[0]
        if isinstance(self, CachedSerializers):
            serializer = self.serializer(app)
        else:
            serializer = self.serializer_class(list(keys), self.salt)  # type: ignore[attr-defined]
        try:
            auth_id, signed_at = serializer.loads(token, max_age=self.duration, return_timestamp=True)
        except BadSignature:
            return None
        if len(self._verified) >= VERIFIED_COOKIES:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified[token] = (auth_id, signed_at.timestamp(), keys)
        return auth_id


# -- raw_session_lookup ------------------------------------------------------------


async def install_raw_lookup(
    store: SQLAlchemyAuthSessionStore, database: Database, pool: StatementPool | None = None
) -> None:
    """Point the store's lookups at the SQLite threads' or asyncpg's own connections, if the app has them.

    On asyncpg, ``pool`` (speed-up ``asyncpg_pool``) runs them; without it they
    run on connections checked out of the engine's pool.
    """
    if database._threads is not None:
        _sqlite_lookup(store, database)
    elif database.engine is not None and database.engine.dialect.driver == "asyncpg":
        if pool is not None:
            await pool.open(database.engine)
            _asyncpg_lookup(store, pool.run)
        else:
            _asyncpg_lookup(store, _on_engine_connection)


def _sqlite_lookup(store: SQLAlchemyAuthSessionStore, database: Database) -> None:
    raw = store.compile_for(sqlite_dialect())
    resolve, is_open, touch = raw["resolve"], raw["open"], raw["touch"]

    async def lookup(digest: str, now: datetime, lifetimes: Lifetimes) -> tuple | None:
        params = resolve.params(digest=digest, now=now)

        def work(connection: sqlite3.Connection) -> tuple | None:
            found = connection.execute(resolve.sql, params).fetchone()
            if found is None:
                return None
            row = resolve.decode(found)
            if (values := store.touch_values(row, now, lifetimes)) is not None:
                connection.execute(touch.sql, touch.params(**values))
            return row

        return await run_sqlite(database, work)

    async def open_lookup(session_id: Any, now: datetime) -> datetime | None:
        params = is_open.params(session_id=session_id, now=now)

        def work(connection: sqlite3.Connection) -> datetime | None:
            found = connection.execute(is_open.sql, params).fetchone()
            return None if found is None else is_open.decode(found)[0]

        return await run_sqlite(database, work)

    store.lookup, store.open_lookup = lookup, open_lookup


async def _on_engine_connection(work: Callable[[Any], Awaitable[Any]]) -> Any:
    """``await work(connection)`` on the asyncpg connection of a connection checked out of the engine's pool."""
    async with asyncpg_connection() as connection:
        return await work(connection)


def _asyncpg_lookup(store: SQLAlchemyAuthSessionStore, run: Callable[[Callable[[Any], Awaitable[Any]]], Any]) -> None:
    raw = store.compile_for(asyncpg_dialect())
    resolve, is_open, touch = raw["resolve"], raw["open"], raw["touch"]

    async def lookup(digest: str, now: datetime, lifetimes: Lifetimes) -> tuple | None:
        resolve_params = resolve.params(digest=digest, now=now)

        async def work(connection: Any) -> tuple | None:
            found = await connection.fetchrow(resolve.sql, *resolve_params)
            if found is None:
                return None
            row = resolve.decode(found)
            if (values := store.touch_values(row, now, lifetimes)) is not None:
                await connection.execute(touch.sql, *touch.params(**values))
            return row

        return await run(work)

    async def open_lookup(session_id: Any, now: datetime) -> datetime | None:
        params = is_open.params(session_id=session_id, now=now)

        async def work(connection: Any) -> datetime | None:
            found = await connection.fetchrow(is_open.sql, *params)
            return None if found is None else is_open.decode(found)[0]

        return await run(work)

    store.lookup, store.open_lookup = lookup, open_lookup
