#!/bin/sh
# Regenerates the rdiff-made deltas of every case folder from its basis and target.
# Needs Debian's rdiff (librsync 2.3.2 was used for the committed files).
set -eu
cd "$(dirname "$0")"
for dir in */; do
  c=${dir%/}
  [ -f "$c/basis" ] || continue
  rdiff -f -b 512 -S 32 -H blake2 -R rollsum signature "$c/basis" "$c/sig-b512"
  rdiff -f delta "$c/sig-b512" "$c/target" "$c/b512.rdiff-delta"
  rdiff -f signature "$c/basis" "$c/sig-default"
  rdiff -f delta "$c/sig-default" "$c/target" "$c/default.rdiff-delta"
  rm "$c/sig-b512" "$c/sig-default"
done
