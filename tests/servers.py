"""Real hypercorn servers for tests: start one, wait for every worker, tell which worker answered, stop it.

Shared by the modules that test the app served for real (test_serving.py,
test_under_attack.py). Everything binds to 127.0.0.1 only, runs in its own
process group and is bounded in time.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from backends import TestDatabase
from conftest import ROOT
from hypercorn.config import Config

HYPERCORN = Path(sys.executable).with_name("hypercorn")
QUART = Path(sys.executable).with_name("quart")
AUTH_COOKIE = "quart_app_auth"
# hypercorn's error log (stderr) says this once per worker, when that worker accepts connections.
RUNNING_RE = re.compile(r"\[(\d+)\] \[INFO\] Running on http://")
PROC_NET_TCP = Path("/proc/net/tcp")
# Polls of wait_until_serving, 0.1 s apart.
START_POLLS = 150
# The longest a `quart users ...` command may take.
CLI_SECONDS = 60


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen
    log_path: Path
    db: TestDatabase | None = None
    env: dict[str, str] = field(default_factory=dict)
    worker_pids: frozenset[int] = frozenset()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_of(self, response: httpx.Response) -> int:
        """The worker process whose socket carries ``response``'s (still open) connection (Linux)."""
        return self.worker_of_port(response.extensions["network_stream"].get_extra_info("client_addr")[1])

    def worker_of_port(self, client_port: int) -> int:
        """The worker process holding the far end of our connection from ``client_port`` (Linux)."""
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

    def stop(self) -> None:
        """SIGTERM the whole process group, SIGKILL it if it lingers."""
        stop(self.process)

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crash: no shutdown code runs) and reap the main process."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)
        for _ in range(100):  # 5 s at most for the workers to die too
            if all(process_state(pid) in "XZ" for pid in self.worker_pids):
                return
            time.sleep(0.05)
        raise AssertionError(f"workers survived SIGKILL: {[process_state(pid) for pid in self.worker_pids]}")


def free_port() -> int:
    # With workers hypercorn cannot bind port 0 (every worker must share one
    # port), so take a port the kernel just handed out.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(db: TestDatabase, settings: dict[str, object], *, secret_key: str | None = None) -> dict[str, str]:
    """The environment of a server on ``db``: ours minus any QUART_APP_*, then testing settings and ``settings``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("QUART_APP_")}
    env.update(
        QUART_APP_ENV="testing",
        # One key for every worker: each would otherwise draw its own, and a
        # cookie signed by one worker would be refused by the other.
        QUART_APP_SECRET_KEY=secret_key or secrets.token_urlsafe(48),
        QUART_APP_DATABASE_URL=db.url,
    )
    env.update({f"QUART_APP_{name}": str(value) for name, value in settings.items()})
    return env


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (main process and workers), SIGKILL it if it lingers."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        os.killpg(process.pid, signal.SIGCONT)  # a worker left paused (see ``paused``) must see the SIGTERM
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
    for _ in range(START_POLLS):  # 15 s at most
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


def launch(
    db: TestDatabase,
    settings: dict[str, object] | None = None,
    *,
    workers: int | None = None,
    port: int | None = None,
    log_path: Path | None = None,
    secret_key: str | None = None,
    app: str = "quart_app:create_app()",
) -> Server:
    """Serve the app as scripts/serve does (hypercorn.toml, 127.0.0.1) on ``db``; return once every worker runs.

    ``settings`` are QUART_APP_* names without the prefix; ``workers`` and
    ``port`` default to hypercorn.toml's worker count and a free port; ``app``
    is hypercorn's application argument (a test-only factory such as
    ``tests/shutdown_app.py:create_app()`` instead of the real one). The
    caller stops the server (``Server.stop``), or use ``serving``.
    """
    args = ["--workers", str(workers)] if workers is not None else []
    if workers is None:
        workers = Config.from_toml(ROOT / "hypercorn.toml").workers
    port = port or free_port()
    log_path = log_path or Path(tempfile.mkdtemp(prefix="hypercorn-")) / f"hypercorn-{port}.log"
    env = server_env(db, settings or {}, secret_key=secret_key)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(HYPERCORN), "-c", "hypercorn.toml", "--bind", f"127.0.0.1:{port}", *args, app],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(url=f"http://127.0.0.1:{port}", port=port, process=process, log_path=log_path, db=db, env=env)
    try:
        return wait_until_serving(server, workers)
    except BaseException:
        stop(process)
        raise


@contextmanager
def serving(db: TestDatabase, settings: dict[str, object] | None = None, **options) -> Iterator[Server]:
    """``launch`` as a context manager: the server is stopped (SIGTERM, then SIGKILL) on the way out."""
    server = launch(db, settings, **options)
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def serving_off_loop(
    db: TestDatabase, settings: dict[str, object] | None = None, **options
) -> AsyncIterator[Server]:
    """``serving`` for async tests: the blocking start and stop run in a thread, off the event loop."""
    server = await asyncio.to_thread(launch, db, settings, **options)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


def start_server(
    directory: Path, template: TestDatabase, settings: dict[str, object], *, workers: int | None = None
) -> Iterator[Server]:
    """For fixtures: serve a copy of ``template`` (in ``directory``) while the generator is suspended."""
    db = template.clone(directory)
    try:
        with serving(db, settings, workers=workers, log_path=directory / "hypercorn.log") as server:
            yield server
    finally:
        db.drop()


async def run_cli(server: Server, *args: str) -> tuple[int, str]:
    """Run ``quart --app "quart_app:create_app()" ARGS`` on the server's database and settings: (exit code, output)."""
    process = await asyncio.create_subprocess_exec(
        str(QUART),
        "--app",
        "quart_app:create_app()",
        *args,
        cwd=ROOT,
        env=server.env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), CLI_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode, output.decode(errors="replace")


