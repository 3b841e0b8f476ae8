"""The app served for real: hypercorn.toml, hypercorn's worker processes, HTTP from outside."""

from __future__ import annotations

import asyncio
import gc
import inspect
import time
import tomllib
from collections.abc import Iterator

import httpx
import pytest
from argon2 import PasswordHasher
from conftest import FAST_HASHING, ROOT
from hypercorn.config import Config
from servers import AUTH_COOKIE, PROC_NET_TCP, Server, client_for, cookie_header, on_each_worker, start_server

PASSWORD = "correct horse battery"
# Pages requested one after another while four slow logins hash.
PAGES_DURING_LOGINS = 25


# -- hypercorn.toml ----------------------------------------------------------


def _config_settings() -> set[str]:
    """The names ``Config.from_mapping`` really sets: data attributes and writable properties."""
    names = {name for name in Config.__annotations__ if not name.startswith("_")}
    for name, value in vars(Config).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            if value.fset is not None:
                names.add(name)
        elif not (inspect.isfunction(value) or isinstance(value, (classmethod, staticmethod))):
            names.add(name)
    return names


async def test_serving_keeps_startup_objects_out_of_full_collections(make_app):
    """While the app serves, what startup built is frozen out of the GC's full passes; stopping undoes it.

    A full pass over the imported stack took tens of milliseconds, a pause of
    the event loop seen as the tail of the protected page's latency.
    """
    app = make_app()
    assert gc.get_freeze_count() == 0
    async with app.test_app():
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0


def test_hypercorn_toml_keys_are_all_known():
    """Every key of hypercorn.toml is a hypercorn setting, and the ones we rely on load as written."""
    raw = tomllib.loads((ROOT / "hypercorn.toml").read_text())
    unknown = sorted(set(raw) - _config_settings())
    assert not unknown, f"hypercorn would silently ignore {unknown}"

    config = Config.from_toml(ROOT / "hypercorn.toml")
    assert config.workers == 2
    assert config.worker_class == "uvloop"
    assert config.bind and all(address.startswith("127.0.0.1:") for address in config.bind)
    assert config.accesslog is None
    assert config.backlog >= 1024
    assert "keep_alive_timeout" in raw
    assert config.keep_alive_timeout == raw["keep_alive_timeout"]
    assert config.keep_alive_timeout > 0


# -- a real server -----------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, migrated_template) -> Iterator[Server]:
    """hypercorn as hypercorn.toml configures it (two uvloop workers), with cheap hashing."""
    yield from start_server(tmp_path_factory.mktemp("server"), migrated_template, FAST_HASHING)


def slow_time_cost(target_seconds: float, memory_cost: int) -> int:
    """The argon2 time cost that makes one hash take about ``target_seconds`` on this machine."""
    passes = 2
    probe = PasswordHasher(time_cost=passes, memory_cost=memory_cost, parallelism=1)
    start = time.perf_counter()
    probe.hash("calibration")
    per_pass = (time.perf_counter() - start) / passes
    return max(2, min(200, round(target_seconds / per_pass)))


@pytest.fixture(scope="module")
def slow_hash_server(tmp_path_factory, migrated_template) -> Iterator[Server]:
    """One uvloop worker, one hashing thread, and a hash that takes about half a second."""
    memory_cost = 64 * 1024
    settings = {
        "ARGON2_TIME_COST": slow_time_cost(0.5, memory_cost),
        "ARGON2_MEMORY_COST": memory_cost,
        "ARGON2_PARALLELISM": 1,
        "HASH_WORKERS": 1,
    }
    yield from start_server(tmp_path_factory.mktemp("slow"), migrated_template, settings, workers=1)


# -- requests ----------------------------------------------------------------


async def register(server: Server, username: str) -> str:
    """Register ``username`` over HTTP; returns the raw auth cookie it was given."""
    async with client_for(server) as client:
        response = await client.post(
            "/api/register",
            json={"username": username, "email": f"{username}@example.com", "password": PASSWORD},
        )
    assert response.status_code == 201, response.text
    return response.cookies[AUTH_COOKIE]


