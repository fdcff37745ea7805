#!/usr/bin/env bash
# Delta benchmark: our v3 deltas against balena-engine's figure and xdelta3, in one run on one corpus.
#
# usage: bench/run.sh CORPUS_DIR [OUT_MD]
#   CORPUS_DIR  a corpus built by ../shared/bench/make_corpus.sh (oci/corpus, pairs/p{1,2,3}/{A,B}.tar)
#   OUT_MD      report to write (default: BENCHMARKS.md at the repository root), and its Pareto plot
#               next to it (OUT_MD without .md, plus -pareto.svg)
# environment:
#   V3_BASELINE   path of v3_baseline.py (default: ../shared/bench/v3_baseline.py next to the repo)
#   BRU_BIN       use this balena-release-update binary instead of building one
#   RESULTS_JSON  also keep the raw measurements as JSON at this path
#   KEEP_WORK=1   keep the scratch directory (deltas, applied images, logs)
#   STEP_TIMEOUT  seconds before one of our steps is killed (default 900)
#   PAIRS         pairs to measure, e.g. "p1 p3" (default: p1 p2 p3, and p4 if the corpus has its tags)
#   DEVICE_APPLY  use this device-apply binary instead of building one (DEVICE=0: no device measurements)
#   DEVICE_PIPE   the emulation's pipe model: goroutine (default, Go's hand-off cost), thread or inline
#   SWEEP=0       build only the deltas for 0.1, 1 and 10 MB/s and --fewest-bytes (no Pareto sweep)
#   DEVICE_REPEAT applies per delta in the device emulation, median reported (default 3)
# Needs: rdiff, xdelta3, gzip, python3, GNU time (/usr/bin/time), cargo.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] && [ $# -le 2 ] || { sed -n '2,19p' "$0"; exit 2; }
corpus=$(cd "$1" && pwd)
out_md=$(realpath -m "${2:-$repo/BENCHMARKS.md}")
v3_baseline=${V3_BASELINE:-$repo/../shared/bench/v3_baseline.py}
layout=$corpus/oci/corpus

for tool in rdiff xdelta3 gzip python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is required" >&2; exit 2; }
done
[ -f "$v3_baseline" ] || { echo "run.sh: v3_baseline.py not found at $v3_baseline (set V3_BASELINE)" >&2; exit 2; }
[ -f "$layout/index.json" ] || { echo "run.sh: $layout is not an OCI layout; build the corpus first" >&2; exit 2; }

# pair name : source tag : target tag (see ../shared/bench/README.md; p4 from bench/make_large_pair.sh)
all_pairs=(p1:imgA1:imgB1 p2:imgA1:imgB2 p3:imgA3:imgB3 p4:imgA4:imgB4)

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

pairs=()
for spec in "${all_pairs[@]}"; do
  IFS=: read -r p src dst <<<"$spec"
  if [ -n "${PAIRS:-}" ]; then
    [[ " $PAIRS " == *" $p "* ]] || continue
  elif [ "$p" = p4 ] && ! { tagged "$layout" "$src" && tagged "$layout" "$dst"; }; then
    continue                                   # p4 only when bench/make_large_pair.sh has added it
  fi
  tagged "$layout" "$src" && tagged "$layout" "$dst" && [ -f "$corpus/pairs/$p/A.tar" ] \
    || { echo "run.sh: pair $p ($src -> $dst) is not in the corpus" >&2; exit 2; }
  pairs+=("$spec")
done
for p in ${PAIRS:-}; do
  [[ " ${all_pairs[*]} " == *" $p:"* ]] || { echo "run.sh: unknown pair $p in PAIRS (known: p1 p2 p3 p4)" >&2; exit 2; }
