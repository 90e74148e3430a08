#!/usr/bin/env bash
# Builds everything and runs every test. GPU tests (CTest label `gpu`) skip themselves where no GPU
# is visible; pass --no-gpu to leave them out entirely (CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
ctest_args=()
for a in "$@"; do
  case "$a" in
    --no-gpu) ctest_args+=(-LE gpu) ;;
    *) echo "test.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done
bash scripts/bootstrap.sh
preset=default
cmake --preset "$preset"
cmake --build --preset "$preset" -j "$(nproc)"
ctest --preset "$preset" -j "$(nproc)" "${ctest_args[@]}"
