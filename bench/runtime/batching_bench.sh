#!/usr/bin/env bash
# Dynamic batching vs one request per launch, on the CPU backend over loopback.
# For each setting, starts `sageserve`, runs `sagectl bench` at several concurrencies, and reads
# the launch count from /metrics to report the mean requests per launch.
#
#   bench/runtime/batching_bench.sh [BUILD_DIR]            (default: build-batch)
#   SHAPE="--q_len=128 --k_len=128 --heads_q=8 --heads_kv=8 --head_dim=128" REQUESTS=2000 \
#     CONCURRENCY="16 32 64" bench/runtime/batching_bench.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build-batch}
SERVER=$BUILD/server/sageserve
CTL=$BUILD/client/sagectl
SHAPE=${SHAPE:---q_len=128 --k_len=128 --heads_q=8 --heads_kv=8 --head_dim=128 --dtype=fp16}
REQUESTS=${REQUESTS:-1000}
CONCURRENCY=${CONCURRENCY:-16 32 64}
PORT=${PORT:-50571}
METRICS_PORT=${METRICS_PORT:-50572}
EXTRA=${EXTRA:-}

scrape() {  # prints "<launches> <requests launched>"
  exec 3<>/dev/tcp/127.0.0.1/"$METRICS_PORT"
  printf 'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n' >&3
  awk '/^sageserve_batches_total\{/ {b += $2} /^sageserve_batch_size_requests_sum\{/ {r += $2}
       END {printf "%d %d\n", b, r}' <&3
  exec 3<&-
}

run_setting() {  # $1 = label, rest = server flags
  local label=$1
  shift
  "$SERVER" --backend=cpu --listen=127.0.0.1:$PORT --metrics_listen=127.0.0.1:$METRICS_PORT \
    --log_level=warn "$@" $EXTRA >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 50); do "$CTL" health --target=127.0.0.1:$PORT >/dev/null 2>&1 && break; sleep 0.1; done
  for c in $CONCURRENCY; do
    read -r b0 r0 < <(scrape)
    local out
    out=$("$CTL" bench --target=127.0.0.1:$PORT $SHAPE --concurrency=$c --requests=$REQUESTS --warmup=8)
    read -r b1 r1 < <(scrape)
    local rps p50 p99
    rps=$(sed -n 's/^throughput: \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
    p50=$(sed -n 's/^latency us: p50 \([0-9]*\),.*/\1/p' <<<"$out")
    p99=$(sed -n 's/^latency us: .*p99 \([0-9]*\),.*/\1/p' <<<"$out")
    awk -v l="$label" -v c="$c" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v b=$((b1 - b0)) -v r=$((r1 - r0)) \
      'BEGIN {printf "| %s | %d | %.1f | %d | %d | %d | %.1f |\n", l, c, rps, p50, p99, b, (b > 0 ? r / b : 0)}'
  done
  kill -TERM $pid
  wait $pid || true
}

echo "shape: $SHAPE; $REQUESTS requests per row"
echo "| setting | clients | req/s | p50 us | p99 us | launches | requests/launch |"
echo "|---|---:|---:|---:|---:|---:|---:|"
run_setting "one request per launch" --max_batch_tokens=0
run_setting "dynamic batching" --max_batch_tokens=${MAX_BATCH_TOKENS:-8192} --max_queue_delay_us=${DELAY_US:-200}
