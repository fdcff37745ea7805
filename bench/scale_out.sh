#!/usr/bin/env bash
# Scale-out benchmark of `serve` (issue 10 item 4), one run: (1) status-path requests/s and
# latency of /api/v3/delta for a pair already built, on one instance with SQLite, one with
# PostgreSQL and three sharing one PostgreSQL database (loopback load generator: wrk, one
# process per instance for the three); (2) delta builds per hour per core on corpus pairs,
# SQLite vs PostgreSQL: CPU seconds of the `serve` process per build (utime + stime).
#
# usage: bench/scale_out.sh CORPUS_DIR [OUT_MD]
#   CORPUS_DIR  a corpus built by ../shared/bench/make_corpus.sh (pairs p1 and p3 are pushed)
#   OUT_MD      report whose "Scale-out" section is written or replaced (default BENCHMARKS.md)
# environment:
#   BRU_BIN       balena-release-update binary (default: target/release, built if missing)
#   REGISTRY      a plain-HTTP registry HOST:PORT (default: .ci/start-registry.sh's 127.0.0.1:5055)
#   DATABASE      a PostgreSQL admin URL (default: .ci/start-postgres.sh's cluster on 5433)
#   SECONDS_EACH  wrk duration per scenario (default 15)
# Needs: wrk, skopeo, curl, psql, docker-registry and postgresql (unless given).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] && [ $# -le 2 ] || { sed -n '2,17p' "$0"; exit 2; }
corpus=$(cd "$1" && pwd)
out_md=$(realpath -m "${2:-$repo/BENCHMARKS.md}")
each=${SECONDS_EACH:-15}
for tool in wrk skopeo curl python3; do
  command -v "$tool" >/dev/null || { echo "scale_out.sh: $tool is required" >&2; exit 2; }
