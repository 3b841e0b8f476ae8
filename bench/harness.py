"""The benchmark run: servers up, users made, every scenario against every server, alternating.

Started by ``bench/run`` (which makes the venvs and installs wrk); it is not
meant to be run alone, but can be, with the variables ``bench/run`` exports.
Standard library only (the chart is ``report.py``'s business).

Servers (all on 127.0.0.1, ports chosen free from BENCH_PORT_BASE):
  port           hypercorn -c hypercorn.toml "quart_app:create_app()"   (the project's config), SQLite
  port_pg        the same, on PostgreSQL (BENCH_PG_URL, a private cluster bench/run starts);
                 measured in the protected and login scenarios only
  flask_sync     gunicorn -w 2 --backlog 2048 app:app                    (bench/flask_ref)
  flask_gthread  gunicorn -w 2 -k gthread --threads 8 --backlog 2048 app:app
  flask_sync_pg, flask_gthread_pg
                 the same two, on PostgreSQL (BENCH_PG_FLASK_URL: the database flask_bench in the
                 same private cluster, psycopg 3); protected and login scenarios only
  fastapi_users  uvicorn --workers 2 --backlog 2048 app:app              (bench/peers/fastapi_users: the
                 FastAPI-Users peer, cookie transport + database strategy, SQLite via aiosqlite);
                 protected, login (its form-encoded login, in the JSON-login row) and storm
  port_uvicorn   the port's app and SQLite database under uvicorn --workers 2 --loop uvloop --http httptools
  port_granian   ... and under granian --interface asgi --workers 2 --loop uvloop (both from BENCH_PORT_SERVERS_DIR,
                 a pip --target folder bench/run fills; the port's venv and defaults are untouched);
                 protected scenarios only
and for the floor: bare_asgi / bare_quart on the same hypercorn.toml, bare Flask on both gunicorns.

If BENCH_PG_URL is empty (bench/run sets BENCH_PG_MISSING to why) or the port
cannot be set up on it, port_pg is left out, said so in the log and marked
missing in latest.json; everything else runs as usual. The same goes for
Flask on PostgreSQL (BENCH_PG_FLASK_URL) and the FastAPI-Users peer
(BENCH_PEERS_MISSING, or its venv missing): each optional server that cannot
be set up is left out and marked missing (``meta.missing``).

Every child is started in its own process group, its pid written to
``<raw>/pids``, and stopped (SIGTERM, then SIGKILL) in a ``finally``.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import http.client
import json
import os
import platform
import re
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(os.environ.get("BENCH_ROOT", Path(__file__).resolve().parent))
PORT_DIR = Path(os.environ.get("BENCH_PORT_DIR", BENCH.parent)).resolve()
PORT_VENV = Path(os.environ.get("BENCH_PORT_VENV", PORT_DIR / ".venv"))
FLASK_VENV = Path(os.environ.get("BENCH_FLASK_VENV", BENCH / ".venv-flask"))
FASTAPI_USERS_VENV = Path(os.environ.get("BENCH_FASTAPI_USERS_VENV", BENCH / ".venv-fastapi-users"))
PEERS_DIR = BENCH / "peers"
# uvicorn and granian for the port (pip install --target, run with the port's interpreter): extra servers.
PORT_SERVERS_DIR = Path(os.environ.get("BENCH_PORT_SERVERS_DIR", BENCH / ".port-servers"))
PORT_SERVERS_MISSING = os.environ.get("BENCH_PORT_SERVERS_MISSING", "")
OUT = Path(os.environ.get("BENCH_OUT", BENCH / "results"))
RAW = OUT / "raw"
WORK = Path(os.environ.get("BENCH_WORK") or "/tmp")  # databases and pool files

DURATION = int(os.environ.get("BENCH_DURATION", "5"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "2"))
USERS = int(os.environ.get("BENCH_USERS", "64"))
PORT_BASE = int(os.environ.get("BENCH_PORT_BASE", "18300"))
PAUSE = float(os.environ.get("BENCH_PAUSE", "0.5"))
IDLE_WAIT = float(os.environ.get("BENCH_IDLE_WAIT", "20"))
# At most this long, before each measurement, for the server to stop using CPU (queued logins drained).
QUIESCE_WAIT = float(os.environ.get("BENCH_QUIESCE_WAIT", "10"))
HASH_SECONDS = float(os.environ.get("BENCH_HASH_SECONDS", "2"))
WRK_TIMEOUT = int(os.environ.get("BENCH_WRK_TIMEOUT", "10"))
# A measurement during which other processes (not the server, not wrk) used more than
# NOISE_LIMIT % of a core is taken again, at most NOISE_RETRIES times.
NOISE_LIMIT = float(os.environ.get("BENCH_NOISE_LIMIT", "25"))
NOISE_RETRIES = int(os.environ.get("BENCH_NOISE_RETRIES", "2"))
BACKLOG = 2048  # = hypercorn.toml's backlog (and gunicorn's default)
UA = "bench"  # wrk's scripts send the same User-Agent (Flask-Login's session protection hashes it)
LUA = BENCH / "lua"
# The PostgreSQL variant (bench/run starts the cluster and exports these).
PG_URL = os.environ.get("BENCH_PG_URL", "")
PG_FLASK_URL = os.environ.get("BENCH_PG_FLASK_URL", "")  # the Flask reference's database in the same cluster
PEERS_MISSING = os.environ.get("BENCH_PEERS_MISSING", "")
QUICK = os.environ.get("BENCH_QUICK", "0") == "1"
# The floor scenario (bare "hello" apps); BENCH_QUICK leaves it out unless BENCH_FLOOR=1.
FLOOR = os.environ.get("BENCH_FLOOR", "0" if QUICK else "1") == "1"
PG_MISSING = os.environ.get("BENCH_PG_MISSING", "")
PG_PID = int(os.environ.get("BENCH_PG_PID") or 0)  # the postmaster: its CPU and its children's count as the DB's
PG_SETTINGS = os.environ.get("BENCH_PG_SETTINGS", "")  # "name=value name=value ..." as the server reports them
PG_VERSION = os.environ.get("BENCH_PG_VERSION", "")
PG_FS = os.environ.get("BENCH_PG_FS", "")  # the cluster's filesystem type
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1

SERVERS = [
    "port",
    "port_pg",
    "flask_sync",
    "flask_gthread",
    "flask_sync_pg",
    "flask_gthread_pg",
    "fastapi_users",
    "port_uvicorn",
    "port_granian",
]
# The port's app under other ASGI servers (the port's SQLite database and users): protected only.
PORT_ALT_SERVERS = {"port_uvicorn", "port_granian"}
PORT_SERVERS = {"port", "port_pg", *PORT_ALT_SERVERS}  # the port's app (registration, CSRF, JSON login status)
FLASK_PG_SERVERS = {"flask_sync_pg", "flask_gthread_pg"}
# The PostgreSQL servers are measured in these only (no storm, no floor).
PG_SCENARIOS = {"protected_64", "protected_512", "login_form", "login_json"}
# FastAPI-Users has no form/CSRF flow like the port's: its one login (form-encoded
# username/password, 204 + cookie) is run in the login_json scenario (and in the storm).
PEER_SCENARIOS = {"protected_64", "protected_512", "login_json", "storm"}
SERVER_SCENARIOS = {
    "port_pg": PG_SCENARIOS,
    "flask_sync_pg": PG_SCENARIOS,
    "flask_gthread_pg": PG_SCENARIOS,
    "fastapi_users": PEER_SCENARIOS,
    "port_uvicorn": {"protected_64", "protected_512"},
    "port_granian": {"protected_64", "protected_512"},
}
LABELS = {
    "port": "Quart port (hypercorn, 2 workers, uvloop), SQLite",
    "port_pg": "Quart port (hypercorn, 2 workers, uvloop), PostgreSQL (asyncpg)",
    "flask_sync": "Flask ref (gunicorn, 2 sync workers)",
    "flask_gthread": "Flask ref (gunicorn, 2 gthread workers x 8 threads)",
    "flask_sync_pg": "Flask ref (gunicorn, 2 sync workers), PostgreSQL (psycopg 3)",
    "flask_gthread_pg": "Flask ref (gunicorn, 2 gthread workers x 8 threads), PostgreSQL (psycopg 3)",
    "fastapi_users": "FastAPI-Users (uvicorn, 2 workers, uvloop), SQLite (aiosqlite), database strategy",
    "port_uvicorn": "Quart port under uvicorn (2 workers, uvloop, httptools), SQLite",
    "port_granian": "Quart port under granian (2 workers, uvloop), SQLite",
    "bare_asgi": "bare ASGI hello (hypercorn.toml)",
    "bare_quart": "bare Quart hello (hypercorn.toml)",
    "bare_flask_sync": "bare Flask hello (gunicorn, 2 sync)",
    "bare_flask_gthread": "bare Flask hello (gunicorn, 2 gthread x 8)",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- processes -----------------------------------------------------------------

_children: dict[int, str] = {}


def _note_pid(pid: int, name: str) -> None:
    _children[pid] = name
    with open(RAW / "pids", "a") as fh:
        fh.write(f"{pid} {name}\n")


def _forget_pid(pid: int) -> None:
    _children.pop(pid, None)


def stop_group(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid`` (one we started), then SIGKILL after ``grace``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        _forget_pid(pid)
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done == pid and not _group_alive(pid):
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    _forget_pid(pid)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop_all() -> None:
    for pid in list(_children):
        stop_group(pid, grace=5.0)


def _proc_stats():
    """(pid, fields) of every live process, ``fields`` being /proc/PID/stat from field 3 (state) on."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        yield int(entry), stat[stat.rindex(")") + 2 :].split()


