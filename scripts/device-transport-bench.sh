#!/usr/bin/env bash
# The gRPC transport under the bytes path on a GPU machine, from a bundle (scripts/device-bundle.sh
# sageserve sagectl): `sagectl bench` against `sageserve --backend=cuda` with the tensors in the
# messages, over TCP loopback with gRPC's defaults, with HTTP/2 tuning (--grpc_arg on both ends), and
# over a Unix domain socket; then unary calls over CUDA shared memory on 1 and 16 connections, and with
# the client and server on separate cores. Logs go to $OUT or /tmp.
#
#   scripts/device-transport-bench.sh [--bundle DIR] [--port N] [--quick]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/device-serve-lib.sh"  # LOG, B and LD_LIBRARY_PATH from BUNDLE; serve/stop, the shapes
PORT=50091
QUICK=0
device_args device-transport-bench --port:PORT --quick:QUICK=1 -- "$@" || exit 2
SOCK="/tmp/sageserve-transport-bench.sock"
CORES=$(nproc)
HALF=$((CORES / 2))

date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; echo "cores: $CORES"
SERVER_FLAGS=(--allow_shared_memory)

# name | listen address | gRPC arguments of both ends ("" = gRPC's defaults)
FRAME="grpc.http2.max_frame_size=1048576"
WINDOW="grpc.http2.lookahead_bytes=8388608"
VARIANTS=(
  "tcp|127.0.0.1:$PORT|"
  "tcp-frame1m|127.0.0.1:$PORT|$FRAME"
  "tcp-window8m|127.0.0.1:$PORT|$WINDOW"
  "tcp-frame-window|127.0.0.1:$PORT|$FRAME,$WINDOW"
  "unix|unix:$SOCK|"
  "unix-frame-window|unix:$SOCK|$FRAME,$WINDOW"
)
for v in "${VARIANTS[@]}"; do
  IFS='|' read -r name TARGET gargs <<<"$v"
  rm -f "$SOCK"
  server_args=(); client_args=()
  if [ -n "$gargs" ]; then server_args=(--grpc_arg="$gargs"); client_args=(--grpc_arg="$gargs"); fi
  for mode in batching nobatching; do
    [ "$QUICK" = 1 ] && [ "$mode" = nobatching ] && continue
    extra=(); [ "$mode" = nobatching ] && extra=(--max_batch_tokens=0)
    echo "=== $name $mode: sageserve --listen=$TARGET ${server_args[*]} ${extra[*]}"
    serve "$name-$mode" "${server_args[@]}" "${extra[@]}" || continue
    if [ "$mode" = batching ]; then
      bench "$name bytes small c1" $SMALL --concurrency=1 --requests=1000 --warmup=50 "${client_args[@]}"
      bench "$name bytes small c16" $SMALL --concurrency=16 --requests=4000 --warmup=50 "${client_args[@]}"
      bench "$name bytes small c16 stream" $SMALL --concurrency=16 --requests=4000 --warmup=50 --mode=stream "${client_args[@]}"
      bench "$name bytes small c16 conn16" $SMALL --concurrency=16 --requests=8000 --warmup=50 --connections=16 "${client_args[@]}"
      bench "$name bytes 4k c4" $L4K --concurrency=4 --requests=60 --warmup=4 "${client_args[@]}"
    fi
    bench "$name $mode bytes small c64 conn8" $SMALL --concurrency=64 --requests=12000 --warmup=50 --connections=8 "${client_args[@]}"
    stop
  done
done

# Unary calls over CUDA shared memory: where do the 16 clients' µs go?
TARGET="127.0.0.1:$PORT"
echo "=== cuda shared memory, unary"
serve shm-unary || exit 1
bench "cuda small c16 conn1" $SMALL --concurrency=16 --requests=8000 --warmup=50 --shared_memory=cuda
bench "cuda small c16 conn16" $SMALL --concurrency=16 --requests=8000 --warmup=50 --shared_memory=cuda --connections=16
stop
echo "=== cuda shared memory, unary, server on cores 0-$((HALF - 1)), client on $HALF-$((CORES - 1))"
SERVER_BIN_SAVED="${SERVER_BIN:-sageserve}"
taskset -c 0-$((HALF - 1)) "$B/$SERVER_BIN_SAVED" --backend=cuda --listen="$TARGET" --log_level=warn --allow_shared_memory \
  >"$LOG/sageserve_pinned.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 120); do "$B/sagectl" health --target="$TARGET" >/dev/null 2>&1 && break; sleep 0.25; done
for c in 1 16; do
  echo "--- split cores cuda small c16 conn$c" | tee -a "$LOG/bench.log"
  timeout 90 taskset -c $HALF-$((CORES - 1)) "$B/sagectl" bench --target="$TARGET" $SMALL --concurrency=16 \
    --requests=8000 --warmup=50 --shared_memory=cuda --connections=$c 2>&1 | tee -a "$LOG/bench.log"
done
echo "--- split cores bytes small c16 conn16" | tee -a "$LOG/bench.log"
timeout 90 taskset -c $HALF-$((CORES - 1)) "$B/sagectl" bench --target="$TARGET" $SMALL --concurrency=16 \
  --requests=8000 --warmup=50 --connections=16 2>&1 | tee -a "$LOG/bench.log"
stop
echo "=== done"; date -u