# -- behaviour ---------------------------------------------------------------


@pytest.mark.skipif(not PROC_NET_TCP.exists(), reason="needs Linux /proc to tell which worker answered")
async def test_register_dashboard_logout_then_replayed_cookie_is_refused(server):
    """A cookie works on every worker until logout, then every worker refuses it."""
    token = await register(server, "carol")

    async def dashboard_greets(client: httpx.AsyncClient) -> httpx.Response:
        response = await client.get("/dashboard", headers=cookie_header(token))
        assert response.status_code == 200
        assert "Hello carol" in response.text
        return response

    await on_each_worker(server, dashboard_greets)

    async with client_for(server) as client:
        response = await client.post("/api/logout", headers=cookie_header(token))
    assert response.status_code == 204

    async def me_refuses(client: httpx.AsyncClient) -> httpx.Response:
        response = await client.get("/api/me", headers=cookie_header(token))
        assert response.status_code == 401
        assert response.json() == {"error": "Authentication required."}
        return response

    async def dashboard_sends_to_login(client: httpx.AsyncClient) -> httpx.Response:
        response = await client.get("/dashboard", headers=cookie_header(token))
        assert response.status_code == 302
        assert response.headers["location"] == "/login?next=%2Fdashboard"
        return response

    await on_each_worker(server, me_refuses)
    await on_each_worker(server, dashboard_sends_to_login)


async def test_hashing_does_not_block_the_event_loop(slow_hash_server):
    """Pages keep being served on the one event loop while logins wait on the hashing thread."""
    server = slow_hash_server
    token = await register(server, "dave")
    finished: list[str] = []

    async def log_in() -> httpx.Response:
        async with client_for(server, timeout=60) as client:
            response = await client.post("/api/login", json={"username": "dave", "password": PASSWORD})
            finished.append("login")
        return response

    logins = [asyncio.create_task(log_in()) for _ in range(4)]
    try:
        # Not an assertion: lets the logins reach the server and queue on the
        # one hashing thread (about two seconds of hashing in all).
        await asyncio.sleep(0.2)
        # Page after page, each on a new connection, while the logins hash.
        # Were hashing done on the event loop, the loop would be frozen
        # through every hash and pages could only get through in the short
        # gaps between hashes and after the last one (a handful of pages);
        # served off the loop, they all finish well before the last login.
        no_keepalive = httpx.Limits(max_keepalive_connections=0)
        async with client_for(server, timeout=60, limits=no_keepalive) as client:
            for _ in range(PAGES_DURING_LOGINS):
                response = await client.get("/dashboard", headers=cookie_header(token))
                assert response.status_code == 200
                assert "Hello dave" in response.text
                finished.append("dashboard")
        responses = await asyncio.gather(*logins)
    finally:
        for task in logins:
            task.cancel()
        await asyncio.gather(*logins, return_exceptions=True)
    assert [response.status_code for response in responses] == [200] * 4
    last_login = len(finished) - 1 - finished[::-1].index("login")
    pages_before = finished[:last_login].count("dashboard")
    assert pages_before == PAGES_DURING_LOGINS, (
        f"only {pages_before} of {PAGES_DURING_LOGINS} pages were served before the last login finished"
        f" (pages waited for the hashing); completion order: {finished}"
    )


def test_hypercorn_refuses_to_serve_settings_that_contradict_each_other(database, tmp_path):
    """Served for real with a touch interval as long as the idle timeout: no worker serves, and the log names both."""
    import subprocess
    import sys
    from pathlib import Path

    from conftest import free_port
    from servers import server_env

    port = free_port()
    env = server_env(database, {"SESSION_TOUCH_INTERVAL": 7200, "SESSION_IDLE_TIMEOUT": 7200})
    hypercorn = Path(sys.executable).with_name("hypercorn")
    command = [str(hypercorn), "-c", "hypercorn.toml", "--bind", f"127.0.0.1:{port}", "quart_app:create_app()"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "QUART_APP_SESSION_TOUCH_INTERVAL" in result.stderr and "QUART_APP_SESSION_IDLE_TIMEOUT" in result.stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2, trust_env=False)
