#!/usr/bin/env bash
# One device call for the session/decode work: the GPU tests that cover it, the paged decode kernel
# benchmark against torch, and the end-to-end decode bench through gRPC. Logs under $OUT.
#   scripts/device-session-run.sh [--bundle DIR]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="${2:-$ROOT/.bundle}"
LOG="${OUT:-/tmp}"
export LD_LIBRARY_PATH="$BUNDLE/lib:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$LOG/gpu.txt"
{
  for t in paged_decode_gpu_test session_gpu_test cuda_backend_gpu_test; do
    echo "=== $t"
    timeout 240 "$BUNDLE/bin/$t" --gtest_brief=1 2>&1 | grep -v "^\[20" | tail -40
  done
} 2>&1 | tee "$LOG/gpu_tests.log"
timeout 200 python3 "$ROOT/bench/decode_bench.py" --lib "$BUNDLE/lib/libsageattn.so" --out "$LOG/decode_bench.json" \
  2>&1 | tee "$LOG/decode_bench.log"
timeout 300 bash "$ROOT/scripts/device-decode-bench.sh" --bundle "$BUNDLE" > "$LOG/e2e_decode.log" 2>&1
echo "e2e rc $?" >> "$LOG/e2e_decode.log"
grep -h "^===\|p50\|layer-steps\|kernel\|messages/s\|failed" "$LOG/e2e_decode.log" | head -80
