"""Cost as the work grows: protected and login with 1,000,000 users and live sessions vs the bench's 64.

    .venv/bin/python bench/scale.py [--quick] [--backend sqlite|postgresql|both] [--project DIR] [--out DIR]
        [--rows N] [--rounds N] [--seconds N]

For each backend, two databases of the port, both ``alembic upgrade head``:
**small** (only the bench's 64 users) and **large** (the same 64 users plus
``--rows`` more users and as many live sessions spread over them, seeded
directly by ``bench/seed_large.py``: SQLite ``executemany``, PostgreSQL
``COPY``; then ``ANALYZE``, on both databases). The 64 users are registered
through each server's own ``POST /api/register``, and the protected cookie
comes from ``POST /api/login``, as ``bench/ab.py`` does.

Both are served side by side (hypercorn with the project's ``hypercorn.toml``,
the environment of ``bench/ab.py`` and ``bench/run``) and measured with
``wrk -t1`` in alternating rounds (each round starts with the other side):
**protected** (``GET /dashboard`` with a logged-in cookie, 64 connections,
``lua/cookie_get.lua``) and **login** (JSON ``POST /api/login`` over the 64
users, 32 connections, ``lua/json_login.lua``). The answer is the median of
the per-round ratios large / small; the target is 0.90 or more.

Afterwards each database is probed in-process (``--probe``, with the port's
venv): row counts, size, the plans of the per-request session lookup and of
the login lookup (the statements the app compiles: quart_login's resolve
statement as ``raw_session_lookup`` runs it, ``_FOR_LOGIN`` of
``quart_app/auth/service.py``), and their time per execution, small vs large.

PostgreSQL: ``BENCH_PG_URL`` (``postgresql+asyncpg://`` of a server where it
may create databases) or else a private cluster, as ``bench/run`` starts one
(``scripts/_pg_cluster.sh``'s steps: initdb in a temporary folder, 127.0.0.1
and a free port, trust authentication) with durability on, as bench/run has
it (``fsync``, ``synchronous_commit``, ``full_page_writes`` on,
``shared_buffers`` 128MB or ``BENCH_PG_SHARED_BUFFERS``); stopped and deleted
at the end. Its CPU (postmaster and backends) is reported beside the app's.

``--quick``: 100,000 rows, 2 rounds of 2 s. Full: 1,000,000 rows, 8 rounds of
3 s (as bench/ab.py). Writes ``OUT/scale.json`` and ``OUT/scale.md`` (default ``bench/results``).
Ports from ``BENCH_SCALE_PORT_BASE`` (20300). Every server binds 127.0.0.1, in
its own process group, stopped (SIGTERM, then SIGKILL) however the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LUA = BENCH / "lua"
PORT_BASE = int(os.environ.get("BENCH_SCALE_PORT_BASE", "20300"))
TARGET = 0.90


# -- the probe: run with the port's venv, PYTHONPATH=project ------------------------------


def probe(url: str, ident: str, loops: int) -> dict:
    """Rows, size, plans and per-execution times of the two lookups, on the database at ``url``."""
    from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
    from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

    from quart_app.auth.service import _FOR_LOGIN
    from quart_app.auth.validation import email_key
    from quart_app.models import AuthSession, User
    from quart_login import utcnow
    from quart_login.sqlalchemy_store import SQLAlchemyAuthSessionStore, compile_raw

    store = SQLAlchemyAuthSessionStore(AuthSession, User, sessionmaker=lambda: None)

    def login_params(raw, dialect) -> tuple:
        # _FOR_LOGIN has bound literals of its own (the subquery's LIMIT 1): their values, then ours.
        defaults = _FOR_LOGIN.compile(dialect=dialect).params
        return raw.params(**{**defaults, "ident": ident, "email_key": email_key(ident)})

    now = utcnow()
    out: dict = {}

    def timed(run, n: int) -> float:
        """Median µs per call of ``run()`` over ``n`` calls (in blocks of 50, after 50 warm-up calls)."""
        for _ in range(50):
            run()
        blocks = []
        for _ in range(max(1, n // 50)):
            t0 = time.thread_time()
            for _ in range(50):
                run()
            blocks.append((time.thread_time() - t0) / 50 * 1e6)
        return round(statistics.median(blocks), 1)

    if url.startswith("sqlite"):
        import sqlite3

        path = url.split(":///", 1)[1]
        dialect = sqlite_dialect()
        resolve = store.compile_for(dialect)["resolve"]
        login = compile_raw(_FOR_LOGIN, dialect)
        conn = sqlite3.connect(path)
        try:
            digest = conn.execute("SELECT token_hash FROM auth_sessions ORDER BY id DESC LIMIT 1").fetchone()[0]
            rp = resolve.params(digest=digest, now=now)
            lp = login_params(login, dialect)
            out["users"] = conn.execute("SELECT count(*) FROM users").fetchone()[0]
            out["sessions"] = conn.execute("SELECT count(*) FROM auth_sessions").fetchone()[0]
            out["live_sessions"] = conn.execute(
                "SELECT count(*) FROM auth_sessions WHERE expires_at > ?", (now.strftime("%Y-%m-%d %H:%M:%S.%f"),)
            ).fetchone()[0]
            out["size_bytes"] = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
            out["plans"] = {
                "session lookup": [r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + resolve.sql, rp)],
                "login lookup": [r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + login.sql, lp)],
            }
            assert conn.execute(resolve.sql, rp).fetchone() is not None, "the probe's session does not resolve"
            assert conn.execute(login.sql, lp).fetchone() is not None, f"{ident} not found"
            out["us_per_lookup"] = {
                "session lookup": timed(lambda: conn.execute(resolve.sql, rp).fetchone(), loops),
                "login lookup": timed(lambda: conn.execute(login.sql, lp).fetchone(), loops),
            }
        finally:
            conn.close()
        return out

    import asyncpg

    async def pg() -> dict:
        dialect = asyncpg_dialect()
        resolve = store.compile_for(dialect)["resolve"]
        login = compile_raw(_FOR_LOGIN, dialect)
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            digest = await conn.fetchval("SELECT token_hash FROM auth_sessions ORDER BY id DESC LIMIT 1")
            rp = resolve.params(digest=digest, now=now)
            lp = login_params(login, dialect)
            out["users"] = await conn.fetchval("SELECT count(*) FROM users")
            out["sessions"] = await conn.fetchval("SELECT count(*) FROM auth_sessions")
            out["live_sessions"] = await conn.fetchval("SELECT count(*) FROM auth_sessions WHERE expires_at > $1", now)
            out["size_bytes"] = await conn.fetchval("SELECT pg_database_size(current_database())")
            out["relation_bytes"] = {
                name: await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", name)
                for name in ("users", "auth_sessions", "auth_events")
            }
            plans = {}
            for name, stmt, params in (("session lookup", resolve, rp), ("login lookup", login, lp)):
                rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, SUMMARY ON) " + stmt.sql, *params)
                plans[name] = [r[0] for r in rows]
            out["plans"] = plans
            assert await conn.fetchrow(resolve.sql, *rp) is not None, "the probe's session does not resolve"
            assert await conn.fetchrow(login.sql, *lp) is not None, f"{ident} not found"
            # asyncpg prepares and caches the statements, as in the app.
            times = {}
            for name, stmt, params in (("session lookup", resolve, rp), ("login lookup", login, lp)):
                for _ in range(50):
                    await conn.fetchrow(stmt.sql, *params)
                blocks = []
                for _ in range(max(1, loops // 50)):
                    t0 = time.perf_counter()
                    for _ in range(50):
                        await conn.fetchrow(stmt.sql, *params)
                    blocks.append((time.perf_counter() - t0) / 50 * 1e6)
                times[name] = round(statistics.median(blocks), 1)
            out["us_per_lookup"] = times
            # The server's own share, steadier than a round trip on a busy machine: the median
            # "Execution Time" of EXPLAIN ANALYZE over 200 runs, and the buffers one run touches.
            server = {}
            for name, stmt, params in (("session lookup", resolve, rp), ("login lookup", login, lp)):
                samples, buffers = [], None
                for _ in range(20):
                    doc = await conn.fetchval(
                        "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, SUMMARY ON, FORMAT JSON) " + stmt.sql, *params
                    )
                    top = (json.loads(doc) if isinstance(doc, str) else doc)[0]
                    samples.append(top["Execution Time"] * 1000)
                    buffers = top["Plan"].get("Shared Hit Blocks", 0) + top["Plan"].get("Shared Read Blocks", 0)
                server[name] = {"execution_us": round(statistics.median(samples), 1), "buffers": buffers}
            out["server_side"] = server
        finally:
            await conn.close()
        return out

    return asyncio.run(pg())


def probe_pair(urls: dict[str, str], ident: str, loops: int) -> dict:
    """The two lookups on small and large in alternating blocks of 50: medians and the median per-block ratio.

    SQLite: the thread's CPU time (sqlite3 runs in it), so a busy machine's waits do not count.
    PostgreSQL: the round trip (asyncpg, prepared, as the app's raw lookup), and the server's own
    ``Execution Time`` (EXPLAIN ANALYZE), each alternating small and large.
    """
    from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
    from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

    from quart_app.auth.service import _FOR_LOGIN
    from quart_app.auth.validation import email_key
    from quart_app.models import AuthSession, User
    from quart_login import utcnow
    from quart_login.sqlalchemy_store import SQLAlchemyAuthSessionStore, compile_raw

    store = SQLAlchemyAuthSessionStore(AuthSession, User, sessionmaker=lambda: None)
    now = utcnow()
    names = ("session lookup", "login lookup")
    sides = ("small", "large")

    def summary(blocks: dict[str, list[float]]) -> dict:
        ratios = [lg / sm for sm, lg in zip(blocks["small"], blocks["large"], strict=True) if sm]
        return {
            "small_us": round(statistics.median(blocks["small"]), 2),
            "large_us": round(statistics.median(blocks["large"]), 2),
            "ratio": round(statistics.median(ratios), 3),
            "blocks": len(ratios),
        }

    def statements(dialect):
        resolve = store.compile_for(dialect)["resolve"]
        login = compile_raw(_FOR_LOGIN, dialect)
        defaults = _FOR_LOGIN.compile(dialect=dialect).params
        return resolve, login, {**defaults, "ident": ident, "email_key": email_key(ident)}

    if urls["small"].startswith("sqlite"):
        import sqlite3

        resolve, login, login_values = statements(sqlite_dialect())
        conns = {side: sqlite3.connect(urls[side].split(":///", 1)[1]) for side in sides}
        try:
            work = {}
            for side, conn in conns.items():
                digest = conn.execute("SELECT token_hash FROM auth_sessions ORDER BY id DESC LIMIT 1").fetchone()[0]
                work[side] = {
                    "session lookup": (resolve.sql, resolve.params(digest=digest, now=now)),
                    "login lookup": (login.sql, login.params(**login_values)),
                }
            out = {"clock": "thread CPU time"}
            for name in names:
                blocks = {side: [] for side in sides}
                for side in sides:
                    sql, params = work[side][name]
                    for _ in range(100):
                        conns[side].execute(sql, params).fetchone()
                for k in range(max(2, loops // 50)):
                    for side in sides if k % 2 == 0 else sides[::-1]:
                        sql, params = work[side][name]
                        execute = conns[side].execute
                        t0 = time.thread_time()
                        for _ in range(50):
                            execute(sql, params).fetchone()
                        blocks[side].append((time.thread_time() - t0) / 50 * 1e6)
                out[name] = summary(blocks)
            return out
        finally:
            for conn in conns.values():
                conn.close()

    import asyncpg

    async def pg() -> dict:
        resolve, login, login_values = statements(asyncpg_dialect())
        conns = {
            side: await asyncpg.connect(urls[side].replace("postgresql+asyncpg://", "postgresql://", 1))
            for side in sides
        }
        try:
            work = {}
            for side, conn in conns.items():
                digest = await conn.fetchval("SELECT token_hash FROM auth_sessions ORDER BY id DESC LIMIT 1")
                work[side] = {
                    "session lookup": (resolve.sql, resolve.params(digest=digest, now=now)),
                    "login lookup": (login.sql, login.params(**login_values)),
                }
            out = {"clock": "wall (round trip)", "server": {}}
            for name in names:
                blocks = {side: [] for side in sides}
                server = {side: [] for side in sides}
                for side in sides:
                    sql, params = work[side][name]
                    for _ in range(100):
                        await conns[side].fetchrow(sql, *params)
                for k in range(max(2, loops // 50)):
                    for side in sides if k % 2 == 0 else sides[::-1]:
                        sql, params = work[side][name]
                        conn = conns[side]
                        t0 = time.perf_counter()
                        for _ in range(50):
                            await conn.fetchrow(sql, *params)
                        blocks[side].append((time.perf_counter() - t0) / 50 * 1e6)
                for k in range(200):
                    for side in sides if k % 2 == 0 else sides[::-1]:
                        sql, params = work[side][name]
                        doc = await conns[side].fetchval(
                            "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, SUMMARY ON, FORMAT JSON) " + sql, *params
                        )
                        top = (json.loads(doc) if isinstance(doc, str) else doc)[0]
                        server[side].append(top["Execution Time"] * 1000)
                out[name] = summary(blocks)
                out["server"][name] = summary(server)
            return out
        finally:
            for conn in conns.values():
                await conn.close()

    return asyncio.run(pg())


def probe_main(argv: list[str]) -> int:
    if argv[0] == "--pair":
        small, large, ident, loops = argv[1:5]
        print("PROBE_JSON " + json.dumps(probe_pair({"small": small, "large": large}, ident, int(loops))))
        return 0
    url, ident, loops = argv[0], argv[1], int(argv[2])
    print("PROBE_JSON " + json.dumps(probe(url, ident, loops), default=str))
    return 0


# -- the run -----------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows, 2 rounds of 2 s")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--project", type=Path, default=ROOT, help="the port's checkout to serve (default: this one)")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--rows", type=int, default=None, help="seeded users and sessions (default 1,000,000)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (databases, logs)")
    opts = parser.parse_args()
    opts.rows = opts.rows if opts.rows is not None else (100_000 if opts.quick else 1_000_000)
    opts.rounds = opts.rounds or (2 if opts.quick else 8)
    opts.seconds = opts.seconds or (2 if opts.quick else 3)
    opts.project = opts.project.resolve()
    opts.out = opts.out.resolve()
    return opts


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        return probe_main(sys.argv[2:])
    opts = parse_args()
    work = Path(tempfile.mkdtemp(prefix="quart-scale-"))
    # bench/harness.py reads these when imported: the project served, its venv, where its logs go.
    os.environ["BENCH_PORT_DIR"] = str(opts.project)
    os.environ.setdefault("BENCH_PORT_VENV", str(opts.project / ".venv"))
    os.environ["BENCH_OUT"] = str(work)
    sys.path.insert(0, str(BENCH))
    import ab  # noqa: E402  (bench/ab.py: post_json, measure, USERS)
    import harness  # noqa: E402

    harness.RAW.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupted)
    run = Run(opts, work, ab, harness)
    try:
        run.all()
    finally:
        harness.stop_all()
        run.stop_postgres()
        if opts.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if run.ok else 1


class Run:
    def __init__(self, opts, work: Path, ab, harness) -> None:
        self.opts, self.work, self.ab, self.h = opts, work, ab, harness
        self.venv = Path(os.environ["BENCH_PORT_VENV"])
        self.python = self.venv / "bin" / "python"
        self.next_port = PORT_BASE
        self.pg: dict | None = None  # the private cluster, if one was started
        self.ok = True
        self.started = time.monotonic()
        self.results: dict = {
            "meta": {
                "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "mode": "quick" if opts.quick else "full",
                "machine": harness.machine_info(),
                "bench_commit": self._git(ROOT, "rev-parse", "--short", "HEAD"),
                "project": str(opts.project),
                "venv": str(self.venv),
                "rows": opts.rows,
                "bench_users": ab.USERS,
                "rounds": opts.rounds,
                "seconds": opts.seconds,
                "conns": {"protected": 64, "login": 32},
                "target_ratio": TARGET,
                "hypercorn": harness.hypercorn_settings(),
            },
            "backends": {},
        }

    # -- helpers ---------------------------------------------------------------

    @staticmethod
    def _git(repo: Path, *args: str) -> str | None:
        res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        return res.stdout.strip() or None

    def log(self, msg: str) -> None:
        print(f"[scale {time.strftime('%H:%M:%S')} +{time.monotonic() - self.started:.0f}s] {msg}", flush=True)

    def port(self) -> int:
        port = self.h.free_port(self.next_port)
        self.next_port = port + 1
        return port

    def env(self, url: str) -> dict[str, str]:
        # bench/ab.py's (and bench/run's) environment for the port.
        return {
            **os.environ,
            "PYTHONPATH": str(self.opts.project),
            "QUART_APP_ENV": "production",
            "QUART_APP_SECRET_KEY": __import__("secrets").token_urlsafe(48),
            "QUART_APP_DATABASE_URL": url,
            "QUART_APP_LOGIN_RATE_LIMIT": "off",
            "QUART_APP_MAIL_URL": "off",
        }

    def venv_run(self, args: list[str], url: str, tag: str, timeout: float) -> str:
        res = subprocess.run(
            [str(self.python), *args],
            cwd=self.opts.project,
            env={**self.env(url)},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        (self.work / f"{tag}.log").write_text(res.stdout + res.stderr)
        if res.returncode != 0:
            raise RuntimeError(f"{tag} failed ({res.returncode}):\n{res.stderr[-3000:]}")
        return res.stdout

    def migrate(self, url: str, tag: str) -> None:
        res = self.h.alembic_upgrade(self.env(url), self.work / f"alembic-{tag}.log")
        if res.returncode != 0:
            raise RuntimeError(f"alembic upgrade head ({tag}) failed:\n{res.stderr[-3000:]}")

    def seed(self, url: str, rows: int, tag: str) -> dict:
        t0 = time.monotonic()
        out = self.venv_run(
            [str(BENCH / "seed_large.py"), url, "--users", str(rows), "--sessions", str(rows)],
            url,
            f"seed-{tag}",
            timeout=1800,
        )
        line = next(ln for ln in out.splitlines() if ln.startswith("SEED_JSON "))
        result = json.loads(line[len("SEED_JSON ") :])
        result["wall_s"] = round(time.monotonic() - t0, 1)
        return result

    def probe(self, url: str, tag: str) -> dict:
        out = self.venv_run(
            [str(Path(__file__).resolve()), "--probe", url, "ab000", "200"], url, f"probe-{tag}", timeout=600
        )
        line = next(ln for ln in out.splitlines() if ln.startswith("PROBE_JSON "))
        return json.loads(line[len("PROBE_JSON ") :])

    def probe_pair(self, urls: dict[str, str], backend: str) -> dict:
        out = self.venv_run(
            [str(Path(__file__).resolve()), "--probe", "--pair", urls["small"], urls["large"], "ab000", "4000"],
            urls["large"],
            f"probe-pair-{backend}",
            timeout=900,
        )
        line = next(ln for ln in out.splitlines() if ln.startswith("PROBE_JSON "))
        return json.loads(line[len("PROBE_JSON ") :])

    # -- PostgreSQL --------------------------------------------------------------

    def start_postgres(self) -> tuple[str, int]:
        """(server URL ending in /postgres, postmaster pid or 0): BENCH_PG_URL's, or a private cluster's."""
        given = os.environ.get("BENCH_PG_URL", "")
        if given:
            return given, int(os.environ.get("BENCH_PG_PID") or 0)
        bindir = next(
            (p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True) if (p / "initdb").exists()),
            None,
        )
        if bindir is None and shutil.which("pg_config"):
            bindir = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip())
        if bindir is None or not (bindir / "initdb").exists():
            raise RuntimeError("PostgreSQL's initdb not found (Debian: apt-get install postgresql)")
        as_owner: list[str] = []
        cluster = Path(tempfile.mkdtemp(prefix="quart-scale-pg-"))
        cluster.chmod(0o755)
        if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to postgres
            if subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
                subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
            as_owner = ["runuser", "-u", "postgres", "--"]
            shutil.chown(cluster, "postgres")
        self.pg = {"dir": cluster, "bindir": bindir, "as_owner": as_owner}
        port = self.port()
        res = subprocess.run(
            [*as_owner, str(bindir / "initdb"), "-D", str(cluster / "data"), "-U", "postgres", "--auth=trust"]
            + ["-E", "UTF8", "--no-sync"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if res.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{res.stdout}{res.stderr}")
        buffers = os.environ.get("BENCH_PG_SHARED_BUFFERS", "128MB")
        options = (
            f"-p {port} -k {cluster} -c listen_addresses=127.0.0.1 -c max_connections=300 "
            f"-c fsync=on -c synchronous_commit=on -c full_page_writes=on -c shared_buffers={buffers}"
        )
        res = subprocess.run(
            [*as_owner, str(bindir / "pg_ctl"), "-D", str(cluster / "data"), "-l", str(cluster / "server.log")]
            + ["-w", "-t", "60", "start", "-o", options],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if res.returncode != 0:
            log = (cluster / "server.log").read_text(errors="replace") if (cluster / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed:\n{res.stdout}{res.stderr}{log[-2000:]}")
        pid = int((cluster / "data" / "postmaster.pid").read_text().split()[0])
        self.pg["options"] = options
        return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres", pid

    def stop_postgres(self) -> None:
        if self.pg is None:
            return
        pg, self.pg = self.pg, None
        subprocess.run(
            [*pg["as_owner"], str(pg["bindir"] / "pg_ctl"), "-D", str(pg["dir"] / "data"), "-m", "fast", "-w"]
            + ["-t", "30", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(pg["dir"], ignore_errors=True)

    def pg_admin(self, server_url: str, sql: list[str]) -> list:
        code = (
            "import asyncio, json, sys, asyncpg\n"
            "async def main():\n"
            "    c = await asyncpg.connect(sys.argv[1])\n"
            "    out = []\n"
            "    for q in sys.argv[2:]:\n"
            "        out.append(str(await c.fetchval(q)))\n"
            "    await c.close()\n"
            "    print(json.dumps(out))\n"
            "asyncio.run(main())\n"
        )
        dsn = server_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        out = self.venv_run(["-c", code, dsn, *sql], server_url, "pg-admin", timeout=300)
        return json.loads(out.strip().splitlines()[-1])

    # -- the two sides -----------------------------------------------------------

    def prepare(self, srv, tag: str) -> dict[str, list[str]]:
        """The 64 users through the API; wrk's arguments for each scenario."""
        post_json = self.ab.post_json
        passwords = {}
        for i in range(self.ab.USERS):
            name, password = f"ab{i:03d}", f"pw-{i:03d}-{srv.port}"
            status, _ = post_json(
                srv.port, "/api/register", {"username": name, "email": f"{name}@example.org", "password": password}
            )
            if status != 201:
                raise RuntimeError(f"{tag}: registering {name} gave {status}")
            passwords[name] = password
        status, cookie = post_json(srv.port, "/api/login", {"username": "ab000", "password": passwords["ab000"]})
        if status != 200 or not cookie:
            raise RuntimeError(f"{tag}: POST /api/login gave {status}")
        pool = self.work / f"{tag}.pool"
        pool.write_text("".join(f"{name}\t{pw}\n" for name, pw in passwords.items()))
        url = f"http://127.0.0.1:{srv.port}"
        return {
            "protected": ["-s", str(LUA / "cookie_get.lua"), f"{url}/dashboard", "--", cookie, "200"],
            "login": ["-s", str(LUA / "json_login.lua"), url, "--", str(pool), "200"],
        }

    def measure(self, srv, args: list[str], conns: int, seconds: int) -> dict:
        srv.quiesce(max_wait=5)
        d0 = srv.db_cpu()
        result = self.ab.measure(srv, args, conns, seconds)
        d1 = srv.db_cpu()
        requests = max(result["rps"] * seconds, 1)
        result["db_cpu_us"] = 1e6 * (d1 - d0) / requests if srv.db_pid else 0.0
        return result

    def backend(self, backend: str) -> dict:
        rows = self.opts.rows
        report: dict = {"backend": backend}
        t_setup = time.monotonic()
        db_pid = 0
        if backend == "sqlite":
            urls = {side: f"sqlite+aiosqlite:///{self.work / f'scale-{side}.sqlite3'}" for side in ("small", "large")}
        else:
            server_url, db_pid = self.start_postgres()
            tag = f"{os.getpid()}"
            names = {side: f"quart_scale_{side}_{tag}" for side in ("small", "large")}
            self.pg_admin(server_url, [f"CREATE DATABASE {name}" for name in names.values()])
            base = server_url.rsplit("/", 1)[0]
            urls = {side: f"{base}/{name}" for side, name in names.items()}
            report["postgresql"] = {
                "private_cluster": self.pg is not None,
                "options": self.pg["options"] if self.pg else None,
                "settings": dict(
                    zip(
                        ("version", "shared_buffers", "fsync", "synchronous_commit", "full_page_writes"),
                        self.pg_admin(
                            server_url,
                            ["SHOW server_version", "SHOW shared_buffers", "SHOW fsync"]
                            + ["SHOW synchronous_commit", "SHOW full_page_writes"],
                        ),
                        strict=True,
                    )
                ),
            }
            self._pg_cleanup = (server_url, list(names.values()))
        for side, url in urls.items():
            self.migrate(url, f"{backend}-{side}")
        self.log(f"{backend}: migrated; seeding large with {rows:,} users and {rows:,} sessions")
        report["seed"] = {
            "large": self.seed(urls["large"], rows, f"{backend}-large"),
            "small": self.seed(urls["small"], 0, f"{backend}-small"),  # ANALYZE (and WAL) only
        }
        self.log(f"{backend}: seeded in {report['seed']['large']['wall_s']} s ({report['seed']['large']})")
        servers = {}
        for side, url in urls.items():
            port = self.port()
            srv = self.h.Server(
                f"{backend}-{side}",
                self.h.hypercorn_cmd(port, "quart_app:create_app()"),
                self.opts.project,
                self.env(url),
                port,
                db_pid=db_pid,
            )
            srv.start()
            servers[side] = srv
        for srv in servers.values():
            srv.wait_ready()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # both sides at once (each hashes 64 passwords)
            futures = {side: pool.submit(self.prepare, srv, f"{backend}-{side}") for side, srv in servers.items()}
            args = {side: future.result() for side, future in futures.items()}
        report["setup_s"] = round(time.monotonic() - t_setup, 1)
        self.log(f"{backend}: {self.ab.USERS} users registered on both; warming up")
        conns = self.results["meta"]["conns"]
        for scenario in ("protected", "login"):
            for side, srv in servers.items():
                self.measure(srv, args[side][scenario], conns[scenario], 2)
        runs = {s: {"small": [], "large": []} for s in ("protected", "login")}
        loads = []
        for rnd in range(self.opts.rounds):
            self.h.wait_idle(3)
            loads.append(round(os.getloadavg()[0], 2))
            for k, scenario in enumerate(("protected", "login")):
                order = ("small", "large") if (rnd + k) % 2 == 0 else ("large", "small")
                for side in order:
                    runs[scenario][side].append(
                        self.measure(servers[side], args[side][scenario], conns[scenario], self.opts.seconds)
                    )
                s, l_ = runs[scenario]["small"][-1], runs[scenario]["large"][-1]
                self.log(
                    f"{backend} round {rnd + 1}/{self.opts.rounds} {scenario}: small {s['rps']:.0f}/s, "
                    f"large {l_['rps']:.0f}/s ({l_['rps'] / s['rps'] if s['rps'] else 0:.2f})"
                )
        for srv in servers.values():
            srv.stop()
        report["loadavg_per_round"] = loads
        report["scenarios"] = {}
        for scenario, sides in runs.items():
            ratios = [
                round(lg["rps"] / sm["rps"], 3)
                for sm, lg in zip(sides["small"], sides["large"], strict=True)
                if sm["rps"]
            ]
            cpu = lambda x: x["cpu_us"] + x["db_cpu_us"]  # noqa: E731
            cpu_ratios = [
                round(cpu(lg) / cpu(sm), 3) for sm, lg in zip(sides["small"], sides["large"], strict=True) if cpu(sm)
            ]
            entry = {
                "ratio": round(statistics.median(ratios), 3) if ratios else None,
                "round_ratios": ratios,
                # Server CPU (app + database) per request, large / small: less disturbed by a busy machine.
                "cpu_ratio": round(statistics.median(cpu_ratios), 3) if cpu_ratios else None,
                "round_cpu_ratios": cpu_ratios,
            }
            for side, r in sides.items():
                entry[side] = {
                    "rps": round(statistics.median(x["rps"] for x in r), 1),
                    "p99_ms": round(statistics.median(x["p99_ms"] for x in r), 1),
                    "errors": sum(x["errors"] for x in r),
                    "app_cpu_us": round(statistics.median(x["cpu_us"] for x in r), 0),
                    "db_cpu_us": round(statistics.median(x["db_cpu_us"] for x in r), 0),
                    "rounds": [{k: round(v, 1) for k, v in x.items()} for x in r],
                }
            entry["within_target"] = entry["ratio"] is not None and entry["ratio"] >= TARGET
            report["scenarios"][scenario] = entry
        self.log(f"{backend}: probing both databases (plans, lookup times)")
        report["probe"] = {side: self.probe(url, f"{backend}-{side}") for side, url in urls.items()}
        report["probe_pair"] = self.probe_pair(urls, backend)
        if backend == "postgresql":
            server_url, names = self._pg_cleanup
            if self.pg is None:  # someone else's server: leave no databases behind
                self.pg_admin(server_url, [f"DROP DATABASE IF EXISTS {n}" for n in names])
            self.stop_postgres()
        return report

    def all(self) -> None:
        backends = ["sqlite", "postgresql"] if self.opts.backend == "both" else [self.opts.backend]
        for backend in backends:
            try:
                self.results["backends"][backend] = self.backend(backend)
            except Exception as exc:  # noqa: BLE001 - the other backend still runs; the report says why
                self.ok = False
                self.log(f"{backend} FAILED: {exc}")
                self.results["backends"][backend] = {"backend": backend, "error": str(exc)[-3000:]}
                self.h.stop_all()
                if backend == "postgresql":
                    cleanup = getattr(self, "_pg_cleanup", None)
                    if cleanup and self.pg is None:
                        try:
                            self.pg_admin(cleanup[0], [f"DROP DATABASE IF EXISTS {n}" for n in cleanup[1]])
                        except Exception:  # noqa: BLE001
                            pass
                    self.stop_postgres()
        self.results["meta"]["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.write()

    # -- output ----------------------------------------------------------------------

    def write(self) -> None:
        self.opts.out.mkdir(parents=True, exist_ok=True)
        (self.opts.out / "scale.json").write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        md = render(self.results)
        (self.opts.out / "scale.md").write_text(md)
        print(md)
        print(f"written: {self.opts.out / 'scale.json'}, {self.opts.out / 'scale.md'}", file=sys.stderr)


def _mib(n) -> str:
    if not isinstance(n, int | float):
        return "?"
    return f"{n / 2**20:,.0f} MiB" if n >= 10 * 2**20 else f"{n / 2**20:.1f} MiB"


def render(results: dict) -> str:
    meta = results["meta"]
    m = meta["machine"]
    lines = [
        "# Cost as the work grows: small vs large database",
        "",
        f"{meta['date']}, {meta['mode']} run (`bench/scale.py{' --quick' if meta['mode'] == 'quick' else ''}`), "
        f"{m.get('nproc')} cores ({m.get('cpu_model')}), {m.get('memory_gib')} GiB, load at start "
        f"{', '.join(f'{x:.2f}' for x in m.get('loadavg_at_start') or ())}; project commit "
        f"{m.get('port_commit')}{' (dirty)' if m.get('port_tree_dirty') else ''}, bench commit {meta['bench_commit']}.",
        "",
        f"small = the bench's {meta['bench_users']} users (registered through the API); large = the same "
        f"{meta['bench_users']} + {meta['rows']:,} users and {meta['rows']:,} live sessions (seeded directly). "
        f"{meta['rounds']} alternating rounds of {meta['seconds']} s per scenario (wrk -t1; protected "
        f"{meta['conns']['protected']} connections, login {meta['conns']['login']}); ratio = median of the "
        f"per-round ratios large / small; target >= {meta['target_ratio']:.2f}. Rates and p99 are each side's medians; "
        "CPU in µs per request (app = hypercorn's processes; db = PostgreSQL's, both databases' cluster).",
        "",
        "| backend | scenario | small /s | large /s | ratio (rounds) | target | p99 small / large |"
        " errors small / large | CPU µs/req small / large | CPU/req ratio |",
        "| --- | --- | ---: | ---: | --- | --- | --- | --- | --- | ---: |",
    ]
    for backend, rep in results["backends"].items():
        if "error" in rep:
            lines.append(f"| {backend} | FAILED | | | | | | | | |")
            continue
        for scenario, e in rep["scenarios"].items():
            s, lg = e["small"], e["large"]
            cpu = lambda x: f"{x['app_cpu_us']:.0f}" + (f"+{x['db_cpu_us']:.0f}" if x["db_cpu_us"] else "")  # noqa: E731
            lines.append(
                f"| {backend} | {scenario} | {s['rps']:,.1f} | {lg['rps']:,.1f} | **{e['ratio']:.2f}** "
                f"({', '.join(f'{r:.2f}' for r in e['round_ratios'])}) | {'met' if e['within_target'] else 'MISSED'} "
                f"| {s['p99_ms']:.1f} / {lg['p99_ms']:.1f} ms | {s['errors']} / {lg['errors']} | {cpu(s)} / {cpu(lg)} "
                f"| {e['cpu_ratio']:.2f} |"
            )
    loads = [
        f"{backend} {', '.join(f'{x:.1f}' for x in rep['loadavg_per_round'])}"
        for backend, rep in results["backends"].items()
        if "loadavg_per_round" in rep
    ]
    if loads:
        lines += [
            "",
            f"Load average (1 min) at the start of each round: {'; '.join(loads)} (on {m.get('nproc')} cores).",
        ]
    lines += [
        "",
        "## The databases",
        "",
        "| backend | side | users | sessions (live) | size | seeding: wall (users + sessions + ANALYZE/VACUUM) |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for backend, rep in results["backends"].items():
        if "error" in rep:
            continue
        for side in ("small", "large"):
            p, sd = rep["probe"][side], rep["seed"][side]
            seeding = (
                f"{sd['wall_s']:.1f} s ({sd['users_s']:.1f} + {sd['sessions_s']:.1f} + {sd['analyze_s']:.1f})"
                if side == "large"
                else "ANALYZE only"
            )
            lines.append(
                f"| {backend} | {side} | {p['users']:,} | {p['sessions']:,} ({p['live_sessions']:,}) "
                f"| {_mib(p['size_bytes'])} | {seeding} |"
            )
    lines += [
        "",
        "## The two lookups, in-process (after the run)",
        "",
        "The session lookup is quart_login's resolve statement as `raw_session_lookup` runs it (one per "
        "protected request); the login lookup is `_FOR_LOGIN` of `quart_app/auth/service.py` (one per login). "
        "Small and large in alternating blocks of 50 executions (4,000 each; EXPLAIN ANALYZE: 200 each): "
        "median µs per execution, median of the per-block ratios. SQLite: the probe thread's CPU time; "
        "PostgreSQL: the asyncpg round trip, and the server's own `Execution Time`. Buffers: what one "
        "execution touches (PostgreSQL).",
        "",
        "| backend | lookup | clock | small µs | large µs | ratio | buffers small / large |",
        "| --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for backend, rep in results["backends"].items():
        pair = rep.get("probe_pair")
        if not pair:
            continue
        for name in ("session lookup", "login lookup"):
            rows = [(pair["clock"], pair[name])]
            if "server" in pair:
                rows.append(("server Execution Time", pair["server"][name]))
            buffers = ""
            if "server_side" in rep["probe"]["small"]:
                buffers = " / ".join(
                    str(rep["probe"][side]["server_side"][name]["buffers"]) for side in ("small", "large")
                )
            for clock, x in rows:
                lines.append(
                    f"| {backend} | {name} | {clock} | {x['small_us']:.1f} | {x['large_us']:.1f} | {x['ratio']:.2f} "
                    f"| {buffers} |"
                )
    for backend, rep in results["backends"].items():
        if "error" in rep:
            lines += ["", f"### {backend}: FAILED", "", "```", rep["error"], "```"]
            continue
        if "postgresql" in rep:
            st = rep["postgresql"]["settings"]
            lines += [
                "",
                f"PostgreSQL {st['version']}: shared_buffers {st['shared_buffers']}, fsync {st['fsync']}, "
                f"synchronous_commit {st['synchronous_commit']}, full_page_writes {st['full_page_writes']}"
                f"{' (private cluster)' if rep['postgresql']['private_cluster'] else ' (BENCH_PG_URL)'}.",
            ]
        lines += ["", f"### Plans on the large {backend} database", ""]
        for name, plan in rep["probe"]["large"]["plans"].items():
            lines += [f"{name}:", "```", *plan, "```"]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
