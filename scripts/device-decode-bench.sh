#!/usr/bin/env bash
# KV sessions on a GPU machine, from a bundle (scripts/device-bundle.sh sageserve sagectl
# grpc_stream_ceiling): the decode shapes of the session issue through `sagectl bench --mode=decode`
# (Hq 32, Hkv 8, D 128; the pages in the GPU's pool, read in place by the paged decode kernel),
# each storage, the 256-client case with merging on and off beside gRPC's own small-message ceiling,
# and the same step sent as a stateless Attend (the whole K/V in the message). Layers are fewer than
# a model's 32: per layer-step numbers do not depend on the layer count, and the prefill (bulk
# imports) of 32 layers would take most of the run. Logs go to $OUT or /tmp.
#
#   scripts/device-decode-bench.sh [--bundle DIR] [--port N] [--quick]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/device-serve-lib.sh"
PORT=50081
QUICK=0  # --quick: the cases the targets name only (one storage, no stateless); --quicker: 1 x 32k and 256 clients
device_args device-decode-bench --port:PORT --quick:QUICK=1 --quicker:QUICK=2 -- "$@" || exit 2
TARGET="127.0.0.1:$PORT"
SERVER_FLAGS=(--kv_pool_bytes=$((16 << 30)) --max_message_bytes=$((1 << 30)) --allow_shared_memory)
failures=0
run() {  # name, command...
  local name="$1"; shift
  echo "=== $name: $*"
  "$@" 2>&1 | tee "$LOG/decode_$name.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || failures=$((failures + 1))
}
SHAPE="--heads_q=32 --heads_kv=8 --head_dim=128"
serve decode || exit 1
run s1_32k "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=8 --sessions=1 --context=32768 --steps=32
run s1_32k_stream "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=8 --sessions=1 --context=32768 \
  --steps=32 --stream
[ "$QUICK" != 0 ] || run s1_32k_16bit "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=8 --sessions=1 --context=32768 \
  --steps=32 --kv_storage=16bit
[ "$QUICK" = 2 ] || run s64_8k "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=4 --sessions=64 --clients=1 --context=8192 --steps=16
# The issue's case: Q and O in CUDA shared memory (the client's GPU buffers), then system shared memory.
[ "$QUICK" = 2 ] || run s64_8k_cuda "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=4 --sessions=64 --clients=1 \
  --context=8192 --steps=16 --shared_memory=cuda
[ "$QUICK" = 2 ] || run s1_32k_cuda "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=8 --sessions=1 --context=32768 \
  --steps=32 --stream --shared_memory=cuda
[ "$QUICK" != 0 ] || run s64_8k_system "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=4 --sessions=64 --clients=1 \
  --context=8192 --steps=16 --shared_memory=system
[ "$QUICK" != 0 ] || run s64_8k_16bit "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=4 --sessions=64 --clients=1 \
  --context=8192 --steps=16 --kv_storage=16bit
run c256_2k "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=2 --sessions=256 --clients=256 \
  --context=2048 --steps=16 --connections=8
run c256_2k_stream "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=2 --sessions=256 --clients=256 \
  --context=2048 --steps=16 --connections=8 --stream
# The same step as a stateless Attend: one query row over the whole context, inline.
[ "$QUICK" != 0 ] || run stateless_32k "$B/sagectl" bench --target="$TARGET" --batch=1 --q_len=1 --k_len=32768 $SHAPE --causal \
  --concurrency=1 --requests=20 --warmup=2
stop
# The same decode steps on a second server build (<bundle>/bin/sageserve_base, e.g. the previous
# commit's), and with the batcher's workers polling for work, side by side in this run.
if [ -x "$B/sageserve_base" ]; then
  SERVER_BIN=sageserve_base serve base || exit 1
  run base_s1_32k_stream "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=8 --sessions=1 --context=32768 \
    --steps=32 --stream
  run base_c256_2k_stream "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=2 --sessions=256 --clients=256 \
    --context=2048 --steps=16 --connections=8 --stream
  stop
fi
serve spin --worker_spin_us=200 || exit 1
run spin_s1_32k_stream "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=8 --sessions=1 --context=32768 \
  --steps=32 --stream
run spin_s1_32k_cuda "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=8 --sessions=1 --context=32768 \
  --steps=32 --stream --shared_memory=cuda
stop
# One launch per request (no merging), for the 256-client comparison.
serve nomerge --max_batch_tokens=0 || exit 1
run c256_2k_nomerge "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=2 --sessions=256 --clients=256 \
  --context=2048 --steps=16 --connections=8
run c256_2k_nomerge_stream "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=2 --sessions=256 --clients=256 \
  --context=2048 --steps=16 --connections=8 --stream
stop
# gRPC's own ceiling on this host for that traffic: 256 streams, one ~12 KiB message in flight each
# (a decode step's Q and new K/V), echoed by the callback API with no work.
if [ -x "$B/grpc_stream_ceiling" ]; then
  "$B/grpc_stream_ceiling" server --listen=127.0.0.1:50300 --api=callback >"$LOG/ceiling_server.log" 2>&1 &
  CEIL_PID=$!
  sleep 1
  run grpc_ceiling "$B/grpc_stream_ceiling" client --target=127.0.0.1:50300 --streams=256 --in_flight=1 \
    --bytes=12288 --messages=300000
  kill "$CEIL_PID" 2>/dev/null; wait "$CEIL_PID" 2>/dev/null
fi
echo "device-decode-bench: $failures failed"
[ "$failures" -eq 0 ]
