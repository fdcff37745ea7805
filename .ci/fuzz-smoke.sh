#!/usr/bin/env bash
# Smoke runs of every cargo-fuzz target (crates/*/fuzz): each target is built and then fed
# random inputs for FUZZ_SECONDS (default 20). A crash or panic fails CI; finding bugs is
# not the aim, catching targets that no longer build or fall over at once is.
#
# The toolchain is stable; cargo-fuzz needs nightly flags (-Z, the sanitizer), which
# RUSTC_BOOTSTRAP=1 unlocks. Builds are unoptimized (--dev) to keep CI short, and all fuzz
# crates share one target directory so common dependencies are built once.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-20}"
export RUSTC_BOOTSTRAP=1
target_dir="$PWD/target/fuzz"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz

for dir in crates/*/fuzz; do
  # Fuzz crates without a lock file start from the workspace's: the versions the tests use,
  # and dependencies shared between the fuzz crates.
  [ -f "$dir/Cargo.lock" ] || cp Cargo.lock "$dir/Cargo.lock"
  for target in $(cd "$dir" && cargo fuzz list); do
    echo "fuzz: $dir $target (${seconds}s)"
    corpus="$target_dir/corpus/${dir//\//_}_$target"
    mkdir -p "$corpus"
    log="$target_dir/${dir//\//_}_$target.log"
    if (cd "$dir" && cargo fuzz run --dev --target-dir "$target_dir" "$target" "$corpus" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048) >"$log" 2>&1; then
      tail -n 1 "$log"
    else
      cat "$log"
      echo "fuzz: $dir $target failed (crash input under $dir/artifacts/$target)" >&2
      exit 1
    fi
  done
done
