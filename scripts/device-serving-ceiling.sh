#!/usr/bin/env bash
# Where the ~44k req/s ceiling of merged tiny requests comes from, on a GPU machine: the same load
# against the null engine (bench/loopback/null_engine_server: gRPC, batching and responding, no
# math) and against sageserve on the GPU, with the cores each side used, a perf profile of the
# server where perf runs, and sageserve under tcmalloc. Bundle:
#   scripts/device-bundle.sh --keep-symbols sageserve sagectl null_engine_server \
#       [--file /usr/bin/perf] [--file /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4]
# Logs go to $OUT or /tmp.
#
#   scripts/device-serving-ceiling.sh [--bundle DIR]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/device-serve-lib.sh"  # serve/stop, measure, profile_server, the shapes
device_args device-serving-ceiling -- "$@" || exit 2
TARGET="127.0.0.1:50097"
SERVER_FLAGS=(--allow_shared_memory)

date -u; echo "cores: $(nproc)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
LOAD="$TINY --concurrency=128 --connections=16 --warmup=200"

STREAM="$TINY --concurrency=128 --connections=16 --warmup=200 --mode=stream"
SMALL_STREAM="$SMALL --concurrency=64 --connections=8 --warmup=100 --mode=stream"
SPLIT="$TINY --concurrency=43 --connections=6 --warmup=200"  # x3 processes

SERVER_BIN=null_engine_server serve null || exit 1
measure "null: tiny c128 conn16, system shm" $LOAD --requests=100000 --shared_memory=system
bench_multi "null: tiny c43 conn6, system shm" 3 $SPLIT --requests=50000 --shared_memory=system
measure "null: tiny c128 16 streams, system shm" $STREAM --requests=200000 --shared_memory=system
profile_server "null: tiny c128 16 streams, system shm" 2 $STREAM --requests=300000 --shared_memory=system
stop
SERVER_BIN=null_engine_server serve null-off --max_batch_tokens=0 || exit 1
measure "null one per launch: tiny c128 conn16, system shm" $LOAD --requests=60000 --shared_memory=system
measure "null one per launch: tiny c128 16 streams, system shm" $STREAM --requests=60000 --shared_memory=system
stop

TCMALLOC="$(ls "$BUNDLE"/lib/libtcmalloc_minimal.so* 2>/dev/null | head -n 1)"
for variant in merge merge-tcmalloc off off-tcmalloc; do
  preload=""; extra=()
  case "$variant" in *tcmalloc) [ -n "$TCMALLOC" ] || continue; preload="$TCMALLOC" ;; esac
  case "$variant" in off*) extra=(--max_batch_tokens=0) ;; esac
  LD_PRELOAD="$preload" serve "cuda-$variant" "${extra[@]}" || exit 1
  measure "cuda $variant: tiny c128 conn16, cuda shm" $LOAD --requests=100000 --shared_memory=cuda
  bench_multi "cuda $variant: tiny c43 conn6, cuda shm" 3 $SPLIT --requests=50000 --shared_memory=cuda
  measure "cuda $variant: tiny c128 16 streams, cuda shm" $STREAM --requests=150000 --shared_memory=cuda
  measure "cuda $variant: small c64 8 streams, cuda shm" $SMALL_STREAM --requests=100000 --shared_memory=cuda
  measure "cuda $variant: small c16 conn16, cuda shm" $SMALL --concurrency=16 --connections=16 --requests=30000 \
    --warmup=100 --shared_memory=cuda
  measure "cuda $variant: small c16 16 streams, cuda shm" $SMALL --concurrency=16 --connections=16 --requests=30000 \
    --warmup=100 --shared_memory=cuda --mode=stream
  [ "$variant" = merge ] && profile_server "cuda merge: tiny c128 16 streams, cuda shm" 2 $STREAM --requests=300000 --shared_memory=cuda
  [ "$variant" = off ] && profile_server "cuda off: tiny c128 16 streams, cuda shm" 2 $STREAM --requests=100000 --shared_memory=cuda
  stop
done
echo "=== done"; date -u
