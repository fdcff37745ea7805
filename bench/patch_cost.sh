#!/usr/bin/env bash
# What librsync-go's own Patch costs per command on this machine (writing into io.Pipe read by a
# hashing goroutine, as on a device; basis in memory), beside the device-apply emulation's pipe
# models on the same deltas. Prints a Markdown table of microseconds per command, and checks that
# both decoders rebuild the same bytes.
#
# usage: bench/patch_cost.sh LIBRSYNC_GO [REF]
#   LIBRSYNC_GO  a git repository of balena-os/librsync-go (or a plain checkout of it)
#   REF          the version to build (default v0.8.5, the one balena-engine v20.10 vendors)
# Needs Debian's golang-go; librsync-go vendors its dependencies, so nothing is downloaded.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
src=${1:?usage: bench/patch_cost.sh LIBRSYNC_GO [REF]}
ref=${2:-v0.8.5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/lib"
if git -C "$src" rev-parse --git-dir >/dev/null 2>&1 && git -C "$src" rev-parse -q --verify "$ref^{commit}" >/dev/null; then
  git -C "$src" archive "$ref" | tar -x -C "$work/lib"
else
  cp -r "$src/." "$work/lib"
fi
mkdir -p "$work/lib/cmd/patch-cost"
cp "$repo/bench/patch-cost/main.go" "$work/lib/cmd/patch-cost/"
(cd "$work/lib" && GOFLAGS=-mod=vendor GOPROXY=off go build -o "$work/patch-cost" ./cmd/patch-cost)

cargo build -q --release -p bru-device-apply --manifest-path "$repo/Cargo.toml"
dev=${CARGO_TARGET_DIR:-$repo/target}/release/device-apply

# A basis of tar headers only (the emulation serves them from memory, as the engine serves
# tar-split segments) and gzip'd deltas of one kind of command each.
python3 - "$work" <<'PY'
import gzip, io, random, struct, sys, tarfile
work = sys.argv[1]
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
    for i in range(128):
        ti = tarfile.TarInfo(f"d{i:03}/")
        ti.type, ti.mtime = tarfile.DIRTYPE, 1_000_000 + i
        t.addfile(ti)
open(f"{work}/basis.tar", "wb").write(buf.getvalue())
random.seed(7)
lits = [bytes(random.getrandbits(8) for _ in range(100)) for _ in range(64)]
lit = lambda d: b"\x42" + struct.pack(">H", len(d)) + d        # LITERAL, 2-byte length
copy = lambda o, n: b"\x4f" + struct.pack(">II", o, n)          # COPY, 4-byte offset and length
deltas = {
    "LITERAL 100 B": (50000, [lit(lits[i % 64]) for i in range(50000)]),
    "COPY 100 B": (50000, [copy((i * 37) % 60000, 100) for i in range(50000)]),
    "COPY 100 B + LITERAL 100 B": (50000, [copy((i * 37) % 60000, 100) + lit(lits[i % 64]) for i in range(25000)]),
    "COPY 32 KiB": (2000, [copy((i * 97) % 30000, 32768) for i in range(2000)]),
}
with open(f"{work}/deltas.txt", "w") as index:
    for k, (name, (n, ops)) in enumerate(deltas.items()):
        raw = struct.pack(">I", 0x72730236) + b"".join(ops) + b"\x00"
        open(f"{work}/d{k}.gz", "wb").write(gzip.compress(raw, 6))
        index.write(f"{k}\t{n}\t{name}\n")
PY

echo "| commands | librsync-go Patch + io.Pipe (Go) | emulation: --pipe thread | --pipe goroutine | --pipe inline |"
echo "|---|---:|---:|---:|---:|"
while IFS=$'\t' read -r k n name; do
  go_json=$("$work/patch-cost" "$work/basis.tar" "$work/d$k.gz" 5)
  row="| $name | $(python3 -c 'import json,sys; print("%.2f" % (json.loads(sys.argv[1])["apply_seconds"] / int(sys.argv[2]) * 1e6))' "$go_json" "$n")"
  go_sha=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["sha256"])' "$go_json")
  for pipe in thread goroutine inline; do
    out=$("$dev" --layers "$work/basis.tar" --delta "$work/d$k.gz" --repeat 5 --pipe "$pipe" 2>/dev/null)
    sha=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["deltas"][0]["diff_id"][7:])' "$out")
    if [ "$sha" != "$go_sha" ]; then
      echo "ERROR: $name: the emulation rebuilt other bytes than librsync-go" >&2
      exit 1
    fi
    row+=" | $(python3 -c 'import json,sys; d=json.loads(sys.argv[1])["deltas"][0]; print("%.2f" % (d["apply_seconds"] / int(sys.argv[2]) * 1e6))' "$out" "$n")"
  done
  echo "$row |"
done <"$work/deltas.txt"
