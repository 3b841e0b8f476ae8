"""Turn bench/results/latest.json into latest.md (tables) and latest.png (chart).

    bench/.venv-harness/bin/python bench/report.py [bench/results/latest.json]

The Markdown goes to stdout as well. Without matplotlib the chart is skipped
(with a message) and the tables are still written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
PORT_ALT = ["port_uvicorn", "port_granian"]
FLASK_PG = ["flask_sync_pg", "flask_gthread_pg"]
SHORT = {
    "port": "Quart port (SQLite)",
    "port_pg": "Quart port (PostgreSQL)",
    "flask_sync": "Flask sync",
    "flask_gthread": "Flask gthread",
    "flask_sync_pg": "Flask sync (PostgreSQL)",
    "flask_gthread_pg": "Flask gthread (PostgreSQL)",
    "fastapi_users": "FastAPI-Users",
    "port_uvicorn": "Quart port under uvicorn",
    "port_granian": "Quart port under granian",
    "bare_asgi": "bare ASGI",
    "bare_quart": "bare Quart",
    "bare_flask_sync": "bare Flask sync",
    "bare_flask_gthread": "bare Flask gthread",
}
COLORS = {
    "port": "#1f77b4",
    "port_pg": "#2ca02c",
    "flask_sync": "#d62728",
    "flask_gthread": "#ff7f0e",
    "flask_sync_pg": "#8c564b",
    "flask_gthread_pg": "#e377c2",
    "fastapi_users": "#9467bd",
    "port_uvicorn": "#17becf",
    "port_granian": "#bcbd22",
}
SCENARIOS = [
    ("protected_64", "protected: GET /dashboard, 64 conns", "req/s"),
    ("protected_512", "protected: GET /dashboard, 512 conns", "req/s"),
    ("login_form", "login: form POST /login, 32 conns", "logins/s"),
    ("login_json", "login: JSON POST /api/login, 32 conns", "logins/s"),
    ("storm", "storm: GET /dashboard at 64 conns during a JSON-login loop at 32", "req/s"),
]
# The scenarios the PostgreSQL variants (port_pg, Flask on PostgreSQL) are measured in.
PG_SCENARIOS = ["protected_64", "protected_512", "login_form", "login_json"]
# FastAPI-Users: protected, its (form-encoded) login in the login_json row, storm.
PEER_SCENARIOS = ["protected_64", "protected_512", "login_json", "storm"]
# Each peer's own hash (the "hash_ceiling" key) and the scenarios its logins are in.
OWN_HASH = {
    "flask_sync": "werkzeug",
    "flask_gthread": "werkzeug",
    "flask_sync_pg": "werkzeug",
    "flask_gthread_pg": "werkzeug",
    "fastapi_users": "fastapi_users",
}
PEER_LOGIN_NOTE = "FastAPI-Users' row is its own login: form-encoded `POST /auth/cookie/login` (answers 204 + cookie)"
NOISY_OTHER_CPU = 25.0  # % of one core used by other processes during a run (if latest.json does not say)


def fmt(x, digits=1):
    if x is None:
        return "–"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def errors_cell(totals: dict) -> str:
    parts = []
    if totals["non_2xx_3xx"]:
        parts.append(f"{totals['non_2xx_3xx']} non-2xx/3xx")
    if totals["unexpected_status"]:
        parts.append(f"{totals['unexpected_status']} unexpected status")
    sock = totals["socket_errors"]
    if sock:
        parts.append(f"{sock} socket ({totals['timeouts']} timeouts)")
    return ", ".join(parts) if parts else "0"


def cpu_cell(md: dict) -> str:
    if "db_cpu_pct" in md:
        return f"{md['server_cpu_pct']:.0f}% + {md['db_cpu_pct']:.0f}% PostgreSQL"
    return f"{md['server_cpu_pct']:.0f}%"


def pg_meta(meta: dict) -> dict:
    """The PostgreSQL variant's record; an older latest.json has none."""
    return meta.get("postgresql") or {"status": "missing", "reason": "not in this run (no postgresql in latest.json)"}


def pg_line(meta: dict) -> str:
    pg = pg_meta(meta)
    pv = meta["versions"]["port_venv"]
    if pg.get("status") != "ok":
        return f"- **PostgreSQL variant** (`port_pg`): **missing** — {pg.get('reason') or 'no reason recorded'}"
    settings = pg.get("settings") or {}
    shown = ", ".join(f"{k}={v}" for k, v in settings.items())
    pool = meta["config"].get("port_pool") or {}
    pool_txt = (
        f"the app's default pool, {pool['DB_POOL_SIZE']} + {pool['DB_MAX_OVERFLOW']} overflow connections per worker"
        if "DB_POOL_SIZE" in pool
        else "the app's default pool"
    )
    return (
        f"- **PostgreSQL variant** (`port_pg`): the same port, server and config on PostgreSQL "
        f"{pg.get('version') or '?'} through asyncpg {pv.get('asyncpg')} ({pool_txt}); {pg.get('cluster')}; "
        f"filesystem {pg.get('filesystem') or '?'}; server settings as reported by the server: {shown or '?'}. "
        f"Measured in the protected and login scenarios only; its *server CPU* adds PostgreSQL's processes "
        f"(which run on the same 2 cores)."
    )


def statuses(totals: dict) -> str:
    return " ".join(f"{code}×{n}" for code, n in sorted(totals["statuses"].items()))


