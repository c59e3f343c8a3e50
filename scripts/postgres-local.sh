#!/usr/bin/env bash
# A throwaway PostgreSQL server on the loopback interface, for the catalog (and Prefect) tests.
#   scripts/postgres-local.sh start DATA_DIR PORT   -> prints the SQLAlchemy URL of database 'medflow'
#   scripts/postgres-local.sh stop DATA_DIR
# Installs Debian's postgresql package when the server binaries are missing (needs root, as in CI).
set -euo pipefail
cmd=${1:?usage: $0 start DATA_DIR PORT | stop DATA_DIR}
data=${2:?data directory}
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$pgbin" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  else
    echo "postgres-local: PostgreSQL server binaries not found and not root to install them" >&2; exit 3
  fi
fi
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case "$cmd" in
  start)
    port=${3:?port}
    mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown postgres "$data"
    as_pg "$pgbin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >"$data.initdb.log" 2>&1
    as_pg "$pgbin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $data" start >/dev/null
    as_pg "$pgbin/createdb" -h 127.0.0.1 -p "$port" -U postgres medflow
    echo "postgresql+psycopg://postgres@127.0.0.1:$port/medflow"
    ;;
  stop)
    as_pg "$pgbin/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
    ;;
  *) echo "usage: $0 start DATA_DIR PORT | stop DATA_DIR" >&2; exit 2 ;;
esac
