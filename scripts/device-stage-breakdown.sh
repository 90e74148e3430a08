#!/usr/bin/env bash
# Where a request's server time goes, from the server's own histograms: for each case a fresh
# `sageserve --backend=cuda` with its metrics endpoint, one `sagectl bench`, then the means of queue,
# launch (compute), answering (respond), H2D/kernel/D2H and batch size from /metrics
# (scripts/metrics_means.py). Bundle: scripts/device-bundle.sh sageserve sagectl. Logs: $OUT or /tmp.
#
#   scripts/device-stage-breakdown.sh [--bundle DIR] [-- server flags for every case...]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/device-serve-lib.sh"  # serve/stop, bench, the shapes
device_args device-stage-breakdown -- "$@" || exit 2
TARGET="127.0.0.1:50103"
METRICS="127.0.0.1:50104"
SERVER_FLAGS=(--allow_shared_memory --metrics_listen="$METRICS" "${EXTRA_ARGS[@]}")

# label, "server flags", bench flags...
run_case() {
  local label="$1" flags="$2"; shift 2
  serve breakdown $flags || return 1
  bench "$label" "$@" | grep -E "throughput|server us"
  python3 "$ROOT/scripts/metrics_means.py" "http://$METRICS/metrics" | tee -a "$LOG/bench.log"
  stop >/dev/null
}

date -u; echo "server flags: ${SERVER_FLAGS[*]}"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
C16="$SMALL --concurrency=16 --requests=30000 --warmup=100 --shared_memory=cuda"
run_case "small c16 unary, 16 connections" "" $C16 --connections=16
run_case "small c16, 16 streams" "" $C16 --connections=16 --mode=stream
run_case "small c16, 1 stream" "" $C16 --mode=stream
run_case "small c16 unary, 16 connections, one per launch" "--max_batch_tokens=0" $C16 --connections=16
run_case "small c16 unary, 16 connections, polling workers" "--worker_spin_us=500" $C16 --connections=16
run_case "small c16, 16 streams, polling workers" "--worker_spin_us=500" $C16 --connections=16 --mode=stream
echo "=== done"; date -u
