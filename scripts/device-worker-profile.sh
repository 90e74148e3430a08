#!/usr/bin/env bash
# Where the scheduler's workers spend their time under 16 clients' small requests (CUDA shared
# memory): perf of `sageserve --backend=cuda` during one bench per transport, with the views of the
# threads named sage-worker alone (launch, wait, answer). Bundle: scripts/device-bundle.sh
# --keep-symbols sageserve sagectl --file /usr/bin/perf. Report: $OUT/bench.log (or /tmp).
#
#   scripts/device-worker-profile.sh [--bundle DIR] [-- extra server flags...]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/device-serve-lib.sh"  # serve/stop, profile_server, the shapes
device_args device-worker-profile -- "$@" || exit 2
TARGET="127.0.0.1:50105"
SERVER_FLAGS=(--allow_shared_memory "${EXTRA_ARGS[@]}")
export PROFILE_COMM=sage-worker

date -u; echo "server flags: ${SERVER_FLAGS[*]}"
C16="$SMALL --concurrency=16 --requests=200000 --warmup=100 --shared_memory=cuda"
serve worker-profile || exit 1
profile_server "small c16 unary, 16 connections" 3 $C16 --connections=16
profile_server "small c16, 1 stream" 3 $C16 --mode=stream
stop >/dev/null
echo "=== done"; date -u
