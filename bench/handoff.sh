#!/usr/bin/env bash
# What one hand-off through the output pipe costs: Go's io.Pipe to a hashing goroutine (what a
# device runs, bench/go-pipe) against the device-apply emulation's pipe models, per write of
# 100 B, 1,000 B and 32 KiB. Prints a Markdown table. Needs `go` (Debian's golang-go) for the
# Go column; without it that column says so.
#
# usage: bench/handoff.sh [WRITES]   (default 50000 writes per measurement)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
writes=${1:-50000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build -q --release -p bru-device-apply --manifest-path "$repo/Cargo.toml"
dev=${CARGO_TARGET_DIR:-$repo/target}/release/device-apply
gopipe=
if command -v go >/dev/null; then
  (cd "$repo/bench/go-pipe" && GOFLAGS=-mod=mod GOPROXY=off go build -o "$work/go-pipe" .) && gopipe=$work/go-pipe
fi
procs=$(nproc)

# An empty basis layer, and a raw delta of WRITES literal commands of SIZE bytes each: every
# command is one pipe write.
head -c 1024 /dev/zero >"$work/empty.tar"
delta() {
  python3 - "$1" "$writes" "$2" <<'PY'
import struct, sys
path, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
chunk = bytes((i * 7) & 255 for i in range(size))
with open(path, "wb") as f:
    f.write(struct.pack(">I", 0x72730236))
    for _ in range(n):
        f.write(b"\x42" + struct.pack(">H", size) + chunk)
    f.write(b"\x00")
PY
}
# Median apply seconds of 5 applies with pipe model $2, per command, in microseconds.
emulated() {
  "$dev" --layers "$work/empty.tar" --delta "$1" --repeat 5 --pipe "$2" 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin)["deltas"][0]; print("%.2f" % (d["apply_seconds"] / d["counters"]["pipe_writes"] * 1e6))'
}

echo "| write size | Go io.Pipe, hand-off µs (GOMAXPROCS=$procs) | emulation µs per command: thread | goroutine | inline | thread − inline | goroutine − inline |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
for size in 100 1000 32768; do
  delta "$work/d-$size" "$size"
  go_us="(no go)"
  if [ -n "$gopipe" ]; then
    go_us=$("$gopipe" "$writes" "$size" "$procs" | python3 -c 'import json,sys; print("%.2f" % json.load(sys.stdin)["handoff_us_per_write"])')
  fi
  t=$(emulated "$work/d-$size" thread)
  g=$(emulated "$work/d-$size" goroutine)
  i=$(emulated "$work/d-$size" inline)
  python3 -c "import sys; s,go,t,g,i=sys.argv[1:]; t,g,i=float(t),float(g),float(i); print(f'| {int(s):,} B | {go} | {t:.2f} | {g:.2f} | {i:.2f} | {t-i:.2f} | {g-i:.2f} |')" "$size" "$go_us" "$t" "$g" "$i"
done
