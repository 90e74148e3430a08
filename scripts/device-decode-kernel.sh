#!/usr/bin/env bash
# One device call for the paged decode kernels alone (issue 20): the kernels' GPU tests, then
# bench/decode_bench.py over the bundle's library beside torch SDPA, the variant libraries of
# scripts/build-decode-variant.sh found in <bundle>/variants/NAME/, and the head-major page layout,
# then Nsight Compute on the 8-bit kernel (both layouts) and on the split + merge kernels of one
# long sequence, then the session GPU test. Logs under $OUT; the tables go to stdout.
#   [CASES=64x4096,...] [LAYOUTS=token,head] [NCU=0] [TORCH=0] scripts/device-decode-kernel.sh [--bundle DIR]
# LAYOUTS (default token): the page row orders the first bench times every library with; head-major
# alone is timed again after it unless LAYOUTS has it.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="$ROOT/.bundle"
[ "${1:-}" = "--bundle" ] && BUNDLE="$(realpath "$2")"
LOG="${OUT:-/tmp}"
LIB="$BUNDLE/lib/libsageattn.so"
CASES="${CASES:-64x4096,16x16384,4x65536,1x32768,64x8192}"
export LD_LIBRARY_PATH="$BUNDLE/lib:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee /tmp/gpu.txt

for t in paged_decode_gpu_test kv_quantize_gpu_test paged_gather_gpu_test kv_memory_gpu_test cuda_backend_gpu_test session_cuda_shm_gpu_test; do
  [ -x "$BUNDLE/bin/$t" ] || continue
  echo "=== $t"
  timeout 200 "$BUNDLE/bin/$t" --gtest_brief=1 2>&1 | grep -v "^\[20" | tail -30
done 2>&1 | tee "$LOG/gpu_test.log"

libs=(--lib "ours=$LIB")
for v in "$BUNDLE"/variants/*/libsageattn.so; do
  [ -f "$v" ] && libs+=(--lib "$(basename "$(dirname "$v")")=$v")
done
echo "=== decode_bench: ${libs[*]}"
timeout 300 python3 "$ROOT/bench/decode_bench.py" "${libs[@]}" --layouts "${LAYOUTS:-token}" --cases "$CASES" --iters 20 \
  $([ "${TORCH:-1}" = 0 ] && echo --no-torch) --out "$LOG/decode_bench.json" 2>&1 | grep -v "^done" | tee "$LOG/decode_bench.log"
# Sessions on a cuda server against the CPU server (every storage).
if [ -x "$BUNDLE/bin/session_gpu_test" ]; then
  echo "=== session_gpu_test"
  timeout "${SESSION_TEST_S:-200}" "$BUNDLE/bin/session_gpu_test" --gtest_brief=1 2>&1 | grep -v "^\[20" | tail -20 | tee "$LOG/session_gpu_test.log"
fi
[[ ${LAYOUTS:-token} == *head* ]] || { echo "=== decode_bench, head-major pages"
timeout 200 python3 "$ROOT/bench/decode_bench.py" --lib "ours=$LIB" --layouts head --cases "$CASES" --iters 20 --no-torch \
  --out /tmp/decode_bench_head.json 2>&1 | grep -v "^done" | tee "$LOG/decode_bench_head.log"; }

if [ "${NCU:-1}" != 0 ] && command -v ncu >/dev/null; then
sections=(--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats
          --section Occupancy --section LaunchStats)
profile() {  # NAME LAYOUT CASE KERNEL_REGEX COUNT
  timeout 150 ncu "${sections[@]}" --kernel-name-base mangled --kernel-name "regex:$4" --launch-skip 2 --launch-count "$5" \
    python3 "$ROOT/bench/decode_bench.py" --lib "ours=$LIB" --layouts "$2" --cases "$3" --iters 3 --no-torch \
    --out "/tmp/ncu_$1.json" > "$LOG/ncu_$1.txt" 2>&1
  echo "=== ncu $1 (rc $?)"
  grep -E "^  [A-Za-z_]+.*\(|Duration|DRAM Throughput|Memory Throughput|Compute \(SM\)|Achieved Occupancy|Theoretical Occ|Block Limit|Registers Per|Issue Slots Busy|No Eligible|Active Warps Per|Eligible Warps|Warp Cycles Per Issued|dram__bytes|L2 Hit|L1/TEX Hit|Mem Busy|Max Bandwidth|Stall|stall" \
    "$LOG/ncu_$1.txt" | grep -v "^==PROF==" | head -60
}
# The 8-bit kernel (KvCodes 1) of 64 x 8k, token- and head-major pages; the split and merge of 1 x 32k.
profile int8_token token 64x8192 "PagedDecodeMmaKernelILNS0_7KvCodesE1" 1
profile int8_head head 64x8192 "PagedDecodeMmaKernelILNS0_7KvCodesE1" 1
profile split_1x32k token 1x32768 "PagedDecode(Mma|Merge)Kernel" 4
fi
