#!/usr/bin/env bash
# KV sessions on a GPU machine, from a bundle (scripts/device-bundle.sh sageserve sagectl): the
# decode shapes of the session issue through `sagectl bench --mode=decode` (8-bit KV, Hq 32, Hkv 8,
# D 128), each beside the same step sent as a stateless Attend (the whole K/V in the message).
# Layers are fewer than a model's 32 where the host-side gather of this first version would take
# minutes: per layer-step numbers do not depend on the layer count. Logs go to $OUT or /tmp.
#
#   scripts/device-decode-bench.sh [--bundle DIR] [--port N]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/device-serve-lib.sh"
PORT=50081
device_args device-decode-bench --port:PORT -- "$@" || exit 2
TARGET="127.0.0.1:$PORT"
SERVER_FLAGS=(--kv_pool_bytes=$((8 << 30)) --max_message_bytes=$((1 << 30)))
failures=0
run() {  # name, command...
  local name="$1"; shift
  echo "=== $name: $*"
  "$@" 2>&1 | tee "$LOG/decode_$name.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || failures=$((failures + 1))
}
SHAPE="--heads_q=32 --heads_kv=8 --head_dim=128"
serve decode || exit 1
run s1_32k "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=4 --sessions=1 --context=32768 --steps=8
run s64_8k "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=2 --sessions=64 --clients=2 --context=8000 --steps=4 --connections=2
run c256_2k "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=2 --sessions=256 --clients=256 \
  --context=2048 --steps=4 --connections=8
run s1_32k_16bit "$B/sagectl" bench --target="$TARGET" --mode=decode $SHAPE --layers=4 --sessions=1 --context=32768 \
  --steps=8 --kv_storage=16bit
# The same decode step as a stateless Attend: one query row over the whole context, inline.
run stateless_32k "$B/sagectl" bench --target="$TARGET" --batch=1 --q_len=1 --k_len=32768 $SHAPE --causal \
  --concurrency=1 --requests=20 --warmup=2
run stateless_8k "$B/sagectl" bench --target="$TARGET" --batch=1 --q_len=1 --k_len=8192 $SHAPE --causal \
  --concurrency=1 --requests=20 --warmup=2
stop
echo "device-decode-bench: $failures failed"
[ "$failures" -eq 0 ]
