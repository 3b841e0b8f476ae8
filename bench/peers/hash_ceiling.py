"""The peers' hash ceiling: bench/hash_ceiling.py's timing, on a peer's own password hasher.

    bench/.venv-fastapi-users/bin/python bench/peers/hash_ceiling.py --algo fastapi_users

``fastapi_users`` imports the peer app (bench/peers/fastapi_users/app.py) and
times its ``password_helper.verify_and_update`` (FastAPI-Users'
``PasswordHelper`` over pwdlib's ``Argon2Hasher``, built with the port's
argon2id parameters) from plain threads, exactly as bench/hash_ceiling.py
times the port's and Werkzeug's: same loop, same options, same
``HASH_JSON {...}`` line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _base():
    """bench/hash_ceiling.py, loaded from its path (its measure loops and password)."""
    spec = importlib.util.spec_from_file_location("bench_hash_ceiling", HERE.parent / "hash_ceiling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fastapi_users_verifier(password: str):
    from importlib.metadata import version

    sys.path.insert(0, str(HERE / "fastapi_users"))
    # The app module builds an engine (no connection until used): point it at a throwaway file.
    os.environ.setdefault("FASTAPI_USERS_DATABASE_URL", "sqlite+aiosqlite:///:memory:")
    import app as peer  # noqa: E402

    helper = peer.password_helper
    stored = helper.hash(password)
    assert helper.verify_and_update(password, stored)[0], "the peer's verify refused its own hash"
    assert not helper.verify_and_update(password + "x", stored)[0]

    def verify() -> None:
        helper.verify_and_update(password, stored)

    info = {
        "algo": "fastapi_users",
        "what": "FastAPI-Users PasswordHelper.verify_and_update (pwdlib Argon2Hasher, argon2id)",
        "params": {
            "time_cost": peer.ARGON2_PARAMS["time_cost"],
            "memory_cost_kib": peer.ARGON2_PARAMS["memory_cost"],
            "parallelism": peer.ARGON2_PARAMS["parallelism"],
        },
        "hash_prefix": stored.split("$", 4)[:4],
        "versions": {p: version(p) for p in ("fastapi-users", "pwdlib", "argon2-cffi")},
    }
    return verify, info


VERIFIERS = {"fastapi_users": fastapi_users_verifier}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=sorted(VERIFIERS), required=True)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--processes", default="2", help="comma-separated process counts (default 2; '' for none)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one repeat")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    base = _base()
    verify, info = VERIFIERS[args.algo](base.PASSWORD)
    verify()  # warm-up
    results, proc_results = {}, {}
    for threads in [int(t) for t in args.threads.split(",") if t.strip()]:
        runs = [base.measure(verify, threads, args.seconds) for _ in range(max(1, args.repeat))]
        results[str(threads)] = {"verifies_per_s": statistics.median(runs), "runs": runs}
        print(f"{args.algo}: {threads} thread(s): {statistics.median(runs):.1f} verifies/s", file=sys.stderr)
    for procs in [int(t) for t in args.processes.split(",") if t.strip()]:
        runs = [base.measure_processes(verify, procs, args.seconds) for _ in range(max(1, args.repeat))]
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
