#!/usr/bin/env bash
# Where the host's CPU goes while `sagectl bench` loads `sageserve --backend=cuda` on a GPU machine
# (bundle: scripts/device-bundle.sh sageserve sagectl): cores used by the server, by the client and by
# the whole machine during each bench (from /proc), and, where `perf` exists, the server's hottest
# symbols. Logs go to $OUT or /tmp.
#
#   scripts/device-cpu-profile.sh [--bundle DIR] [--port N] [-- extra server flags...]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/device-serve-lib.sh"  # serve/stop, measure, the shapes
PORT=50093
device_args device-cpu-profile --port:PORT -- "$@" || exit 2
TARGET="127.0.0.1:$PORT"
SERVER_FLAGS=(--allow_shared_memory "${EXTRA_ARGS[@]}")

date -u; echo "cores: $(nproc)"; command -v perf nsys gdb || true
serve profile || exit 1
measure "cuda small c16" $SMALL --concurrency=16 --requests=20000 --warmup=50 --shared_memory=cuda
measure "cuda small c16 stream" $SMALL --concurrency=16 --requests=20000 --warmup=50 --mode=stream --shared_memory=cuda
measure "cuda small c16 conn16" $SMALL --concurrency=16 --requests=30000 --warmup=50 --connections=16 --shared_memory=cuda
measure "cuda small c16 16 streams" $SMALL --concurrency=16 --requests=30000 --warmup=50 --connections=16 --mode=stream \
  --shared_memory=cuda
measure "cuda tiny c128 conn16" $TINY --concurrency=128 --requests=60000 --warmup=100 --connections=16 --shared_memory=cuda
measure "bytes small c16 conn16" $SMALL --concurrency=16 --requests=20000 --warmup=50 --connections=16
profile_server "cuda small c16" 2 $SMALL --concurrency=16 --requests=60000 --warmup=50 --shared_memory=cuda
stop
echo "=== done"; date -u
