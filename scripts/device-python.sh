#!/usr/bin/env bash
# The Python client on the GPU machine (python3 with torch, transformers, grpcio, protobuf and
# numpy; no gRPC C++ libraries): runs the gpu-labelled Python tests (and the client and shared-memory
# ones, against the cuda backend) as plain python invocations, then measures the Python client's
# added latency per call over the C++ client's (`sagectl bench`, same shapes, one call in flight):
# bytes in the messages, and CUDA IPC (torch CUDA tensors; sagectl --shared_memory=cuda). Under 5
# minutes.
#
#   scripts/device-bundle.sh sageserve sagectl        # here: .bundle/{bin,lib}
#   device run: carry [".bundle"], command "bash scripts/device-python.sh"
#
# Logs, versions, the test results (summary.txt) and bench.md (a table for docs/BENCHMARKS.md) go
# to $OUT (default .device/python). Exit status 1 when a test failed or a bench did not run.
# $PYTHON picks the interpreter (default python3), $BENCH_REQUESTS the timed calls (default 300),
# $BUDGET_S the whole run's time (default 285 s: every step's timeout comes out of it).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${OUT:-$root/.device/python}
mkdir -p "$out"
bundle=$root/.bundle
export LD_LIBRARY_PATH=$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export SAGESERVE_BINARY=$bundle/bin/sageserve SAGECTL_BINARY=$bundle/bin/sagectl
export SAGESERVE_BACKEND=${SAGESERVE_BACKEND:-cuda} SAGESERVE_GPU_TESTS=1  # never skipped here
export SAGESERVE_PYTHON_PACKAGE=$root/client/python PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH=$root/client/python${PYTHONPATH:+:$PYTHONPATH}
py=${PYTHON:-python3}
summary=$out/summary.txt
: >"$summary"
status=0
# The whole run stays under 5 minutes however a step hangs: each step's timeout is at most what is
# left of the budget (and at most its own limit).
deadline=$(( $(date +%s) + ${BUDGET_S:-285} ))
limit() {  # limit SECONDS: the timeout for the next step, or 0 when the budget is spent
  local left=$(( deadline - $(date +%s) ))
  (( left > $1 )) && left=$1
  (( left < 5 )) && left=0
  echo "$left"
}
bounded() {  # bounded SECONDS CMD...: CMD under `timeout`, or fails at once when no time is left
  local secs
  secs=$(limit "$1"); shift
  (( secs > 0 )) || { echo "device-python: time budget spent, not run: $*"; return 124; }
  timeout "$secs" "$@"
}

for f in "$SAGESERVE_BINARY" "$SAGECTL_BINARY"; do
  [[ -x $f ]] || { echo "device-python: $f missing (scripts/device-bundle.sh sageserve sagectl)" | tee -a "$summary"; exit 1; }
done
{
  "$py" -c 'import sys, torch, grpc, google.protobuf as pb, numpy
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "grpcio", grpc.__version__, "protobuf", pb.__version__, "numpy", numpy.__version__)
try:
    import transformers; print("transformers", transformers.__version__)
except ImportError as e:
    print("transformers missing:", e)'
  nvidia-smi -L 2>/dev/null
} >"$out/versions.txt" 2>&1
cat "$out/versions.txt"

# --- tests ------------------------------------------------------------------------------------
# name:seconds[:unittest selections]; test_client's TLS case is left to CI (it needs the openssl CLI).
for entry in torch_sdpa:60 dit:45 transformers:100 "client:45:CppParityTest AttendTest" shared_memory:60; do
  IFS=: read -r t secs sel <<<"$entry"
  read -r -a only <<<"$sel"
  start=$(date +%s)
  bounded "$secs" "$py" "tests/client/python/test_$t.py" -v "${only[@]}" >"$out/test_$t.log" 2>&1
  rc=$?
  line="test_$t: $([[ $rc == 0 ]] && echo passed || echo "FAILED (exit $rc)") in $(( $(date +%s) - start )) s"
  echo "$line" | tee -a "$summary"
  grep -E "^  .*cos" "$out/test_$t.log" | tee -a "$summary"  # the accuracy lines the tests print
  [[ $rc == 0 ]] || status=1
