#!/usr/bin/env bash
# What caps merged tiny requests on streams (~125k req/s), on a GPU machine: the same 256 requests in
# flight from one `sagectl bench` process and split over 2 and 4, against sageserve on the GPU and
# against the null engine (gRPC, batching and responding without math), with the cores the server,
# the client and the machine used, and a flat perf profile of the server where perf runs; then two
# sageserve processes sharing the GPU, one client each. Bundle:
#   scripts/device-bundle.sh --keep-symbols sageserve sagectl null_engine_server [--file /usr/bin/perf]
# Logs go to $OUT or /tmp.
#
#   scripts/device-merged-streams.sh [--bundle DIR]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/device-serve-lib.sh"  # serve/stop, measure, bench_multi, profile_server, the shapes
device_args device-merged-streams -- "$@" || exit 2
TARGET="127.0.0.1:50106"
SERVER_FLAGS=(--allow_shared_memory)

date -u; echo "cores: $(nproc)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
S256="$TINY --concurrency=256 --connections=16 --warmup=200 --mode=stream"
for server in sageserve null_engine_server; do
  shm=cuda; [ "$server" = null_engine_server ] && shm=system
  SERVER_BIN=$server serve "$server" || exit 1
  measure "$server: tiny, 256 in flight on 16 streams, 1 process" $S256 --requests=300000 --shared_memory=$shm
  bench_multi "$server: tiny, 128 in flight on 8 streams" 2 $TINY --concurrency=128 --connections=8 --warmup=200 \
    --mode=stream --requests=150000 --shared_memory=$shm
  bench_multi "$server: tiny, 64 in flight on 4 streams" 4 $TINY --concurrency=64 --connections=4 --warmup=200 \
    --mode=stream --requests=75000 --shared_memory=$shm
  measure "$server: tiny, 512 in flight on 32 streams, 1 process" $TINY --concurrency=512 --connections=32 \
    --warmup=200 --mode=stream --requests=300000 --shared_memory=$shm
  profile_server "$server: tiny, 256 in flight on 16 streams" 2 $S256 --requests=400000 --shared_memory=$shm
  stop >/dev/null
done

# Two server processes on one GPU, one client process each: if their sum is twice one server's rate,
# the ceiling lives in one process's gRPC serving path; if not, in the host (loopback, clients).
TARGET2="127.0.0.1:50107"
SERVER_BIN=sageserve serve two-a --cuda_streams=2 --cuda_light_streams=4 || exit 1
PID_A=$SERVER_PID
"$B/sageserve" --backend=cuda --listen="$TARGET2" --log_level=warn "${SERVER_FLAGS[@]}" --cuda_streams=2 \
  --cuda_light_streams=4 >"$LOG/sageserve_two-b.log" 2>&1 &
PID_B=$!
for _ in $(seq 1 120); do "$B/sagectl" health --target="$TARGET2" >/dev/null 2>&1 && break; sleep 0.25; done
echo "--- two servers: tiny, 256 in flight on 16 streams each (2 client processes)" | tee -a "$LOG/bench.log"
"$B/sagectl" bench --target="$TARGET" $S256 --requests=300000 --shared_memory=cuda >"$LOG/two_a.txt" 2>&1 &
CA=$!
"$B/sagectl" bench --target="$TARGET2" $S256 --requests=300000 --shared_memory=cuda >"$LOG/two_b.txt" 2>&1 &
CB=$!
wait "$CA" "$CB"
grep -h -E "throughput" "$LOG/two_a.txt" "$LOG/two_b.txt" | tee -a "$LOG/bench.log"
cat "$LOG/two_a.txt" "$LOG/two_b.txt" | sed -n 's/^throughput: \([0-9.]*\) req\/s.*/\1/p' |
  awk '{ s += $1 } END { printf "summed throughput: %.1f req/s\n", s }' | tee -a "$LOG/bench.log"
kill -TERM "$PID_B"; wait "$PID_B"
SERVER_PID=$PID_A; stop >/dev/null
echo "=== done"; date -u