def group_cpu_seconds(pgid: int) -> float:
    """utime+stime of every live process in process group ``pgid``."""
    # fields[0] is field 3 (state): pgrp is field 5, utime 14, stime 15.
    total = sum(int(f[11]) + int(f[12]) for _, f in _proc_stats() if int(f[2]) == pgid)
    return total / CLK_TCK


def group_hashing_cpu_seconds(pgid: int) -> float:
    """utime+stime of the threads of process group ``pgid`` that run at a lowered priority (nice > 0).

    In the port those are exactly its password-hash threads (the only ones it
    lowers), so this splits a login's CPU into hashing and everything else.
    """
    total = 0
    for pid, fields in _proc_stats():
        if int(fields[2]) != pgid:
            continue
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            f = stat[stat.rindex(")") + 2 :].split()
            if int(f[16]) > 0:  # field 19: nice
                total += int(f[11]) + int(f[12])
    return total / CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    """CPU of a server we did not start (PostgreSQL's postmaster ``root``): its own, its live children's,
    and that of the children it has reaped (cutime+cstime), so backends that come and go still count."""
    total = 0
    for pid, fields in _proc_stats():
        # fields[1] is field 4 (ppid); utime 14, stime 15, cutime 16, cstime 17.
        if pid == root:
            total += sum(int(x) for x in fields[11:15])
        elif int(fields[1]) == root:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies from /proc/stat."""
    with open("/proc/stat") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return total - idle, total


def wait_idle(max_wait: float = IDLE_WAIT) -> float:
    """Wait (bounded) until the machine is nearly idle; returns the last busy fraction seen."""
    deadline = time.monotonic() + max_wait
    busy = 1.0
    while True:
        b0, t0 = machine_cpu()
        time.sleep(0.5)
        b1, t1 = machine_cpu()
        busy = (b1 - b0) / max(t1 - t0, 1)
        if busy < 0.10 or time.monotonic() >= deadline:
            return busy


# -- servers -------------------------------------------------------------------


def free_port(start: int) -> int:
    port = start
    for _ in range(500):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                port += 1
    raise RuntimeError(f"no free port from {start}")


class Server:
    def __init__(self, name: str, cmd: list[str], cwd: Path, env: dict[str, str], port: int, db_pid: int = 0):
        self.name, self.cmd, self.cwd, self.env, self.port = name, cmd, cwd, env, port
        self.db_pid = db_pid  # a database server's postmaster whose CPU is this server's too (port_pg)
        self.proc: subprocess.Popen | None = None
        self.logfile = RAW / f"server-{name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        out = open(self.logfile, "ab")
        out.write(f"\n=== {time.ctime()} {' '.join(self.cmd)}\n".encode())
        out.flush()
        self.proc = subprocess.Popen(
            self.cmd, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()
        _note_pid(self.proc.pid, self.name)

    def wait_ready(self, path: str = "/", timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start; see {self.logfile}:\n{tail(self.logfile)}")
            try:
                status, _, _, _ = request(self.port, "GET", path, timeout=5)
                if status < 500:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; see {self.logfile}:\n{tail(self.logfile)}")

    def cpu(self) -> float:
        """The app server's own processes."""
        return group_cpu_seconds(self.proc.pid) if self.proc else 0.0

    def hashing_cpu(self) -> float:
        """The part of ``cpu()`` used by threads at a lowered priority (the port's hash threads)."""
        return group_hashing_cpu_seconds(self.proc.pid) if self.proc else 0.0

    def db_cpu(self) -> float:
        """The database server's processes (PostgreSQL for port_pg; 0 for SQLite, which runs in the app)."""
        return tree_cpu_seconds(self.db_pid) if self.db_pid else 0.0

    def total_cpu(self) -> float:
        return self.cpu() + self.db_cpu()

    def quiesce(self, max_wait: float | None = None) -> None:
        """Wait (bounded) until the server's processes stop using CPU (backlogs drained)."""
        max_wait = QUIESCE_WAIT if max_wait is None else max_wait
        deadline = time.monotonic() + max_wait
        while time.monotonic() < deadline:
            c0 = self.total_cpu()
            time.sleep(0.25)
            if self.total_cpu() - c0 < 0.0125:  # < 5% of one core
                return

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc.pid)
            self.proc = None


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def gunicorn_cmd(extra: list[str], port: int, app: str) -> list[str]:
    cmd = [
        str(FLASK_VENV / "bin" / "gunicorn"),
        "-w",
        "2",
        *extra,
        "--backlog",
        str(BACKLOG),
        "-b",
        f"127.0.0.1:{port}",
    ]
    if _gunicorn_has_control_socket():
        # gunicorn 25+ opens a control socket at one fixed path per user; two masters would share it.
        cmd.append("--no-control-socket")
    return [*cmd, app]


_control_socket: bool | None = None


def _gunicorn_has_control_socket() -> bool:
    global _control_socket
    if _control_socket is None:
        out = subprocess.run(
            [str(FLASK_VENV / "bin" / "gunicorn"), "--help"], capture_output=True, text=True, timeout=60
        ).stdout
        _control_socket = "--no-control-socket" in out
    return _control_socket


def hypercorn_cmd(port: int, app: str) -> list[str]:
    return [
        str(PORT_VENV / "bin" / "hypercorn"),
        "-c",
        str(PORT_DIR / "hypercorn.toml"),
        "--bind",
        f"127.0.0.1:{port}",
        app,
    ]


def uvicorn_cmd(port: int, app: str = "app:app") -> list[str]:
    """The FastAPI-Users peer: uvicorn with 2 worker processes, uvloop and httptools (uvicorn[standard]),
    the same backlog as hypercorn.toml, and no access log (hypercorn.toml has none either)."""
    return [
        str(FASTAPI_USERS_VENV / "bin" / "uvicorn"),
        "--workers",
        "2",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--backlog",
        str(BACKLOG),
        "--no-access-log",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        app,
    ]