def _median(values):
    values = sorted(values)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def paired_login_share(doc: dict, scenario: str) -> tuple[float | None, float | None, list[float]]:
    """(median logins/s, median paired ceiling, per-repetition login/ceiling ratios) for the port."""
    runs = doc["scenarios"].get(scenario, {}).get("port", {}).get("runs", [])
    ceilings = doc.get("hash_ceiling_paired", {}).get(scenario, [])
    ratios = [r["rps"] / c["verifies_per_s"] for r, c in zip(runs, ceilings, strict=False) if c["verifies_per_s"]]
    return (
        _median([r["rps"] for r in runs]),
        _median([c["verifies_per_s"] for c in ceilings]),
        ratios,
    )


def peer_login_shares(doc: dict) -> list[tuple[str, str, float | None, float | None, list[float], str]]:
    """Each peer's logins as a share of its own hash's ceiling:
    (server, scenario, median logins/s, ceiling, per-repetition shares, how the ceiling was had)."""
    res, hashes = doc["scenarios"], doc.get("hash_ceiling", {})
    paired = doc.get("hash_ceiling_paired_peers", {})
    out = []
    for name, algo in OWN_HASH.items():
        for scenario in ("login_json", "login_form"):
            every = res.get(scenario, {}).get(name, {}).get("runs", [])
            # Runs that completed no login (queued past a short measurement) have no rate.
            runs = [(i + 1, r) for i, r in enumerate(every) if r["requests"]]
            if not runs:
                continue
            # Older runs keyed FastAPI-Users' samples by server; both are the hash's name now.
            by_rep = {c["rep"]: c["verifies_per_s"] for c in paired.get(algo, {}).get(scenario, [])}
            if by_rep:
                pairs = [(r["rps"], by_rep[i]) for i, r in runs if by_rep.get(i)]
                ratios = [x / c for x, c in pairs]
                ceiling = _median([c for _, c in pairs])
                how = "its own verify on 2 threads, sampled in each repetition right after the logins"
            else:
                h = hashes.get(algo)
                if not h:
                    continue
                ceiling = (h.get("processes", {}).get("2") or h["threads"]["2"])["verifies_per_s"]
                ratios = [r["rps"] / ceiling for _, r in runs] if ceiling else []
                how = "its own verify on 2 processes, at the end of the run"
            out.append((name, scenario, _median([r["rps"] for _, r in runs]), ceiling, ratios, how))
    return out


