"""The app served for real: hypercorn.toml, hypercorn's worker processes, HTTP from outside."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher
from conftest import FAST_HASHING, ROOT, sqlite_url
from hypercorn.config import Config

HYPERCORN = Path(sys.executable).with_name("hypercorn")
AUTH_COOKIE = "quart_app_auth"
PASSWORD = "correct horse battery"
# hypercorn's error log (stderr) says this once per worker, when that worker accepts connections.
RUNNING_RE = re.compile(r"\[(\d+)\] \[INFO\] Running on http://")
PROC_NET_TCP = Path("/proc/net/tcp")
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


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen
    log_path: Path
    worker_pids: frozenset[int] = frozenset()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_of(self, response: httpx.Response) -> int:
        """The worker process whose socket carries ``response``'s (still open) connection (Linux)."""
        client_port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
        inode = None
        for line in PROC_NET_TCP.read_text().splitlines()[1:]:
            fields = line.split()
            local_port, remote_port = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
            established = fields[3] == "01"
            if established and (local_port, remote_port) == (self.port, client_port):
                inode = fields[9]
                break
        assert inode is not None, f"no server-side socket for client port {client_port}"
        target = f"socket:[{inode}]"
        for pid in self.worker_pids:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if os.readlink(fd) == target:
                        return pid
                except OSError:  # an fd closed while we looked
                    continue
        raise AssertionError(f"no worker of {sorted(self.worker_pids)} holds {target}")


def free_port() -> int:
    # With workers hypercorn cannot bind port 0 (every worker must share one
    # port), so take a port the kernel just handed out.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(db: Path, settings: dict[str, object]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("QUART_APP_")}
    env.update(
        QUART_APP_ENV="testing",
        # One key for every worker: each would otherwise draw its own, and a
        # cookie signed by one worker would be refused by the other.
        QUART_APP_SECRET_KEY=secrets.token_urlsafe(48),
        QUART_APP_DATABASE_URL=sqlite_url(db),
    )
    env.update({f"QUART_APP_{name}": str(value) for name, value in settings.items()})
    return env


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (main process and workers), SIGKILL it if it lingers."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    try:  # anything of the group left behind
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_until_serving(server: Server, workers: int) -> Server:
    """Poll until GET / answers and every worker has said it is running (bounded)."""
    answered = False
    for _ in range(150):  # 15 s at most
        if server.process.poll() is not None:
            break
        if not answered:
            try:
                answered = httpx.get(server.url + "/", timeout=1, trust_env=False).status_code == 200
            except httpx.TransportError:
                pass
        pids = frozenset(int(pid) for pid in RUNNING_RE.findall(server.log()))
        if answered and len(pids) == workers:
            server.worker_pids = pids
            return server
        time.sleep(0.1)
    pytest.fail(
        f"hypercorn did not come up (exit code {server.process.poll()}); its output:\n{server.log()}",
        pytrace=False,
    )


def start_server(
    directory: Path, template: Path, settings: dict[str, object], *, workers: int | None = None
) -> Iterator[Server]:
    """Serve the app as scripts/serve does, on a copy of ``template``; stop it afterwards."""
    args = ["--workers", str(workers)] if workers is not None else []
    if workers is None:
        workers = Config.from_toml(ROOT / "hypercorn.toml").workers
    db = directory / "app.db"
    shutil.copy(template, db)
    port = free_port()
    log_path = directory / "hypercorn.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(HYPERCORN), "-c", "hypercorn.toml", "--bind", f"127.0.0.1:{port}", *args, "quart_app:create_app()"],
            cwd=ROOT,
            env=server_env(db, settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(url=f"http://127.0.0.1:{port}", port=port, process=process, log_path=log_path)
    try:
        yield wait_until_serving(server, workers)
    finally:
        stop(process)


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


def client_for(server: Server, **options) -> httpx.AsyncClient:
    # trust_env=False: no HTTP(S)_PROXY from the environment between us and 127.0.0.1.
    return httpx.AsyncClient(base_url=server.url, trust_env=False, **options)


def cookie_header(token: str) -> dict[str, str]:
    return {"Cookie": f"{AUTH_COOKIE}={token}"}


async def register(server: Server, username: str) -> str:
    """Register ``username`` over HTTP; returns the raw auth cookie it was given."""
    async with client_for(server) as client:
        response = await client.post(
            "/api/register",
            json={"username": username, "email": f"{username}@example.com", "password": PASSWORD},
        )
    assert response.status_code == 201, response.text
    return response.cookies[AUTH_COOKIE]


async def on_every_worker(
    server: Server,
    send: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]],
    *,
    at_least: int = 10,
    per_worker: int = 2,
    limit: int = 60,
) -> Counter:
    """Call ``send`` on fresh connections until every worker has answered it ``per_worker`` times."""
    served: Counter = Counter()
    for attempt in range(1, limit + 1):
        async with client_for(server) as client:
            response = await send(client)
            served[server.worker_of(response)] += 1
        if attempt >= at_least and all(served[pid] >= per_worker for pid in server.worker_pids):
            break
    assert set(served) == server.worker_pids, f"not every worker answered in {limit} tries: {dict(served)}"
    return served


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

    await on_every_worker(server, dashboard_greets)

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

    await on_every_worker(server, me_refuses)
    await on_every_worker(server, dashboard_sends_to_login)


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
