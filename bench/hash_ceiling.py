"""The hash ceiling: password verifications per second in-process, on 1 and 2 threads.

No server, no HTTP: the most logins/s this machine can do with a given
password hash, whatever the web stack.

    .venv/bin/python bench/hash_ceiling.py --algo port        # the port's argon2id, its configured defaults
    bench/.venv-flask/bin/python bench/hash_ceiling.py --algo werkzeug   # the seed's generate_password_hash()

``port`` builds the hasher the way the app does (``create_app`` with the
default ``Settings``, so the argon2 parameters are the port's own defaults)
and calls its synchronous ``_verify_sync`` from plain threads (argon2-cffi
releases the GIL). ``werkzeug`` times ``check_password_hash`` on a hash made
by ``generate_password_hash(password)`` with no method, as the seed does.

Also timed on 2 forked processes: that is how the seed hashes (in
gunicorn's worker processes); both argon2-cffi and hashlib's scrypt release
the GIL, so threads and processes should come out alike.

Prints one line: ``HASH_JSON {...}`` with verifies/s per thread (and
process) count, the median of the repeats, and every repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

PASSWORD = "correct horse battery staple"


def port_verifier():
    """The port's own verify with the port's configured parameters."""
    from importlib.metadata import version

    from quart_app.core.config import Settings

    defaults = Settings()
    params = {
        "time_cost": defaults.ARGON2_TIME_COST,
        "memory_cost_kib": defaults.ARGON2_MEMORY_COST,
        "parallelism": defaults.ARGON2_PARALLELISM,
        "hash_workers_default": defaults.HASH_WORKERS,
    }
    try:
        # The hasher exactly as the app builds it (its constructor may grow
        # arguments; create_app knows them).
        from quart_app import create_app

        tmp = tempfile.mkdtemp(prefix="hash-ceiling-")
        app = create_app({"ENV": "testing", "DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/unused.sqlite3"})
        hasher = app.extensions["quart_app.hasher"]
        built_by = "create_app"
    except Exception as exc:  # pragma: no cover - fallback for a changed app factory
        print(f"create_app failed ({exc!r}); building PasswordHasher from Settings()", file=sys.stderr)
        import inspect

        from quart_app.core.security import PasswordHasher

        kwargs = {
            "time_cost": defaults.ARGON2_TIME_COST,
            "memory_cost": defaults.ARGON2_MEMORY_COST,
            "parallelism": defaults.ARGON2_PARALLELISM,
            "workers": defaults.HASH_WORKERS,
            "max_pending": getattr(defaults, "HASH_QUEUE_LIMIT", 64),
        }
        accepted = inspect.signature(PasswordHasher).parameters
        hasher = PasswordHasher(**{k: v for k, v in kwargs.items() if k in accepted})
        built_by = "PasswordHasher(Settings())"

    stored = hasher._hash_sync(PASSWORD)
    assert hasher._verify_sync(stored, PASSWORD).ok, "the port's verify refused its own hash"
    assert not hasher._verify_sync(stored, PASSWORD + "x").ok

    def verify() -> None:
        hasher._verify_sync(stored, PASSWORD)

    info = {
        "algo": "port",
        "what": "quart_app PasswordHasher._verify_sync (argon2id)",
        "built_by": built_by,
        "params": params,
        "hash_prefix": stored.split("$", 4)[:4],
        "versions": {"argon2-cffi": version("argon2-cffi")},
    }
    return verify, info


def werkzeug_verifier():
    """The seed's hashing: Werkzeug's default method."""
    from importlib.metadata import version

    from werkzeug.security import check_password_hash, generate_password_hash

    stored = generate_password_hash(PASSWORD)
    assert check_password_hash(stored, PASSWORD)

    def verify() -> None:
        check_password_hash(stored, PASSWORD)

    info = {
        "algo": "werkzeug",
        "what": "werkzeug.security.check_password_hash on generate_password_hash(pw) (default method)",
        "params": {"method": stored.split("$", 1)[0]},
        "versions": {"werkzeug": version("werkzeug")},
    }
    return verify, info


def measure(verify, threads: int, seconds: float) -> float:
    """Verifications per second with ``threads`` threads looping for ``seconds``."""
    counts = [0] * threads
    start_gate = threading.Barrier(threads + 1)
    deadline = [0.0]

    def loop(slot: int) -> None:
        start_gate.wait()
        n = 0
        end = deadline[0]
        while time.perf_counter() < end:
            verify()
            n += 1
        counts[slot] = n

    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    t0 = time.perf_counter()
    deadline[0] = t0 + seconds
    start_gate.wait()
    for w in workers:
        w.join(timeout=seconds + 60)
    elapsed = time.perf_counter() - t0
    return sum(counts) / elapsed


def _proc_loop(verify, seconds: float, start, conn) -> None:
    start.wait()
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        verify()
        n += 1
    conn.send(n)
    conn.close()


def measure_processes(verify, procs: int, seconds: float) -> float:
    """The same with ``procs`` forked processes (how gunicorn's workers run the seed's hash: no shared GIL)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    start = ctx.Event()
    pipes, workers = [], []
    for _ in range(procs):
        parent, child = ctx.Pipe(duplex=False)
        w = ctx.Process(target=_proc_loop, args=(verify, seconds, start, child), daemon=True)
        w.start()
        pipes.append(parent)
        workers.append(w)
    t0 = time.perf_counter()
    start.set()
    total = 0
    for parent in pipes:
        if parent.poll(seconds + 60):
            total += parent.recv()
    elapsed = time.perf_counter() - t0
    for w in workers:
        w.join(timeout=10)
        if w.is_alive():
            w.kill()
    return total / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=["port", "werkzeug"], required=True)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--processes", default="2", help="comma-separated process counts (default 2; '' for none)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one repeat")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    verify, info = port_verifier() if args.algo == "port" else werkzeug_verifier()
    verify()  # warm-up (allocations, first-call costs)
    results = {}
    for threads in [int(t) for t in args.threads.split(",") if t.strip()]:
        runs = [measure(verify, threads, args.seconds) for _ in range(max(1, args.repeat))]
        results[str(threads)] = {"verifies_per_s": statistics.median(runs), "runs": runs}
        print(f"{args.algo}: {threads} thread(s): {statistics.median(runs):.1f} verifies/s", file=sys.stderr)
    proc_results = {}
    for procs in [int(t) for t in args.processes.split(",") if t.strip()]:
        runs = [measure_processes(verify, procs, args.seconds) for _ in range(max(1, args.repeat))]
        proc_results[str(procs)] = {"verifies_per_s": statistics.median(runs), "runs": runs}
        print(f"{args.algo}: {procs} process(es): {statistics.median(runs):.1f} verifies/s", file=sys.stderr)
    info.update(
        threads=results,
        processes=proc_results,
        seconds=args.seconds,
        repeat=args.repeat,
        python=sys.version.split()[0],
        cpus=os.cpu_count(),
    )
    print("HASH_JSON " + json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