def targets(doc: dict) -> list[str]:
    """The issue's targets against this run's medians (the port on SQLite)."""
    res = doc["scenarios"]
    out = ["## Targets", ""]
    out.append("| target | measured | met |")
    out.append("| --- | --- | --- |")

    def med(scenario, name, key="rps"):
        e = res.get(scenario, {}).get(name)
        return e["median"][key] if e else None

    def yes(ok):
        return "yes" if ok else "no"

    def per_rep(scenario, a, b, key="rps"):
        # Repetition by repetition: the two servers ran within a minute of each
        # other, while the machine's speed drifts over the whole run.
        ra = res.get(scenario, {}).get(a, {}).get("runs", [])
        rb = res.get(scenario, {}).get(b, {}).get("runs", [])
        # A run that completed no request has no rate (nor latency): it is left out.
        return [x[key] / y[key] for x, y in zip(ra, rb, strict=False) if y[key] and x["requests"] and y["requests"]]

    def listed(ratios):
        return ", ".join(f"{x:.2f}" for x in ratios)

    for scenario, conns, want in (("protected_64", 64, 1.3), ("protected_512", 512, 1.5)):
        port = med(scenario, "port")
        for ref in ("flask_sync", "flask_gthread"):
            other = med(scenario, ref)
            ratios = per_rep(scenario, "port", ref)
            if not port or not other or not ratios:
                continue
            ratio = _median(ratios)
            out.append(
                f"| protected, {conns} conns: ≥ {want}× {SHORT[ref]}'s req/s | {ratio:.2f}× "
                f"(per repetition {listed(ratios)}; medians {fmt(port)} vs {fmt(other)}) | {yes(ratio >= want)} |"
            )
            if conns == 512:
                shares = per_rep(scenario, "port", ref, "p99_ms")
                if shares:
                    share = _median(shares)
                    out.append(
                        f"| protected, 512 conns: p99 ≤ ½ of {SHORT[ref]}'s | {share:.2f}× "
                        f"(per repetition {listed(shares)}; medians {fmt(med(scenario, 'port', 'p99_ms'))} vs "
                        f"{fmt(med(scenario, ref, 'p99_ms'))} ms) | {yes(share <= 0.5)} |"
                    )
    # The port on PostgreSQL: vs itself on SQLite, vs Flask on the same PostgreSQL.
    pg64 = per_rep("protected_64", "port_pg", "port")
    if pg64:
        r = _median(pg64)
        out.append(
            f"| protected, 64 conns: {SHORT['port_pg']} ≥ 60 % of {SHORT['port']}'s req/s | {100 * r:.0f}% "
            f"(per repetition {listed(pg64)}; medians {fmt(med('protected_64', 'port_pg'))} vs "
            f"{fmt(med('protected_64', 'port'))}) | {yes(r >= 0.6)} |"
        )
    for ref in FLASK_PG:
        ratios = per_rep("protected_64", "port_pg", ref)
        if not ratios:
            continue
        r = _median(ratios)
        out.append(
            f"| protected, 64 conns: {SHORT['port_pg']} ≥ 1.3× {SHORT[ref]}'s req/s | {r:.2f}× "
            f"(per repetition {listed(ratios)}; medians {fmt(med('protected_64', 'port_pg'))} vs "
            f"{fmt(med('protected_64', ref))}) | {yes(r >= 1.3)} |"
        )
    p99s = per_rep("protected_512", "port_pg", "port", "p99_ms")
    if p99s:
        r = _median(p99s)
        out.append(
            f"| protected, 512 conns: {SHORT['port_pg']}'s p99 ≤ 2× {SHORT['port']}'s | {r:.2f}× "
            f"(per repetition {listed(p99s)}; medians {fmt(med('protected_512', 'port_pg', 'p99_ms'))} vs "
            f"{fmt(med('protected_512', 'port', 'p99_ms'))} ms) | {yes(r <= 2)} |"
        )
    port_share = None
    for scenario, label in (("login_json", "JSON"), ("login_form", "form")):
        logins, ceiling, ratios = paired_login_share(doc, scenario)
        if logins is None or not ratios:
            continue
        share = _median(ratios)
        port_share = share if port_share is None else min(port_share, share)
        out.append(
            f"| {label} logins: ≥ 90 % of the hash ceiling measured beside them | {100 * share:.0f}% "
            f"({fmt(logins)}/s; ceiling {fmt(ceiling)}/s) | {yes(share >= 0.9)} |"
        )
    cpu_notes = []
    for scenario, label in (("login_json", "JSON"), ("login_form", "form")):
        entry = res.get(scenario, {}).get("port")
        _, ceiling, _ = paired_login_share(doc, scenario)
        if not entry or not entry["median"]["rps"]:
            continue
        md = entry["median"]
        per_login = 10 * md["server_cpu_pct"] / md["rps"]  # ms of CPU per login
        note = f"{label} logins: the server used {per_login:.1f} ms of CPU per login"
        if "hashing_cpu_pct" in md:
            hashing = 10 * md["hashing_cpu_pct"] / md["rps"]
            note += (
                f": {hashing:.1f} ms in its hash threads ({100 * hashing / per_login:.0f}% of it) and "
                f"{per_login - hashing:.1f} ms in everything else (HTTP, the event loop, the database threads)"
            )
        if ceiling:
            note += f"; one verify alone costs {2000 / ceiling:.1f} ms in-process (2 cores ÷ the ceiling)"
        cpu_notes.append(note + ".")
    # What the 512-connection p99 target asks of the throughput: wrk's 512
    # connections form a closed loop, so the mean latency is 512 / rate.
    p512 = res.get("protected_512", {}).get("port")
    bare = res.get("floor_64", {}).get("bare_quart")
    if p512 and p512["median"]["rps"]:
        mean = 1000 * 512 / p512["median"]["rps"]
        shape = p512["median"]["p99_ms"] / mean
        for ref in ("flask_sync", "flask_gthread"):
            other = res.get("protected_512", {}).get(ref)
            if not other or not shape or not other["median"]["p99_ms"] or not other["median"]["rps"]:
                continue
            needed = 512 / (0.5 * other["median"]["p99_ms"] / shape / 1000)
            note = (
                f"512 connections vs {SHORT[ref]}: with 512 requests always in flight the mean latency is "
                f"512 ÷ rate ({mean:.0f} ms for the port here, whose p99 is {shape:.2f}× its mean); a p99 of "
                f"half {SHORT[ref]}'s ({0.5 * other['median']['p99_ms']:.0f} ms) at that shape needs about "
                f"{needed:,.0f} req/s, {needed / other['median']['rps']:.1f}× {SHORT[ref]}'s rate"
            )
            if bare and bare["median"]["rps"]:
                note += f' and {100 * needed / bare["median"]["rps"]:.0f}% of bare Quart\'s "hello" (64 conns)'
            cpu_notes.append(note + ".")
    idle, storm = res.get("protected_64", {}).get("port"), res.get("storm", {}).get("port")
    if idle and storm and idle["median"]["rps"]:
        p99, kept = storm["median"]["p99_ms"], storm["median"]["rps"] / idle["median"]["rps"]
        out.append(f"| storm: dashboard p99 ≤ 100 ms | {fmt(p99)} ms | {yes(p99 <= 100)} |")
        out.append(f"| storm: dashboard keeps ≥ ¼ of its idle req/s | {100 * kept:.0f}% | {yes(kept >= 0.25)} |")
    # The port vs FastAPI-Users (the async library a team would pick instead): the port ahead.
    for scenario, conns in (("protected_64", 64), ("protected_512", 512)):
        ratios = per_rep(scenario, "port", "fastapi_users")
        if not ratios:
            continue
        r = _median(ratios)
        out.append(
            f"| protected, {conns} conns: {SHORT['port']} ahead of {SHORT['fastapi_users']}' req/s | {r:.2f}× "
            f"(per repetition {listed(ratios)}; medians {fmt(med(scenario, 'port'))} vs "
            f"{fmt(med(scenario, 'fastapi_users'))}) | {yes(r > 1)} |"
        )
    storm_p99 = per_rep("storm", "port", "fastapi_users", "p99_ms")
    if storm_p99:
        r = _median(storm_p99)
        out.append(
            f"| storm: {SHORT['port']}'s dashboard p99 below {SHORT['fastapi_users']}' | {r:.2f}× "
            f"(per repetition {listed(storm_p99)}; medians {fmt(med('storm', 'port', 'p99_ms'))} vs "
            f"{fmt(med('storm', 'fastapi_users', 'p99_ms'))} ms) | {yes(r < 1)} |"
        )
    # The peers' logins against their own hash's ceiling: none above 90 % while the port is.
    shares = peer_login_shares(doc)
    over = []
    per_server: dict[str, list[str]] = {}
    for name, scenario, logins, ceiling, ratios, _how in shares:
        if not ratios:
            continue
        share = _median(ratios)
        if share > 0.9:
            over.append(f"{SHORT[name]} ({scenario.replace('login_', '')})")
        login = "cookie login" if name == "fastapi_users" else scenario.replace("login_", "")
        per_server.setdefault(name, []).append(f"{login} {100 * share:.0f}% ({fmt(logins)}/s of {fmt(ceiling)}/s)")
    for name, cells in per_server.items():
        whose = SHORT[name] + ("'" if SHORT[name].endswith("s") else "'s")
        out.append(
            f"| {whose} logins as a share of its own hash ceiling (see the hash ceiling section) "
            f"| {'; '.join(cells)} | – |"
        )
    if shares and port_share is not None:
        ok = port_share >= 0.9 and not over
        out.append(
            f"| no peer above 90 % of its own hash ceiling while the port is | port {100 * port_share:.0f}% "
            f"(its lower login share); peers above 90 %: {', '.join(over) or 'none'} | {yes(ok)} |"
        )
    errors = sum(
        e["totals"]["non_2xx_3xx"]
        + e["totals"]["unexpected_status"]
        + e["totals"]["socket_errors"]
        + e["totals"].get("storm_login_errors", 0)
        for per in res.values()
        for name, e in per.items()
        if name in ("port", "port_pg")
    )
    out.append(f"| no errors in any scenario (the port, both databases) | {errors} | {yes(errors == 0)} |")
    out.append("")
    out.append(
        "Every ratio is the median over the repetitions of this one run, each repetition comparing servers "
        "measured within a minute of each other (the machine's speed drifts over a run); the medians of each "
        "server alone are in the tables below. The login share compares the port's logins/s with its own "
        "verify on 2 threads, in-process, sampled right after them (see the hash ceiling section)."
    )
    out.append("")
    for note in cpu_notes:
        out.append(f"- {note}")
    if cpu_notes:
        out.append("")
    return out