# -- requests ----------------------------------------------------------------


def client_for(server: Server, **options) -> httpx.AsyncClient:
    # trust_env=False: no HTTP(S)_PROXY from the environment between us and 127.0.0.1.
    return httpx.AsyncClient(base_url=server.url, trust_env=False, **options)


def cookie_header(token: str) -> dict[str, str]:
    return {"Cookie": f"{AUTH_COOKIE}={token}"}


def process_state(pid: int) -> str:
    """The one-letter state of ``pid`` from /proc (``T`` stopped, ``Z`` zombie); ``X`` once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "X"


@contextmanager
def paused(pids: frozenset[int] | set[int]) -> Iterator[None]:
    """SIGSTOP ``pids`` (our own server's workers) for the block, SIGCONT them after, whatever happens."""
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        for _ in range(200):  # 2 s at most: wait until each really is stopped
            if all(process_state(pid) in "TtXZ" for pid in pids):
                break
            time.sleep(0.01)
        else:
            raise AssertionError(f"workers {sorted(pids)} did not stop: {[process_state(pid) for pid in pids]}")
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


@asynccontextmanager
async def connection_to(server: Server, pid: int, *, tries: int = 4) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose one, fresh, keep-alive connection is held by worker ``pid``.

    The kernel hands a new connection to whichever worker calls accept()
    first, and one worker often wins dozens of times in a row. So: up to
    ``tries`` fresh connections (a GET / on each) in the ordinary way; if none
    lands on ``pid``, one more while the other workers are paused (SIGSTOP),
    so that only ``pid`` can accept it; they are resumed as soon as it has
    answered. Requests sent on the client reuse that connection: check
    ``server.worker_of(response) == pid`` to be sure it stayed open.
    """
    assert pid in server.worker_pids, f"{pid} is not a worker of this server"
    for attempt in range(tries + 1):
        others = server.worker_pids - {pid} if attempt == tries else set()
        client = client_for(server, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
        try:
            with paused(others):
                response = await client.get("/")
            assert response.status_code == 200, response.text
            if server.worker_of(response) == pid:
                yield client
                return
        finally:
            await client.aclose()
    pytest.fail(f"no connection landed on worker {pid}, even with the others paused", pytrace=False)


async def on_each_worker(
    server: Server,
    send: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]],
    *,
    per_worker: int = 2,
) -> None:
    """Call ``send`` ``per_worker`` times on each worker, each time on a fresh connection that worker holds."""
    for _ in range(per_worker):
        for pid in sorted(server.worker_pids):
            async with connection_to(server, pid) as client:
                response = await send(client)
                assert server.worker_of(response) == pid, f"the connection moved off worker {pid}"
