#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz; clang, ASan + UBSan, CUDA off) and runs each one for a
# while, starting from its seed corpus in tests/fuzz/corpus/<target>/. Prints, per target, the
# executions done, the seconds taken, exec/s and whether it crashed; exits non-zero when any target
# crashed, failed a check or hit a sanitizer report.
#
#   scripts/fuzz.sh [--seconds N | --runs N] [--targets "a b"] [--build-dir DIR] [--out DIR]
#                   [--no-build] [--jobs N] [-- extra libFuzzer flags]
#
#   --seconds N   run each target N seconds (-max_total_time; default 60)
#   --runs N      run each target for N executions instead (-runs)
#   --targets     which targets (default: all five)
#   --build-dir   the fuzz build directory (default /tmp/sageserve-fuzz-build); configured when absent
#   --out         where logs, grown corpora and crash artifacts go (default <build-dir>/fuzz-out);
#                 crash inputs are <out>/artifacts/<target>-crash-<sha1> (reproduce: <target> <file>)
#   --no-build    use the binaries already in --build-dir
#   --jobs N      ninja's parallelism (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

all_targets="fuzz_attend_wire fuzz_request_codec fuzz_registry_json fuzz_metrics_http fuzz_shared_memory_resolve"
targets=$all_targets
seconds=60
runs=""
build_dir=/tmp/sageserve-fuzz-build
out=""
build=1
jobs=2
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) seconds=$2; runs=""; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --targets) targets=$2; shift 2 ;;
    --build-dir) build_dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --jobs) jobs=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
out=${out:-$build_dir/fuzz-out}

# Longest input per target: a few small tensors, a small registry file, one request head.
max_len() {
  case "$1" in
    fuzz_attend_wire | fuzz_request_codec) echo 8192 ;;
    fuzz_registry_json) echo 8192 ;;
    fuzz_metrics_http) echo 1024 ;;
    fuzz_shared_memory_resolve) echo 256 ;;
    *) echo 4096 ;;
  esac
}

if [[ $build == 1 ]]; then
  if [[ ! -f $build_dir/build.ninja ]]; then
    CC=clang CXX=clang++ cmake -S "$root" -B "$build_dir" -G Ninja -DSAGESERVE_FUZZ=ON -DSAGESERVE_ENABLE_CUDA=OFF \
      -DSAGESERVE_BUILD_TESTS=OFF -DSAGESERVE_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
  fi
  # shellcheck disable=SC2086
  ninja -C "$build_dir" -j "$jobs" $targets
fi

mkdir -p "$out/artifacts" "$out/logs"
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

failed=0
printf '%-28s %14s %9s %10s  %s\n' target executions seconds exec/s result
for t in $targets; do
  bin=$build_dir/tests/fuzz/$t
  if [[ ! -x $bin ]]; then
    echo "fuzz.sh: $bin is not built" >&2
    failed=1
    continue
  fi
  corpus=$out/corpus/$t  # grows; the checked-in seeds are only read
  mkdir -p "$corpus"
  log=$out/logs/$t.log
  limit=(-max_total_time="$seconds")
  [[ -n $runs ]] && limit=(-runs="$runs")
  start=$(date +%s.%N)
  rc=0
  "$bin" "${limit[@]}" -max_len="$(max_len "$t")" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$out/artifacts/$t-" "${extra[@]}" "$corpus" "$root/tests/fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  end=$(date +%s.%N)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", b - a }')
  result=ok
  if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|FUZZ_CHECK failed|deadly signal' "$log"; then
    result="CRASH (rc $rc; log $log; artifacts $out/artifacts/$t-*)"
    failed=1
  elif grep -q 'libFuzzer: run interrupted' "$log"; then
    result="interrupted (rc $rc)"
    failed=1
  elif [[ $rc != 0 ]]; then
    result="FAILED (rc $rc; log $log)"
    failed=1
  fi
  printf '%-28s %14s %9s %10s  %s\n' "$t" "${execs:-?}" "$secs" "${rate:-?}" "$result"
done
echo "logs: $out/logs  crash artifacts: $out/artifacts"
exit $failed
