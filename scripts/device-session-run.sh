#!/usr/bin/env bash
# One device call for the session/decode work: the GPU tests that cover it, the paged decode kernel
# benchmark against torch, and the end-to-end decode bench through gRPC. With a candidate kernel
# library in <bundle>/v3/ (libsageattn.so, paged_decode_gpu_test, decode_bench.py), it is tested and
# benchmarked beside the bundle's own library too. Logs under $OUT.
#   [QUICK=1|2] [NO_E2E=1] scripts/device-session-run.sh [--bundle DIR]     (2: the least that checks the change;
#   NO_E2E: tests and kernel bench only, for a second call to run scripts/device-decode-bench.sh)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="$ROOT/.bundle"
[ "${1:-}" = "--bundle" ] && BUNDLE="$(realpath "$2")"
LOG="${OUT:-/tmp}"
export LD_LIBRARY_PATH="$BUNDLE/lib:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$LOG/gpu.txt"
{
  tests="kv_quantize_gpu_test kv_memory_gpu_test paged_decode_gpu_test paged_gather_gpu_test session_gpu_test cuda_backend_gpu_test"
  [ "${QUICK:-}" = 2 ] && tests="kv_memory_gpu_test paged_gather_gpu_test session_gpu_test"
  for t in $tests; do
    echo "=== $t"
    timeout 240 "$BUNDLE/bin/$t" --gtest_brief=1 2>&1 | grep -v "^\[20" | tail -40
  done
  if [ -d "$BUNDLE/v3" ]; then
    echo "=== candidate paged_decode_gpu_test"
    LD_LIBRARY_PATH="$BUNDLE/v3:$LD_LIBRARY_PATH" timeout 120 "$BUNDLE/v3/paged_decode_gpu_test" --gtest_brief=1 2>&1 | tail -30
  fi
} 2>&1 | tee "$LOG/gpu_tests.log"
if [ -d "$BUNDLE/v3" ]; then
  timeout 240 python3 "$BUNDLE/v3/decode_bench.py" --lib "bundle=$BUNDLE/lib/libsageattn.so" --lib "candidate=$BUNDLE/v3/libsageattn.so" \
    --cases "$([ "${QUICK:-}" = 2 ] && echo 64x8192,1x32768 || echo 64x4096,16x16384,1x32768,64x8192)" --iters 20 --out "$LOG/decode_bench.json" 2>&1 | tee "$LOG/decode_bench.log"
else
  timeout 200 python3 "$ROOT/bench/decode_bench.py" --lib "$BUNDLE/lib/libsageattn.so" --out "$LOG/decode_bench.json" \
    $([ -n "${QUICK:-}" ] && echo --cases 64x4096,16x16384,4x65536,1x32768,64x8192,32x16384 --iters 20) \
    2>&1 | tee "$LOG/decode_bench.log"
fi
# Chunked prefill over cached pages (GPU gather + the dense kernels) against the contiguous kernel.
timeout 150 python3 "$ROOT/bench/paged_prefill_bench.py" --lib "$BUNDLE/lib/libsageattn.so" $([ -n "${QUICK:-}" ] && echo --quick) \
  --out "$LOG/paged_prefill.json" 2>&1 | tee "$LOG/paged_prefill.log" | tail -20
[ -n "${NO_E2E:-}" ] && exit 0
timeout 400 bash "$ROOT/scripts/device-decode-bench.sh" --bundle "$BUNDLE" $([ "${QUICK:-}" = 2 ] && echo --quicker || { [ -n "${QUICK:-}" ] && echo --quick; }) > "$LOG/e2e_decode.log" 2>&1
echo "e2e rc $?" >> "$LOG/e2e_decode.log"
grep -h "^===\|p50\|layer-steps\|kernel\|messages/s\|failed\|e2e rc" "$LOG/e2e_decode.log" | head -160
