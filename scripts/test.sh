#!/usr/bin/env bash
# The README's test command, for a fresh Debian or Ubuntu machine as much as for CI:
# installs the Debian packages the tests use (with apt, when root or with password-less
# sudo; otherwise it prints the exact command and stops), starts what they need on
# loopback, and runs the whole suite. Arguments go to `cargo test`.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -p bru-server   # one crate
set -euo pipefail
cd "$(dirname "$0")/.."

# docker-registry: a real OCI Distribution registry for pull/push tests.
# rdiff: an independent librsync decoder that cross-checks every delta we emit.
# skopeo: an independent containers/image implementation, for interoperability tests.
# postgresql: the shared store of several `serve` instances (--database), tested for real.
# openssl: makes the throwaway CA and server certificate of the PostgreSQL TLS test.
pkgs=(docker-registry rdiff skopeo postgresql curl openssl)

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

if ! command -v dpkg-query >/dev/null; then
  echo "ERROR: not a Debian-based system; install these (Debian package names): ${pkgs[*]}" >&2
  exit 1
fi
missing=()
for p in "${pkgs[@]}"; do
  installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    sudo=()
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo=(sudo)
  else
    echo "ERROR: the tests need these Debian packages: ${missing[*]}" >&2
    echo "Install them, then run this script again:" >&2
    echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  echo "installing ${missing[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# One registry on loopback shared by the tests (plain HTTP, no auth); tests that need auth
# or faults start private ones from the same binary.
bash .ci/start-registry.sh
export BRU_TEST_REGISTRY=127.0.0.1:5055

# One PostgreSQL cluster on loopback (run as the postgres user when root); each test creates
# its own database in it, and tests that stop or restart PostgreSQL start private clusters.
bash .ci/start-postgres.sh
export BRU_TEST_POSTGRES=postgres://postgres@127.0.0.1:5433/postgres

exec cargo test --workspace "$@"
