#!/usr/bin/env bash
# The sanitizer builds (clang, CUDA off; CMake presets `asan` and `tsan`) and their tests:
#
#   asan  build-asan: AddressSanitizer + UndefinedBehaviorSanitizer over all project code (a UBSan
#         finding aborts), every test, and the libFuzzer targets too (SAGESERVE_FUZZ), so that
#         `scripts/fuzz.sh --build-dir build-asan` runs them without a second build. Runs every
#         CTest test but the gpu-labelled ones.
#   tsan  build-tsan: ThreadSanitizer; builds only the `tsan_tests` target and runs the tests
#         labelled `tsan` (threads of the project's own, no gRPC, no Abseil locks: tests/CMakeLists.txt).
#
#   scripts/sanitize.sh [--only asan|tsan] [--jobs N]
#
# Sanitizer reports of any process (the tests, and the server and sagectl binaries some tests start)
# are written under <build dir>/sanitizer-logs/; one there fails the run even where the test that
# started the process did not notice, and is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

only=""
jobs=$(nproc)
while [[ $# -gt 0 ]]; do
  case "$1" in
    --only) only=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    *) echo "sanitize.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$only" in "" | asan | tsan) ;; *) echo "sanitize.sh: --only asan or tsan" >&2; exit 2 ;; esac

bash scripts/bootstrap.sh
for tool in clang clang++ llvm-symbolizer; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "sanitize.sh: $tool not found (scripts/bootstrap.sh installs it)" >&2
    exit 1
  fi
done
# Stack traces with file:line (every sanitizer reads this).
export ASAN_SYMBOLIZER_PATH=${ASAN_SYMBOLIZER_PATH:-$(command -v llvm-symbolizer)}

# Prints what the sanitizers wrote in $1 and fails when any of it is a report (every ASan, LSan,
# UBSan and TSan report ends in a SUMMARY line). Warnings alone (with allocator_may_return_null,
# "failed to allocate" for a request the code is meant to survive) are printed and let pass.
check_logs() {
  local dir=$1 f reports=0
  for f in "$dir"/*; do
    [[ -f $f ]] || continue
    echo "==== $f"
    cat "$f"
    if grep -q '^SUMMARY: ' "$f"; then reports=$((reports + 1)); fi
  done
  if [[ $reports != 0 ]]; then
    echo "sanitize.sh: $reports sanitizer report(s) in $dir (above)" >&2
    return 1
  fi
}

now() { date +%s; }

run_asan() {
  local dir=$root/build-asan t0 t1 t2
  local logs=$dir/sanitizer-logs
  t0=$(now)
  cmake --preset asan
  cmake --build --preset asan -j "$jobs"
  t1=$(now)
  rm -rf "$logs" && mkdir -p "$logs"
  # detect_leaks: LeakSanitizer at every exit. UBSan's halt is compiled in (-fno-sanitize-recover).
  # allocator_may_return_null: a request the allocator cannot meet returns null (nothrow new,
  # malloc) or throws bad_alloc, as with glibc, instead of aborting the process; the code handles
  # it (HeapBufferPool.ImpossibleSizeIsResourceExhausted asks for 2^62 bytes).
  local rc=0
  ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:allocator_may_return_null=1:log_path=$logs/report" \
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$logs/report" \
    ctest --preset asan -j "$jobs" || rc=$?
  check_logs "$logs" || rc=1
  [[ $rc == 0 ]] || return "$rc"
  t2=$(now)
  echo "sanitize.sh: asan: build $((t1 - t0)) s, tests $((t2 - t1)) s"
}

run_tsan() {
  local dir=$root/build-tsan t0 t1 t2
  local logs=$dir/sanitizer-logs
  t0=$(now)
  cmake --preset tsan
  cmake --build --preset tsan -j "$jobs"
  t1=$(now)
  rm -rf "$logs" && mkdir -p "$logs"
  local rc=0
  TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:log_path=$logs/report" \
    ctest --preset tsan -j "$jobs" || rc=$?
  check_logs "$logs" || rc=1
  [[ $rc == 0 ]] || return "$rc"
  t2=$(now)
  echo "sanitize.sh: tsan: build $((t1 - t0)) s, tests $((t2 - t1)) s"
}

if [[ $only != tsan ]]; then run_asan; fi
if [[ $only != asan ]]; then run_tsan; fi
echo "sanitize.sh: done"
