#!/usr/bin/env bash
# Delta benchmark: our v3 deltas against balena-engine's figure and xdelta3, in one run on one corpus.
#
# usage: bench/run.sh CORPUS_DIR [OUT_MD]
#   CORPUS_DIR  a corpus built by ../shared/bench/make_corpus.sh (oci/corpus, pairs/p{1,2,3}/{A,B}.tar)
#   OUT_MD      report to write (default: BENCHMARKS.md at the repository root)
# environment:
#   V3_BASELINE   path of v3_baseline.py (default: ../shared/bench/v3_baseline.py next to the repo)
#   BRU_BIN       use this balena-release-update binary instead of building one
#   RESULTS_JSON  also keep the raw measurements as JSON at this path
#   KEEP_WORK=1   keep the scratch directory (deltas, applied images, logs)
#   STEP_TIMEOUT  seconds before one of our steps is killed (default 900)
# Needs: rdiff, xdelta3, gzip, python3, GNU time (/usr/bin/time), cargo.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] && [ $# -le 2 ] || { sed -n '2,14p' "$0"; exit 2; }
corpus=$(cd "$1" && pwd)
out_md=$(realpath -m "${2:-$repo/BENCHMARKS.md}")
v3_baseline=${V3_BASELINE:-$repo/../shared/bench/v3_baseline.py}
layout=$corpus/oci/corpus

for tool in rdiff xdelta3 gzip python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is required" >&2; exit 2; }
done
[ -f "$v3_baseline" ] || { echo "run.sh: v3_baseline.py not found at $v3_baseline (set V3_BASELINE)" >&2; exit 2; }
[ -f "$layout/index.json" ] || { echo "run.sh: $layout is not an OCI layout; build the corpus first" >&2; exit 2; }

# pair name : source tag : target tag (see ../shared/bench/README.md)
pairs=(p1:imgA1:imgB1 p2:imgA1:imgB2 p3:imgA3:imgB3)

work=$(mktemp -d "${TMPDIR:-/tmp}/bru-bench.XXXXXX")
if [ "${KEEP_WORK:-0}" = 1 ]; then echo "run.sh: scratch directory $work" >&2
else trap 'rm -rf "$work"' EXIT; fi
res=$work/results
mkdir -p "$res"

# tagged LAYOUT TAG: does the OCI layout's index.json name TAG? (a step that exits 0 must also write its image)
tagged() { grep -qsE "\"org\.opencontainers\.image\.ref\.name\" *: *\"$2\"" "$1/index.json"; }

# failed NAME IMAGE: record why step NAME counts as failed (exit code, missing image, last stderr line).
failed() {
  local rc why
  rc=$(cat "$res/$1.rc")
  why="exit $rc"
  [ "$rc" = 0 ] && why+=", but no image $2 in the output layout"
  [ -s "$res/$1.err" ] && why+="; stderr: $(tail -n 1 "$res/$1.err")"
  echo "$why" >"$res/$1.failed"
  log "$1 failed: $why"
}

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# timed NAME CMD...: run CMD under GNU time; NAME.{time,out,err,rc} land in the results directory.
timed() {
  local name=$1; shift
  local rc=0
  /usr/bin/time -v -o "$res/$name.time" "$@" >"$res/$name.out" 2>"$res/$name.err" || rc=$?
  echo "$rc" >"$res/$name.rc"
  return "$rc"
}

ours_timeout=(timeout "${STEP_TIMEOUT:-900}")

uptime >"$res/load_start.txt"
date -u +%Y-%m-%dT%H:%M:%SZ >"$res/date.txt"

# ---- our binary: built once, before any measurement ----
bin=${BRU_BIN:-}
if [ -z "$bin" ]; then
  log "building balena-release-update (release)"
  if (cd "$repo" && timed cargo_build nice cargo build --release -p balena-release-update); then
    bin=${CARGO_TARGET_DIR:-$repo/target}/release/balena-release-update
  else
    echo "cargo build failed: $(grep -m 1 '^error' "$res/cargo_build.err" || tail -n 1 "$res/cargo_build.err")" \
      >"$res/ours_unavailable.txt"
  fi