done
bin=${BRU_BIN:-$repo/target/release/balena-release-update}
[ -x "$bin" ] || (cd "$repo" && cargo build --release -q -p balena-release-update)
reg=${REGISTRY:-}
if [ -z "$reg" ]; then bash "$repo/.ci/start-registry.sh"; reg=127.0.0.1:5055; fi
admin=${DATABASE:-}
if [ -z "$admin" ]; then bash "$repo/.ci/start-postgres.sh"; admin=postgres://postgres@127.0.0.1:5433/postgres; fi
psql_bin=$(command -v psql || ls -d /usr/lib/postgresql/*/bin/psql | sort -V | tail -n 1)

work=$(mktemp -d "${TMPDIR:-/tmp}/bru-scale.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  while read -r d; do
    "$psql_bin" -X -q -d "$admin" -c "DROP DATABASE IF EXISTS $d" 2>/dev/null || true
  done < <(cat "$work/databases" 2>/dev/null)
  rm -rf "$work"
}
trap cleanup EXIT
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
new_db() { # prints the URL of a fresh database (dropped at exit)
  local name="bru_bench_$$_$(date +%s%N)"
  "$psql_bin" -X -q -v ON_ERROR_STOP=1 -d "$admin" -c "CREATE DATABASE $name" >/dev/null
  echo "$name" >>"$work/databases"
  echo "${admin%/*}/$name"
}

declare -A src dest
for p in 1 3; do
  src[$p]=bench-scale/src$p-$$ dest[$p]=bench-scale/dest$p-$$
  log "pushing pair p$p to $reg"
  skopeo copy -q --dest-tls-verify=false "oci:$corpus/oci/corpus:imgA$p" "docker://$reg/${src[$p]}:v1"
  skopeo copy -q --dest-tls-verify=false "oci:$corpus/oci/corpus:imgB$p" "docker://$reg/${dest[$p]}:v2"
done
query() { echo "src=$reg/${src[$1]}:v1&dest=$reg/${dest[$1]}:v2"; }

ulimit -n 8192
serve_pid=
start() { # PORT STORE-DIR DATABASE-URL|- EXTRA-ARGS...
  local port=$1 store=$2 db=$3; shift 3
  local dbargs=()
  [ "$db" = - ] || dbargs=(--database "$db")
  "$bin" serve --listen "127.0.0.1:$port" --store "$store" "${dbargs[@]}" --no-auth \
    --allow-registry "$reg" --insecure-registry "$reg" "$@" 2>"$work/serve-$port.log" &
  serve_pid=$!
  pids+=("$serve_pid")
  for _ in $(seq 1 100); do curl -fsS -m 5 "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "scale_out.sh: serve on $port did not start" >&2; cat "$work/serve-$port.log" >&2; exit 1
}
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=(); }
wait_built() { # PORT PAIR
  local code=
  for _ in $(seq 1 1200); do
    code=$(curl -s -m 30 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/api/v3/delta?$(query "$2")")
    [ "$code" = 200 ] && return
    sleep 0.25
  done
  echo "scale_out.sh: p$2 was not built (last status $code)" >&2; exit 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)

# (2) Builds: one server, one worker, a fresh store each; CPU of the server per build.
build_rows=()
for backend in SQLite PostgreSQL; do
  for p in 1 3; do
    store="$work/build-$backend-$p"
    db=-
    [ "$backend" = PostgreSQL ] && db=$(new_db)
    start 18120 "$store" "$db" --workers 1 --poll-seconds 0
    before=$(cpu_ticks "$serve_pid"); t0=$(date +%s.%N)
    wait_built 18120 "$p"
    after=$(cpu_ticks "$serve_pid"); t1=$(date +%s.%N)
    cpu=$(python3 -c "print(($after - $before) / $tck)")
    wall=$(python3 -c "print($t1 - $t0)")
    per_hour=$(python3 -c "print(round(3600 / max($cpu, 0.01)))")
    log "$backend p$p: ${cpu} CPU s, ${wall} s"
    build_rows+=("| p$p | $backend | $(printf '%.2f' "$wall") | $(printf '%.2f' "$cpu") | $(printf "%'d" "$per_hour") |")
    stop_all
  done
done

# (1) Status path: the p3 delta already built.
status_rows=()
measure() { # NAME URL...   (one wrk per URL, run together; requests/s summed, worst p99)
  local name=$1; shift
  local n=$# conns=$((200 / $#)) threads=$((3 / $#)) i=0 files=()
  log "wrk: $name"
  for url in "$@"; do
    files+=("$work/wrk-$i.out")
    wrk -t"$threads" -c"$conns" -d"${each}s" --latency "$url" >"$work/wrk-$i.out" 2>&1 &
    i=$((i + 1))
  done
  wait $(jobs -p | tail -n "$n")
  python3 "$repo/bench/wrk_summary.py" "$name" "${files[@]}" >>"$work/rows"
}
start 18101 "$work/status-sqlite" - --poll-seconds 0
wait_built 18101 3
measure "one instance, SQLite" "http://127.0.0.1:18101/api/v3/delta?$(query 3)"
stop_all
db=$(new_db)
for port in 18111 18112 18113; do start "$port" "$work/status-pg-$port" "$db" --poll-seconds 0; done
wait_built 18111 3
measure "one instance, PostgreSQL" "http://127.0.0.1:18111/api/v3/delta?$(query 3)"
measure "three instances, one PostgreSQL" \
  "http://127.0.0.1:18111/api/v3/delta?$(query 3)" \
  "http://127.0.0.1:18112/api/v3/delta?$(query 3)" \
  "http://127.0.0.1:18113/api/v3/delta?$(query 3)"
stop_all

section=$(cat <<MD
<!-- scale-out:begin (written by bench/scale_out.sh) -->
## Scale-out: SQLite vs PostgreSQL, one instance vs three (issue 10)

* date: $(date -u +%Y-%m-%dT%H:%M:%SZ); repository at \`$(cd "$repo" && git rev-parse --short HEAD)$(cd "$repo" && git diff --quiet || echo -dirty)\`; $(nproc) CPUs shared by the servers, the load generator, PostgreSQL and the registry; load average at the end: \`$(cut -d' ' -f1-3 /proc/loadavg)\`
* PostgreSQL: $("$psql_bin" -X -A -t -d "$admin" -c 'SHOW server_version'), on loopback; registry on loopback

### Status path

\`GET /api/v3/delta\` by tag for the p3 pair, already built; wrk, 200 connections in all, ${each} s per row.
Three instances: one wrk process per instance (≈67 connections each) at the same time; requests/s
summed, p50/p99 the worst of the three.

| servers | requests/s | p50 | p99 | non-2xx | timeouts |
|---|---:|---:|---:|---:|---:|
$(cat "$work/rows")

### Delta builds

One \`serve --workers 1\`, a fresh store each, the delta requested until 200. CPU: user + system
seconds of the server process during the build (the build itself, the registry reads and pushes,
the store). Builds per hour per core = 3600 ÷ CPU seconds.

| pair | store | wall s | CPU s | builds per hour per core |
|---|---|---:|---:|---:|
$(printf '%s\n' "${build_rows[@]}")
<!-- scale-out:end -->
MD
)
printf '%s\n' "$section" | python3 "$repo/bench/md_section.py" "$out_md" scale-out
log "wrote the scale-out section of $out_md"
