#!/usr/bin/env bash
# End to end on a GPU machine, from a bundle (scripts/device-bundle.sh sageserve sagectl): starts
# `sageserve --backend=cuda` on loopback, then real clients against it: sagectl health / info /
# selftest / attend (each recipe), and the Python grpcio client (bench/grpc_client.py) comparing O
# with torch SDPA in fp32. Logs go to $OUT (the device tool's output folder) or /tmp.
#
#   scripts/device-e2e.sh [--bundle DIR] [--port N]
# Exit status: 0 when every step passed.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/device-serve-lib.sh"  # device_args (LOG, B, the library path)
PORT=50077
device_args device-e2e --port:PORT -- "$@" || exit 2
LOGDIR="$LOG"
SERVE="$B/sageserve"
CTL="$B/sagectl"
TARGET="127.0.0.1:$PORT"
failures=0
step() {  # name, command...
  local name="$1"; shift
  echo "=== $name: $*"
  "$@"
  local rc=$?
  echo "=== $name: exit $rc"
  [ $rc -eq 0 ] || failures=$((failures + 1))
}

"$SERVE" --backend=cuda --listen="$TARGET" --log_level=info --allow_shared_memory >"$LOGDIR/sageserve.log" 2>&1 &
SERVER_PID=$!
ready=0
for _ in $(seq 1 60); do
  if "$CTL" health --target="$TARGET" >/dev/null 2>&1; then ready=1; break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
  sleep 0.5
done
if [ $ready -ne 1 ]; then
  echo "device-e2e: server did not become healthy; its log:"
  cat "$LOGDIR/sageserve.log"
  kill "$SERVER_PID" 2>/dev/null
  exit 1
fi

step health "$CTL" health --target="$TARGET"
step info "$CTL" info --target="$TARGET"
step selftest "$CTL" selftest --target="$TARGET"
for recipe in int8_qk_fp8_pv int8_qk_fp16_pv unquantized int4_qk_fp8_pv; do
  step "attend-$recipe" "$CTL" attend --target="$TARGET" --recipe="$recipe" --batch=3 --q_len=777 --k_len=777 \
    --heads_q=16 --heads_kv=4 --head_dim=128 --causal --lse --seed=11
done
step attend-d64-bf16 "$CTL" attend --target="$TARGET" --batch=2 --q_len=300 --k_len=1000 --heads_q=8 --heads_kv=8 \
  --head_dim=64 --dtype=bf16 --lse
# A bad request must fail with INVALID_ARGUMENT, and the server keep serving.
step attend-bad-headdim-must-fail bash -c "! '$CTL' attend --target='$TARGET' --head_dim=80 --q_len=10 --k_len=10"
step health-after-error "$CTL" health --target="$TARGET"
step python-grpc-causal python3 "$ROOT/bench/grpc_client.py" --target="$TARGET" --lens=1000,37,513,1 \
  --hq=16 --hkv=4 --d=128 --causal
step python-grpc-full python3 "$ROOT/bench/grpc_client.py" --target="$TARGET" --lens=2048,100 --hq=32 --hkv=8 \
  --d=64 --recipes=RECIPE_UNSPECIFIED,RECIPE_UNQUANTIZED
step python-shm-cuda python3 "$ROOT/bench/grpc_shm_client.py" --target="$TARGET" --shared-memory=cuda \
  --lens=4096 --causal
# A client killed (SIGKILL) while 16 of its requests read and write its CUDA region: the driver
# frees its allocation under them. The server must go on serving everyone else, CUDA regions too.
"$CTL" bench --target="$TARGET" --shared_memory=cuda --concurrency=16 --requests=1000000 --batch=1 --q_len=2048 \
  --k_len=2048 --heads_q=8 --heads_kv=8 --head_dim=128 >"$LOGDIR/vanishing_client.log" 2>&1 &
VANISH=$!
sleep 3
kill -9 "$VANISH" 2>/dev/null
wait "$VANISH" 2>/dev/null
step health-after-client-killed "$CTL" health --target="$TARGET"
step attend-after-client-killed "$CTL" attend --target="$TARGET" --batch=2 --q_len=500 --k_len=500 --heads_q=8 \
  --heads_kv=8 --head_dim=128 --causal --lse --seed=12
step shm-cuda-after-client-killed python3 "$ROOT/bench/grpc_shm_client.py" --target="$TARGET" --shared-memory=cuda \
  --lens=1024 --repeats=3
step python-shm-system python3 "$ROOT/bench/grpc_shm_client.py" --target="$TARGET" --shared-memory=system \
  --lens=1000,37,513,1 --hq=16 --hkv=4 --repeats=5

kill -TERM "$SERVER_PID"
wait "$SERVER_PID"
echo "=== sageserve exited with $? after SIGTERM"
echo "--- server log (tail)"
tail -n 20 "$LOGDIR/sageserve.log"
echo "device-e2e: $failures step(s) failed"
[ $failures -eq 0 ]
