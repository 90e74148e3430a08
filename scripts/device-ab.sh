#!/usr/bin/env bash
# Two server builds (or two settings of one) side by side on a GPU machine: the bundle's sageserve
# ("new") and another binary put in the bundle with --file ("old"), one process at a time,
# alternating, repeated. Prints each case's req/s and server (total - kernel)/kernel p50 per repetition.
# Logs go to $OUT or /tmp.
#   scripts/device-bundle.sh --build-dir build --no-build --file /tmp/sageserve_old sageserve sagectl
#   scripts/device-ab.sh --compare sageserve_old [--reps N] [--bundle DIR]
#       [--new BIN] [--new-flags "server flags"] [--old-flags "server flags"]
#       [--shm cuda|system|none]
# --new names the "new" binary in the bundle's bin/ (default sageserve; e.g. null_engine_server, with
# --shm system: the null engine has no CUDA shared memory). --shm: the benches' tensors (default cuda).
# A flag A/B of one build: --compare sageserve --old-flags "--cuda_sync=spin" --new-flags "--cuda_sync=yield".
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/device-serve-lib.sh"  # serve/stop and the shapes
REPS=2
OLD=""
NEW_BIN=sageserve
SHM=cuda
NEW_FLAGS=""
OLD_FLAGS=""
device_args device-ab --reps:REPS --compare:OLD --new:NEW_BIN --shm:SHM --new-flags:NEW_FLAGS --old-flags:OLD_FLAGS -- "$@" || exit 2
[ -n "$OLD" ] || { echo "device-ab: --compare BIN (a server binary in the bundle's bin/) is required" >&2; exit 2; }
TARGET="127.0.0.1:50101"
SERVER_FLAGS=(--allow_shared_memory)

declare -A FLAGS=(
  [tiny-s256]="$TINY --concurrency=256 --connections=16 --requests=150000 --warmup=200 --mode=stream"
  [small-s64]="$SMALL --concurrency=64 --connections=8 --requests=80000 --warmup=100 --mode=stream"
  [small-c16-s16]="$SMALL --concurrency=16 --connections=16 --requests=30000 --warmup=100 --mode=stream"
  [small-c16-s1]="$SMALL --concurrency=16 --requests=20000 --warmup=100 --mode=stream"
  [small-c16-conn16]="$SMALL --concurrency=16 --connections=16 --requests=30000 --warmup=100"
  [tiny-c128-conn16]="$TINY --concurrency=128 --connections=16 --requests=60000 --warmup=200"
)
CASES=(tiny-s256 small-s64 small-c16-s16 small-c16-s1 small-c16-conn16 tiny-c128-conn16)
date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
declare -A CELL
for rep in $(seq 1 "$REPS"); do
  for which in new old; do
    bin="$NEW_BIN"; flags="$NEW_FLAGS"
    [ "$which" = old ] && { bin="$OLD"; flags="$OLD_FLAGS"; }
    # shellcheck disable=SC2086  # flags are words
    SERVER_BIN="$bin" serve "ab-$which-$rep" $flags || exit 1
    for c in "${CASES[@]}"; do
      out=$(timeout 120 "$B/sagectl" bench --target="$TARGET" ${FLAGS[$c]} --shared_memory="$SHM" 2>&1)
      echo "$out" >>"$LOG/ab_bench.log"
      rate=$(sed -n 's/^throughput: \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
      over=$(sed -n 's/.*total - kernel p50 \([0-9]*\) .*/\1/p' <<<"$out")
      kern=$(sed -n 's/.*; kernel p50 \([0-9]*\);.*/\1/p' <<<"$out")
      grep -q " 0 failed" <<<"$out" || rate=0
      CELL["$c $which"]+="$(printf '%.0f' "${rate:-0}") (${over:-?}/${kern:-?} us)  "
    done
    stop >/dev/null
  done
done
printf "%-18s | %-44s | %s\n" "case" "new ($NEW_BIN $NEW_FLAGS): req/s (total-kernel/kernel p50 us) per rep" "old ($OLD $OLD_FLAGS)"
for c in "${CASES[@]}"; do printf "%-18s | %-44s | %s\n" "$c" "${CELL["$c new"]}" "${CELL["$c old"]}"; done
echo "=== done"; date -u
