#!/usr/bin/env bash
# Starts Debian's docker-registry on 127.0.0.1:5055 with storage under /tmp (idempotent).
set -euo pipefail
addr=127.0.0.1:5055
if curl -fsS "http://$addr/v2/" >/dev/null 2>&1; then exit 0; fi
dir=${BRU_REGISTRY_DIR:-/tmp/bru-ci-registry}
mkdir -p "$dir/data"
cat > "$dir/config.yml" <<CFG
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: $addr
CFG
nohup docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
for _ in $(seq 1 50); do
  if curl -fsS "http://$addr/v2/" >/dev/null 2>&1; then exit 0; fi
  sleep 0.2
done
echo "docker-registry did not start; log:" >&2
cat "$dir/registry.log" >&2
exit 1