done
[ ${#pairs[@]} -gt 0 ] || { echo "run.sh: no pair selected (PAIRS=$PAIRS)" >&2; exit 2; }

# The deltas measured on the device emulation, by the bandwidth (MB/s) they are built for. The 1 MB/s
# delta is the default `delta create` above (--device-bandwidth defaults to 1).
device_bws=(0.1 10)
[ "${SWEEP:-1}" = 0 ] || device_bws=(0.03 0.1 0.3 3 10 30)
device_repeat=${DEVICE_REPEAT:-3}

uptime >"$res/load_start.txt"
date -u +%Y-%m-%dT%H:%M:%SZ >"$res/date.txt"

# ---- our binaries: built once, before any measurement ----
bin=${BRU_BIN:-}
dev=${DEVICE_APPLY:-}
[ "${DEVICE:-1}" = 0 ] && dev=none
pkgs=()
[ -n "$bin" ] || pkgs+=(-p balena-release-update)
[ -n "$dev" ] || pkgs+=(-p bru-device-apply)
if [ ${#pkgs[@]} -gt 0 ]; then
  log "building ${pkgs[*]} (release)"
  if (cd "$repo" && timed cargo_build nice cargo build --release "${pkgs[@]}"); then
    [ -n "$bin" ] || bin=${CARGO_TARGET_DIR:-$repo/target}/release/balena-release-update
    [ -n "$dev" ] || dev=${CARGO_TARGET_DIR:-$repo/target}/release/device-apply
  else
    why="cargo build failed: $(grep -m 1 '^error' "$res/cargo_build.err" || tail -n 1 "$res/cargo_build.err")"
    [ -n "$bin" ] || echo "$why" >"$res/ours_unavailable.txt"
    [ -n "$dev" ] || { echo "$why" >"$res/device_unavailable.txt"; dev=none; }
  fi
fi
if [ -n "$bin" ] && [[ $("$bin" delta --help 2>&1 || true) != *create* ]]; then
  echo "the binary has no 'delta create' subcommand yet" >"$res/ours_unavailable.txt"
  bin=
fi
[ -n "$bin" ] && "$bin" --version >"$res/ours_version.txt" 2>&1 || true
if [ "$dev" = none ]; then
  [ -f "$res/device_unavailable.txt" ] || echo "DEVICE=0 was set" >"$res/device_unavailable.txt"
  dev=
elif ! "$dev" --version >"$res/device_apply_version.txt" 2>&1; then
  echo "$dev does not run" >"$res/device_unavailable.txt"
  dev=
fi
echo "${device_bws[*]}" >"$res/device_bandwidths.txt"
echo "$device_repeat" >"$res/device_repeat.txt"

# device NAME SECONDS ARGS...: the device-apply emulation (median of DEVICE_REPEAT applies per delta) into
# NAME.device.{json,err,rc}, killed after SECONDS; ARGS give the source layers and the deltas with their DiffIDs.
device() {
  local name=$1 seconds=$2; shift 2
  local rc=0
  timeout "$seconds" "$dev" --workdir "$work/device-$name" --repeat "$device_repeat" \
    --pipe "${DEVICE_PIPE:-goroutine}" "$@" \
    >"$res/$name.device.json" 2>"$res/$name.device.err" || rc=$?
  echo "$rc" >"$res/$name.device.rc"
  rm -rf "$work/device-$name"
  [ "$rc" = 0 ] || log "$name: device-apply exit $rc: $(tail -n 1 "$res/$name.device.err")"
  return "$rc"
}

# device_pair P SRC DST VARIANT:TAG...: every delta of pair P (balena-engine's and our VARIANTs) on the
# device emulation, in one device-apply run (one extraction of the source layers, same page-cache state
# for all), split per variant into P.<variant>.device.json. If that run fails outright (exit 2, e.g. a
# delta a device could not apply), each variant is run on its own so that the others are still measured.
device_pair() {
  local p=$1 src=$2 dst=$3; shift 3
  local plan=$res/$p.device.plan.json rc=0 args v
  mapfile -t args < <(python3 "$repo/bench/device_inputs.py" plan "$plan" "$layout" "$src" "$dst" "$v3dir" \
    "$res/$p.v3.out" "$work/out" "$@")
  if [ ${#args[@]} -eq 0 ]; then
    log "$p: nothing to apply on the device emulation"
    return 0
  fi
  log "$p: device-apply of every delta ($(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["jobs"]))' "$plan") layer deltas, warm-up included)"
  device "$p" $((${STEP_TIMEOUT:-900} * ($# + 1))) "${args[@]}" || rc=$?
  if [ "$rc" = 0 ] || [ "$rc" = 1 ]; then
    python3 "$repo/bench/device_inputs.py" split "$plan" "$res/$p.device.json" "$res" "$p" && return 0
  fi
  for v in $(python3 -c 'import json,sys; print(" ".join(dict.fromkeys(j["variant"] for j in json.load(open(sys.argv[1]))["jobs"] if j["variant"] != "warmup")))' "$plan"); do
    mapfile -t args < <(python3 "$repo/bench/device_inputs.py" args "$plan" "$v")
    log "$p: device-apply of the $v deltas alone"
    device "$p.$v" "${STEP_TIMEOUT:-900}" "${args[@]}" || true
  done
}

# ours_variant P SRC DST V [create flags...]: build our delta V (tag delta-P-V) for the device measurements,
# check it with rdiff patch (against the baseline's basis.tar when there is one), and add it to `variants`
# for device_pair.
ours_variant() {
  local p=$1 src=$2 dst=$3 v=$4; shift 4
  local tag=delta-$p-$v suffix=.$v
  if [ "$v" = b1 ]; then
    tag=delta-$p suffix=             # the default delta of (c): --device-bandwidth defaults to 1
  else
    log "$p: balena-release-update delta create $*"
    timed "$p.create$suffix" "${ours_timeout[@]}" "$bin" delta create --source "oci:$layout:$src" \
      --target "oci:$layout:$dst" --output "oci:$work/out:$tag" "$@" || true
    if [ "$(cat "$res/$p.create$suffix.rc")" != 0 ] || ! tagged "$work/out" "$tag"; then
      failed "$p.create$suffix" "$tag"
      return 0
    fi
    "${ours_timeout[@]}" "$bin" delta inspect "oci:$work/out:$tag" >"$res/$p.inspect$suffix.json" \
      2>"$res/$p.inspect$suffix.err" || log "$p: delta inspect $v failed"
    log "$p: checking the $v delta layers with rdiff patch"
    python3 "$repo/bench/ocicheck.py" delta "$layout" "$src" "$layout" "$dst" "$work/out" "$tag" \
      ${basis:+--basis "$basis"} >"$res/$p.deltacheck$suffix.json" || log "$p: delta check $v failed"
  fi
  variants+=("$v:$tag")
}

for spec in "${pairs[@]}"; do
  IFS=: read -r p src dst <<<"$spec"
  A=$corpus/pairs/$p/A.tar B=$corpus/pairs/$p/B.tar
  echo "$p $src $dst $(stat -c %s "$A") $(stat -c %s "$B")" >"$res/$p.pair"

  # (a) balena-engine's own v3 delta, reproduced with rdiff (and verified with rdiff patch). Its work
  #     directory keeps the source layer tars (src<i>.tar), their concatenation (basis.tar) and the raw
  #     deltas (delta<i>) for the device measurements; the target layer tars are not needed.
  log "$p: balena-engine v3 baseline ($src -> $dst)"
  v3dir=$work/$p.v3
  mkdir -p "$v3dir"
  timed "$p.v3" python3 "$v3_baseline" "$layout" "$src" "$dst" --workdir "$v3dir" || log "$p: v3_baseline.py failed"
  rm -f "$v3dir"/dst*.tar "$v3dir/basis.sig"
  basis=
  [ "$(cat "$res/$p.v3.rc")" = 0 ] && [ -f "$v3dir/basis.tar" ] && basis=$v3dir/basis.tar

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
  variants=()
  if [ -n "$bin" ]; then
    log "$p: balena-release-update delta create"
    timed "$p.create" "${ours_timeout[@]}" "$bin" delta create --source "oci:$layout:$src" --target "oci:$layout:$dst" \
      --output "oci:$work/out:delta-$p" || true
    if [ "$(cat "$res/$p.create.rc")" != 0 ] || ! tagged "$work/out" "delta-$p"; then
      failed "$p.create" "delta-$p"
    else
      "${ours_timeout[@]}" "$bin" delta inspect "oci:$work/out:delta-$p" >"$res/$p.inspect.json" 2>"$res/$p.inspect.err" \
        || log "$p: delta inspect failed"
      log "$p: checking the delta layers with rdiff patch"
      python3 "$repo/bench/ocicheck.py" delta "$layout" "$src" "$layout" "$dst" "$work/out" "delta-$p" \
        ${basis:+--basis "$basis"} >"$res/$p.deltacheck.json" || log "$p: delta check failed"
      log "$p: balena-release-update delta apply"
      timed "$p.apply" "${ours_timeout[@]}" "$bin" delta apply --source "oci:$layout:$src" --delta "oci:$work/out:delta-$p" \
        --output "oci:$work/applied:$p" || true
      if [ "$(cat "$res/$p.apply.rc")" = 0 ] && tagged "$work/applied" "$p"; then
        python3 "$repo/bench/ocicheck.py" applied "$layout" "$dst" "$work/applied" "$p" \
          >"$res/$p.appliedcheck.json" || log "$p: applied image differs from the target"
      else
        failed "$p.apply" "$p"
      fi
      ours_variant "$p" "$src" "$dst" b1
    fi

    # (d) the deltas built for other device bandwidths (issue 7), and the fewest-bytes one
    for bw in "${device_bws[@]}"; do
      ours_variant "$p" "$src" "$dst" "b$bw" --device-bandwidth "$bw"
    done
    ours_variant "$p" "$src" "$dst" fewest --fewest-bytes
  fi

  # (e) the device emulation: balena-engine's deltas and all of ours
  [ -z "$dev" ] || device_pair "$p" "$src" "$dst" "${variants[@]}"
  [ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$v3dir" "$work/out" "$work/applied"
done

uptime >"$res/load_end.txt"
log "writing $out_md"
python3 "$repo/bench/report.py" "$res" "$out_md" --corpus "$corpus" --repo "$repo" \
  ${RESULTS_JSON:+--json "$RESULTS_JSON"}
