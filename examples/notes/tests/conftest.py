"""A fresh app on a fresh database per test; the schema comes from ``alembic upgrade head``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from notes_app import create_app

PROJECT = Path(__file__).resolve().parent.parent


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database that Alembic built, once per run; each test gets a copy of it."""
    path = tmp_path_factory.mktemp("schema") / "notes.db"
    command = [sys.executable, "-m", "alembic", "-c", str(PROJECT / "alembic.ini"), "-x", f"url={sqlite_url(path)}"]
    result = subprocess.run([*command, "upgrade", "head"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture
def db_path(migrated_db: Path, tmp_path: Path) -> Path:
    path = tmp_path / "notes.db"
    shutil.copyfile(migrated_db, path)
    return path


@pytest.fixture
async def app(db_path: Path):
    app = create_app({"TESTING": True, "DATABASE_URL": sqlite_url(db_path)})
    async with app.test_app():  # runs before_serving / after_serving (the engine is disposed after)
        yield app


@pytest.fixture
def client(app):
    return app.test_client()
