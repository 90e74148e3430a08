#!/usr/bin/env bash
# Issue 5 on a GPU machine, from a bundle (scripts/device-bundle.sh sageserve sagectl sageattn
# sage_cuda_runtime_bench cuda_runtime_gpu_test cuda_backend_gpu_test cuda_payload_gpu_test): the runtime GPU tests, the
# in-process baseline (bare kernel and CudaBackend::Attend), then `sagectl bench` against
# `sageserve --backend=cuda` on loopback with dynamic batching on and off. Logs go to $OUT or /tmp.
#
#   scripts/device-runtime-bench.sh [--bundle DIR] [--port N] [--skip-tests] [--tests-last] [--with-w1]
#                                   [--compare BIN]
# --compare BIN: also run the small-request benches (batching on and off) against $BUNDLE/bin/BIN, e.g.
# a server built before a change, with --worker_threads=4 (the old builds' worker default was 2).
# sagectl bench prints the client's latency and, from the responses' timings, the server's own view
# (total, queued, kernel, total - kernel, total - device). Worker threads are the server default
# (GPUs x streams). Mode "unpinned" turns the pinned payload pool off (--cuda_request_pinned_mib=0),
# so the same binary shows what receiving straight into pinned memory is worth; mode "spin" lets idle
# workers poll for 2 ms before sleeping (--worker_spin_us=2000).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/device-serve-lib.sh"  # serve/stop/bench and the shared shapes
PORT=50079
SKIP_TESTS=0
WITH_W1=0
TESTS_LAST=0
COMPARE=""
device_args device-runtime-bench --port:PORT --skip-tests:SKIP_TESTS=1 --with-w1:WITH_W1=1 --tests-last:TESTS_LAST=1 --compare:COMPARE -- "$@" || exit 2
TARGET="127.0.0.1:$PORT"
L16K="--batch=1 --q_len=16384 --k_len=16384 --heads_q=8 --heads_kv=8 --head_dim=128 --causal"

date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
run_tests() {
  for t in cuda_payload_gpu_test cuda_runtime_gpu_test cuda_backend_gpu_test; do
    echo "=== $t"
    timeout 180 "$B/$t" --gtest_brief=1 >"$LOG/$t.log" 2>&1
    echo "=== $t: exit $?"; grep -E "FAILED|PASSED|SKIPPED" "$LOG/$t.log" | head -n 12
  done
}
[ "$SKIP_TESTS" = 0 ] && [ "$TESTS_LAST" = 0 ] && run_tests

echo "=== in-process (kernel and backend)"
timeout 90 "$B/sage_cuda_runtime_bench" $SMALL --concurrency=1,4,16,64 --requests=4000 --outputs=float,native,pinned,pinned_fresh \
  --batcher_workers=1,4 2>&1 | tee "$LOG/inproc_small.log"
timeout 60 "$B/sage_cuda_runtime_bench" $SMALL64 --concurrency=1,16,64 --requests=4000 --outputs=native,pinned \
  --batcher_workers=1 2>&1 | tee "$LOG/inproc_small64.log"
timeout 60 "$B/sage_cuda_runtime_bench" $L4K --concurrency=1,4 --requests=200 --outputs=native,pinned 2>&1 | tee "$LOG/inproc_4k.log"
timeout 60 "$B/sage_cuda_runtime_bench" $L16K --concurrency=1,2 --requests=40 --outputs=native,pinned 2>&1 | tee "$LOG/inproc_16k.log"

SERVER_BIN=sageserve
SERVER_FLAGS=()

scrape() {  # name: the server's Prometheus text, for batch sizes and stage histograms
  python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$((PORT + 1))/metrics').read().decode())" \
    >"$LOG/metrics_$1.txt" 2>&1 || true
  grep -E '^sageserve_(batch_size_requests|batch_size_tokens|batch_compute_duration_seconds|h2d_duration_seconds|kernel_duration_seconds|d2h_duration_seconds|queue_duration_seconds|request_duration_seconds)_(sum|count)' "$LOG/metrics_$1.txt" | head -n 20
}

MODES="batching nobatching unpinned spin"
[ "$WITH_W1" = 1 ] && MODES="$MODES batching_w1 nobatching_w1"
for mode in $MODES; do
  extra=(--metrics_listen=127.0.0.1:$((PORT + 1)))
  case "$mode" in
    nobatching) extra+=(--max_batch_tokens=0) ;;
    unpinned) extra+=(--cuda_request_pinned_mib=0) ;;
    spin) extra+=(--worker_spin_us=2000) ;;
    batching_w1) extra+=(--worker_threads=1) ;;
    nobatching_w1) extra+=(--worker_threads=1 --max_batch_tokens=0) ;;
  esac
  echo "=== sageserve --backend=cuda, $mode ${extra[*]}"
  serve "$mode" "${extra[@]}" || continue
  bench "$mode small c1" $SMALL --concurrency=1 --requests=1000 --warmup=50
  bench "$mode small c16" $SMALL --concurrency=16 --requests=4000 --warmup=50
  bench "$mode small c16 conn4" $SMALL --concurrency=16 --requests=6000 --warmup=50 --connections=4
  bench "$mode small c64" $SMALL --concurrency=64 --requests=6000 --warmup=50
  bench "$mode tiny c64 conn8" $TINY --concurrency=64 --requests=20000 --warmup=100 --connections=8
  case "$mode" in
    batching|nobatching)
      bench "$mode small c64 conn8" $SMALL --concurrency=64 --requests=8000 --warmup=50 --connections=8
      bench "$mode small-d64 c16" $SMALL64 --concurrency=16 --requests=4000 --warmup=50
      bench "$mode small-d64 c64" $SMALL64 --concurrency=64 --requests=8000 --warmup=50
      bench "$mode small c16 stream" $SMALL --concurrency=16 --requests=4000 --warmup=50 --mode=stream
      bench "$mode 4k c4" $L4K --concurrency=4 --requests=100 --warmup=4
      bench "$mode 16k c2" $L16K --concurrency=2 --requests=20 --warmup=2 ;;
    spin)
      bench "$mode small c16 stream" $SMALL --concurrency=16 --requests=4000 --warmup=50 --mode=stream ;;
  esac
  scrape "$mode"
  stop
done
if [ -n "$COMPARE" ]; then
  SERVER_BIN="$COMPARE"
  for mode in batching nobatching; do
    extra=(--worker_threads=4)
    [ "$mode" = nobatching ] && extra+=(--max_batch_tokens=0)
    echo "=== $COMPARE --backend=cuda, $mode ${extra[*]}"
    serve "${COMPARE}_$mode" "${extra[@]}" || continue
    bench "$COMPARE $mode small c16" $SMALL --concurrency=16 --requests=4000 --warmup=50
    bench "$COMPARE $mode small c64" $SMALL --concurrency=64 --requests=6000 --warmup=50
    bench "$COMPARE $mode small-d64 c16" $SMALL64 --concurrency=16 --requests=4000 --warmup=50
    stop
  done
  SERVER_BIN=sageserve
fi
[ "$SKIP_TESTS" = 0 ] && [ "$TESTS_LAST" = 1 ] && run_tests
echo "=== done"; date -u
