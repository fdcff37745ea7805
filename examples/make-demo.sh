#!/usr/bin/env bash
# Regenerates examples/demo (OCI images of three releases and fleet.json) deterministically.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q -p bru-service --example make-demo -- examples/demo