def markdown(doc: dict) -> str:
    meta, res, hashes = doc["meta"], doc["scenarios"], doc.get("hash_ceiling", {})
    m, cfg = meta["machine"], meta["config"]
    pv, fv = meta["versions"]["port_venv"], meta["versions"]["flask_venv"]
    lines = []
    w = lines.append
    w("# Benchmark: the Quart port vs the sync Flask reference")
    w("")
    w(f"- **Date**: {meta['date']} (the run took {meta['elapsed_s']:.0f} s)")
    w(
        f"- **Machine**: {m['nproc']} × {m['cpu_model']}, {m['memory_gib']} GiB, Linux {m['kernel']}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}"
    )
    w(
        f"- **Port** (commit {m.get('port_commit')}{' + uncommitted changes' if m.get('port_tree_dirty') else ''}): "
        f"Python {pv.get('python')}, quart {pv.get('quart')}, hypercorn {pv.get('hypercorn')}, "
        f"quart-auth {pv.get('quart-auth')}, SQLAlchemy {pv.get('sqlalchemy')}, aiosqlite {pv.get('aiosqlite')}, "
        f"argon2-cffi {pv.get('argon2-cffi')}, uvloop {pv.get('uvloop')}"
    )
    w(
        f"- **Flask reference** (`bench/flask_ref`): Python {fv.get('python')}, flask {fv.get('flask')}, "
        f"flask-login {fv.get('flask-login')}, flask-sqlalchemy {fv.get('flask-sqlalchemy')}, "
        f"SQLAlchemy {fv.get('sqlalchemy')}, werkzeug {fv.get('werkzeug')}, gunicorn {fv.get('gunicorn')}"
        + (f", psycopg {fv.get('psycopg')} (on PostgreSQL)" if fv.get("psycopg") else "")
    )
    uv = meta["versions"].get("fastapi_users_venv") or {}
    if uv.get("fastapi-users"):
        w(
            f"- **FastAPI-Users peer** (`bench/peers/fastapi_users`): Python {uv.get('python')}, "
            f"fastapi-users {uv.get('fastapi-users')}, fastapi-users-db-sqlalchemy "
            f"{uv.get('fastapi-users-db-sqlalchemy')}, fastapi {uv.get('fastapi')}, starlette {uv.get('starlette')}, "
            f"uvicorn {uv.get('uvicorn')}, uvloop {uv.get('uvloop')}, httptools {uv.get('httptools')}, "
            f"SQLAlchemy {uv.get('sqlalchemy')}, aiosqlite {uv.get('aiosqlite')}, pwdlib {uv.get('pwdlib')}, "
            f"argon2-cffi {uv.get('argon2-cffi')}; {cfg.get('fastapi_users_app', '')}; served by "
            f"`{cfg.get('uvicorn_cmd', 'uvicorn')}`; login: {cfg.get('fastapi_users_login', '')}"
        )
    w(
        f"- **Method**: `{cfg['wrk']}`, {m.get('wrk')}; each number is the median of {cfg['repeat']} "
        f"measurements of {cfg['duration_s']} s, the servers alternating (each repetition starts with a "
        f"different one), after a {cfg['warmup_s']} s warm-up; errors are summed over all repetitions. "
        f"{cfg['users']} users pre-created through each app's own registration endpoint; SQLite files in a temp dir."
    )
    w(
        f"- **Servers** (127.0.0.1 only): port: `{cfg['hypercorn_cmd']}` with the project's `hypercorn.toml` "
        f"({', '.join(f'{k}={v}' for k, v in cfg['hypercorn_toml'].items() if k != 'bind')}) and "
        f"`{cfg['port_env']}`; Flask: `{cfg['gunicorn_sync_cmd']}` and `{cfg['gunicorn_gthread_cmd']}`."
    )
    w(
        f"- **Form login**: port: {cfg['port_form_login']}; Flask: {cfg['flask_form_login']}. "
        f"JSON login: `POST /api/login` (`200` from the port, `201` from the seed's `Login` resource)."
    )
    w(
        f"- **Protected page** cookies: {cfg['dashboard_cookies']} "
        f"({'; '.join(f'{SHORT[k]}: ' + ', '.join(v) for k, v in meta.get('cookies', {}).items())})."
    )
    w(pg_line(meta))
    if cfg.get("flask_pg_env"):
        w(
            f"- **Flask on PostgreSQL** (`flask_sync_pg`, `flask_gthread_pg`): the same two gunicorn servers with "
            f"`{cfg['flask_pg_env']}`; measured in the protected and login scenarios; their *server CPU* adds "
            f"PostgreSQL's processes too."
        )
    for name, reason in (meta.get("missing") or {}).items():
        w(f"- **{SHORT.get(name, name)}** (`{name}`): **missing** — {reason}")
    if cfg.get("quick"):
        w("- **Quick mode** (`BENCH_QUICK=1`): short measurements, one repetition: a smoke test, not a result.")
    w("")

    lines.extend(targets(doc))

    # the three-way comparison: the port on SQLite, the port on PostgreSQL, the Flask reference
    w("## The port on SQLite vs on PostgreSQL vs Flask")
    w("")
    pg = pg_meta(meta)
    if pg.get("status") != "ok":
        w(f"The PostgreSQL variant is **missing** from this run: {pg.get('reason') or 'no reason recorded'}.")
        w("")
    w(
        "Median rate per second (p99 ms); *PG / SQLite* is the port's PostgreSQL rate as a share of its SQLite one. "
        f"{PEER_LOGIN_NOTE}, in the JSON-login row (it has no form/CSRF flow like the port's); "
        "it is not measured in the form row."
    )
    w("")
    w(
        "| scenario | Quart port (SQLite) | Quart port (PostgreSQL) | PG / SQLite | Flask sync | Flask gthread "
        "| Flask sync (PostgreSQL) | Flask gthread (PostgreSQL) | FastAPI-Users (SQLite) |"
    )
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    missing = meta.get("missing") or {}
    for key, title, unit in SCENARIOS:
        if key not in PG_SCENARIOS and key not in PEER_SCENARIOS:
            continue
        per = res.get(key, {})

        def cell(name, per=per, key=key):
            e = per.get(name)
            if e and not any(r["requests"] for r in e["runs"]):
                return "none completed"
            if not e:
                scenarios = PEER_SCENARIOS if name == "fastapi_users" else PG_SCENARIOS
                if (name == "port_pg" or name in missing) and key in scenarios:
                    return "missing"
                return "–"
            md = e["median"]
            err = "" if errors_cell(e["totals"]) == "0" else " ⚠ errors"
            return f"{fmt(md['rps'])} ({fmt(md['p99_ms'])}){err}"

        a, b = per.get("port"), per.get("port_pg")
        ratio = f"{100 * b['median']['rps'] / a['median']['rps']:.0f}%" if a and b and a["median"]["rps"] else "–"
        w(
            f"| {title} ({unit}) | {cell('port')} | {cell('port_pg')} | {ratio} | {cell('flask_sync')} "
            f"| {cell('flask_gthread')} | {cell('flask_sync_pg')} | {cell('flask_gthread_pg')} "
            f"| {cell('fastapi_users')}{' †' if key == 'login_json' and 'fastapi_users' in per else ''} |"
        )
    w("")
    w(f"† {PEER_LOGIN_NOTE}.")
    w("")
    alt = [n for n in PORT_ALT if n in res.get("protected_64", {}) or n in res.get("protected_512", {})]
    if alt:
        w("## The port under other ASGI servers")
        w("")
        w(
            "The same app, environment and SQLite database as the port, with the port's interpreter; only the "
            f"server differs (hypercorn.toml stays the port's default): `{cfg.get('port_uvicorn_cmd')}`, "
            f"`{cfg.get('port_granian_cmd')}` "
            f"({', '.join(f'{k} {v}' for k, v in (meta['versions'].get('port_servers_dir') or {}).items())}). "
            "Median req/s (p99 ms), and the rate as a share of hypercorn's, repetition by repetition."
        )
        w("")
        w("| scenario | " + " | ".join(["Quart port (hypercorn)", *(SHORT[n] for n in alt)]) + " |")
        w("| --- | ---: |" + " ---: |" * len(alt))
        for key in ("protected_64", "protected_512"):
            per = res.get(key, {})
            title = next(t for k, t, _ in SCENARIOS if k == key)
            cells = []
            for n in ["port", *alt]:
                e = per.get(n)
                if not e:
                    cells.append("–")
                    continue
                c = f"{fmt(e['median']['rps'])} ({fmt(e['median']['p99_ms'])})"
                if n != "port" and per.get("port"):
                    ratios = [
                        x["rps"] / y["rps"] for x, y in zip(e["runs"], per["port"]["runs"], strict=False) if y["rps"]
                    ]
                    if ratios:
                        c += f", {100 * _median(ratios):.0f}%"
                cells.append(c)
            w(f"| {title} | " + " | ".join(cells) + " |")
        w("")
    w("## Results")
    w("")
    w("| scenario | server | rate /s | p50 ms | p99 ms | errors | server CPU | wrk CPU |")
    w("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |")
    for key, title, unit in SCENARIOS:
        for name in SERVERS:
            e = res.get(key, {}).get(name)
            if not e:
                continue
            md = e["median"]
            if name == "fastapi_users" and key == "login_json":
                title_here = "login: its form-encoded POST /auth/cookie/login (the JSON-login row), 32 conns"
            else:
                title_here = title
            w(
                f"| {title_here} | {SHORT[name]} | {fmt(md['rps'])} {unit} | {fmt(md['p50_ms'])} | {fmt(md['p99_ms'])} "
                f"| {errors_cell(e['totals'])} | {cpu_cell(md)} | {md['wrk_cpu_pct']:.0f}% |"
            )
    for name, e in res.get("floor_64", {}).items():
        md = e["median"]
        w(
            f'| floor: GET / "hello", 64 conns | {SHORT[name]} | {fmt(md["rps"])} req/s | {fmt(md["p50_ms"])} '
            f"| {fmt(md['p99_ms'])} | {errors_cell(e['totals'])} | {md['server_cpu_pct']:.0f}% "
            f"| {md['wrk_cpu_pct']:.0f}% |"
        )
    w("")
    w(
        "CPU columns are % of one core (the machine has "
        f"{m['nproc']}): the server's processes (for the PostgreSQL variant, plus PostgreSQL's), and wrk's own use. "
        "Errors: wrk's `Non-2xx or 3xx responses`, "
        "responses with another status than the scenario's success status (e.g. a `302` to the login page "
        "where `200` was due, or a form login answered `200` with the form again), and socket errors "
        "(connect/read/write/timeout; a timed-out request has no latency in wrk's percentiles)."
    )
    w("")

    # storm
    w("## Storm: does hashing stall everything else?")
    w("")
    w(
        "`GET /dashboard` at 64 connections, idle (the protected-64 row) and while a second wrk runs the JSON "
        "login loop at 32 connections against the same server."
    )
    w("")
    w(
        "| server | idle req/s | storm req/s | kept | idle p50 ms | storm p50 ms | idle p99 ms | storm p99 ms "
        "| logins/s during storm | login errors |"
    )
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name in SERVERS:
        idle = res.get("protected_64", {}).get(name)
        storm = res.get("storm", {}).get(name)
        if not idle or not storm:
            continue
        i, s = idle["median"], storm["median"]
        kept = 100 * s["rps"] / i["rps"] if i["rps"] else 0
        w(
            f"| {SHORT[name]} | {fmt(i['rps'])} | {fmt(s['rps'])} | {kept:.0f}% | {fmt(i['p50_ms'])} "
            f"| {fmt(s['p50_ms'])} | {fmt(i['p99_ms'])} | {fmt(s['p99_ms'])} | {fmt(s.get('storm_logins_rps'))} "
            f"| {storm['totals'].get('storm_login_errors', 0)} |"
        )
    w("")

    # floor
    floor = res.get("floor_64", {})
    if floor:
        w("## Floor: how much of its stack each app keeps")
        w("")
        w("| app | hello req/s (64 conns) | the app's `/dashboard` at 64 conns | dashboard / hello |")
        w("| --- | ---: | ---: | ---: |")
        pairs = [
            ("bare_asgi", "port"),
            ("bare_quart", "port"),
            ("bare_flask_sync", "flask_sync"),
            ("bare_flask_gthread", "flask_gthread"),
        ]
        for bare, app in pairs:
            b = floor.get(bare)
            a = res.get("protected_64", {}).get(app)
            if not b or not a:
                continue
            ratio = 100 * a["median"]["rps"] / b["median"]["rps"] if b["median"]["rps"] else 0
            w(
                f"| {SHORT[bare]} vs {SHORT[app]} | {fmt(b['median']['rps'])} | {fmt(a['median']['rps'])} "
                f"| {ratio:.0f}% |"
            )
        w("")

    # hash ceiling
    if hashes:
        w("## Hash ceiling: verifications per second in-process (no HTTP)")
        w("")
        w("| hash | parameters | 1 thread /s | 2 threads /s | 2 processes /s | best logins/s seen over HTTP |")
        w("| --- | --- | ---: | ---: | ---: | ---: |")
        best = {
            "port": [res.get(k, {}).get("port") for k in ("login_json", "login_form")],
            "werkzeug": [
                res.get(k, {}).get(n)
                for k in ("login_json", "login_form")
                for n in ("flask_sync", "flask_gthread", *FLASK_PG)
            ],
            "fastapi_users": [res.get("login_json", {}).get("fastapi_users")],
        }
        for algo, h in hashes.items():
            params = h["params"]
            if algo == "port":
                desc = (
                    f"port's argon2id `PasswordHasher._verify_sync`: m={params['memory_cost_kib']} KiB, "
                    f"t={params['time_cost']}, p={params['parallelism']} (Settings() defaults)"
                )
            elif algo == "fastapi_users":
                desc = (
                    f"FastAPI-Users `PasswordHelper.verify_and_update` (pwdlib `Argon2Hasher`): argon2id "
                    f"m={params['memory_cost_kib']} KiB, t={params['time_cost']}, p={params['parallelism']} "
                    "(the port's parameters)"
                )
            else:
                desc = f"Werkzeug `check_password_hash`, default `{params['method']}` (the seed's)"
            seen = [e["median"]["rps"] for e in best.get(algo, []) if e]
            procs = h.get("processes", {}).get("2", {}).get("verifies_per_s")
            w(
                f"| {algo} | {desc} | {fmt(h['threads']['1']['verifies_per_s'])} | "
                f"{fmt(h['threads']['2']['verifies_per_s'])} | {fmt(procs)} | {fmt(max(seen) if seen else None)} |"
            )
        w("")
        w(
            "The port hashes on a thread pool in each worker; the seed hashes in gunicorn's worker processes. "
            "argon2-cffi and hashlib's scrypt both release the GIL, so 2 threads and 2 processes should agree; "
            "2 is the machine's core count. The last column is the highest median login rate of the form and "
            "JSON scenarios. FastAPI-Users verifies on its event loop (as it ships), one verify at a time per "
            "uvicorn worker: its 2 workers are its 2 lanes."
        )
        w("")
        shares = peer_login_shares(doc)
        if shares:
            w("The peers' logins as a share of their own hash's ceiling:")
            w("")
            w("| server | login | logins/s | its ceiling /s | share per repetition | ceiling taken |")
            w("| --- | --- | ---: | ---: | --- | --- |")
            for name, scenario, logins, ceiling, ratios, how in shares:
                login = "form-encoded cookie login" if name == "fastapi_users" else scenario.replace("login_", "")
                w(
                    f"| {SHORT[name]} | {login} | {fmt(logins)} | {fmt(ceiling)} "
                    f"| {', '.join(f'{100 * x:.0f}%' for x in ratios)} | {how} |"
                )
            w("")
        paired = doc.get("hash_ceiling_paired", {})
        if paired:
            w(
                "The machine's speed drifts over a run, so the port's ceiling (2 threads) is also sampled once in "
                "each repetition of each login scenario, right after the port's login run of that repetition:"
            )
            w("")
            w("| scenario | ceiling samples /s | port logins/s per repetition | share per repetition |")
            w("| --- | --- | --- | --- |")
            for scenario, label in (("login_form", "form"), ("login_json", "JSON")):
                samples = paired.get(scenario, [])
                runs = res.get(scenario, {}).get("port", {}).get("runs", [])
                _, _, ratios = paired_login_share(doc, scenario)
                if samples:
                    w(
                        f"| {label} | {', '.join(fmt(c['verifies_per_s']) for c in samples)} "
                        f"| {', '.join(fmt(r['rps']) for r in runs)} "
                        f"| {', '.join(f'{100 * x:.0f}%' for x in ratios)} |"
                    )
            w("")

    # notes
    notes = []
    if pg.get("status") != "ok":
        notes.append(f"the PostgreSQL variant (port_pg) is missing: {pg.get('reason') or 'no reason recorded'}")
    retaken = 0
    limit = cfg.get("noise_limit_pct", NOISY_OTHER_CPU)
    for key, per in res.items():
        for name, e in per.items():
            t = e["totals"]
            if t["non_2xx_3xx"] or t["unexpected_status"] or t["socket_errors"]:
                notes.append(f"{key} / {SHORT.get(name, name)}: {errors_cell(t)}; statuses {statuses(t)}")
            noisy = [r["other_cpu_pct"] for r in e["runs"] if r["other_cpu_pct"] > limit]
            if noisy:
                used = e.get("runs_in_median", len(e["runs"]))
                verdict = (
                    f"the median is over the {used} other run(s)"
                    if used < len(e["runs"])
                    else "no undisturbed run was had, so the median includes them: treat this row with care"
                )
                notes.append(
                    f"{key} / {SHORT.get(name, name)}: other processes used up to {max(noisy):.0f}% of a core "
                    f"during {len(noisy)} of {len(e['runs'])} runs; {verdict}"
                )
            retaken += sum(r.get("noise_retries", 0) for r in e["runs"])
            empty = sum(1 for r in e["runs"] if not r["requests"])
            if empty:
                notes.append(
                    f"{key} / {SHORT.get(name, name)}: {empty} of {len(e['runs'])} run(s) saw no response complete "
                    f"within its {cfg['duration_s']} s (its requests queued for longer than the measurement): "
                    "the 0/s there is no rate"
                )
    if retaken:
        notes.append(
            f"{retaken} measurement(s) were taken again because other processes used more than {limit:.0f}% of a core "
            "meanwhile (the least disturbed attempt was kept; see `discarded_attempts` in latest.json)"
        )
    for algo, h in hashes.items():
        if h.get("other_cpu_pct", 0) > limit:
            notes.append(f"hash ceiling / {algo}: other processes used {h['other_cpu_pct']:.0f}% of a core meanwhile")
    if notes:
        w("## Notes")
        w("")
        for n in notes:
            w(f"- {n}")
        w("")
    w("Raw per-run numbers: `latest.json` (`scenarios.<scenario>.<server>.runs`); chart: `latest.png`.")
    return "\n".join(lines) + "\n"


