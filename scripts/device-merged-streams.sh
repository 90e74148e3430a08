#!/usr/bin/env bash
# What caps merged tiny requests on streams (~125k req/s), on a GPU machine: the same 256 requests in
# flight from one `sagectl bench` process and split over 2 and 4, against sageserve on the GPU and
# against the null engine (gRPC, batching and responding without math), with the cores the server,
# the client and the machine used, and a flat perf profile of the server where perf runs. Bundle:
#   scripts/device-bundle.sh --keep-symbols sageserve sagectl null_engine_server [--file /usr/bin/perf]
# Logs go to $OUT or /tmp.
#
#   scripts/device-merged-streams.sh [--bundle DIR]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="$ROOT/.bundle"
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) BUNDLE="$(realpath "$2")"; shift 2 ;;
    *) echo "device-merged-streams: unknown argument $1" >&2; exit 2 ;;
  esac
done
source "$ROOT/scripts/device-serve-lib.sh"  # serve/stop, measure, bench_multi, profile_server, the shapes
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
echo "=== done"; date -u
