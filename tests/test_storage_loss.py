"""The SQLite file lost, replaced or unwritable under a running server.

Every path to the file (the per-request lookup on the SQLite threads' own
sqlite3 connections, units of work on their sync Sessions, the request's
aiosqlite AsyncSession) answers 503 with Retry-After while the storage is out,
never 500 and never a 2xx served from or written to a file that is no longer
at its path; once the file is back, service resumes without a restart; and
what was acknowledged is in the file at the path.

Making a file unwritable as root takes more than chmod (root writes through
it, and descriptors already open ignore it): the tests use ``chattr +i`` (the
kernel then refuses every write to the inode, root's too, through open
descriptors as well) and a full tmpfs mount, each skipped where it cannot be
done (no CAP_LINUX_IMMUTABLE or CAP_SYS_ADMIN, or a filesystem without the
flag).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import FAST_HASHING, auth_cookie, client_with_cookie, register_api
from servers import AUTH_COOKIE, Server, client_for, cookie_header, on_each_worker, serving_off_loop
from sqlalchemy import Engine, event

PASSWORD = "correct horse battery"
UNAVAILABLE = {"error": "Service temporarily unavailable; try again shortly."}
SUFFIXES = ("", "-wal", "-shm")
NAMES = itertools.count(1)
# Requests sent at once, more than either pool keeps (SQLITE_THREADS, DB_POOL_SIZE).
CROWD = 8


# -- helpers -------------------------------------------------------------------


def usernames(path: Path) -> set[str]:
    """The users in the file at ``path``, read with the stdlib sqlite3 module (what is really stored there)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return {name for (name,) in conn.execute("SELECT username FROM users")}


def backup_of(path: Path, copy: Path) -> None:
    """A consistent copy of the database at ``path`` (SQLite's online backup)."""
    with closing(sqlite3.connect(path)) as source, closing(sqlite3.connect(copy)) as target:
        source.backup(target)


async def assert_unavailable(response, *, page: bool = False) -> None:
    """503 with Retry-After and the error format (JSON, or the error page for a browser)."""
    text = await response.get_data(as_text=True)
    assert response.status_code == 503, (response.status_code, text[:300])
    assert response.headers["Retry-After"] == "1"
    if page:
        assert UNAVAILABLE["error"] in text
    else:
        assert await response.get_json() == UNAVAILABLE


async def every_path_is_unavailable(app, cookie: str) -> None:
    """The protected page (the lookup), registration, login and logout: each 503 with Retry-After."""
    await assert_unavailable(await client_with_cookie(app, cookie).get("/api/me"))
    await assert_unavailable(await client_with_cookie(app, cookie).get("/dashboard"), page=True)
    await assert_unavailable(await register_api(app.test_client(), f"refused{next(NAMES)}"))
    login = await app.test_client().post("/api/login", json={"username": "alice", "password": PASSWORD})
    await assert_unavailable(login)
    await assert_unavailable(await client_with_cookie(app, cookie).post("/api/logout"))


async def service_resumes(app, cookie: str, username: str) -> None:
    """The session still opens, a registration is acknowledged, a login and a logout work."""
    assert (await client_with_cookie(app, cookie).get("/api/me")).status_code == 200
    assert (await register_api(app.test_client(), username)).status_code == 201
    login = await app.test_client().post("/api/login", json={"username": username, "password": PASSWORD})
    assert login.status_code == 200, await login.get_data(as_text=True)
    assert (await client_with_cookie(app, cookie).post("/api/logout")).status_code == 204


def chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