def chart(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res, hashes, meta = doc["scenarios"], doc.get("hash_ceiling", {}), doc["meta"]
    fig, axes = plt.subplots(2, 4, figsize=(20, 9.5))
    axes = axes.flatten()

    def colored_bars(ax, items, title, ylabel):
        """``bars`` from (label, value, color) triples."""
        bars(ax, [(label, value) for label, value, _ in items], title, ylabel, [color for _, _, color in items])

    def bars(ax, keys_values, title, ylabel, colors, p99=None):
        labels = [k for k, _ in keys_values]
        raw = [v for _, v in keys_values]  # None: a server missing from the run
        values = [v or 0 for v in raw]
        rects = ax.bar(range(len(values)), values, color=colors)
        ax.set_xticks(range(len(values)), labels, rotation=30 if len(values) > 3 else 15, ha="right", fontsize=7.5)
        ax.set_title(title, fontsize=9.5)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        top = max(values) if values else 1
        for i, r in enumerate(rects):
            txt = "missing" if raw[i] is None else fmt(values[i])
            if p99 and p99[i] is not None:
                txt += f"\np99 {fmt(p99[i])} ms"
            ax.text(
                r.get_x() + r.get_width() / 2, r.get_height() + top * 0.01, txt, ha="center", va="bottom", fontsize=7
            )
        ax.set_ylim(0, top * 1.25 if top else 1)

    for ax, (key, title, unit) in zip(axes, SCENARIOS[:4], strict=False):
        per = res.get(key, {})
        # A missing PostgreSQL variant keeps its place, marked "missing".
        names = [n for n in SERVERS if n in per or (n == "port_pg" and key in PG_SCENARIOS)]
        bars(
            ax,
            [
                (
                    SHORT[n] + (" (its form login)" if n == "fastapi_users" and key == "login_json" else ""),
                    per[n]["median"]["rps"] if n in per else None,
                )
                for n in names
            ],
            title,
            unit,
            [COLORS[n] for n in names],
            [per[n]["median"]["p99_ms"] if n in per else None for n in names],
        )

    # storm: idle vs storm per server
    ax = axes[4]
    idle, storm = res.get("protected_64", {}), res.get("storm", {})
    names = [n for n in SERVERS if n in idle and n in storm]
    xs = range(len(names))
    iv = [idle[n]["median"]["rps"] for n in names]
    sv = [storm[n]["median"]["rps"] for n in names]
    ax.bar([x - 0.2 for x in xs], iv, width=0.4, color=[COLORS[n] for n in names], alpha=0.45, label="idle")
    ax.bar(
        [x + 0.2 for x in xs], sv, width=0.4, color=[COLORS[n] for n in names], label="during login storm", hatch="//"
    )
    top = max(iv + sv) if names else 1
    for x, n, a, b in zip(xs, names, iv, sv, strict=False):
        ax.text(
            x - 0.2,
            a + top * 0.01,
            f"{fmt(a)}\np99 {fmt(idle[n]['median']['p99_ms'])}",
            ha="center",
            va="bottom",
            fontsize=7,
        )
        ax.text(
            x + 0.2,
            b + top * 0.01,
            f"{fmt(b)}\np99 {fmt(storm[n]['median']['p99_ms'])}",
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_ylim(0, top * 1.3)
    ax.set_xticks(list(xs), [SHORT[n] for n in names], rotation=20, ha="right", fontsize=8)
    ax.set_title("storm: GET /dashboard 64 conns, idle vs during JSON logins at 32", fontsize=9.5)
    ax.set_ylabel("req/s (p99 ms above)", fontsize=8)
    ax.legend(fontsize=7, loc="upper right")

    # floor
    ax = axes[5]
    floor = res.get("floor_64", {})
    items = []
    for bare, app in [
        ("bare_asgi", None),
        ("bare_quart", None),
        ("port", "port"),
        ("bare_flask_sync", None),
        ("flask_sync", "flask_sync"),
        ("bare_flask_gthread", None),
        ("flask_gthread", "flask_gthread"),
    ]:
        if app:
            e = res.get("protected_64", {}).get(app)
            if e:
                items.append((SHORT[app] + " /dashboard", e["median"]["rps"], COLORS[app]))
        elif bare in floor:
            color = COLORS["port"] if "flask" not in bare else COLORS[bare.replace("bare_", "")]
            items.append((SHORT[bare] + " hello", floor[bare]["median"]["rps"], color + "80"))
    colored_bars(ax, items, "floor: hello vs the app's /dashboard, 64 conns", "req/s")

    # hash ceiling
    ax = axes[6]
    items = []
    for algo, h in hashes.items():
        if algo == "port":
            color, label = COLORS["port"], "argon2id (port)"
        elif algo == "fastapi_users":
            color, label = COLORS["fastapi_users"], "argon2id (FastAPI-Users)"
        else:
            color, label = COLORS["flask_sync"], f"{h['params']['method'].split(':')[0]} (seed)"
        for t in ("1", "2"):
            if t in h["threads"]:
                items.append(
                    (f"{label}, {t} thread{'s' if t != '1' else ''}", h["threads"][t]["verifies_per_s"], color)
                )
        if "2" in h.get("processes", {}):
            items.append((f"{label}, 2 processes", h["processes"]["2"]["verifies_per_s"], color + "99"))
    colored_bars(ax, items, "hash ceiling: verifies/s in-process", "verifies/s")

    # p99 overview (log scale)
    ax = axes[7]
    keys = [k for k, _, _ in SCENARIOS]
    width = 0.8 / len(SERVERS)
    for j, n in enumerate(SERVERS):
        vals = [res.get(k, {}).get(n, {}).get("median", {}).get("p99_ms") or 0 for k in keys]
        offset = (j - (len(SERVERS) - 1) / 2) * width
        ax.bar([i + offset for i in range(len(keys))], vals, width=width, color=COLORS[n], label=SHORT[n])
    ax.set_yscale("log")
    ax.set_xticks(range(len(keys)), [k.replace("_", "\n") for k in keys], fontsize=8)
    ax.set_title("p99 latency per scenario (log scale, lower is better)", fontsize=9.5)
    ax.set_ylabel("ms", fontsize=8)
    ax.legend(fontsize=7)

    m = meta["machine"]
    pg = pg_meta(meta)
    pg_txt = "" if pg.get("status") == "ok" else " — PostgreSQL variant missing"
    fig.suptitle(
        f"Quart port (SQLite, PostgreSQL) vs sync Flask reference and peers — {meta['date']} — "
        f"{m['nproc']} × {m['cpu_model']} — "
        f"median of {meta['config']['repeat']} × {meta['config']['duration_s']} s, wrk -t1{pg_txt}",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results" / "latest.json"
    doc = json.loads(src.read_text())
    md = markdown(doc)
    src.with_suffix(".md").write_text(md)
    try:
        chart(doc, src.with_suffix(".png"))
    except ImportError as exc:
        print(f"(no chart: {exc}; pip install -r bench/requirements.txt)", file=sys.stderr)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
