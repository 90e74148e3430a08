#!/usr/bin/env bash
# How big merged launches get, and what that buys, on a GPU machine: one bench shape against
# sageserve --backend=cuda under several worker counts and queue delays (and one request per launch
# for reference), each with its req/s, latency, mean requests per launch (from /metrics) and the
# cores used by server, client and machine. Bundle: scripts/device-bundle.sh sageserve sagectl.
# Logs go to $OUT or /tmp.
#
#   scripts/device-merge-sweep.sh [--bundle DIR] [--shape tiny-s256|small-s64] [--configs "W:D ..."]
# --configs: per case, worker threads, max_queue_delay_us and optionally worker_spin_us, e.g.
# "8:0 4:0 8:50 8:0:50"; "off" (or "off:S", with worker_spin_us S) adds --max_batch_tokens=0 (one
# request per launch, default workers). Each case also prints the server's cores by thread name.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/device-serve-lib.sh"  # serve/stop, measure, the shapes
SHAPE=tiny-s256
CONFIGS="off 8:0 4:0 2:0 8:50 4:50"
device_args device-merge-sweep --shape:SHAPE --configs:CONFIGS -- "$@" || exit 2
TARGET="127.0.0.1:50111"
METRICS="127.0.0.1:50112"
SERVER_FLAGS=(--allow_shared_memory --metrics_listen="$METRICS")
case "$SHAPE" in
  tiny-s256) BENCH="$TINY --concurrency=256 --connections=16 --requests=200000 --warmup=200 --mode=stream" ;;
  small-s64) BENCH="$SMALL --concurrency=64 --connections=8 --requests=80000 --warmup=100 --mode=stream" ;;
  *) echo "device-merge-sweep: unknown --shape $SHAPE" >&2; exit 2 ;;
esac

# The server's threads' CPU ticks, "name tid ticks" per line (names as top -H shows them).
thread_ticks() {
  local t
  for t in /proc/"$SERVER_PID"/task/*; do
    awk -v tid="${t##*/}" '{ sub(/^[0-9]+ \(/, ""); name = $0; sub(/\).*/, "", name); gsub(/ /, "_", name);
      rest = $0; sub(/^.*\) /, "", rest); split(rest, f, " "); print name, tid, f[12] + f[13] }' "$t/stat" 2>/dev/null
  done
}
# before-file, after-file, seconds: cores per thread name (threads, total, busiest thread).
thread_cores() {
  awk -v w="$3" -v hz="$TICKS" 'NR == FNR { before[$2] = $3; next }
    { d = ($3 - before[$2]) / hz / w; sum[$1] += d; n[$1]++; if (d > top[$1]) top[$1] = d }
    END { for (k in sum) if (sum[k] > 0.01) printf "  %-16s %2d threads, %.2f cores, busiest %.2f\n", k, n[k], sum[k], top[k] }' "$1" "$2" |
    sort -k4 -g -r
}

date -u; echo "cores: $(nproc)"; lscpu | grep -E "^(Model name|Thread|Core|Socket|CPU\(s\)|NUMA node\(s\))" || true
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for cfg in $CONFIGS; do
  IFS=: read -r w d spin <<<"$cfg"
  if [ "$w" = off ]; then
    flags=(--max_batch_tokens=0); label="one request per launch"; spin="$d"
  else
    flags=(--worker_threads="$w" --max_queue_delay_us="$d"); label="merging, $w workers, queue delay $d us"
  fi
  [ -n "$spin" ] && { flags+=(--worker_spin_us="$spin"); label+=", workers spin $spin us"; }
  serve "sweep-${cfg//:/-}" "${flags[@]}" || exit 1
  thread_ticks >"$LOG/threads0.txt"; t0=$(date +%s.%N)
  measure "$SHAPE: $label" $BENCH --shared_memory=cuda
  thread_ticks >"$LOG/threads1.txt"
  thread_cores "$LOG/threads0.txt" "$LOG/threads1.txt" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')" |
    tee -a "$LOG/bench.log"
  grep -E "latency" "$LOG/last.txt" | tee -a "$LOG/bench.log"
  # launches (n) and mean requests per launch since the server started
  python3 "$ROOT/scripts/metrics_means.py" "http://$METRICS/metrics" | grep sageserve_batch_size_requests |
    tee -a "$LOG/bench.log"
  stop >/dev/null
done
echo "=== done"; date -u