@pytest.fixture
def immutable_flag(tmp_path) -> None:
    """Skip unless ``chattr +i`` works here and really stops writes through an open descriptor."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    with probe.open("r+b") as handle:
        try:
            chattr("+i", probe)
        except subprocess.CalledProcessError as error:
            pytest.skip(f"chattr +i is refused here: {error.stderr.decode().strip()}")
        try:
            handle.write(b"y")
            handle.flush()
        except OSError:
            pass
        else:
            pytest.skip("an immutable file still takes writes here")
        finally:
            chattr("-i", probe)


@contextmanager
def small_filesystem(directory: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted at ``directory`` (skip if mounting is not allowed), unmounted on the way out."""
    directory.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(directory)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until its filesystem is full."""
    filler = directory / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


# -- a file unlinked, moved, replaced ------------------------------------------


@pytest.mark.sqlite_only("the SQLite file removed from under the server")
@pytest.mark.parametrize("speedups", ["all", "none"])
@pytest.mark.parametrize("how", ["unlink", "rename"])
async def test_a_file_unlinked_or_moved_is_503_on_every_path_then_service_resumes(make_app, database, how, speedups):
    """Reads are not served from, and writes not acknowledged to, a file no longer at its path: 503 on
    every path (speedups=all: the lookup on the raw sqlite3 connections; none: on the threads' Sessions);
    the same file put back: served again, and what was acknowledged is in it."""
    path = database.path
    aside = path.with_name("aside.db")
    app = make_app(SPEEDUPS=speedups)
    async with app.test_app():
        first = app.test_client()
        assert (await register_api(first, "alice")).status_code == 201
        cookie = auth_cookie(first)
        assert (await client_with_cookie(app, cookie).get("/api/me")).status_code == 200
        if how == "unlink":
            os.link(path, aside)  # only so that the test can put the very same file back
            os.unlink(path)
        else:
            os.rename(path, aside)

        await every_path_is_unavailable(app, cookie)

        os.rename(aside, path)
        await service_resumes(app, cookie, "carol")
    assert usernames(path) == {"alice", "carol"}


@pytest.mark.sqlite_only("the SQLite file deleted and restored from a backup")
@pytest.mark.parametrize("speedups", ["all", "none"])
async def test_a_deleted_file_is_503_until_a_backup_is_restored_then_service_resumes(make_app, database, speedups):
    """The database, its -wal and -shm deleted: 503 everywhere (no new empty database is created at the
    path); a backup restored there (a new inode): every connection reopens on it and service resumes."""
    path = database.path
    backup = path.with_name("backup.db")
    app = make_app(SPEEDUPS=speedups)
    async with app.test_app():
        first = app.test_client()
        assert (await register_api(first, "alice")).status_code == 201
        cookie = auth_cookie(first)
        backup_of(path, backup)
        for suffix in SUFFIXES:
            path.with_name(path.name + suffix).unlink(missing_ok=True)

        await every_path_is_unavailable(app, cookie)
        assert not path.exists(), "the app created a new database at the path"

        shutil.copy(backup, path)
        await service_resumes(app, cookie, "carol")
    assert usernames(path) == {"alice", "carol"}


@pytest.mark.sqlite_only("the SQLite file replaced under the server")
async def test_a_file_replaced_by_something_else_is_503_not_500_then_service_resumes(make_app, database, tmp_path):
    """The database moved away with its -wal and -shm and something that is not a database put at the
    path: 503 (SQLITE_NOTADB), not 500 and not the old file's rows; the database put back: served again.

    (The -wal and -shm go with it: a -wal left at the path would be applied to whatever file is put
    there, SQLite's own hazard, whoever opens it.)
    """
    path = database.path
    aside = tmp_path / "aside"
    aside.mkdir()
    app = make_app()
    async with app.test_app():
        first = app.test_client()
        assert (await register_api(first, "alice")).status_code == 201
        cookie = auth_cookie(first)
        moved = [name for name in (path.name + suffix for suffix in SUFFIXES) if (path.parent / name).exists()]
        for name in moved:
            os.rename(path.parent / name, aside / name)
        path.write_bytes(b"not a database " * 512)

        await every_path_is_unavailable(app, cookie)

        for name in moved:
            os.replace(aside / name, path.parent / name)
        await service_resumes(app, cookie, "carol")
    assert usernames(path) == {"alice", "carol"}


@pytest.mark.sqlite_only("the SQLite file moved in the middle of a transaction")
@pytest.mark.parametrize(
    ("step", "last_write"),
    [
        # The last write of each request is its audit row; the request's answer acknowledges it.
        ("registration", "login"),  # on a SQLite thread's Session (quart_app.auth.events.record)
        ("login", "login"),  # likewise
        ("logout", "logout"),  # likewise
        ("failed login", "login_failed"),  # on the request's AsyncSession (aiosqlite), with the throttle's count
    ],
)
async def test_a_file_moved_between_a_write_and_its_commit_is_503_not_acknowledged(
    make_app, database, step, last_write
):
    """The file unlinked after the request's last write, before its COMMIT (the race that the check before
    a transaction's first statement cannot close): the commit goes to the detached file, so the answer
    is 503, never the 2xx (or the 401 of a counted failure) that would acknowledge it."""
    path = database.path
    aside = path.with_name("aside.db")
    app = make_app()
    moved = []

    def after_the_write(_conn, _cursor, statement: str, parameters, _context, _many) -> None:
        if statement.startswith("INSERT INTO auth_events") and last_write in parameters and not moved:
            os.link(path, aside)  # only so that the test can put the very same file back
            os.unlink(path)
            moved.append(True)

    async with app.test_app():
        client = app.test_client()
        if step != "registration":
            assert (await register_api(client, "bob")).status_code == 201
        event.listen(Engine, "after_cursor_execute", after_the_write)
        try:
            if step == "registration":
                response = await register_api(client, "bob")
            elif step == "logout":
                response = await client.post("/api/logout")
            else:
                password = PASSWORD if step == "login" else "not the password at all"
                response = await client.post("/api/login", json={"username": "bob", "password": password})
        finally:
            event.remove(Engine, "after_cursor_execute", after_the_write)
        assert moved, "the file was not moved"
        await assert_unavailable(response)

        os.rename(aside, path)
        assert (await register_api(app.test_client(), "carol")).status_code == 201
    assert "carol" in usernames(path)


# -- a file that cannot be written -------------------------------------------------


@pytest.mark.sqlite_only("the SQLite file made unwritable under the server")
@pytest.mark.parametrize("speedups", ["all", "none"])
async def test_an_unwritable_file_is_503_for_writes_then_service_resumes(make_app, database, immutable_flag, speedups):
    """The database and its -wal immutable (chattr +i: every write refused, SQLITE_IOERR_WRITE; a new
    connection would open read-only, SQLITE_READONLY): writes answer 503, the lookup's touch included,
    also while the pools open new connections; writable again: every write is served, none left on a
    connection opened read-only meanwhile."""
    path = database.path
    # A session is touched (written) by the lookup when its last touch is a second old.
    app = make_app(SPEEDUPS=speedups, SESSION_TOUCH_INTERVAL=1)
    async with app.test_app():
        first = app.test_client()
        assert (await register_api(first, "alice")).status_code == 201
        cookie = auth_cookie(first)
        files = [path, path.with_name(path.name + "-wal")]
        chattr("+i", *files)
        try:
            await asyncio.sleep(1.1)
            await every_path_is_unavailable(app, cookie)
            # Registrations at once: the pools open more connections, on the unwritable file.
            crowd = await asyncio.gather(*(register_api(app.test_client(), f"crowd{i}") for i in range(CROWD)))
            for response in crowd:
                await assert_unavailable(response)
        finally:
            chattr("-i", *files)
        await asyncio.sleep(1.1)
        await service_resumes(app, cookie, "carol")
        for i in range(CROWD):  # one after another: through every pooled connection
            assert (await register_api(app.test_client(), f"later{i}")).status_code == 201
    assert usernames(path) == {"alice", "carol", *(f"later{i}" for i in range(CROWD))}


@pytest.mark.sqlite_only("the SQLite file's filesystem full under the server")
async def test_a_full_disk_is_503_for_writes_then_service_resumes(make_app, database, tmp_path):
    """No space left for the -wal to grow (SQLITE_FULL): writes answer 503, the lookup's touch included;
    space freed: service resumes."""
    with small_filesystem(tmp_path / "small") as small:
        path = small / "app.db"
        shutil.copy(database.path, path)
        app = make_app(DATABASE_URL=f"sqlite+aiosqlite:///{path}", SESSION_TOUCH_INTERVAL=1)
        async with app.test_app():
            first = app.test_client()
            assert (await register_api(first, "alice")).status_code == 201
            cookie = auth_cookie(first)
            with closing(sqlite3.connect(path)) as conn:  # every later write must grow the -wal
                assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
            filler = fill(small)
            try:
                await asyncio.sleep(1.1)
                await every_path_is_unavailable(app, cookie)
            finally:
                filler.unlink()
            await asyncio.sleep(1.1)
            await service_resumes(app, cookie, "carol")
        assert usernames(path) == {"alice", "carol"}


# -- bugs stay 500s ----------------------------------------------------------------


@pytest.mark.sqlite_only("SQLite's error codes")
async def test_a_missing_table_is_a_500_not_a_503_on_every_path(make_app):
    """SQLITE_ERROR ("no such table") is a bug, not an outage: 500 without Retry-After, on every path
    (the request's AsyncSession, a SQLite thread's Session, a SQLite thread's own sqlite3 connection)."""
    from sqlalchemy import text

    from quart_app.db import get_database, get_db, run_sqlite, run_unit

    app = make_app()
    app.config["PROPAGATE_EXCEPTIONS"] = False  # answer as in production
    statement = "SELECT * FROM no_such_table"
    paths = {
        "async_session": lambda: get_db().execute(text(statement)),
        "thread_session": lambda: run_unit(lambda db: db.execute(text(statement)).all()),
        "raw": lambda: run_sqlite(get_database(), lambda connection: connection.execute(statement).fetchall()),
    }

    @app.get("/broken/<where>")
    async def broken(where: str):
        await paths[where]()
        return "unreachable"

    async with app.test_app():
        answers = {where: await app.test_client().get(f"/broken/{where}") for where in paths}
    assert {where: response.status_code for where, response in answers.items()} == dict.fromkeys(paths, 500)
    assert not any("Retry-After" in response.headers for response in answers.values())


# -- served for real ---------------------------------------------------------------


@pytest.mark.sqlite_only("the SQLite file removed from under hypercorn's workers")
async def test_under_hypercorn_an_unlinked_file_is_503_on_every_worker_then_service_resumes(
    tmp_path, migrated_template
):
    """Two workers: with the file unlinked each answers 503 to the protected page, registration, login
    and logout; the file back, each serves again, and every registration answered 201 is in the file."""
    db = migrated_template.clone(tmp_path)
    path = db.path
    aside = path.with_name("aside.db")
    names = (f"user{i}" for i in itertools.count())
    acknowledged: list[str] = []

    async def register(client: httpx.AsyncClient) -> httpx.Response:
        name = next(names)
        response = await client.post(
            "/api/register", json={"username": name, "email": f"{name}@example.com", "password": PASSWORD}
        )
        if response.status_code == 201:
            acknowledged.append(name)
        return response

    def expect(status: int, send):
        async def checked(client: httpx.AsyncClient) -> httpx.Response:
            response = await send(client)
            assert response.status_code == status, (response.status_code, response.text)
            if status == 503:
                assert response.headers["Retry-After"] == "1"
                assert response.json() == UNAVAILABLE
            return response

        return checked

    async with serving_off_loop(db, FAST_HASHING) as server:
        token = await first_session(server)
        requests = {
            "me": lambda client: client.get("/api/me", headers=cookie_header(token)),
            "register": register,
            "login": lambda client: client.post("/api/login", json={"username": "alice", "password": PASSWORD}),
            "logout": lambda client: client.post("/api/logout", headers=cookie_header(token)),
            "login+logout": log_in_and_out,
        }
        for name in ("me", "register", "login"):
            await on_each_worker(server, expect(200 if name != "register" else 201, requests[name]), per_worker=1)
        os.link(path, aside)
        os.unlink(path)
        for name in ("me", "register", "login", "logout"):
            await on_each_worker(server, expect(503, requests[name]), per_worker=1)
        os.rename(aside, path)
        for name in ("me", "register", "login"):
            await on_each_worker(server, expect(200 if name != "register" else 201, requests[name]), per_worker=1)
        await on_each_worker(server, expect(204, requests["login+logout"]), per_worker=1)
    assert len(acknowledged) == 4
    assert set(acknowledged) <= usernames(path)


async def log_in_and_out(client: httpx.AsyncClient) -> httpx.Response:
    """Log in, then log that new session out, on one connection: the logout's answer."""
    login = await client.post("/api/login", json={"username": "alice", "password": PASSWORD})
    assert login.status_code == 200, login.text
    return await client.post("/api/logout", headers=cookie_header(login.cookies[AUTH_COOKIE]))


async def first_session(server: Server) -> str:
    async with client_for(server) as client:
        response = await client.post(
            "/api/register", json={"username": "alice", "email": "alice@example.com", "password": PASSWORD}
        )
    assert response.status_code == 201, response.text
    return response.cookies[AUTH_COOKIE]
