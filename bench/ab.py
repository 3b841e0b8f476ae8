"""Two commits of the port side by side: did a change make it faster?

    .venv/bin/python bench/ab.py BASE NEW [--scenario protected|login] [--rounds 8] [--seconds 3] [--conns N]
        [--base-env NAME=VALUE ...] [--new-env NAME=VALUE ...]

``--base-env`` and ``--new-env`` add settings to one side: the same commit
with a speed-up off and on is
``bench/ab.py HEAD HEAD --base-env QUART_APP_SPEEDUPS=all,-gc_freeze``.

Exports both commits (``git archive``) into a temporary folder, serves each on
its own fresh SQLite file with the project's ``hypercorn.toml`` (the same
command and environment as ``bench/run``), and runs ``wrk -t1`` against them
in alternating rounds (each round starts with the other one). The machine's
speed drifts, so each round compares the two measured a few seconds apart:
the answer is the median of the per-round ratios NEW / BASE, for req/s and
for the servers' CPU time per request (their processes' utime + stime).

Both run with this checkout's ``.venv`` (so commits whose dependencies differ
from the current ones are not comparable this way). ``protected`` is
``GET /dashboard`` with a logged-in cookie (64 connections unless ``--conns``),
``login`` the JSON login loop over 64 users (32 connections).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from harness import group_cpu_seconds, stop_group  # noqa: E402  (bench/harness.py: standard library only)

ROOT = BENCH.parent
VENV = Path(os.environ.get("BENCH_PORT_VENV", ROOT / ".venv"))
LUA = BENCH / "lua"
USERS = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_json(port: int, path: str, body: dict) -> tuple[int, str | None]:
    """(status, the auth cookie's ``name=value`` if the answer set it)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "bench"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            cookies = resp.headers.get_all("Set-Cookie") or []
            status = resp.status
    except urllib.error.HTTPError as err:
        return err.code, None
    auth = next((c.split(";", 1)[0] for c in cookies if c.startswith("quart_app_auth=")), None)
    return status, auth


class Port:
    """One commit of the port, served by hypercorn on 127.0.0.1."""

    def __init__(self, rev: str, work: Path, side: str, extra_env: dict[str, str]) -> None:
        self.rev = rev
        self.label = f"{rev} ({' '.join(f'{k}={v}' for k, v in extra_env.items())})" if extra_env else rev
        self.dir = work / (side + "-" + re.sub(r"[^\w.-]", "_", rev))
        self.dir.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(self.dir)], input=archive, check=True)
        self.db = work / f"{self.dir.name}.sqlite3"
        self.port = free_port()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(self.dir),
            "QUART_APP_ENV": "production",
            "QUART_APP_SECRET_KEY": secrets.token_urlsafe(48),
            "QUART_APP_DATABASE_URL": f"sqlite+aiosqlite:///{self.db}",
            "QUART_APP_LOGIN_RATE_LIMIT": "off",
            # No mail, as in the Flask version (and production needs the setting).
            "QUART_APP_MAIL_URL": "off",
            **extra_env,
        }
        self.proc: subprocess.Popen | None = None
        self.log = work / f"{self.dir.name}.log"

    def start(self) -> None:
        subprocess.run(
            [str(VENV / "bin" / "alembic"), "upgrade", "head"],
            cwd=self.dir,
            env=self.env,
            check=True,
            capture_output=True,
        )
        cmd = [str(VENV / "bin" / "hypercorn"), "-c", "hypercorn.toml", "--bind", f"127.0.0.1:{self.port}"]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [*cmd, "quart_app:create_app()"],
                cwd=self.dir,
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=2).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.rev} did not start; see {self.log}")

    def cpu(self) -> float:
        """utime + stime of the server's processes (its process group), in seconds."""
        return group_cpu_seconds(self.proc.pid) if self.proc else 0.0

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc.pid, grace=15)
            self.proc = None


