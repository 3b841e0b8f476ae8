"""What the tests do as a person would: register, log in, read the cookie; and change the database directly."""

from __future__ import annotations

from typing import Any

from quart import Quart
from quart_login import utcnow
from sqlalchemy import text

from notes_app.auth import hash_password
from notes_app.db import EXTENSION
from notes_app.models import User

PASSWORD = "correct horse battery"


async def register(client: Any, username: str, display_name: str = "", password: str = PASSWORD) -> Any:
    form = {
        "username": username,
        "email": f"{username}@example.com",
        "display_name": display_name,
        "password": password,
    }
    response = await client.post("/register", form=form)
    assert response.status_code == 302, await response.get_data(as_text=True)
    return response


async def login(client: Any, username: str, password: str = PASSWORD, next_url: str | None = None) -> Any:
    form = {"username": username, "password": password}
    if next_url is not None:
        form["next"] = next_url
    return await client.post("/login", form=form)


async def page(client: Any, path: str) -> tuple[int, str]:
    response = await client.get(path)
    return response.status_code, await response.get_data(as_text=True)


def auth_cookie(app: Quart, client: Any) -> str | None:
    """The value of the login cookie in ``client``'s jar."""
    name = app.extensions["quart_login"].cookie.cookie_name
    return next((cookie.value for cookie in client.cookie_jar if cookie.name == name), None)


async def execute(app: Quart, sql: str, **params: Any) -> None:
    """Change the database behind the app's back, as an operator's SQL would."""
    async with app.extensions[EXTENSION].sessionmaker() as db:
        await db.execute(text(sql), params)
        await db.commit()


async def add_user(app: Quart, username: str, *, display_name: str = "", is_admin: bool = False) -> User:
    user = User(
        username=username,
        email=f"{username}@example.com",
        display_name=display_name or username,
        password_hash=await hash_password(PASSWORD),
        is_admin=is_admin,
        created_at=utcnow(),
    )
    async with app.extensions[EXTENSION].sessionmaker() as db:
        db.add(user)
        await db.commit()
    return user
