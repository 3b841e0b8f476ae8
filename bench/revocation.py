"""How fast does a revocation on one instance reach a /ws/session socket on another, and what do idle sockets cost?

    bench/.venv-harness/bin/python bench/revocation.py [--variant NAME ...|all] [--quick]
        [--project DIR] [--sockets N] [--revocations N] [--idle-seconds S] [--out DIR]
        [--env NAME=VALUE ...] [--port-base 19300]

Variants (``--variant`` repeated, or ``all``, the default):

  sqlite-poll  both instances on one temporary SQLite file, QUART_APP_SESSION_EVENTS=poll
  pg-poll      both on one PostgreSQL database, QUART_APP_SESSION_EVENTS=poll
  pg-notify    the same, QUART_APP_SESSION_EVENTS=postgres (LISTEN/NOTIFY)
  redis        the same database, plus a private redis-server: QUART_APP_REDIS_URL, QUART_APP_SESSION_EVENTS=redis

Each variant serves two instances of the port, A and B, each
``hypercorn -c hypercorn.toml --bind 127.0.0.1:PORT "quart_app:create_app()"``
in its own process group, with ``cwd`` and ``PYTHONPATH`` the project
(``--project``, default this checkout) and the venv ``BENCH_PORT_VENV``
(default ``<project>/.venv``), on one database migrated first
(``alembic upgrade head``), in bench/run's environment
(QUART_APP_ENV=production, one random secret for both, QUART_APP_LOGIN_RATE_LIMIT=off,
QUART_APP_MAIL_URL=off). Then:

1. users are registered through ``POST /api/register`` on A (that session is
   each user's *controller*: it never gets revoked), and every socket's
   session is made by ``POST /api/login`` (alternately on A and B; 20 per user);
2. one ``/ws/session`` socket per session is opened on B (no Origin header,
   the session's cookie, the login's User-Agent), and every one must say hello;
3. idle cost: with nothing changing, PostgreSQL's transactions in the database
   (``xact_commit + xact_rollback`` of ``pg_stat_database``, read with ``psql``
   from the ``postgres`` database, so the probe itself is not counted) and the
   CPU time of both servers' process groups (and of PostgreSQL's processes,
   when the script started the cluster) over ``--idle-seconds``;
4. revocations, one at a time with a random gap (0.05-0.3 s; quick 0.02-0.15 s), alternating
   ``POST /api/logout`` with the victim's own cookie and
   ``DELETE /api/sessions/<id>`` with its controller's cookie, both on A. The
   latency is from A's answer being received to the ``revoked`` message on
   the victim's socket on B (one monotonic clock, one process). The socket
   must then close with 1008; any other socket receiving ``revoked`` or
   closing is an error (false revocation, unexpected close); a victim not
   told within ``--timeout`` seconds is missed. Then the fan-out:
   ``--fanout`` users (4; quick 2) lose every other session at once,
   alternately by ``POST /api/sessions/revoke-others`` and ``POST
   /api/password`` (a password change) with the controller's cookie on A;
   each of their sockets is timed the same way (reported by kind, not in
   the headline figures).

PostgreSQL: ``BENCH_PG_URL`` (a server URL; a fresh database is created in it
per variant and dropped after) or, without it, a private cluster from
``scripts/_pg_cluster.sh`` (durability on, as bench/run sets it), stopped
however the run ends. A variant the app does not support (the setting is
unknown to its ``Settings``, or it fails to migrate or start) is reported as
"not available: <reason>".

Writes ``<out>/revocation.json`` and ``<out>/revocation.md`` (default
``bench/results``); server logs go to ``<out>/raw/revocation-*.log``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import datetime as dt
import http.client
import json
import math
import os
import platform
import random
import resource
import secrets
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from harness import (  # noqa: E402  (standard library only)
    free_port,
    group_cpu_seconds,
    stop_group,
    tail,
    tree_cpu_seconds,
)

try:
    import websockets
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed
except ImportError:  # pragma: no cover
    sys.exit("bench/revocation.py needs websockets: bench/.venv-harness/bin/pip install -r bench/requirements.txt")

VARIANTS = ["sqlite-poll", "pg-poll", "pg-notify", "redis"]
EVENTS = {"sqlite-poll": "poll", "pg-poll": "poll", "pg-notify": "postgres", "redis": "redis"}
UA = "bench"  # the same User-Agent for the logins and the sockets (session protection hashes it)
AUTH_COOKIE = "quart_app_auth"
PER_USER = 20  # socket sessions per user
GAP = (0.05, 0.3)  # seconds between two revocations (--quick: QUICK_GAP)
QUICK_GAP = (0.02, 0.15)
TARGET = (
    "a revocation on one instance reaches a socket on another within 250 ms at p99; "
    "open sockets cost no database query while nothing changes"
)
NCPU = os.cpu_count() or 1

_groups: list[int] = []  # process groups we started, stopped in main()'s finally


def log(msg: str) -> None:
    print(f"[revocation {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class NotAvailable(Exception):
    """The variant cannot run against this project (or this machine): reported, not a crash."""


# -- processes -------------------------------------------------------------------


def spawn(cmd: list[str], *, cwd: Path, env: dict[str, str], logfile: Path) -> subprocess.Popen:
    with open(logfile, "ab") as out:
        out.write(f"\n=== {time.ctime()} {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _groups.append(proc.pid)
    return proc


def stop(proc: subprocess.Popen | None, grace: float = 15.0) -> None:
    if proc is not None and proc.pid in _groups:
        stop_group(proc.pid, grace=grace)
        _groups.remove(proc.pid)


def raise_nofile(want: int) -> tuple[int, int]:
    """Raise this process's open-files limit (children, the servers, inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# -- PostgreSQL -------------------------------------------------------------------

