#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster (Debian's postgresql, run as the postgres user) on
# 127.0.0.1:5433, trusting loopback, data under /tmp (idempotent). Tests create a database
# each in it (BRU_TEST_POSTGRES); tests that stop or restart PostgreSQL start their own.
set -euo pipefail
port=5433
dir=${BRU_POSTGRES_DIR:-/tmp/bru-ci-postgres}
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if as_postgres "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then exit 0; fi
mkdir -p "$dir"
if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
if [ ! -f "$dir/data/PG_VERSION" ]; then
  as_postgres "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C --no-sync >/dev/null
fi
as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
as_postgres "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"
