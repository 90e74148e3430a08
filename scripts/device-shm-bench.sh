#!/usr/bin/env bash
# The shared-memory data plane on a GPU machine, from a bundle (scripts/device-bundle.sh sageserve sagectl
# sageattn cuda_payload_gpu_test cuda_backend_gpu_test cuda_runtime_gpu_test): the runtime GPU tests, then
# `sagectl bench` against `sageserve --backend=cuda --allow_shared_memory` on loopback with the tensors in
# the gRPC messages (bytes), in POSIX shared memory (system, page-locked by the server) and in CUDA memory
# (cuda, IPC), dynamic batching on and off. sagectl checks answers bit for bit against the bytes path.
# Logs go to $OUT or /tmp.
#
#   scripts/device-shm-bench.sh [--bundle DIR] [--port N] [--skip-tests] [--compare BIN] [--cuda-only]
# --compare BIN: run every server configuration twice, with sageserve and with $BUNDLE/bin/BIN (an
# earlier build), back to back, so the two are measured in the same session.
# --cuda-only: only the CUDA shared-memory rows (plus unary c16 on 16 connections).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/device-serve-lib.sh"  # LOG, B and LD_LIBRARY_PATH from BUNDLE; serve/stop, the shapes
PORT=50089
SKIP_TESTS=0
COMPARE=""
CUDA_ONLY=0
device_args device-shm-bench --port:PORT --skip-tests:SKIP_TESTS=1 --compare:COMPARE --cuda-only:CUDA_ONLY=1 -- "$@" || exit 2
TARGET="127.0.0.1:$PORT"

date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ "$SKIP_TESTS" = 0 ]; then
  for t in segment_copy_gpu_test cuda_payload_gpu_test cuda_runtime_gpu_test cuda_backend_gpu_test; do
    [ -x "$B/$t" ] || { echo "=== $t: not in the bundle"; continue; }
    timeout 180 "$B/$t" --gtest_brief=1 >"$LOG/$t.log" 2>&1
    echo "=== $t: exit $?"; grep -E "FAILED|PASSED|SKIPPED" "$LOG/$t.log" | head -n 12
  done
fi

SERVER_FLAGS=(--allow_shared_memory)

for mode in batching nobatching spin; do
  extra=()
  case "$mode" in
    nobatching) extra+=(--max_batch_tokens=0) ;;
    spin) extra+=(--worker_spin_us=2000) ;;
  esac
  for SERVER_BIN in sageserve $COMPARE; do
  tag="$mode"; [ "$SERVER_BIN" != sageserve ] && tag="$SERVER_BIN $mode"
  echo "=== $SERVER_BIN --backend=cuda --allow_shared_memory, $mode ${extra[*]}"
  serve "${SERVER_BIN}_$mode" "${extra[@]}" || continue
  for shm in none system cuda; do
    [ "$mode" = spin ] && [ "$shm" != cuda ] && continue
    [ "$CUDA_ONLY" = 1 ] && [ "$shm" != cuda ] && continue
    bench "$tag $shm small c1" $SMALL --concurrency=1 --requests=1000 --warmup=50 --shared_memory=$shm
    bench "$tag $shm small c16" $SMALL --concurrency=16 --requests=4000 --warmup=50 --shared_memory=$shm
    [ "$shm" = cuda ] && bench "$tag $shm small c16 conn16" $SMALL --concurrency=16 --requests=8000 --warmup=50 \
      --connections=16 --shared_memory=$shm
    bench "$tag $shm small c16 stream" $SMALL --concurrency=16 --requests=4000 --warmup=50 --mode=stream --shared_memory=$shm
    [ "$mode" = spin ] && continue
    bench "$tag $shm small c64 conn8" $SMALL --concurrency=64 --requests=12000 --warmup=50 --connections=8 --shared_memory=$shm
    bench "$tag $shm tiny c64 conn8" $TINY --concurrency=64 --requests=30000 --warmup=100 --connections=8 --shared_memory=$shm
    bench "$tag $shm tiny c128 conn16" $TINY --concurrency=128 --requests=40000 --warmup=100 --connections=16 --shared_memory=$shm
  done
  if [ "$mode" = batching ] && [ "$CUDA_ONLY" = 0 ]; then
    for shm in none cuda; do
      bench "$tag $shm 4k c4" $L4K --concurrency=4 --requests=100 --warmup=4 --shared_memory=$shm
    done
  fi
  "$B/sagectl" shm status --target="$TARGET"
  stop
  done
done
echo "=== done"; date -u
