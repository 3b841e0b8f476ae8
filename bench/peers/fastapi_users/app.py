"""The FastAPI-Users peer: the async library a team would pick instead of the port.

Set up the way FastAPI-Users' documentation does it (its "full example" with
the SQLAlchemy adapter, and its "Database" strategy page), in one module:

- users in SQLAlchemy (``SQLAlchemyBaseUserTableUUID``) on SQLite through
  aiosqlite (``create_async_engine``, one ``async_sessionmaker``);
- authentication backend: ``CookieTransport`` + ``DatabaseStrategy`` (access
  tokens in an ``accesstoken`` table, ``SQLAlchemyAccessTokenDatabase`` from
  fastapi-users-db-sqlalchemy): every authenticated request looks its token up;
- its own routers: ``POST /auth/register`` (JSON ``email``/``password``,
  answers 201) and ``POST /auth/cookie/login`` (form-encoded ``username``
  (the email) / ``password``, answers 204 and sets the cookie);
- ``GET /dashboard``: a small HTML page with the user's email, behind
  ``current_active_user``;
- password hashing: its ``PasswordHelper`` with a pwdlib ``PasswordHash``
  whose ``Argon2Hasher`` has the port's parameters (argon2id, time_cost=2,
  memory_cost=19456 KiB, parallelism=1; quart_app/core/config.py ARGON2_*),
  instead of pwdlib's defaults. FastAPI-Users calls it synchronously, on the
  event loop, as it ships.

Departures, for the benchmark only: the database URL comes from
``FASTAPI_USERS_DATABASE_URL`` (default a SQLite file ``fastapi_users.db``)
and the secret from ``FASTAPI_USERS_SECRET``; the tables are created by
``python app.py create-db`` (once, before the workers start, rather than in
each worker's startup as the example does), which also puts the SQLite file
in WAL mode (a property of the file; the port's SQLite runs in WAL too); the
cookie is not ``Secure`` (the bench speaks plain HTTP on 127.0.0.1; wrk does
not look at cookie flags anyway).

Serve: ``uvicorn --workers 2 --host 127.0.0.1 --port 8002 app:app`` (from this folder).
"""

# FastAPI's dependency injection is Depends(...) in argument defaults, as its docs write it.
# ruff: noqa: B008

from __future__ import annotations

import asyncio
import html
import os
import sys
import uuid
from collections.abc import AsyncGenerator

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi_users import BaseUserManager, FastAPIUsers, UUIDIDMixin, schemas
from fastapi_users.authentication import AuthenticationBackend, CookieTransport
from fastapi_users.authentication.strategy.db import AccessTokenDatabase, DatabaseStrategy
from fastapi_users.db import SQLAlchemyBaseUserTableUUID, SQLAlchemyUserDatabase
from fastapi_users.password import PasswordHelper
from fastapi_users_db_sqlalchemy.access_token import (
    SQLAlchemyAccessTokenDatabase,
    SQLAlchemyBaseAccessTokenTableUUID,
)
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

# -- db.py --------------------------------------------------------------------

DATABASE_URL = os.environ.get(
    "FASTAPI_USERS_DATABASE_URL", "sqlite+aiosqlite:///" + os.path.abspath("fastapi_users.db")
)
SECRET = os.environ.get("FASTAPI_USERS_SECRET", "SECRET")

# The port's argon2id parameters (quart_app/core/config.py: ARGON2_TIME_COST,
# ARGON2_MEMORY_COST (KiB), ARGON2_PARALLELISM).
ARGON2_PARAMS = {"time_cost": 2, "memory_cost": 19 * 1024, "parallelism": 1}


class Base(DeclarativeBase):
    pass


class User(SQLAlchemyBaseUserTableUUID, Base):
    pass


class AccessToken(SQLAlchemyBaseAccessTokenTableUUID, Base):
    pass


engine = create_async_engine(DATABASE_URL)
async_session_maker = async_sessionmaker(engine, expire_on_commit=False)


async def create_db_and_tables() -> None:
    async with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        await conn.run_sync(Base.metadata.create_all)
    await engine.dispose()


async def get_async_session() -> AsyncGenerator[AsyncSession, None]:
    async with async_session_maker() as session:
        yield session


async def get_user_db(session: AsyncSession = Depends(get_async_session)):
    yield SQLAlchemyUserDatabase(session, User)


async def get_access_token_db(session: AsyncSession = Depends(get_async_session)):
    yield SQLAlchemyAccessTokenDatabase(session, AccessToken)


# -- schemas.py ---------------------------------------------------------------


class UserRead(schemas.BaseUser[uuid.UUID]):
    pass


class UserCreate(schemas.BaseUserCreate):
    pass


# -- users.py -----------------------------------------------------------------

password_helper = PasswordHelper(PasswordHash((Argon2Hasher(**ARGON2_PARAMS),)))


class UserManager(UUIDIDMixin, BaseUserManager[User, uuid.UUID]):
    reset_password_token_secret = SECRET
    verification_token_secret = SECRET


async def get_user_manager(user_db: SQLAlchemyUserDatabase = Depends(get_user_db)):
    yield UserManager(user_db, password_helper)


cookie_transport = CookieTransport(cookie_max_age=3600, cookie_secure=False)


def get_database_strategy(
    access_token_db: AccessTokenDatabase[AccessToken] = Depends(get_access_token_db),
) -> DatabaseStrategy:
    return DatabaseStrategy(access_token_db, lifetime_seconds=3600)


auth_backend = AuthenticationBackend(name="cookie", transport=cookie_transport, get_strategy=get_database_strategy)

fastapi_users = FastAPIUsers[User, uuid.UUID](get_user_manager, [auth_backend])
current_active_user = fastapi_users.current_user(active=True)

# -- app.py -------------------------------------------------------------------

app = FastAPI()
app.include_router(fastapi_users.get_auth_router(auth_backend), prefix="/auth/cookie", tags=["auth"])
app.include_router(fastapi_users.get_register_router(UserRead, UserCreate), prefix="/auth", tags=["auth"])


@app.get("/", response_class=HTMLResponse)
async def index(request: Request) -> str:
    return "<!doctype html><title>Home</title><p>FastAPI-Users peer</p>"


@app.get("/dashboard", response_class=HTMLResponse)
async def dashboard(user: User = Depends(current_active_user)) -> str:
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>Dashboard</title></head>"
        f"<body><h1>Dashboard</h1><p>Hello {html.escape(user.email)}</p></body></html>"
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["create-db"]:
        asyncio.run(create_db_and_tables())
    else:
        print("usage: python app.py create-db   (serve with uvicorn app:app)", file=sys.stderr)
        sys.exit(2)