PG_WRAPPER = r"""
set -u
source "$1"
trap 'stop_private_postgres' EXIT
trap 'exit 143' TERM INT HUP
# As bench/run: durability back on (the helper turns it off for the tests).
PG_EXTRA_OPTIONS="-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
start_private_postgres >&2 || exit 1
echo "URL $PG_SERVER_URL"
echo "DIR $PG_CLUSTER"
read -r _ || true   # until the benchmark closes our stdin (or dies)
"""


class Postgres:
    """A PostgreSQL server: BENCH_PG_URL's, or a private cluster (scripts/_pg_cluster.sh) kept by a bash wrapper."""

    def __init__(self, raw: Path) -> None:
        self.proc: subprocess.Popen | None = None
        self.server_url = os.environ.get("BENCH_PG_URL", "")
        self.postmaster = int(os.environ.get("BENCH_PG_PID") or 0)
        self.private = not self.server_url
        self.log = raw / "revocation-postgres.log"
        self.psql = shutil.which("psql") or ""
        self.version = ""

    def start(self) -> None:
        if not self.psql:
            raise NotAvailable("psql not found (apt-get install postgresql-client)")
        if self.private:
            helper = ROOT / "scripts" / "_pg_cluster.sh"
            err = open(self.log, "ab")
            self.proc = subprocess.Popen(
                ["bash", "-c", PG_WRAPPER, "pg-wrapper", str(helper)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
                bufsize=0,
            )
            err.close()
            _groups.append(self.proc.pid)
            found: dict[str, str] = {}
            buf = b""
            fd = self.proc.stdout.fileno()
            deadline = time.monotonic() + 180
            while len(found) < 2 and time.monotonic() < deadline:
                ready, _, _ = select.select([fd], [], [], 1.0)
                if ready:
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        break
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        key, _, value = line.decode().strip().partition(" ")
                        found[key] = value
                elif self.proc.poll() is not None:
                    break
            if len(found) < 2:
                raise NotAvailable(
                    f"the private PostgreSQL cluster did not start; see {self.log}:\n{tail(self.log, 15)}"
                )
            self.server_url = found["URL"]
            try:
                self.postmaster = int((Path(found["DIR"]) / "data" / "postmaster.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                self.postmaster = 0
        self.version = self.sql("postgres", "SHOW server_version").strip()
        log(f"PostgreSQL {self.version} at {self.server_url}")

    def libpq_url(self, db: str) -> str:
        parts = urlsplit(self.server_url)
        return urlunsplit(("postgresql", parts.netloc, "/" + db, parts.query, ""))

    def app_url(self, db: str) -> str:
        parts = urlsplit(self.server_url)
        return urlunsplit(("postgresql+asyncpg", parts.netloc, "/" + db, parts.query, ""))

    def sql(self, db: str, query: str) -> str:
        out = subprocess.run(
            [self.psql, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.libpq_url(db), "-c", query],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql {query!r}: {out.stderr.strip()}")
        return out.stdout

    def create_db(self, name: str) -> None:
        self.sql("postgres", f'CREATE DATABASE "{name}"')

    def drop_db(self, name: str) -> None:
        try:
            self.sql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except (RuntimeError, subprocess.SubprocessError) as exc:
            log(f"could not drop {name}: {exc}")

    def xacts(self, db: str) -> tuple[int, int]:
        """(commits, rollbacks) in database ``db`` so far."""
        # From the postgres database: this probe's own transaction is not counted in db's.
        out = self.sql("postgres", f"SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = '{db}'")
        commits, rollbacks = out.strip().split("|")
        return int(commits), int(rollbacks)

    def cpu(self) -> float:
        return tree_cpu_seconds(self.postmaster) if self.postmaster else 0.0

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()  # the wrapper's read ends: its EXIT trap stops and deletes the cluster
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
        stop(self.proc, grace=30)
        self.proc = None


# -- Redis -------------------------------------------------------------------------


def start_redis(port: int, raw: Path, work: Path) -> tuple[subprocess.Popen, str]:
    exe = shutil.which("redis-server")
    if not exe:
        raise NotAvailable("redis-server not found (apt-get install redis-server)")
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(work)]
    proc = spawn(cmd, cwd=work, env=dict(os.environ), logfile=raw / "revocation-redis.log")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.1)
        if proc.poll() is not None:
            break
    stop(proc)
    raise NotAvailable(f"redis-server did not start:\n{tail(raw / 'revocation-redis.log', 15)}")


# -- HTTP (blocking, run on a thread pool) --------------------------------------------


def http_call(port: int, method: str, path: str, body: dict | None = None, cookie: str | None = None, timeout=60):
    """(status, body text, the auth cookie's value if the answer set it, monotonic time the answer was read)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"User-Agent": UA}
    data = None
    if body is not None:
        data = json.dumps(body)
        headers["Content-Type"] = "application/json"
    if cookie:
        headers["Cookie"] = f"{AUTH_COOKIE}={cookie}"
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        received = time.monotonic()
        set_cookies = resp.headers.get_all("Set-Cookie") or []
    finally:
        conn.close()
    auth = None
    for line in set_cookies:
        name, _, rest = line.partition("=")
        if name.strip() == AUTH_COOKIE:
            auth = rest.split(";", 1)[0] or None
    return resp.status, text, auth, received


# -- the project --------------------------------------------------------------------


def probe_project(project: Path, venv: Path) -> dict:
    """Which quart_app the servers import, the settings it knows, and the commit measured."""
    code = (
        "import json, dataclasses, quart_app; from quart_app.core.config import Settings;"
        "print(json.dumps({'file': quart_app.__file__, 'settings': [f.name for f in dataclasses.fields(Settings)]}))"
    )
    env = {**os.environ, "PYTHONPATH": str(project)}
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], cwd=project, env=env, capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise SystemExit(f"cannot import quart_app from {project} with {venv}:\n{out.stderr[-2000:]}")
    info = json.loads(out.stdout.strip().splitlines()[-1])

    def git(*args: str) -> str:
        r = subprocess.run(["git", "-C", str(project), *args], capture_output=True, text=True, timeout=30)
        return r.stdout.strip() if r.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "quart_app", "quart_login"))
    info["commit"] = commit + ("+dirty" if dirty else "")
    info["subject"] = git("log", "-1", "--format=%s")[:120]
    info["branch"] = git("rev-parse", "--abbrev-ref", "HEAD")
    return info


# -- one variant ----------------------------------------------------------------------


class Sock:
    __slots__ = (
        "idx",
        "user",
        "cookie",
        "ws",
        "task",
        "victim",
        "t0",
        "revoked_at",
        "closed_at",
        "close_code",
        "events",
        "kind",
        "http_ms",
        "t_sent",
        "done",
    )

    def __init__(self, idx: int, user: int, cookie: str) -> None:
        self.idx, self.user, self.cookie = idx, user, cookie
        self.ws = self.task = None
        self.victim = False
        self.t0 = self.revoked_at = self.closed_at = self.t_sent = None
        self.close_code = None
        self.events: list[str] = []
        self.kind = ""
        self.http_ms = None
        self.done = asyncio.Event()


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))  # nearest rank
    return s[k]


async def run_variant(name: str, opts, project: Path, venv: Path, pg: Postgres | None, raw: Path) -> dict:
    loop = asyncio.get_running_loop()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="http")
    rng = random.Random(opts.seed)
    salt = secrets.token_hex(3)
    procs: list[subprocess.Popen] = []
    socks: list[Sock] = []
    dbname = None
    tmp = Path(tempfile.mkdtemp(prefix=f"quart-rev-{name}-"))  # the SQLite file, redis' folder
    result: dict = {"variant": name, "events_setting": EVENTS[name]}

    async def call(*args, **kw):
        return await loop.run_in_executor(pool, lambda: http_call(*args, **kw))

    try:
        # ---- database, env -----------------------------------------------------------
        env = {
            **os.environ,
            "PYTHONPATH": str(project),
            "QUART_APP_ENV": "production",
            "QUART_APP_SECRET_KEY": secrets.token_urlsafe(48),
            "QUART_APP_LOGIN_RATE_LIMIT": "off",
            "QUART_APP_MAIL_URL": "off",
            "QUART_APP_SESSION_EVENTS": EVENTS[name],
        }
        for key in ("QUART_APP_REDIS_URL", "QUART_APP_DATABASE_URL"):
            env.pop(key, None)
        if name == "sqlite-poll":
            env["QUART_APP_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp / 'app.sqlite3'}"
        else:
            if pg is None:
                raise NotAvailable("no PostgreSQL")
            dbname = f"quart_rev_{name.replace('-', '_')}_{salt}"
            pg.create_db(dbname)
            env["QUART_APP_DATABASE_URL"] = pg.app_url(dbname)
        if name == "redis":
            rport = free_port(opts.port_base + 9)
            rproc, rurl = start_redis(rport, raw, tmp)
            procs.append(rproc)
            env["QUART_APP_REDIS_URL"] = rurl
        env.update(dict(pair.split("=", 1) for pair in opts.env))
        result["env"] = {k: v for k, v in env.items() if k.startswith("QUART_APP_") and k != "QUART_APP_SECRET_KEY"}
        mig = await asyncio.to_thread(
            subprocess.run,
            [str(venv / "bin" / "alembic"), "upgrade", "head"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if mig.returncode != 0:
            raise NotAvailable(f"alembic upgrade head failed: {mig.stderr.strip().splitlines()[-1:]}")

        # ---- two instances -------------------------------------------------------------
        ports = []
        port = opts.port_base
        for label in ("A", "B"):
            port = free_port(port)
            ports.append(port)
            cmd = [
                str(venv / "bin" / "hypercorn"),
                "-c",
                "hypercorn.toml",
                "--bind",
                f"127.0.0.1:{port}",
                "quart_app:create_app()",
            ]
            logfile = raw / f"revocation-{name}-{label}.log"
            logfile.write_bytes(b"")
            procs.append(spawn(cmd, cwd=project, env=env, logfile=logfile))
            port += 1
        port_a, port_b = ports
        servers = procs[-2:]
        for label, p, proc in zip("AB", ports, servers, strict=True):
            logfile = raw / f"revocation-{name}-{label}.log"
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise NotAvailable(f"instance {label} exited at start: {tail(logfile, 3)}")
                try:
                    status, _, _, _ = await call(p, "GET", "/", timeout=5)
                    if status < 500:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise NotAvailable(f"instance {label} not ready after 60 s: {tail(logfile, 3)}")
                await asyncio.sleep(0.2)
        log(f"{name}: A on :{port_a}, B on :{port_b} ({env['QUART_APP_DATABASE_URL'].split(':')[0]})")

        def server_cpu() -> float:
            return sum(group_cpu_seconds(p.pid) for p in servers)

        def db_cpu() -> float:
            return pg.cpu() if (pg is not None and dbname) else 0.0

        # ---- users and sessions -------------------------------------------------------------
        n_socks = opts.sockets
        n_users = max(1, math.ceil(n_socks / PER_USER))
        t_setup = time.monotonic()
        sem = asyncio.Semaphore(8)
        users: list[tuple[str, str]] = [(f"rv{salt}{u:04d}", f"pw-{u:04d}-{salt}-x") for u in range(n_users)]
        controllers: list[str] = [""] * n_users

        async def register(u: int) -> None:
            uname, pw = users[u]
            async with sem:
                status, text, cookie, _ = await call(
                    port_a,
                    "POST",
                    "/api/register",
                    {"username": uname, "email": f"{uname}@example.org", "password": pw},
                )
            if status != 201 or not cookie:
                raise RuntimeError(f"register {uname}: {status} {text[:200]}")
            controllers[u] = cookie

        await asyncio.gather(*(register(u) for u in range(n_users)))

        async def login(i: int) -> Sock:
            u = i % n_users
            uname, pw = users[u]
            async with sem:
                status, text, cookie, _ = await call(
                    port_a if i % 2 == 0 else port_b, "POST", "/api/login", {"username": uname, "password": pw}
                )
            if status != 200 or not cookie:
                raise RuntimeError(f"login {uname}: {status} {text[:200]}")
            return Sock(i, u, cookie)

        socks = list(await asyncio.gather(*(login(i) for i in range(n_socks))))
        log(f"{name}: {n_users} users, {n_socks} sessions in {time.monotonic() - t_setup:.1f} s")
        result["setup_login_s"] = round(time.monotonic() - t_setup, 1)

        # ---- sockets on B ---------------------------------------------------------------------
        false_rev: list[int] = []
        unexpected_close: list[int] = []

        async def watch(s: Sock) -> None:
            try:
                async for raw_msg in s.ws:
                    try:
                        event = json.loads(raw_msg).get("event", "?")
                    except (ValueError, AttributeError):
                        event = "?"
                    s.events.append(event)
                    if event == "revoked" and s.revoked_at is None:
                        s.revoked_at = time.monotonic()
                        if not s.victim:
                            false_rev.append(s.idx)
            except ConnectionClosed:
                pass
            finally:
                s.closed_at = time.monotonic()
                s.close_code = s.ws.close_code
                if not s.victim and not closing:
                    unexpected_close.append(s.idx)
                s.done.set()

        closing = False
        csem = asyncio.Semaphore(50)
        t_open = time.monotonic()
        open_errors: list[str] = []

        async def open_one(s: Sock) -> None:
            async with csem:
                try:
                    s.ws = await ws_connect(
                        f"ws://127.0.0.1:{port_b}/ws/session",
                        additional_headers={"Cookie": f"{AUTH_COOKIE}={s.cookie}"},
                        user_agent_header=UA,
                        compression=None,
                        ping_interval=None,
                        open_timeout=30,
                        close_timeout=5,
                        max_queue=4,
                    )
                    hello = json.loads(await asyncio.wait_for(s.ws.recv(), 30))
                except (TimeoutError, OSError, ConnectionClosed, websockets.InvalidHandshake, ValueError) as exc:
                    open_errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    return
            if hello.get("event") != "hello":
                open_errors.append(f"first message {hello!r}"[:200])
                return
            s.task = asyncio.ensure_future(watch(s))

        await asyncio.gather(*(open_one(s) for s in socks))
        if len(open_errors) > n_socks // 10:
            raise RuntimeError(
                f"{len(open_errors)} of {n_socks} sockets failed to open or say hello: {open_errors[:3]}"
            )
        result["open_s"] = round(time.monotonic() - t_open, 1)
        if open_errors:  # counted as errors; the rest is measured
            log(f"{name}: {len(open_errors)} of {n_socks} sockets failed to open or say hello: {open_errors[:2]}")
        log(f"{name}: {n_socks - len(open_errors)} sockets open on B and said hello ({result['open_s']} s)")

        # ---- idle cost ---------------------------------------------------------------------------
        await asyncio.sleep(opts.settle)
        idle = opts.idle_seconds
        x0 = await asyncio.to_thread(pg.xacts, dbname) if dbname else None
        c0, d0, t0 = server_cpu(), db_cpu(), time.monotonic()
        await asyncio.sleep(idle)
        x1 = await asyncio.to_thread(pg.xacts, dbname) if dbname else None
        c1, d1, t1 = server_cpu(), db_cpu(), time.monotonic()
        span = t1 - t0
        result["idle"] = {
            "seconds": round(span, 2),
            "transactions_per_s": round((sum(x1) - sum(x0)) / span, 1) if dbname else None,
            "commits_per_s": round((x1[0] - x0[0]) / span, 1) if dbname else None,
            "rollbacks_per_s": round((x1[1] - x0[1]) / span, 1) if dbname else None,
            "server_cpu_pct": round(100 * (c1 - c0) / span, 1),
            "db_cpu_pct": round(100 * (d1 - d0) / span, 1) if (dbname and pg.postmaster) else None,
        }
        result["idle_false_revocations"] = len(false_rev)
        log(f"{name}: idle {result['idle']}")

        # ---- revocations --------------------------------------------------------------------------
        candidates = [s for s in socks if s.task is not None]
        rng.shuffle(candidates)
        victims: list[Sock] = []
        http_errors: list[str] = []
        kinds = ["logout", "revoke"]
        for s in candidates:
            if len(victims) >= opts.revocations:
                break
            if s.closed_at is not None:  # closed unasked already (counted): not a victim
                continue
            victims.append(s)
            kind = kinds[(len(victims) - 1) % len(kinds)]
            s.kind = kind
            if kind == "revoke":
                status, text, _, _ = await call(port_a, "GET", "/api/sessions", cookie=s.cookie)
                sid = None
                if status == 200:
                    sid = next((row["id"] for row in json.loads(text) if row.get("current")), None)
                if sid is None:
                    http_errors.append(f"GET /api/sessions: {status} {text[:100]}")
                    continue
            s.victim = True  # before the request: a push may beat the HTTP answer
            t_sent = time.monotonic()
            if kind == "logout":
                status, text, _, received = await call(port_a, "POST", "/api/logout", cookie=s.cookie)
            else:
                status, text, _, received = await call(
                    port_a, "DELETE", f"/api/sessions/{sid}", cookie=controllers[s.user]
                )
            if status != 204:
                http_errors.append(f"{kind}: {status} {text[:100]}")
                s.victim = False
                continue
            s.t0, s.t_sent = received, t_sent
            s.http_ms = 1000 * (received - t_sent)
            await asyncio.sleep(rng.uniform(*(QUICK_GAP if opts.quick else GAP)))
        # Fan-out: one call on A ends every other session of a user (up to PER_USER - 1 sockets on B at once).
        fan_kinds = ["revoke-others", "password"]
        fan_targets: list[Sock] = []
        for j, u in enumerate(rng.sample(range(n_users), min(opts.fanout, n_users))):
            kind = fan_kinds[j % len(fan_kinds)]
            targets = [s for s in socks if s.user == u and s.task is not None and not s.victim and s.closed_at is None]
            for s in targets:
                s.victim, s.kind = True, kind
            t_sent = time.monotonic()
            if kind == "revoke-others":
                status, text, _, received = await call(
                    port_a, "POST", "/api/sessions/revoke-others", cookie=controllers[u]
                )
            else:
                new_pw = f"changed-{u:04d}-{salt}-y"
                status, text, cookie, received = await call(
                    port_a,
                    "POST",
                    "/api/password",
                    {"current_password": users[u][1], "new_password": new_pw},
                    cookie=controllers[u],
                )
                if status == 204:
                    users[u] = (users[u][0], new_pw)
                    controllers[u] = cookie or controllers[u]  # the caller's session is re-issued
            if status != 204:
                http_errors.append(f"{kind}: {status} {text[:100]}")
                for s in targets:
                    s.victim = False
                continue
            for s in targets:
                s.t0, s.t_sent, s.http_ms = received, t_sent, 1000 * (received - t_sent)
            fan_targets += targets
            await asyncio.sleep(rng.uniform(*(QUICK_GAP if opts.quick else GAP)))

        # Every victim told, or its timeout passed.
        for s in victims + fan_targets:
            if s.t0 is None:
                continue
            left = s.t0 + opts.timeout - time.monotonic()
            if left > 0 and not s.done.is_set():
                try:
                    await asyncio.wait_for(s.done.wait(), left)
                except TimeoutError:
                    pass
        await asyncio.sleep(0.5)  # a false revocation close behind the last one is still seen

        lat: dict[str, list[float]] = {k: [] for k in kinds + fan_kinds}
        # The same, from the request sent: a push can beat A's answer (NOTIFY goes out at commit,
        # before the response is written), which makes the first figure negative.
        from_sent: list[float] = []
        missed = bad_close = 0
        for s in victims + fan_targets:
            if s.t0 is None:
                continue
            if s.revoked_at is None or s.revoked_at - s.t0 > opts.timeout:
                missed += 1
                continue
            lat[s.kind].append(1000 * (s.revoked_at - s.t0))
            if s.kind in ("logout", "revoke"):
                from_sent.append(1000 * (s.revoked_at - s.t_sent))
            if s.close_code != 1008:
                bad_close += 1
        every = lat["logout"] + lat["revoke"]

        def summary(values: list[float]) -> dict:
            return {
                "count": len(values),
                "p50_ms": _r(pct(values, 50)),
                "p90_ms": _r(pct(values, 90)),
                "p99_ms": _r(pct(values, 99)),
                "max_ms": _r(max(values) if values else None),
                "mean_ms": _r(statistics.fmean(values) if values else None),
            }

        result.update(
            {
                "status": "ok",
                "sockets": n_socks,
                "users": n_users,
                "revocations": sum(1 for s in victims if s.t0 is not None),
                "fanout_sockets": sum(1 for s in fan_targets if s.t0 is not None),
                "latency_fanout": summary(lat["revoke-others"] + lat["password"]),
                "latency": summary(every),
                "latency_from_request": summary(from_sent),
                "latency_by_kind": {k: summary(v) for k, v in lat.items()},
                "http_ms_p50": _r(pct([s.http_ms for s in victims if s.http_ms is not None], 50)),
                "sockets_opened": n_socks - len(open_errors),
                "open_errors": open_errors[:5],
                "errors": {
                    "open_failed": len(open_errors),
                    "missed": missed,
                    "false_revocations": len(false_rev),
                    "unexpected_closes": len(set(unexpected_close) - set(false_rev)),
                    "close_not_1008": bad_close,
                    "http": len(http_errors),
                },
                "http_errors": http_errors[:5],
                # How the sockets that closed on their own closed (1006: dropped without a close frame).
                "unexpected_close_codes": dict(
                    collections.Counter(str(socks[i].close_code) for i in set(unexpected_close) - set(false_rev))
                ),
                "server_log_errors": {
                    label: _log_errors(raw / f"revocation-{name}-{label}.log") for label in ("A", "B")
                },
            }
        )
        result["errors_total"] = sum(result["errors"].values())
        log(f"{name}: latency {result['latency']}, errors {result['errors']}")
        return result
    finally:
        closing = True  # noqa: F841  (read by watch() through the closure)
        t_stop = time.monotonic()
        open_ws = [s.ws for s in socks if s.ws is not None]
        if open_ws:
            await asyncio.gather(*(ws.close() for ws in open_ws), return_exceptions=True)
        for s in socks:
            if s.task is not None:
                s.task.cancel()
        t_closed = time.monotonic()
        for proc in reversed(procs):
            stop(proc)
        log(
            f"{name}: sockets closed in {t_closed - t_stop:.1f} s, "
            f"servers stopped in {time.monotonic() - t_closed:.1f} s"
        )
        pool.shutdown(wait=False, cancel_futures=True)
        if dbname and pg is not None:
            pg.drop_db(dbname)
        shutil.rmtree(tmp, ignore_errors=True)


def _log_errors(path: Path) -> dict[str, int]:
    """The server log's ERROR lines and tracebacks' last lines, counted (what went wrong in the app, if anything)."""
    found: collections.Counter = collections.Counter()
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        if "ERROR" in line or "WARNING" in line:
            found[line.split("]", 2)[-1].strip()[:120] if "]" in line else line[:120]] += 1
    return dict(found.most_common(5))


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


# -- report ---------------------------------------------------------------------------------


def fmt(x, unit: str = "") -> str:
    return "–" if x is None else f"{x:,.0f}{unit}" if abs(x) >= 100 else f"{x:,.1f}{unit}"


def table(results: list[dict]) -> list[str]:
    rows = [
        "| variant | sockets | revocations | p50 ms | p90 ms | p99 ms | max ms | p99 from the request ms "
        "| errors (missed / false / other) | idle DB tx/s | idle server CPU % | idle DB CPU % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in results:
        if r.get("status") != "ok":
            reason = " ".join(str(r.get("reason", "?")).split()).replace("|", "\\|")[:300]
            rows.append(f"| {r['variant']} | {r['status']}: {reason} ||||||||||||")
            continue
        lat, err, idle = r["latency"], r["errors"], r["idle"]
        other = err["unexpected_closes"] + err["close_not_1008"] + err["http"] + err.get("open_failed", 0)
        rows.append(
            f"| {r['variant']} | {r['sockets']} | {r['revocations']} | {fmt(lat['p50_ms'])} | {fmt(lat['p90_ms'])} "
            f"| {fmt(lat['p99_ms'])} | {fmt(lat['max_ms'])} "
            f"| {fmt(r.get('latency_from_request', {}).get('p99_ms'))} "
            f"| {err['missed']} / {err['false_revocations']} / {other} "
            f"| {fmt(idle['transactions_per_s'])} | {fmt(idle['server_cpu_pct'])} | {fmt(idle['db_cpu_pct'])} |"
        )
    return rows


def write_report(out: Path, meta: dict, results: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "revocation.json").write_text(json.dumps({"meta": meta, "variants": results}, indent=1) + "\n")
    lines = [
        "# Revocation push: one instance's logout reaches a socket on another",
        "",
        f"Target: {TARGET}.",
        "",
        f"{meta['date']}; {meta['machine']}; project `{meta['project']['commit']}` "
        f"({meta['project']['branch']}: {meta['project']['subject']}); "
        f"{meta['sockets']} sockets on instance B, {meta['revocations']} revocations on A "
        f"(alternately `POST /api/logout` and `DELETE /api/sessions/<id>`), "
        f"then {meta['fanout']} users' other sessions at once (alternately `POST /api/sessions/revoke-others` "
        f"and `POST /api/password`: the *fan-out* kinds, not in the table), "
        f"idle window {meta['idle_seconds']} s, timeout {meta['timeout']} s; "
        f"{'quick run' if meta['quick'] else 'full run'}, {meta['elapsed_s']} s; "
        f"load average {meta['loadavg_start'][0]} at the start, {meta['loadavg_end'][0]} at the end. "
        f"Command: `{meta['command']}`.",
        "",
        *table(results),
        "",
        "Latency: from A's HTTP answer (received) to the `revoked` message on the victim's socket on B "
        "(negative when the push arrived before the answer: PostgreSQL notifies at commit, before the "
        "response is written); *from the request*: from A's request sent. "
        "Errors: missed (no `revoked` within the timeout) / false revocations (a socket not revoked told so) / "
        "other (a socket that failed to open, an unexpected close, a close code other than 1008, "
        "a refused HTTP call). "
        "Idle: PostgreSQL transactions in the app's database per second and CPU (% of one core) of both "
        "instances' processes (and of PostgreSQL's) while the sockets are open and nothing changes.",
        "",
        "By kind (p50 / p99 / max ms):",
        "",
    ]
    for r in results:
        if r.get("status") == "ok":
            parts = [
                f"{k} {fmt(v['p50_ms'])} / {fmt(v['p99_ms'])} / {fmt(v['max_ms'])} (n={v['count']})"
                for k, v in r["latency_by_kind"].items()
            ]
            idle = r["idle"]
            split = ""
            if idle.get("commits_per_s") is not None:
                split = (
                    f"; idle transactions {fmt(idle['commits_per_s'])}/s commits"
                    f" + {fmt(idle['rollbacks_per_s'])}/s rollbacks"
                )
            lines.append(
                f"- {r['variant']}: " + "; ".join(parts) + f"; A's answer p50 {fmt(r['http_ms_p50'])} ms" + split
            )
    problems = []
    for r in results:
        if r.get("status") != "ok":
            continue
        closes = r.get("unexpected_close_codes") or {}
        logged = {k: v for k, v in (r.get("server_log_errors") or {}).items() if v}
        if closes or logged or r.get("http_errors") or r.get("open_errors"):
            what = []
            if closes:
                what.append(
                    "sockets closed unasked, by close code: " + ", ".join(f"{k}: {v}" for k, v in closes.items())
                )
            for label, found in logged.items():
                what.append(f"instance {label} logged " + "; ".join(f"{n}× `{line}`" for line, n in found.items()))
            if r.get("http_errors"):
                what.append("refused calls: " + "; ".join(r["http_errors"]))
            if r.get("open_errors"):
                what.append(
                    f"{r['errors']['open_failed']} socket(s) failed to open: " + "; ".join(r["open_errors"][:2])
                )
            problems.append(f"- {r['variant']}: " + ". ".join(what))
    if problems:
        lines += ["", "Problems seen:", "", *problems]
    notes = [f"- {r['variant']}: {r['note']}" for r in results if r.get("note")]
    if notes:
        lines += ["", "Notes:", "", *notes]
    (out / "revocation.md").write_text("\n".join(lines) + "\n")


# -- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=[], choices=[*VARIANTS, "all"])
    parser.add_argument("--project", type=Path, default=ROOT)
    parser.add_argument("--quick", action="store_true", help="200 sockets, 50 revocations, 5 s idle")
    parser.add_argument("--sockets", type=int)
    parser.add_argument("--revocations", type=int)
    parser.add_argument("--idle-seconds", type=float)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds between the last hello and the idle window")
    parser.add_argument("--timeout", type=float, default=10.0, help="a victim not told within this is missed")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="an extra app setting")
    parser.add_argument("--port-base", type=int, default=int(os.environ.get("BENCH_PORT_BASE", "19300")))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--fanout",
        type=int,
        help="users whose other sessions all end at once, alternately by revoke-others and a password change "
        "(default 4, quick 2)",
    )
    parser.add_argument(
        "--run-unsupported",
        action="store_true",
        help="run pg-notify and redis even when the app has no SESSION_EVENTS setting (they then poll)",
    )
    opts = parser.parse_args()
    opts.sockets = opts.sockets or (200 if opts.quick else 1000)
    opts.revocations = opts.revocations or (50 if opts.quick else 200)
    opts.idle_seconds = opts.idle_seconds or (5.0 if opts.quick else 10.0)
    opts.fanout = (2 if opts.quick else 4) if opts.fanout is None else opts.fanout
    variants = VARIANTS if (not opts.variant or "all" in opts.variant) else list(dict.fromkeys(opts.variant))
    project = opts.project.resolve()
    venv = Path(os.environ.get("BENCH_PORT_VENV", project / ".venv"))
    raw = opts.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)

    nofile = raise_nofile(max(4096, 4 * opts.sockets + 1024))
    if nofile[0] < 2 * opts.sockets + 256:
        sys.exit(f"the open-files limit {nofile[0]} is too low for {opts.sockets} sockets")

    info = probe_project(project, venv)
    log(f"project {project} at {info['commit']}; quart_app from {info['file']}")
    supports_events = "SESSION_EVENTS" in info["settings"]

    def _term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    started = time.monotonic()
    load_start = [round(x, 1) for x in os.getloadavg()]
    results: list[dict] = []
    pg: Postgres | None = None
    pg_problem = ""
    try:
        if any(v != "sqlite-poll" for v in variants):
            pg = Postgres(raw)
            try:
                pg.start()
            except (NotAvailable, RuntimeError, OSError, subprocess.SubprocessError) as exc:
                pg_problem = f"PostgreSQL: {exc}"
                log(pg_problem)
                pg.stop()
                pg = None
        for name in variants:
            log(f"--- {name}")
            if name in ("pg-notify", "redis") and not supports_events and not opts.run_unsupported:
                reason = (
                    f"the app has no SESSION_EVENTS setting (QUART_APP_SESSION_EVENTS={EVENTS[name]} "
                    "would be ignored: it polls)"
                )
                results.append({"variant": name, "status": "not available", "reason": reason})
                log(f"{name}: not available: {reason}")
                continue
            if name != "sqlite-poll" and pg is None:
                results.append({"variant": name, "status": "not available", "reason": pg_problem})
                continue
            try:
                result = asyncio.run(run_variant(name, opts, project, venv, pg, raw))
                if not supports_events:
                    result["note"] = "the app has no SESSION_EVENTS setting: today's polling"
                results.append(result)
            except NotAvailable as exc:
                results.append({"variant": name, "status": "not available", "reason": str(exc)})
                log(f"{name}: not available: {exc}")
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                results.append({"variant": name, "status": "failed", "reason": str(exc)[:500]})
                log(f"{name}: FAILED: {exc}")
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        raise
    finally:
        if pg is not None:
            pg.stop()
        for pid in list(_groups):
            stop_group(pid, grace=10)
            _groups.remove(pid)

    cpu_model = ""
    try:
        cpu_model = next(
            (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), ""
        )
    except OSError:
        pass
    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{NCPU} cores, {cpu_model or platform.machine()}, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "websockets": websockets.__version__,
        "project": {k: info[k] for k in ("commit", "subject", "branch", "file")},
        "app_knows_session_events": supports_events,
        "postgresql": pg_problem or (pg.version if pg else "") if "pg" in "".join(variants) else "",
        "sockets": opts.sockets,
        "revocations": opts.revocations,
        "idle_seconds": opts.idle_seconds,
        "fanout": opts.fanout,
        "timeout": opts.timeout,
        "quick": opts.quick,
        "elapsed_s": round(time.monotonic() - started, 1),
        "loadavg_start": load_start,
        "loadavg_end": [round(x, 1) for x in os.getloadavg()],
        "command": " ".join(["bench/revocation.py", *sys.argv[1:]]),
        "target": TARGET,
    }
    write_report(opts.out, meta, results)
    print()
    print("\n".join(table(results)))
    print(f"\nwrote {opts.out / 'revocation.json'} and {opts.out / 'revocation.md'} ({meta['elapsed_s']} s)")
    return 0 if all(r.get("status") in ("ok", "not available") for r in results) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; everything stopped")
        sys.exit(130)