def prepare(port: Port, scenario: str, pool: Path) -> list[str]:
    """The wrk arguments for ``scenario`` against ``port`` (users registered through the API)."""
    passwords = {}
    cookie = None
    for i in range(USERS if scenario == "login" else 1):
        name, password = f"ab{i:03d}", f"pw-{i:03d}-{port.port}"
        status, cookie = post_json(
            port.port, "/api/register", {"username": name, "email": f"{name}@example.org", "password": password}
        )
        if status != 201:
            raise RuntimeError(f"{port.rev}: registering {name} gave {status}")
        passwords[name] = password
    if scenario == "login":
        pool.write_text("".join(f"{name}\t{pw}\n" for name, pw in passwords.items()))
        return ["-s", str(LUA / "json_login.lua"), f"http://127.0.0.1:{port.port}", "--", str(pool), "200"]
    return ["-s", str(LUA / "cookie_get.lua"), f"http://127.0.0.1:{port.port}/dashboard", "--", cookie, "200"]


def measure(port: Port, args: list[str], conns: int, seconds: int) -> dict:
    c0 = port.cpu()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "10s", *args],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    c1 = port.cpu()
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result:\n{out[-2000:]}")
    result = json.loads(line[len("BENCH_JSON ") :])
    bad = result["unexpected"] + sum(result["errors"].values())
    return {
        "rps": result["rps"],
        "p99_ms": result["p99_ms"],
        "errors": bad,
        "cpu_us": 1e6 * (c1 - c0) / max(result["requests"], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("new")
    parser.add_argument("--scenario", choices=["protected", "login"], default="protected")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--conns", type=int, default=None)
    parser.add_argument("--base-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--new-env", action="append", default=[], metavar="NAME=VALUE")
    opts = parser.parse_args()

    def env_of(pairs: list[str]) -> dict[str, str]:
        return dict(pair.split("=", 1) for pair in pairs)

    conns = opts.conns or (32 if opts.scenario == "login" else 64)

    with tempfile.TemporaryDirectory(prefix="quart-ab-") as tmp:
        work = Path(tmp)
        ports = [
            Port(opts.base, work, "base", env_of(opts.base_env)),
            Port(opts.new, work, "new", env_of(opts.new_env)),
        ]
        try:
            args = {}
            for port in ports:
                port.start()
                args[port.label] = prepare(port, opts.scenario, work / f"{port.dir.name}.pool")
                measure(port, args[port.label], conns, 2)  # warm-up
            runs: dict[str, list[dict]] = {port.label: [] for port in ports}
            for rnd in range(opts.rounds):
                order = ports if rnd % 2 == 0 else ports[::-1]
                for port in order:
                    runs[port.label].append(measure(port, args[port.label], conns, opts.seconds))
                base, new = runs[ports[0].label][-1], runs[ports[1].label][-1]
                print(
                    f"round {rnd + 1}/{opts.rounds}: {ports[0].label} {base['rps']:.0f}/s, "
                    f"{ports[1].label} {new['rps']:.0f}/s",
                    file=sys.stderr,
                )
        finally:
            for port in ports:
                port.stop()

    unit = "logins/s" if opts.scenario == "login" else "req/s"
    print(f"{opts.scenario} ({conns} connections), {opts.rounds} rounds of {opts.seconds} s, alternating:")
    for port in ports:
        r = runs[port.label]
        print(
            f"  {port.label}: median {statistics.median(x['rps'] for x in r):,.1f} {unit}, "
            f"p99 {statistics.median(x['p99_ms'] for x in r):,.0f} ms, "
            f"server CPU {statistics.median(x['cpu_us'] for x in r):,.0f} µs per request, "
            f"errors {sum(x['errors'] for x in r)}"
        )
    b, n = runs[ports[0].label], runs[ports[1].label]
    rate = [y["rps"] / x["rps"] for x, y in zip(b, n, strict=True) if x["rps"]]
    cpu = [y["cpu_us"] / x["cpu_us"] for x, y in zip(b, n, strict=True) if x["cpu_us"]]
    for label, ratios in (("rate", rate), ("CPU per request", cpu)):
        rounds = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"  {ports[1].label} / {ports[0].label}: {label} {statistics.median(ratios):.2f}× (rounds: {rounds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
