#!/usr/bin/env bash
# The README's two set-up commands as a new user runs them, in order: the test command, then the
# serve command until `sagectl health` answers SERVING. Meant to run inside a fresh Debian 12 root
# (../shared/tools/fresh-root.sh . 'bash scripts/fresh-machine-check.sh'); it works anywhere. It asks
# 127.0.0.1, not localhost: a debootstrap root has no /etc/hosts, and gRPC's resolver then looks
# "localhost" up in DNS.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/test.sh "$@" || { echo "fresh-machine-check: scripts/test.sh failed" >&2; exit 1; }
echo "fresh-machine-check: test command passed in $(( $(date +%s) - start )) s"
log=$(mktemp)
bash scripts/serve.sh >"$log" 2>&1 &
serve_pid=$!
rc=1
for _ in $(seq 1 300); do
  if ./build/client/sagectl health --target=127.0.0.1:50051 2>/dev/null | grep -q SERVING; then rc=0; break; fi
  kill -0 "$serve_pid" 2>/dev/null || break
  sleep 1
done
./build/client/sagectl health --target=127.0.0.1:50051
kill -TERM "$serve_pid" 2>/dev/null; wait "$serve_pid"; serve_rc=$?
tail -n 20 "$log"
echo "fresh-machine-check: serve command answered health: $([ $rc -eq 0 ] && echo yes || echo no); server exit $serve_rc after SIGTERM"
exit $rc
