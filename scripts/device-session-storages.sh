#!/usr/bin/env bash
# End-to-end decode through gRPC on a cuda server for each session KV storage (16-bit, INT8 K /
# FP8 V, INT4 K / FP8 V): one 32k session on a stream and 64 sessions x 8k in one call per
# layer-step, Hq 32 / Hkv 8 / D 128. Bundle: scripts/device-bundle.sh sageserve sagectl sageattn.
#   OUT=... scripts/device-session-storages.sh     (on the device, from the checkout root)
set -uo pipefail
OUT="${OUT:-/tmp}"
export LD_LIBRARY_PATH=${LIB_PATH:-$PWD/.bundle/lib}; B=.bundle/bin  # LIB_PATH: e.g. a variant library first
$B/sageserve --backend=cuda --listen=127.0.0.1:50081 --log_level=warn --kv_pool_bytes=$((16<<30)) --max_message_bytes=$((1<<30)) > $OUT/srv.log 2>&1 & P=$!
for i in $(seq 80); do $B/sagectl health --target=127.0.0.1:50081 >/dev/null 2>&1 && break; sleep 0.25; done
S="--heads_q=32 --heads_kv=8 --head_dim=128"
for st in 16bit int8_k_fp8_v int4_k_fp8_v; do
  echo "== 1x32k stream $st"; timeout 60 $B/sagectl bench --target=127.0.0.1:50081 --mode=decode $S --layers=8 --sessions=1 --context=32768 --steps=32 --stream --kv_storage=$st 2>&1 | grep -E "p50|layer-steps|failed|rror"
  echo "== 64x8k $st"; timeout 60 $B/sagectl bench --target=127.0.0.1:50081 --mode=decode $S --layers=4 --sessions=64 --context=8192 --steps=16 --kv_storage=$st 2>&1 | grep -E "p50|layer-steps|failed|rror"
done
kill $P; wait $P