def port_alt_cmd(name: str, port: int) -> list[str]:
    """The port's app (``create_app`` as a factory) under uvicorn or granian, with the port's interpreter."""
    py = str(PORT_VENV / "bin" / "python")
    if name == "port_uvicorn":
        return [py, "-m", "uvicorn", *uvicorn_cmd(port, "quart_app:create_app")[1:], "--factory"]
    return [
        py,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--workers",
        "2",
        "--loop",
        "uvloop",
        "--backlog",
        str(BACKLOG),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--factory",
        "quart_app:create_app",
    ]


# -- a tiny HTTP client with a cookie jar (setup only; the load is wrk's) --------


def request(port, method, path, body=None, headers=None, jar=None, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    hdrs = {"User-Agent": UA, **(headers or {})}
    if jar:
        hdrs["Cookie"] = cookie_header(jar)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read().decode("utf-8", "replace")
        set_cookies = resp.headers.get_all("Set-Cookie") or []
    finally:
        conn.close()
    if jar is not None:
        for line in set_cookies:
            name, _, rest = line.partition("=")
            value = rest.split(";", 1)[0]
            attrs = rest.lower()
            if not value or "max-age=0" in attrs or "expires=thu, 01 jan 1970" in attrs:
                jar.pop(name.strip(), None)
            else:
                jar[name.strip()] = value
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, set_cookies


def cookie_header(jar: dict[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in jar.items())


def form(**fields) -> tuple[str, dict[str, str]]:
    from urllib.parse import urlencode

    return urlencode(fields), {"Content-Type": "application/x-www-form-urlencoded"}


def js(**fields) -> tuple[str, dict[str, str]]:
    return json.dumps(fields), {"Content-Type": "application/json"}


CSRF_RE = re.compile(r'name="csrf_token"\s+value="([^"]+)"')


def user(i: int) -> tuple[str, str, str]:
    return f"bench{i:03d}", f"bench{i:03d}@example.org", f"pw-{i:03d}-{SALT}"


SALT = secrets.token_hex(4)


def check(cond: bool, what: str) -> None:
    if not cond:
        raise RuntimeError(f"setup check failed: {what}")


# -- preparation: users, cookies, pools ------------------------------------------


def register_users(srv: Server, kind: str) -> None:
    def one(i: int) -> int:
        name, email, pw = user(i)
        if kind == "port":
            body, hdrs = js(username=name, email=email, password=pw)
            return request(srv.port, "POST", "/api/register", body, hdrs)[0]
        if kind == "fastapi_users":
            # Its register router: JSON {email, password}; it has no username.
            body, hdrs = js(email=email, password=pw)
            return request(srv.port, "POST", "/auth/register", body, hdrs)[0]
        body, hdrs = form(username=name, email=email, password=pw)
        return request(srv.port, "POST", "/register", body, hdrs)[0]

    want = 201 if kind in ("port", "fastapi_users") else 302
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(one, range(USERS)))
    bad = [s for s in statuses if s != want]
    check(not bad, f"{srv.name}: registering {USERS} users gave statuses {sorted(set(bad))} (want {want})")


def browser_login(srv: Server, kind: str) -> dict[str, str]:
    """Log bench000 in the way a browser does and return its cookie jar, ready for GET /dashboard."""
    if kind == "fastapi_users":
        return peer_login(srv)
    name, _, pw = user(0)
    jar: dict[str, str] = {}
    status, _, html, _ = request(srv.port, "GET", "/login", jar=jar)
    check(status == 200, f"{srv.name}: GET /login -> {status}")
    fields = {"username": name, "password": pw}
    if kind == "port":
        m = CSRF_RE.search(html)
        check(m is not None, f"{srv.name}: no csrf_token on the login page")
        fields["csrf_token"] = m.group(1)
    body, hdrs = form(**fields)
    status, _, _, _ = request(srv.port, "POST", "/login", body, hdrs, jar=jar)
    check(status == 302, f"{srv.name}: form login -> {status}")
    # First visit may update the cookies (flash consumed, CSRF token minted): keep them, like a browser.
    status, _, html, _ = request(srv.port, "GET", "/dashboard", jar=jar)
    check(status == 200 and f"Hello {name}" in html, f"{srv.name}: GET /dashboard -> {status}")
    status, _, html, set_cookies = request(srv.port, "GET", "/dashboard", jar=jar)
    check(status == 200 and f"Hello {name}" in html, f"{srv.name}: GET /dashboard (again) -> {status}")
    if set_cookies:
        log(f"note: {srv.name} sets cookies on every dashboard view: {[c.split('=')[0] for c in set_cookies]}")
    return jar


def peer_login(srv: Server) -> dict[str, str]:
    """FastAPI-Users: its cookie login (form-encoded username = the email), then the dashboard twice."""
    _, email, pw = user(0)
    jar: dict[str, str] = {}
    body, hdrs = form(username=email, password=pw)
    status, _, _, _ = request(srv.port, "POST", PEER_LOGIN_PATH, body, hdrs, jar=jar)
    check(status == 204 and "fastapiusersauth" in jar, f"{srv.name}: cookie login -> {status} {sorted(jar)}")
    for again in ("", " (again)"):
        status, _, html, set_cookies = request(srv.port, "GET", "/dashboard", jar=jar)
        check(status == 200 and f"Hello {email}" in html, f"{srv.name}: GET /dashboard{again} -> {status}")
    if set_cookies:
        log(f"note: {srv.name} sets cookies on every dashboard view: {[c.split('=')[0] for c in set_cookies]}")
    return jar


PEER_LOGIN_PATH = "/auth/cookie/login"


def write_pools(srv: Server, kind: str) -> tuple[Path, Path]:
    """Pool files for wrk: username TAB password [TAB csrf_token TAB Cookie]."""
    form_pool = WORK / f"pool-form-{srv.name}.tsv"
    json_pool = WORK / f"pool-json-{srv.name}.tsv"
    if kind == "fastapi_users":
        # Its one login, form-encoded (username = the email), no CSRF: the same pool in both files.
        lines = [f"{user(i)[1]}\t{user(i)[2]}\t\t" for i in range(USERS)]
        for path in (form_pool, json_pool):
            path.write_text("\n".join(lines) + "\n")
        _, email, pw = user(USERS - 1)
        body, hdrs = form(username=email, password=pw)
        status = request(srv.port, "POST", PEER_LOGIN_PATH, body, hdrs)[0]
        check(status == 204, f"{srv.name}: pooled cookie login -> {status}")
        return form_pool, json_pool
    form_lines, json_lines = [], []

    def token_pair(i: int) -> str:
        # The port's CSRF token lives in its signed session cookie: one (token, cookie) pair per user,
        # fetched from the login page like a browser; the pair stays valid for any number of POSTs.
        jar: dict[str, str] = {}
        status, _, html, _ = request(srv.port, "GET", "/login", jar=jar)
        m = CSRF_RE.search(html)
        check(status == 200 and m is not None and "quart_app_session" in jar, f"{srv.name}: csrf pair {i}")
        return f"{m.group(1)}\tquart_app_session={jar['quart_app_session']}"

    if kind == "port":
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            pairs = list(pool.map(token_pair, range(USERS)))
    else:
        pairs = ["\t"] * USERS
    for i in range(USERS):
        name, _, pw = user(i)
        form_lines.append(f"{name}\t{pw}\t{pairs[i]}")
        json_lines.append(f"{name}\t{pw}")
    form_pool.write_text("\n".join(form_lines) + "\n")
    json_pool.write_text("\n".join(json_lines) + "\n")

    # One login of each kind from the pool, as wrk will send it (no auth cookie).
    name, _, pw = user(USERS - 1)
    fields = {"username": name, "password": pw}
    hdr_cookie = {}
    if kind == "port":
        token, cookie = pairs[USERS - 1].split("\t")
        fields["csrf_token"] = token
        hdr_cookie = {"Cookie": cookie}
    body, hdrs = form(**fields)
    status = request(srv.port, "POST", "/login", body, {**hdrs, **hdr_cookie})[0]
    check(status == 302, f"{srv.name}: pooled form login -> {status}")
    body, hdrs = js(username=name, password=pw)
    status = request(srv.port, "POST", "/api/login", body, hdrs)[0]
    check(status == json_ok(srv.name), f"{srv.name}: JSON login -> {status}")
    return form_pool, json_pool


def json_ok(server: str) -> int:
    # The port answers 200 (on either database); the seed's Login resource answers 201;
    # FastAPI-Users' cookie login 204.
    if server == "fastapi_users":
        return 204
    return 200 if server in PORT_SERVERS else 201


def kind_of(server: str) -> str:
    if server == "fastapi_users":
        return "fastapi_users"
    return "port" if server in PORT_SERVERS else "flask"


def api_login(name: str, pools: dict) -> tuple[str, list[str]]:
    """(wrk script, its args) of the login loop of the login_json row and the storm: each app's
    non-form login (the port's and the seed's JSON POST /api/login; FastAPI-Users' cookie login)."""
    if name == "fastapi_users":
        return "form_login.lua", [str(pools[name][1]), "204", PEER_LOGIN_PATH]
    return "json_login.lua", [str(pools[name][1]), str(json_ok(name)), "/api/login"]


# -- wrk ---------------------------------------------------------------------------

RUN_ID = [0]


def start_wrk(url: str, script: str, args: list[str], conns: int, duration: int, tag: str):
    RUN_ID[0] += 1
    logfile = RAW / f"wrk-{RUN_ID[0]:03d}-{tag}.log"
    cmd = [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        f"{WRK_TIMEOUT}s",
        "-s",
        str(LUA / script),
        url,
        "--",
        *args,
    ]
    out = open(logfile, "w")
    out.write(" ".join(cmd[: -len(args) or None]) + " -- <args>\n")
    out.flush()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    _note_pid(proc.pid, f"wrk-{tag}")
    return proc, logfile, time.monotonic() + duration + WRK_TIMEOUT + 30


def finish_wrk(handle) -> dict:
    proc, logfile, deadline = handle
    rusage = None
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            log(f"wrk overran its time ({logfile.name}); stopping it")
            stop_group(proc.pid, grace=2)
            proc.returncode = -9
            break
        time.sleep(0.05)
    _forget_pid(proc.pid)
    text = logfile.read_text(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no BENCH_JSON line (exit {proc.returncode}); see {logfile}:\n{text[-2000:]}")
    result = json.loads(line[len("BENCH_JSON ") :])
    nonok = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    result["non_2xx_3xx"] = int(nonok.group(1)) if nonok else 0
    result["socket_errors"] = sum(result["errors"][k] for k in ("connect", "read", "write", "timeout"))
    result["wrk_cpu_s"] = (rusage.ru_utime + rusage.ru_stime) if rusage else None
    result["log"] = str(logfile.relative_to(OUT))
    return result


def run_wrk(url, script, args, conns, duration, tag) -> dict:
    return finish_wrk(start_wrk(url, script, args, conns, duration, tag))


def measured(srv: Server, fn) -> dict:
    """Run ``fn`` (which runs wrk) while accounting the server's and the machine's CPU."""
    h0 = srv.hashing_cpu()
    s0, d0, (b0, t0), w0 = srv.cpu(), srv.db_cpu(), machine_cpu(), time.monotonic()
    result = fn()
    s1, d1, (b1, t1), w1 = srv.cpu(), srv.db_cpu(), machine_cpu(), time.monotonic()
    h1 = srv.hashing_cpu()
    wall = w1 - w0
    machine_busy = (b1 - b0) / CLK_TCK  # cpu-seconds over all cores
    server_cpu = s1 - s0
    db_cpu = d1 - d0  # PostgreSQL's processes (port_pg only): part of the system measured, not noise
    wrk_cpu = (result.get("wrk_cpu_s") or 0) + (result.get("storm_logins", {}).get("wrk_cpu_s") or 0)
    extra = {
        "wall_s": round(wall, 3),
        "server_cpu_pct": round(100 * server_cpu / wall, 1),  # % of one core
        # Of which threads at a lowered priority (the port's password hashing; 0 for Flask).
        "hashing_cpu_pct": round(100 * (h1 - h0) / wall, 1),
        "wrk_cpu_pct": round(100 * wrk_cpu / wall, 1),
        # CPU used by anything else on the machine meanwhile (other users' jobs): noise.
        "other_cpu_pct": round(100 * max(machine_busy - server_cpu - db_cpu - wrk_cpu, 0) / wall, 1),
        "machine_cpu_pct": round(100 * (b1 - b0) / max(t1 - t0, 1) * NCPU, 1),
    }
    if srv.db_pid:
        extra["db_cpu_pct"] = round(100 * db_cpu / wall, 1)
    result.update(extra)
    return result


# -- scenarios --------------------------------------------------------------------


class Case:
    def __init__(self, scenario: str, server: Server, run, warm=None):
        self.scenario, self.server, self.run, self.warm = scenario, server, run, warm
        self.warmed = False


def build_cases(srvs: dict[str, Server], cookies: dict[str, str], pools: dict[str, tuple[Path, Path]]):
    cases = []

    def protected(name: str, conns: int):
        srv = srvs[name]

        def run(duration: int, tag: str):
            return run_wrk(f"{srv.url}/dashboard", "cookie_get.lua", [cookies[name], "200"], conns, duration, tag)

        return run

    def login_form(name: str):
        srv = srvs[name]

        def run(duration: int, tag: str):
            return run_wrk(srv.url, "form_login.lua", [str(pools[name][0]), "302", "/login"], 32, duration, tag)

        return run

    def login_json(name: str):
        srv = srvs[name]

        def run(duration: int, tag: str):
            script, args = api_login(name, pools)
            return run_wrk(srv.url, script, args, 32, duration, tag)

        return run

    def storm(name: str):
        srv = srvs[name]

        def run(duration: int, tag: str):
            # The login loop starts first and ends last, so the whole dashboard window is under storm.
            script, args = api_login(name, pools)
            bg = start_wrk(srv.url, script, args, 32, duration + 2, tag + "-logins")
            time.sleep(1.0)
            try:
                dash = run_wrk(f"{srv.url}/dashboard", "cookie_get.lua", [cookies[name], "200"], 64, duration, tag)
            finally:
                logins = finish_wrk(bg)
            dash["storm_logins"] = logins
            return dash

        return run

    for scenario, maker in [
        ("protected_64", lambda n: protected(n, 64)),
        ("protected_512", lambda n: protected(n, 512)),
        ("login_form", login_form),
        ("login_json", login_json),
        ("storm", storm),
    ]:
        for name in SERVERS:
            if name not in srvs or scenario not in SERVER_SCENARIOS.get(name, {scenario}):
                continue
            cases.append(Case(scenario, srvs[name], maker(name), warm=scenario != "storm"))
    return cases


def run_cases(cases: list[Case], results: dict, phase: str, paired: dict | None = None) -> None:
    scenarios = list(dict.fromkeys(c.scenario for c in cases))
    for rep in range(REPEAT):
        for scenario in scenarios:
            group = [c for c in cases if c.scenario == scenario]
            # Alternate: each repetition starts with a different server.
            shift = rep % len(group)
            for case in group[shift:] + group[:shift]:
                srv = case.server
                if case.warm and not case.warmed and WARMUP > 0:
                    srv.quiesce()
                    case.run(WARMUP, f"warmup-{scenario}-{srv.name}")
                    case.warmed = True
                log(f"{phase} rep {rep + 1}/{REPEAT}: {scenario} on {srv.name}")
                attempts = []
                for attempt in range(NOISE_RETRIES + 1):
                    time.sleep(PAUSE)
                    srv.quiesce()
                    idle_before = wait_idle()
                    tag = f"{case.scenario}-{srv.name}-r{rep + 1}" + (f"-retry{attempt}" if attempt else "")
                    r = measured(srv, lambda case=case, tag=tag: case.run(DURATION, tag))
                    r["machine_busy_before_pct"] = round(100 * idle_before * NCPU, 1)
                    attempts.append(r)
                    if r["other_cpu_pct"] <= NOISE_LIMIT or attempt == NOISE_RETRIES:
                        break
                    log(f"  (other processes used {r['other_cpu_pct']}% of a core meanwhile: measuring again)")
                # Keep the least disturbed attempt; the others are kept for the record.
                r = min(attempts, key=lambda a: a["other_cpu_pct"])
                r["noise_retries"] = len(attempts) - 1
                r["discarded_attempts"] = [
                    {k: a[k] for k in ("rps", "p50_ms", "p99_ms", "other_cpu_pct", "log")}
                    for a in attempts
                    if a is not r
                ]
                results.setdefault(scenario, {}).setdefault(srv.name, {"runs": []})["runs"].append(r)
                log(
                    f"  -> {r['rps']:.1f}/s p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms"
                    f" non2xx/3xx {r['non_2xx_3xx']} unexpected {r['unexpected']} sock {r['socket_errors']}"
                    f" | server {r['server_cpu_pct']}%"
                    + (f" db {r['db_cpu_pct']}%" if "db_cpu_pct" in r else "")
                    + f" wrk {r['wrk_cpu_pct']}% other {r['other_cpu_pct']}%"
                    + (f" | logins {r['storm_logins']['rps']:.1f}/s" if "storm_logins" in r else "")
                )
                if paired is not None and scenario in PAIRED_CEILING_SCENARIOS and srv.name == "port":
                    paired_ceiling(scenario, rep, paired)
                algo = PEER_OWN_HASH.get(srv.name)
                if paired is not None and scenario in PEER_PAIRED_SCENARIOS and algo:
                    # One sample of the peer's own hash per repetition and scenario (the Flask servers
                    # share Werkzeug's), right after the first of its servers' login runs.
                    samples = paired.setdefault("peers", {}).setdefault(algo, {})
                    if not any(c["rep"] == rep + 1 for c in samples.get(scenario, [])):
                        paired_ceiling(scenario, rep, samples, algo)


def summarize(results: dict) -> None:
    for _scenario, per_server in results.items():
        for _name, entry in per_server.items():
            every = entry["runs"]
            # Medians over the runs the rest of the machine left alone, if there are any.
            runs = [r for r in every if r["other_cpu_pct"] <= NOISE_LIMIT] or every
            entry["runs_in_median"] = len(runs)
            med = lambda key, rs=runs: statistics.median(r[key] for r in rs)  # noqa: E731
            entry["median"] = {
                "rps": med("rps"),
                "p50_ms": med("p50_ms"),
                "p99_ms": med("p99_ms"),
                "server_cpu_pct": med("server_cpu_pct"),
                "hashing_cpu_pct": med("hashing_cpu_pct"),
                "wrk_cpu_pct": med("wrk_cpu_pct"),
                "other_cpu_pct": max(r["other_cpu_pct"] for r in runs),
                "other_cpu_pct_all_runs": max(r["other_cpu_pct"] for r in every),
            }
            if "db_cpu_pct" in runs[0]:
                entry["median"]["db_cpu_pct"] = med("db_cpu_pct")
            # Errors count over every run kept, noisy or not.
            entry["totals"] = {
                "requests": sum(r["requests"] for r in every),
                "non_2xx_3xx": sum(r["non_2xx_3xx"] for r in every),
                "unexpected_status": sum(r["unexpected"] for r in every),
                "socket_errors": sum(r["socket_errors"] for r in every),
                "timeouts": sum(r["errors"]["timeout"] for r in every),
                "statuses": _sum_statuses(every),
            }
            if runs and "storm_logins" in runs[0]:
                logins = [r["storm_logins"] for r in runs]
                entry["median"]["storm_logins_rps"] = statistics.median(x["rps"] for x in logins)
                entry["median"]["storm_logins_p99_ms"] = statistics.median(x["p99_ms"] for x in logins)
                every_login = [r["storm_logins"] for r in every]
                entry["totals"]["storm_login_errors"] = sum(
                    x["non_2xx_3xx"] + x["unexpected"] + x["socket_errors"] for x in every_login
                )
                entry["totals"]["storm_login_statuses"] = _sum_statuses(every_login)


def _sum_statuses(runs) -> dict:
    total: dict[str, int] = {}
    for r in runs:
        for code, n in r["statuses"].items():
            total[code] = total.get(code, 0) + n
    return total


# -- machine and versions -----------------------------------------------------------


def versions(python: Path, packages: list[str]) -> dict:
    code = (
        "import json,sys,importlib.metadata as m\n"
        "out={'python':sys.version.split()[0]}\n"
        f"for p in {packages!r}:\n"
        "    try: out[p]=m.version(p)\n"
        "    except Exception: out[p]=None\n"
        "print(json.dumps(out))"
    )
    res = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    return json.loads(res.stdout) if res.returncode == 0 else {"error": res.stderr[-500:]}


def port_servers_versions() -> dict:
    """uvicorn / granian / httptools in PORT_SERVERS_DIR (from their dist-info folder names)."""
    out = {}
    for dist in sorted(PORT_SERVERS_DIR.glob("*.dist-info")) if PORT_SERVERS_DIR.is_dir() else []:
        name, _, version = dist.name[: -len(".dist-info")].partition("-")
        out[name.lower()] = version
    return out


def machine_info() -> dict:
    model = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()
    git = lambda *a: subprocess.run(["git", "-C", str(PORT_DIR), *a], capture_output=True, text=True).stdout.strip()  # noqa: E731
    return {
        "nproc": NCPU,
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
        "wrk": wrk_version[0].strip() if wrk_version else None,
        "port_commit": git("rev-parse", "--short", "HEAD") or None,
        "port_tree_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def hypercorn_settings() -> dict:
    try:
        import tomllib

        with open(PORT_DIR / "hypercorn.toml", "rb") as fh:
            return tomllib.load(fh)
    except Exception as exc:  # noqa: BLE001
        return {"error": repr(exc)}


# -- hash ceiling ------------------------------------------------------------------


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# The port's ceiling (2 threads), sampled in each repetition of each login
# scenario right after the port's own login run: this machine's speed drifts
# (from one minute to the next, and more over a run), so a ceiling taken at
# the end of the run is no fair yardstick for logins measured long before.
PAIRED_CEILING_SCENARIOS = ("login_form", "login_json")
# The same for the peers with a hasher of their own (bench/peers/hash_ceiling.py), in their login row.
PEER_PAIRED_SCENARIOS = ("login_form", "login_json")


def hasher_cmd(algo: str) -> tuple[list[str], Path, dict[str, str]]:
    """(command up to its options, cwd, extra env) of the in-process hash timing for ``algo``."""
    if algo == "port":
        cmd = [str(PORT_VENV / "bin" / "python"), str(BENCH / "hash_ceiling.py")]
        return cmd, PORT_DIR, {"PYTHONPATH": str(PORT_DIR)}
    if algo == "werkzeug":
        return [str(FLASK_VENV / "bin" / "python"), str(BENCH / "hash_ceiling.py")], BENCH, {}
    venv = PEER_HASHERS[algo]
    return [str(venv / "bin" / "python"), str(PEERS_DIR / "hash_ceiling.py")], PEERS_DIR, {}


# Peer server name -> the venv whose python runs bench/peers/hash_ceiling.py --algo <name>.
PEER_HASHERS = {"fastapi_users": FASTAPI_USERS_VENV}
# Server -> its own password hash (sampled beside its logins, see run_cases).
PEER_OWN_HASH = {
    "flask_sync": "werkzeug",
    "flask_gthread": "werkzeug",
    "flask_sync_pg": "werkzeug",
    "flask_gthread_pg": "werkzeug",
    "fastapi_users": "fastapi_users",
}


def paired_ceiling(scenario: str, rep: int, paired: dict, algo: str = "port") -> None:
    base, cwd, env_extra = hasher_cmd(algo)
    cmd = [
        *base,
        "--algo",
        algo,
        "--seconds",
        str(DURATION),
        "--repeat",
        "1",
        "--threads",
        "2",
        "--processes",
        "",
    ]
    env = {**os.environ, **env_extra}
    time.sleep(PAUSE)
    wait_idle()
    c0, (b0, _), w0 = _children_cpu(), machine_cpu(), time.monotonic()
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    c1, (b1, _), w1 = _children_cpu(), machine_cpu(), time.monotonic()
    other = 100 * max((b1 - b0) / CLK_TCK - (c1 - c0), 0) / (w1 - w0)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("HASH_JSON ")), None)
    if res.returncode != 0 or line is None:
        if algo != "port":  # a peer's sample is not worth the run
            log(f"  WARNING: the {algo} hash ceiling (paired, {scenario}) failed: {res.stderr[-500:]}")
            return
        raise RuntimeError(f"hash_ceiling.py --algo {algo} (paired, {scenario}) failed:\n{res.stderr[-2000:]}")
    rate = json.loads(line[len("HASH_JSON ") :])["threads"]["2"]["verifies_per_s"]
    paired.setdefault(scenario, []).append({"rep": rep + 1, "verifies_per_s": rate, "other_cpu_pct": round(other, 1)})
    log(f"  -> {algo} hash ceiling next to {scenario} (rep {rep + 1}): {rate:.1f} verifies/s on 2 threads")


def hash_ceiling(peers: list[str]) -> dict:
    out = {}

    for algo in ["port", "werkzeug", *peers]:
        base, cwd, env_extra = hasher_cmd(algo)
        log(f"hash ceiling: {algo}")
        cmd = [
            *base,
            "--algo",
            algo,
            "--seconds",
            str(HASH_SECONDS),
            "--repeat",
            str(REPEAT),
            "--threads",
            "1,2",
            "--processes",
            "2",
        ]
        env = {**os.environ, **env_extra}
        for attempt in range(NOISE_RETRIES + 1):
            wait_idle()
            c0, (b0, _), w0 = _children_cpu(), machine_cpu(), time.monotonic()
            res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
            c1, (b1, _), w1 = _children_cpu(), machine_cpu(), time.monotonic()
            other = 100 * max((b1 - b0) / CLK_TCK - (c1 - c0), 0) / (w1 - w0)
            if res.returncode != 0 or other <= NOISE_LIMIT or attempt == NOISE_RETRIES:
                break
            log(f"  (other processes used {other:.0f}% of a core meanwhile: measuring again)")
        (RAW / f"hash-{algo}.log").write_text(res.stdout + res.stderr)
        line = next((ln for ln in res.stdout.splitlines() if ln.startswith("HASH_JSON ")), None)
        if res.returncode != 0 or line is None:
            if algo in PEER_HASHERS:
                log(f"  WARNING: the {algo} hash ceiling failed (see {RAW / f'hash-{algo}.log'}); left out")
                continue
            raise RuntimeError(f"hash_ceiling.py --algo {algo} failed:\n{res.stderr[-2000:]}")
        out[algo] = json.loads(line[len("HASH_JSON ") :])
        out[algo]["other_cpu_pct"] = round(other, 1)
        out[algo]["noise_retries"] = attempt
        log(
            "  -> "
            + ", ".join(f"{t} thread(s) {v['verifies_per_s']:.1f}/s" for t, v in out[algo]["threads"].items())
            + ", "
            + ", ".join(f"{t} process(es) {v['verifies_per_s']:.1f}/s" for t, v in out[algo]["processes"].items())
        )
    return out


# -- main --------------------------------------------------------------------------


def alembic_upgrade(env: dict[str, str], logfile: Path) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [str(PORT_VENV / "bin" / "alembic"), "upgrade", "head"],
        cwd=PORT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    logfile.write_text(res.stdout + res.stderr)
    return res


def pg_missing(meta: dict, reason: str) -> None:
    """Leave the PostgreSQL variant out: say so loudly and record why."""
    log("=" * 72)
    log(f"PostgreSQL variant (port_pg) MISSING: {reason}")
    log("the run goes on without it; the report marks it missing")
    log("=" * 72)
    meta["postgresql"]["status"] = "missing"
    meta["postgresql"]["reason"] = reason


def optional_missing(meta: dict, name: str, reason: str) -> None:
    """Leave an optional server (Flask on PostgreSQL, a peer) out: say so loudly and record why."""
    log("=" * 72)
    log(f"{name} MISSING: {reason}")
    log("the run goes on without it; the report marks it missing")
    log("=" * 72)
    meta["missing"][name] = reason


def pg_settings() -> dict[str, str]:
    return dict(item.split("=", 1) for item in PG_SETTINGS.split() if "=" in item)


def port_pool_settings() -> dict:
    """The app's connection pool defaults (the bench does not change them)."""
    code = (
        "import json\n"
        "from quart_app.core.config import Settings as S\n"
        "print(json.dumps({k: getattr(S, k) for k in "
        "('DB_POOL_SIZE', 'DB_MAX_OVERFLOW', 'DB_POOL_TIMEOUT', 'DB_COMMAND_TIMEOUT', 'SQLITE_THREADS')}))"
    )
    res = subprocess.run(
        [str(PORT_VENV / "bin" / "python"), "-c", code],
        cwd=PORT_DIR,
        env={**os.environ, "PYTHONPATH": str(PORT_DIR)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(res.stdout) if res.returncode == 0 else {"error": res.stderr[-500:]}


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    RAW.mkdir(parents=True, exist_ok=True)
    (RAW / "pids").write_text("")
    WORK.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupted)
    started = time.monotonic()
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = {
        "date": date,
        "machine": machine_info(),
        "versions": {
            "port_venv": versions(
                PORT_VENV / "bin" / "python",
                [
                    "quart",
                    "hypercorn",
                    "quart-auth",
                    "sqlalchemy",
                    "aiosqlite",
                    "asyncpg",
                    "argon2-cffi",
                    "uvloop",
                    "werkzeug",
                ],
            ),
            "flask_venv": versions(
                FLASK_VENV / "bin" / "python",
                ["flask", "flask-login", "flask-sqlalchemy", "sqlalchemy", "werkzeug", "gunicorn", "psycopg"],
            ),
            "fastapi_users_venv": versions(
                FASTAPI_USERS_VENV / "bin" / "python",
                [
                    "fastapi-users",
                    "fastapi-users-db-sqlalchemy",
                    "fastapi",
                    "starlette",
                    "pydantic",
                    "uvicorn",
                    "uvloop",
                    "httptools",
                    "sqlalchemy",
                    "aiosqlite",
                    "pwdlib",
                    "argon2-cffi",
                ],
            )
            if (FASTAPI_USERS_VENV / "bin" / "python").exists()
            else {},
            "port_servers_dir": port_servers_versions(),
        },
        "config": {
            "duration_s": DURATION,
            "repeat": REPEAT,
            "warmup_s": WARMUP,
            "users": USERS,
            "wrk": f"wrk -t1 --latency --timeout {WRK_TIMEOUT}s (one thread, Lua scripts in bench/lua)",
            "hypercorn_toml": hypercorn_settings(),
            "hypercorn_cmd": 'hypercorn -c hypercorn.toml --bind 127.0.0.1:PORT "quart_app:create_app()"',
            "port_env": "QUART_APP_ENV=production QUART_APP_SECRET_KEY=<random> QUART_APP_DATABASE_URL=<temp sqlite> "
            "QUART_APP_LOGIN_RATE_LIMIT=off QUART_APP_MAIL_URL=off",
            "port_pg_env": "the same, but "
            "QUART_APP_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:PORT/quart_bench "
            "(a database of its own, alembic upgrade head, the same users)",
            "port_pool": port_pool_settings(),
            "pg_scenarios": sorted(PG_SCENARIOS),
            "pause_s": PAUSE,
            "gunicorn_sync_cmd": f"gunicorn -w 2 --backlog {BACKLOG} app:app",
            "gunicorn_gthread_cmd": f"gunicorn -w 2 -k gthread --threads 8 --backlog {BACKLOG} app:app",
            "flask_pg_env": "FLASK_REF_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:PORT/flask_bench "
            "(the same cluster, a database of its own, db.create_all(), the same users; Flask-SQLAlchemy's "
            "default pool)",
            "uvicorn_cmd": f"uvicorn --workers 2 --loop uvloop --http httptools --backlog {BACKLOG} "
            "--no-access-log --host 127.0.0.1 --port PORT app:app",
            "fastapi_users_app": "bench/peers/fastapi_users/app.py: CookieTransport + DatabaseStrategy "
            "(SQLAlchemyAccessTokenDatabase), SQLite (aiosqlite, WAL), PasswordHelper(PasswordHash((Argon2Hasher("
            "time_cost=2, memory_cost=19456, parallelism=1),)))",
            "fastapi_users_login": f"form-encoded POST {PEER_LOGIN_PATH} (username = the email, password; "
            "answers 204 + cookie; no CSRF), run in the login_json row and the storm",
            "server_scenarios": {k: sorted(v) for k, v in SERVER_SCENARIOS.items()},
            "port_uvicorn_cmd": "python -m uvicorn --workers 2 --loop uvloop --http httptools --backlog "
            f"{BACKLOG} --no-access-log --host 127.0.0.1 --port PORT quart_app:create_app --factory",
            "port_granian_cmd": f"python -m granian --interface asgi --workers 2 --loop uvloop --backlog {BACKLOG} "
            "--host 127.0.0.1 --port PORT --factory quart_app:create_app",
            "quick": QUICK,
            "floor": FLOOR,
            "port_form_login": "real form POST /login with a csrf_token + quart_app_session pair per user "
            "(fetched from GET /login up front, reused)",
            "flask_form_login": "form POST /login (the seed has no CSRF)",
            "dashboard_cookies": "the cookie jar of a browser after a form login and one dashboard visit",
            "hash_seconds": HASH_SECONDS,
            "idle_wait_s": IDLE_WAIT,
            "quiesce_wait_s": QUIESCE_WAIT,
            "noise_limit_pct": NOISE_LIMIT,
            "noise_retries": NOISE_RETRIES,
        },
        "labels": LABELS,
        # Optional servers left out of this run, and why (port_pg's is under "postgresql").
        "missing": {},
        "postgresql": {
            "status": "ok" if PG_URL else "missing",
            "reason": None,
            "version": PG_VERSION or None,
            "settings": pg_settings(),
            "filesystem": PG_FS or None,
            "cluster": "private throwaway cluster (scripts/_pg_cluster.sh, started by bench/run): initdb in a temp "
            "dir, 127.0.0.1 TCP only, trust auth; durability back on (see settings)",
        },
    }
    log(f"machine: {NCPU} x {meta['machine']['cpu_model']}, load average {meta['machine']['loadavg_at_start']}")
    log(f"{DURATION}s per measurement, {REPEAT} repetition(s), {WARMUP}s warm-up, {USERS} users")

    results: dict = {}
    paired: dict = {}  # scenario -> the hash ceiling sampled in each of its repetitions
    servers: list[Server] = []
    try:
        # ---- main servers ------------------------------------------------------
        port_db = WORK / "port.sqlite3"
        flask_db = WORK / "flask.sqlite3"
        for p in WORK.glob("*.sqlite3*"):
            p.unlink()
        port_env = {
            **os.environ,
            "PYTHONPATH": str(PORT_DIR),
            "QUART_APP_ENV": "production",
            "QUART_APP_SECRET_KEY": secrets.token_urlsafe(48),
            "QUART_APP_DATABASE_URL": f"sqlite+aiosqlite:///{port_db}",
            "QUART_APP_LOGIN_RATE_LIMIT": "off",
            # No mail, as in the Flask version (and production needs the setting).
            "QUART_APP_MAIL_URL": "off",
        }
        flask_env = {
            **os.environ,
            "FLASK_REF_DATABASE": str(flask_db),
            "FLASK_REF_SECRET_KEY": secrets.token_urlsafe(48),
        }
        log("migrating the port's database (alembic upgrade head)")
        res = alembic_upgrade(port_env, RAW / "alembic.log")
        check(res.returncode == 0, f"alembic upgrade head failed:\n{res.stderr[-2000:]}")
        log("creating the Flask reference's tables (db.create_all())")
        res = subprocess.run(
            [str(FLASK_VENV / "bin" / "python"), "app.py", "create-db"],
            cwd=BENCH / "flask_ref",
            env=flask_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        check(res.returncode == 0, f"flask create-db failed:\n{res.stderr[-2000:]}")

        # Flask on PostgreSQL: the same app, FLASK_REF_DATABASE_URL at the database flask_bench.
        flask_pg_env = None
        if PG_FLASK_URL:
            flask_pg_env = {
                **flask_env,
                "FLASK_REF_SECRET_KEY": secrets.token_urlsafe(48),
                "FLASK_REF_DATABASE_URL": PG_FLASK_URL,
            }
            log(f"creating the Flask reference's tables on PostgreSQL (db.create_all()) at {PG_FLASK_URL}")
            res = subprocess.run(
                [str(FLASK_VENV / "bin" / "python"), "app.py", "create-db"],
                cwd=BENCH / "flask_ref",
                env=flask_pg_env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            (RAW / "flask-create-db-pg.log").write_text(res.stdout + res.stderr)
            if res.returncode != 0:
                last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
                for name in sorted(FLASK_PG_SERVERS):
                    optional_missing(meta, name, f"db.create_all() on PostgreSQL failed: {last}")
                flask_pg_env = None
        else:
            why = PG_MISSING or "BENCH_PG_FLASK_URL is not set (no flask_bench database)"
            for name in sorted(FLASK_PG_SERVERS):
                optional_missing(meta, name, why)

        # The FastAPI-Users peer: its own SQLite file, tables made once before its workers start.
        peer_env = None
        if PEERS_MISSING:
            optional_missing(meta, "fastapi_users", PEERS_MISSING)
        elif not (FASTAPI_USERS_VENV / "bin" / "uvicorn").exists():
            why = f"no {FASTAPI_USERS_VENV}/bin/uvicorn (run the bench with bench/run)"
            optional_missing(meta, "fastapi_users", why)
        else:
            peer_env = {
                **os.environ,
                "FASTAPI_USERS_DATABASE_URL": f"sqlite+aiosqlite:///{WORK / 'fastapi_users.sqlite3'}",
                "FASTAPI_USERS_SECRET": secrets.token_urlsafe(48),
            }
            log("creating the FastAPI-Users peer's tables (Base.metadata.create_all)")
            res = subprocess.run(
                [str(FASTAPI_USERS_VENV / "bin" / "python"), "app.py", "create-db"],
                cwd=PEERS_DIR / "fastapi_users",
                env=peer_env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            (RAW / "fastapi-users-create-db.log").write_text(res.stdout + res.stderr)
            if res.returncode != 0:
                last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
                optional_missing(meta, "fastapi_users", f"its create-db failed: {last}")
                peer_env = None

        # The PostgreSQL variant: the same app and server config, another QUART_APP_DATABASE_URL.
        # Optional: whatever goes wrong with it is logged, recorded, and the run goes on without it.
        pg_env = None
        if PG_URL:
            pg_env = {
                **port_env,
                "QUART_APP_SECRET_KEY": secrets.token_urlsafe(48),
                "QUART_APP_DATABASE_URL": PG_URL,
            }
            log(f"migrating the port's PostgreSQL database (alembic upgrade head) at {PG_URL}")
            res = alembic_upgrade(pg_env, RAW / "alembic-pg.log")
            if res.returncode != 0:
                last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
                pg_missing(meta, f"alembic upgrade head on PostgreSQL failed: {last} (see {RAW / 'alembic-pg.log'})")
                pg_env = None
        else:
            pg_missing(meta, PG_MISSING or "BENCH_PG_URL is not set (run the benchmark with bench/run)")

        # The port under uvicorn and granian: the same app, environment and database as "port".
        alt_ok = {}
        for name, module in (("port_uvicorn", "uvicorn"), ("port_granian", "granian")):
            if PORT_SERVERS_MISSING:
                optional_missing(meta, name, PORT_SERVERS_MISSING)
            elif not (PORT_SERVERS_DIR / module).is_dir():
                optional_missing(meta, name, f"{module} is not in {PORT_SERVERS_DIR} (run the bench with bench/run)")
            else:
                alt_ok[name] = True
        alt_env = {**port_env, "PYTHONPATH": f"{PORT_SERVERS_DIR}{os.pathsep}{PORT_DIR}"}

        port = PORT_BASE
        srvs: dict[str, Server] = {}
        for name in SERVERS:
            if (
                (name == "port_pg" and pg_env is None)
                or (name in FLASK_PG_SERVERS and flask_pg_env is None)
                or (name == "fastapi_users" and peer_env is None)
                or (name in PORT_ALT_SERVERS and name not in alt_ok)
            ):
                continue
            port = free_port(port)
            if name == "port":
                srvs[name] = Server(name, hypercorn_cmd(port, "quart_app:create_app()"), PORT_DIR, port_env, port)
            elif name == "port_pg":
                cmd = hypercorn_cmd(port, "quart_app:create_app()")
                srvs[name] = Server(name, cmd, PORT_DIR, pg_env, port, db_pid=PG_PID)
            elif name == "fastapi_users":
                srvs[name] = Server(name, uvicorn_cmd(port), PEERS_DIR / "fastapi_users", peer_env, port)
            elif name in PORT_ALT_SERVERS:
                srvs[name] = Server(name, port_alt_cmd(name, port), PORT_DIR, alt_env, port)
            else:
                on_pg = name in FLASK_PG_SERVERS
                extra = ["-k", "gthread", "--threads", "8"] if name.startswith("flask_gthread") else []
                srvs[name] = Server(
                    name,
                    gunicorn_cmd(extra, port, "app:app"),
                    BENCH / "flask_ref",
                    flask_pg_env if on_pg else flask_env,
                    port,
                    db_pid=PG_PID if on_pg else 0,
                )
            port += 1
        servers = list(srvs.values())
        for srv in servers:
            srv.start()

        optional = {"port_pg", "fastapi_users", *FLASK_PG_SERVERS, *PORT_ALT_SERVERS}

        def drop(name: str, reason: str) -> None:
            srvs.pop(name).stop()
            if name == "port_pg":
                pg_missing(meta, reason)
            else:
                optional_missing(meta, name, reason)

        for srv in servers:
            try:
                srv.wait_ready("/" if srv.name == "fastapi_users" else "/login")
            except RuntimeError as exc:
                if srv.name not in optional:
                    raise
                drop(srv.name, f"it did not start: {exc}")
                continue
            log(f"{srv.name} up at {srv.url}")

        log(f"registering {USERS} users through each app's own registration endpoint")
        register_users(srvs["port"], "port")
        register_users(srvs["flask_sync"], "flask")  # flask_gthread serves the same database
        cookies, pools = {}, {}
        registered_flask_pg = False
        for name, srv in list(srvs.items()):
            try:
                if name in ("port_pg", "fastapi_users"):
                    register_users(srv, kind_of(name))  # its own database
                if name in FLASK_PG_SERVERS and not registered_flask_pg:
                    register_users(srv, "flask")  # flask_bench, shared by both Flask servers on PostgreSQL
                    registered_flask_pg = True
                cookies[name] = cookie_header(browser_login(srv, kind_of(name)))
                if name not in PORT_ALT_SERVERS:  # protected only: no login pools
                    pools[name] = write_pools(srv, kind_of(name))
            except (RuntimeError, OSError) as exc:
                if name not in optional:
                    raise
                cookies.pop(name, None)
                drop(name, f"setting up its users failed: {exc}; see {srv.logfile}")
        meta["cookies"] = {name: sorted(k.split("=")[0] for k in c.split("; ")) for name, c in cookies.items()}
        for name in srvs:
            if name in SERVER_SCENARIOS:
                log(f"{name} is ready: measured in " + ", ".join(sorted(SERVER_SCENARIOS[name])))

        run_cases(build_cases(srvs, cookies, pools), results, "main", paired)
        for srv in servers:
            srv.stop()
        servers = []

        # ---- floor ---------------------------------------------------------------
        floor_dir = BENCH / "floor"
        if not FLOOR:
            log("floor left out (BENCH_FLOOR=0; BENCH_QUICK's default)")
        floor_specs = [
            ("bare_asgi", lambda p: hypercorn_cmd(p, "bare_asgi:app"), {**os.environ, "PYTHONPATH": str(floor_dir)}),
            ("bare_quart", lambda p: hypercorn_cmd(p, "bare_quart:app"), {**os.environ, "PYTHONPATH": str(floor_dir)}),
            ("bare_flask_sync", lambda p: gunicorn_cmd([], p, "bare_flask:app"), dict(os.environ)),
            (
                "bare_flask_gthread",
                lambda p: gunicorn_cmd(["-k", "gthread", "--threads", "8"], p, "bare_flask:app"),
                dict(os.environ),
            ),
        ]
        floor_servers = {}
        port = PORT_BASE + 10
        for name, cmd, env in floor_specs if FLOOR else []:
            port = free_port(port)
            floor_servers[name] = Server(name, cmd(port), floor_dir, env, port)
            port += 1
        servers = list(floor_servers.values())
        for srv in servers:
            srv.start()
        for srv in servers:
            srv.wait_ready("/")
            status, _, body, _ = request(srv.port, "GET", "/")
            check(status == 200 and body == "hello", f"{srv.name}: GET / -> {status} {body[:40]!r}")
            log(f"{srv.name} up at {srv.url}")
        floor_cases = []
        for srv in floor_servers.values():

            def run(duration, tag, srv=srv):
                return run_wrk(f"{srv.url}/", "cookie_get.lua", ["", "200"], 64, duration, tag)

            floor_cases.append(Case("floor_64", srv, run, warm=True))
        if floor_cases:
            run_cases(floor_cases, results, "floor")
        for srv in servers:
            srv.stop()
        servers = []

        # ---- hash ceiling ------------------------------------------------------
        hashes = hash_ceiling([p for p in PEER_HASHERS if p in srvs])
    finally:
        for srv in servers:
            srv.stop()
        stop_all()

    summarize(results)
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    paired_peers = paired.pop("peers", {})
    doc = {
        "meta": meta,
        "scenarios": results,
        "hash_ceiling": hashes,
        "hash_ceiling_paired": paired,
        # Hash ("werkzeug", "fastapi_users") -> scenario -> its ceiling (2 threads) per repetition, sampled
        # right after the first login run of a server using it in that repetition.
        "hash_ceiling_paired_peers": paired_peers,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "latest.json").write_text(json.dumps(doc, indent=1) + "\n")
    log(f"wrote {OUT / 'latest.json'} ({meta['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        sys.exit(130)
