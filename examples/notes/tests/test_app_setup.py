"""How the app is put together: on quart_login alone, its schema from Alembic, hashing off the event loop."""

import asyncio
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

import notes_app
from notes_app import create_app
from notes_app.models import Base

from helpers import login, register


async def test_notes_app_does_not_import_quart_app(client):
    await register(client, "gina")
    assert (await client.get("/")).status_code == 200
    assert notes_app.create_app is create_app
    assert "quart_app" not in sys.modules
    assert not [name for name in sys.modules if name.startswith("quart_app.")]


def test_secret_key_is_required_outside_tests(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTES_SECRET_KEY", raising=False)
    with pytest.raises(RuntimeError, match="NOTES_SECRET_KEY"):
        create_app({"DATABASE_URL": "sqlite+aiosqlite:///" + str(tmp_path / "x.db")})
    monkeypatch.setenv("NOTES_SECRET_KEY", "from-the-environment")
    app = create_app({"DATABASE_URL": "sqlite+aiosqlite:///" + str(tmp_path / "x.db")})
    assert app.config["SECRET_KEY"] == "from-the-environment"


def test_the_migration_matches_the_models(db_path):
    engine = create_engine(f"sqlite:///{db_path}")
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


async def test_password_hashing_runs_off_the_event_loop(client, monkeypatch):
    import notes_app.auth as auth

    calls = []

    def spy(real):
        def wrapper(*args, **kwargs):
            try:
                asyncio.get_running_loop()
                calls.append((real.__name__, "on the loop"))
            except RuntimeError:
                calls.append((real.__name__, "on a thread"))
            return real(*args, **kwargs)

        return wrapper

    for name in ("generate_password_hash", "check_password_hash"):
        monkeypatch.setattr(auth, name, spy(getattr(auth, name)))

    await register(client, "hank")
    await client.post("/logout")
    assert (await login(client, "hank")).status_code == 302
    assert calls == [("generate_password_hash", "on a thread"), ("check_password_hash", "on a thread")]
