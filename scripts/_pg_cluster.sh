# Sourced by scripts/test-postgresql and bench/run: start_private_postgres
# starts a throwaway PostgreSQL cluster (initdb into a temporary folder,
# 127.0.0.1 and a free port only, durability off) and sets PG_SERVER_URL to
# postgresql+asyncpg://postgres@127.0.0.1:PORT/postgres; stop_private_postgres
# stops and deletes it (call it from an EXIT trap).
# Needs PostgreSQL's server binaries (Debian: apt-get install postgresql).

_pg_bindir() {
  local bindir="" candidate
  for candidate in /usr/lib/postgresql/*/bin; do
    [ -x "$candidate/initdb" ] && bindir=$candidate
  done
  if [ -z "$bindir" ] && command -v pg_config >/dev/null; then
    bindir=$(pg_config --bindir)
  fi
  [ -n "$bindir" ] && [ -x "$bindir/initdb" ] && echo "$bindir"
}

start_private_postgres() {
  PG_BINDIR=$(_pg_bindir) || {
    echo "PostgreSQL's initdb was not found (on Debian: apt-get install postgresql)." >&2
    return 1
  }
  # initdb refuses to run as root: the cluster then belongs to the postgres user.
  PG_AS_OWNER=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    PG_AS_OWNER=(runuser -u postgres --)
  fi
  PG_CLUSTER=$(mktemp -d "${TMPDIR:-/tmp}/quart-app-pg.XXXXXX")
  chmod 755 "$PG_CLUSTER"
  [ ${#PG_AS_OWNER[@]} -eq 0 ] || chown postgres "$PG_CLUSTER"
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "${PG_AS_OWNER[@]}" "$PG_BINDIR/initdb" -D "$PG_CLUSTER/data" -U postgres --auth=trust -E UTF8 --no-sync \
    >"$PG_CLUSTER/initdb.log" 2>&1 || {
    cat "$PG_CLUSTER/initdb.log" >&2
    return 1
  }
  # Durability off: this cluster lives for one run. ${PG_EXTRA_OPTIONS} adds settings.
  "${PG_AS_OWNER[@]}" "$PG_BINDIR/pg_ctl" -D "$PG_CLUSTER/data" -l "$PG_CLUSTER/server.log" -w -t 60 start -o \
    "-p $port -k $PG_CLUSTER -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off ${PG_EXTRA_OPTIONS:-}" \
    >/dev/null || {
    cat "$PG_CLUSTER/server.log" >&2
    return 1
  }
  PG_SERVER_URL="postgresql+asyncpg://postgres@127.0.0.1:$port/postgres"
  echo "PostgreSQL $("$PG_BINDIR/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (cluster in $PG_CLUSTER)"
}

stop_private_postgres() {
  if [ -n "${PG_CLUSTER:-}" ] && [ -d "$PG_CLUSTER" ]; then
    "${PG_AS_OWNER[@]}" "$PG_BINDIR/pg_ctl" -D "$PG_CLUSTER/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_CLUSTER"
  fi
}
