#!/usr/bin/env bash
# The device run that decides whether the paged decode's TMA reads (PagedDecodePlan::tma, off by
# default: SAGE_DECODE_TMA) become the default, and that first runs the head-major session pool
# on a GPU. Build the bundle here first:
#
#   scripts/device-bundle.sh --build-dir build --no-build sageserve sagectl sageattn paged_decode_gpu_test \
#       kv_quantize_gpu_test paged_gather_gpu_test kv_memory_gpu_test session_gpu_test session_cuda_shm_gpu_test
#   scripts/build-decode-variant.sh .bundle/variants/tma -DSAGE_DECODE_TMA=1
#   ALLOW_SPILLS=1 scripts/build-decode-variant.sh .bundle/variants/tma_s3c4 -DSAGE_DECODE_TMA=1 \
#       -DSAGE_DECODE_MMA_STAGES=3 -DSAGE_DECODE_MMA_MIN_CTAS=4
#   for v in .bundle/variants/*; do rm -f $v/paged_decode.cu.o; strip $v/libsageattn.so; done
#   tar cJf .bundle.tar.xz .bundle       # carry [".bundle.tar.xz"]: over 64 MiB unpacked
#
# On the device: tar xJf .bundle.tar.xz && OUT=... scripts/device-decode-tma.sh
# Steps, logs under $OUT: (1) every kernel and session GPU test and the decode bench of the base
# library (cp.async) beside the variants and torch, head-major pages (device-decode-kernel.sh);
# (2) the decode and session GPU tests again with the TMA library first on the library path (a
# hang there is a lost mbarrier phase: each test has a timeout); (3) end-to-end decode for each
# storage through a server on the base library, then on the TMA library. All three take about
# nine minutes; STEPS=1,2 and STEPS=3 split them over two device calls. NCU=1 adds (4).
set -uo pipefail
STEPS="${STEPS:-1,2,3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="$ROOT/.bundle"
LOG="${OUT:-/tmp}"
BASE_LIB_PATH="$BUNDLE/lib:${LD_LIBRARY_PATH:-}"
TMA_LIB_PATH="$BUNDLE/variants/tma:$BASE_LIB_PATH"

if [[ $STEPS == *1* ]]; then
echo "=== (1) base library: GPU tests and decode bench"
LAYOUTS=head NCU="${NCU:-0}" SESSION_TEST_S=150 bash "$ROOT/scripts/device-decode-kernel.sh" > "$LOG/kernel.txt" 2>&1
echo "rc $?"
grep -E "PASSED|FAILED|^===|tests ran|Failure" "$LOG/kernel.txt" | head -40
fi

if [[ $STEPS == *2* ]]; then
echo "=== (2) TMA library: decode and session GPU tests"
for t in paged_decode_gpu_test session_gpu_test session_cuda_shm_gpu_test; do
  [ -x "$BUNDLE/bin/$t" ] || continue
  echo "== $t"
  LD_LIBRARY_PATH="$TMA_LIB_PATH" timeout 200 "$BUNDLE/bin/$t" --gtest_brief=1 2>&1 | grep -v "^\[20" | tail -20
  echo "rc ${PIPESTATUS[0]}"
done 2>&1 | tee "$LOG/tma_tests.txt"
fi

if [[ $STEPS == *3* ]]; then
echo "=== (3) end to end: base library, then TMA library"
(cd "$ROOT" && LIB_PATH="$BASE_LIB_PATH" OUT="$LOG" timeout 200 bash scripts/device-session-storages.sh) 2>&1 | tee "$LOG/e2e_base.txt"
(cd "$ROOT" && LIB_PATH="$TMA_LIB_PATH" OUT="$LOG" timeout 200 bash scripts/device-session-storages.sh) 2>&1 | tee "$LOG/e2e_tma.txt"
fi

# (4) with NCU=1: Nsight Compute on the TMA library's 8-bit kernel at 64 x 8k (issue slots, stalls,
# DRAM throughput beside last session's cp.async profile in docs/BENCHMARKS.md).
if [[ ${NCU:-0} == 1 ]] && command -v ncu >/dev/null; then
  echo "=== (4) ncu: TMA 8-bit kernel, 64 x 8k"
  LD_LIBRARY_PATH="$TMA_LIB_PATH" timeout 150 ncu --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats \
    --kernel-name-base mangled --kernel-name "regex:PagedDecodeMmaKernelILNS0_7KvCodesE1E" --launch-skip 2 --launch-count 1 \
    python3 "$ROOT/bench/decode_bench.py" --lib "tma=$BUNDLE/variants/tma/libsageattn.so" --layouts head --cases 64x8192 \
    --iters 3 --no-torch --out /tmp/ncu_tma.json > "$LOG/ncu_tma.txt" 2>&1
  grep -E "Duration|DRAM Throughput|Registers Per|Eligible|Issued Warp|Warp Cycles Per Issued|L2 Hit|Theoretical Occ" "$LOG/ncu_tma.txt" | head -20
fi