done

# --- latency: Python client vs C++ client ------------------------------------------------------
"$SAGESERVE_BINARY" --listen=127.0.0.1:0 --backend="$SAGESERVE_BACKEND" --allow_shared_memory \
  --log_level=warn >"$out/bench-server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null' EXIT
port=""
for _ in $(seq 600); do
  port=$(grep -oE 'listening on port [0-9]+' "$out/bench-server.log" | grep -oE '[0-9]+$' || true)
  [[ -n $port ]] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
[[ -n $port ]] || { echo "device-python: the bench server did not start" | tee -a "$summary"; cat "$out/bench-server.log"; exit 1; }
target=127.0.0.1:$port

# name|problem flags: a decode-shaped Attend (one query row over 4k keys) and a 512-token prefill.
shapes=(
  "decode q1 k4096 h32/8 d128|--batch=1 --q_len=1 --k_len=4096 --heads_q=32 --heads_kv=8 --head_dim=128"
  "prefill q512 k512 h16/16 d128|--batch=1 --q_len=512 --k_len=512 --heads_q=16 --heads_kv=16 --head_dim=128"
)
common=(--requests=${BENCH_REQUESTS:-300} --warmup=20 --concurrency=1 --recipe=int8_qk_fp8_pv)
p50() { grep -oE 'latency us: p50 [0-9]+' "$1" | grep -oE '[0-9]+$'; }
# Python twice: every call from torch/numpy arrays to answer arrays (what a user's call costs), and
# one prepared request sent as it is (what sagectl bench times: its request is built once).
{
  echo "| shape | path | C++ sagectl p50 us | Python, arrays per call, p50 us (added) | Python, prepared request, p50 us (added) |"
  echo "|---|---|---|---|---|"
} >"$out/bench.md"
for entry in "${shapes[@]}"; do
  name=${entry%%|*}
  read -r -a flags <<<"${entry#*|}"
  for path in none cuda; do
    tag="${name// /_}-$path"
    tag=${tag//\//-}
    cc_flags=()
    [[ $path == cuda ]] && cc_flags=(--shared_memory=cuda)
    bounded 30 "$SAGECTL_BINARY" bench --target="$target" "${flags[@]}" "${common[@]}" "${cc_flags[@]}" \
      >"$out/bench-cc-$tag.log" 2>&1 || status=1
    bounded 40 "$py" -m sageserve bench --target="$target" "${flags[@]}" "${common[@]}" \
      --shared_memory="$path" >"$out/bench-py-$tag.log" 2>&1 || status=1
    bounded 40 "$py" -m sageserve bench --target="$target" "${flags[@]}" "${common[@]}" \
      --shared_memory="$path" --prepared >"$out/bench-pyprep-$tag.log" 2>&1 || status=1
    cc=$(p50 "$out/bench-cc-$tag.log")
    cells=()
    for f in "$out/bench-py-$tag.log" "$out/bench-pyprep-$tag.log"; do
      v=$(p50 "$f")
      if [[ -n $cc && -n $v ]]; then cells+=("$v ($(( v - cc )))"); else cells+=("${v:-failed}"); fi
    done
    label=$([[ $path == cuda ]] && echo "CUDA IPC" || echo "bytes")
    echo "| $name | $label | ${cc:-failed} | ${cells[0]} | ${cells[1]} |" >>"$out/bench.md"
  done
done
cat "$out/bench.md" | tee -a "$summary"
echo "device-python: $([[ $status == 0 ]] && echo "all passed" || echo "FAILURES (see $out)")" | tee -a "$summary"
exit $status
