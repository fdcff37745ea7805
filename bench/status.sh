#!/usr/bin/env bash
# Status-path benchmark of `serve` (issue 8 item 6): requests/s and latency of /api/v3/delta for a
# pair that is already built, asked by tag, by digest and by store id, and /healthz, from a
# loopback load generator (wrk, 200 connections). Same-run baseline: the same pair by tag on a
# second server with the tag cache off (--tag-cache-seconds 0), which asks the registry each time.
#
# usage: bench/status.sh CORPUS_DIR [OUT_MD]
#   CORPUS_DIR  a corpus built by ../shared/bench/make_corpus.sh (its p3 pair is pushed)
#   OUT_MD      report whose "Status path" section is written or replaced (default BENCHMARKS.md)
# environment:
#   BRU_BIN       balena-release-update binary (default: target/release, built if missing)
#   REGISTRY      a plain-HTTP registry HOST:PORT (default: .ci/start-registry.sh's 127.0.0.1:5055)
#   SECONDS_EACH  wrk duration per scenario (default 15)
# Needs: wrk, skopeo, curl, python3, docker-registry (unless REGISTRY is given).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] && [ $# -le 2 ] || { sed -n '2,15p' "$0"; exit 2; }
corpus=$(cd "$1" && pwd)
out_md=$(realpath -m "${2:-$repo/BENCHMARKS.md}")
each=${SECONDS_EACH:-15}
for tool in wrk skopeo curl python3; do
  command -v "$tool" >/dev/null || { echo "status.sh: $tool is required" >&2; exit 2; }
done
bin=${BRU_BIN:-$repo/target/release/balena-release-update}
[ -x "$bin" ] || (cd "$repo" && cargo build --release -q -p balena-release-update)
reg=${REGISTRY:-}
if [ -z "$reg" ]; then bash "$repo/.ci/start-registry.sh"; reg=127.0.0.1:5055; fi

work=$(mktemp -d "${TMPDIR:-/tmp}/bru-status.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

repo_src=bench-status/src-$$ repo_dest=bench-status/dest-$$
log "pushing the p3 pair to $reg"
skopeo copy -q --dest-tls-verify=false "oci:$corpus/oci/corpus:imgA3" "docker://$reg/$repo_src:v1"
skopeo copy -q --dest-tls-verify=false "oci:$corpus/oci/corpus:imgB3" "docker://$reg/$repo_dest:v2"
digest() { skopeo inspect --tls-verify=false "docker://$reg/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Digest"])'; }
d1=$(digest "$repo_src:v1") d2=$(digest "$repo_dest:v2")

ulimit -n 4096
start() { # PORT EXTRA-ARGS...
  local port=$1; shift
  "$bin" serve --listen "127.0.0.1:$port" --store "$work/store" --no-auth --allow-registry "$reg" \
    --insecure-registry "$reg" "$@" 2>"$work/serve-$port.log" &
  pids+=($!)
  for _ in $(seq 1 50); do curl -fsS -m 5 "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "status.sh: serve on $port did not start" >&2; exit 1
}
start 18099
start 18098 --tag-cache-seconds 0
tagq="src=$reg/$repo_src:v1&dest=$reg/$repo_dest:v2"
log "building the delta"
for _ in $(seq 1 120); do
  code=$(curl -s -m 30 -o /dev/null -w '%{http_code}' "http://127.0.0.1:18099/api/v3/delta?$tagq")
  [ "$code" = 200 ] && break
  sleep 1
done
[ "$code" = 200 ] || { echo "status.sh: the delta was not built (last status $code)" >&2; exit 1; }

rows=()
measure() { # NAME URL
  log "wrk: $1"
  local row
  wrk -t2 -c200 -d"${each}s" --latency "$2" >"$work/wrk.out" 2>&1
  row=$(python3 "$repo/bench/wrk_summary.py" "$1" "$work/wrk.out")
  rows+=("$row")
}
measure "/healthz" "http://127.0.0.1:18099/healthz"
measure "built pair by tag" "http://127.0.0.1:18099/api/v3/delta?$tagq"
measure "built pair by digest" "http://127.0.0.1:18099/api/v3/delta?src=$reg/$repo_src@$d1&dest=$reg/$repo_dest@$d2"
measure "built pair by store id" "http://127.0.0.1:18099/api/v3/delta?src=1&dest=2"
measure "by tag, tag cache off (baseline)" "http://127.0.0.1:18098/api/v3/delta?$tagq"

section=$(cat <<MD
<!-- status-path:begin (written by bench/status.sh) -->
## Status path of \`serve\` (issue 8)

wrk, 2 threads, 200 connections, ${each} s per row, on loopback against one \`serve\` (the p3 pair already
built, registry on loopback); the baseline row is a second server with \`--tag-cache-seconds 0\`, which
resolves the tag at the registry on every request. Target: ≥ 1,000 requests/s by tag with p99 ≤ 250 ms.

* date: $(date -u +%Y-%m-%dT%H:%M:%SZ); repository at \`$(cd "$repo" && git rev-parse --short HEAD)$(cd "$repo" && git diff --quiet || echo -dirty)\`; load average at the end: \`$(cut -d' ' -f1-3 /proc/loadavg)\`

| request | requests/s | p50 | p99 | non-2xx | timeouts |
|---|---:|---:|---:|---:|---:|
$(printf '%s\n' "${rows[@]}")
<!-- status-path:end -->
MD
)
printf '%s\n' "$section" | python3 "$repo/bench/md_section.py" "$out_md" status-path
log "wrote the status-path section of $out_md"