fi
if [ -n "$bin" ] && [[ $("$bin" delta --help 2>&1 || true) != *create* ]]; then
  echo "the binary has no 'delta create' subcommand yet" >"$res/ours_unavailable.txt"
  bin=
fi
[ -n "$bin" ] && "$bin" --version >"$res/ours_version.txt" 2>&1 || true

for spec in "${pairs[@]}"; do
  IFS=: read -r p src dst <<<"$spec"
  A=$corpus/pairs/$p/A.tar B=$corpus/pairs/$p/B.tar
  echo "$p $src $dst $(stat -c %s "$A") $(stat -c %s "$B")" >"$res/$p.pair"

  # (a) balena-engine's own v3 delta, reproduced with rdiff (and verified with rdiff patch)
  log "$p: balena-engine v3 baseline ($src -> $dst)"
  timed "$p.v3" python3 "$v3_baseline" "$layout" "$src" "$dst" || log "$p: v3_baseline.py failed"

  # (b) xdelta3 -9 -S none over the whole image, then gzip -9. ANCHORS.md used -B 536870912 on every
  #     pair; keep that as the floor and double it until the source window covers all of A.
  window=536870912
  while [ "$window" -lt "$(stat -c %s "$A")" ]; do window=$((window * 2)); done
  log "$p: xdelta3 -9 -S none -B $window + gzip -9"
  if timed "$p.xdelta" xdelta3 -9 -S none -B "$window" -e -f -s "$A" "$B" "$work/$p.vcdiff"; then
    stat -c %s "$work/$p.vcdiff" >"$res/$p.xdelta.raw_bytes"
    gzip -9 -c "$work/$p.vcdiff" | wc -c >"$res/$p.xdelta.gzip_bytes"
    if timed "$p.xdelta_apply" xdelta3 -d -B "$window" -f -s "$A" "$work/$p.vcdiff" "$work/$p.xdelta.B"; then
      cmp -s "$work/$p.xdelta.B" "$B" && echo true >"$res/$p.xdelta_apply.ok" || echo false >"$res/$p.xdelta_apply.ok"
    fi
    rm -f "$work/$p.vcdiff" "$work/$p.xdelta.B"
  else
    log "$p: xdelta3 failed"
  fi

  # (c) ours: create, inspect, apply, then check the delta with rdiff and the applied image
  [ -n "$bin" ] || continue
  log "$p: balena-release-update delta create"
  timed "$p.create" "${ours_timeout[@]}" "$bin" delta create --source "oci:$layout:$src" --target "oci:$layout:$dst" \
    --output "oci:$work/out:delta-$p" || true
  if [ "$(cat "$res/$p.create.rc")" != 0 ] || ! tagged "$work/out" "delta-$p"; then
    failed "$p.create" "delta-$p"
    continue
  fi
  "${ours_timeout[@]}" "$bin" delta inspect "oci:$work/out:delta-$p" >"$res/$p.inspect.json" 2>"$res/$p.inspect.err" \
    || log "$p: delta inspect failed"
  log "$p: checking the delta layers with rdiff patch"
  python3 "$repo/bench/ocicheck.py" delta "$layout" "$src" "$layout" "$dst" "$work/out" "delta-$p" \
    >"$res/$p.deltacheck.json" || log "$p: delta check failed"
  log "$p: balena-release-update delta apply"
  timed "$p.apply" "${ours_timeout[@]}" "$bin" delta apply --source "oci:$layout:$src" --delta "oci:$work/out:delta-$p" \
    --output "oci:$work/applied:$p" || true
  if [ "$(cat "$res/$p.apply.rc")" = 0 ] && tagged "$work/applied" "$p"; then
    python3 "$repo/bench/ocicheck.py" applied "$layout" "$dst" "$work/applied" "$p" \
      >"$res/$p.appliedcheck.json" || log "$p: applied image differs from the target"
  else
    failed "$p.apply" "$p"
  fi
done

uptime >"$res/load_end.txt"
log "writing $out_md"
python3 "$repo/bench/report.py" "$res" "$out_md" --corpus "$corpus" --repo "$repo" \
  ${RESULTS_JSON:+--json "$RESULTS_JSON"}
