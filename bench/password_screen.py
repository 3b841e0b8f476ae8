"""Password screening's cost, in-process: loading the list, and the synchronous check of one password.

    .venv/bin/python bench/password_screen.py
    .venv/bin/python bench/password_screen.py --repeat 15 --number 2000

Times ``quart_app.auth.passwords.screen`` (folding, the list's bisection, the
username and email-name checks; no network) on unlisted passwords of 8, 64
and 1,024 characters, a listed one, and 1,024 characters that each fold to 18
(U+FDFA, the longest NFKC expansion): the median of ``--repeat`` runs of
``--number`` calls, per call. The load is timed in this fresh process (the
first call, as a worker's), then as the median of rebuilding it; its memory
with tracemalloc.

Prints a table, then one line ``PASSWORD_SCREEN_JSON {...}`` with every figure.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import sys
import time
import timeit
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quart_app.auth import passwords  # noqa: E402 (after the path)

USERNAME, EMAIL = "alice_w", "alice.wonder@example.com"
CASES = {
    "8 chars": "Tq7!mZp2",
    "64 chars": "tangerine lighthouse marmalade quiver 7 owls dance under sea tho",
    "1024 chars": ("Zq9 vexing plumb jackdaw fox! " * 40)[:1024],
    "listed (password1)": "password1",
    "1024 x U+FDFA": "\ufdfa" * 1024,
}


def load_figures(repeat: int) -> dict[str, float]:
    started = time.perf_counter()
    listed = passwords.common_passwords()  # the first call in this process, as a worker's
    first = time.perf_counter() - started
    raw = passwords.LIST_PATH.read_bytes()
    rebuilds = []
    for _ in range(repeat):
        started = time.perf_counter()
        passwords.CommonPasswords(gzip.decompress(raw))
        rebuilds.append(time.perf_counter() - started)
    tracemalloc.start()
    kept = passwords.CommonPasswords(gzip.decompress(passwords.LIST_PATH.read_bytes()))
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    return {
        "entries": len(listed),
        "first_load_ms": first * 1e3,
        "load_median_ms": statistics.median(rebuilds) * 1e3,
        "retained_mb": retained / 1e6,
        "peak_mb": peak / 1e6,
        "contents_mb": listed.nbytes / 1e6,
    }


def check_figures(repeat: int, number: int) -> dict[str, dict[str, object]]:
    figures = {}
    for name, password in CASES.items():
        verdict = passwords.screen(password, username=USERNAME, email=EMAIL)
        runs = timeit.repeat(
            lambda password=password: passwords.screen(password, username=USERNAME, email=EMAIL),
            repeat=repeat + 1,
            number=number,
        )
        per_call = sorted(run / number for run in runs[1:])  # the first run warms up
        figures[name] = {
            "length": len(password),
            "refused": verdict is not None,
            "median_us": statistics.median(per_call) * 1e6,
            "min_us": per_call[0] * 1e6,
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9, help="runs per figure (the median is shown)")
    parser.add_argument("--number", type=int, default=1000, help="calls per run")
    args = parser.parse_args()

    load = load_figures(args.repeat)
    checks = check_figures(args.repeat, args.number)
    print(f"password screening, {platform.python_implementation()} {platform.python_version()}, {platform.machine()}")
    print(
        f"list: {load['entries']} entries; first load {load['first_load_ms']:.1f} ms, "
        f"median reload {load['load_median_ms']:.1f} ms; {load['retained_mb']:.2f} MB retained "
        f"(peak {load['peak_mb']:.1f} MB while loading)"
    )
    print(f"{'check (screen, sync)':<22} {'length':>6} {'refused':>8} {'median':>12} {'min':>12}")
    for name, row in checks.items():
        print(
            f"{name:<22} {row['length']:>6} {('yes' if row['refused'] else 'no'):>8} "
            f"{row['median_us']:>9.2f} us {row['min_us']:>9.2f} us"
        )
    print("PASSWORD_SCREEN_JSON " + json.dumps({"load": load, "checks": checks, "python": platform.python_version()}))


if __name__ == "__main__":
    main()
