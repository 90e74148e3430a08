#!/usr/bin/env bash
# Batching gain through gRPC on a GPU machine, measured so that run-to-run drift cancels: each
# repetition runs every case against a merging server, then against one with --max_batch_tokens=0
# (one server process at a time: a second CUDA context on the GPU slowed the one-per-launch server by
# a third in a trial), on the same shapes, transports and client counts. Prints req/s per repetition
# and the median ratio. Bundle: scripts/device-bundle.sh sageserve sagectl. Logs go to $OUT or /tmp.
#
#   scripts/device-batching-gain.sh [--bundle DIR] [--reps N]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/device-serve-lib.sh"  # serve/stop and the shared shapes
REPS=3
device_args device-batching-gain --reps:REPS -- "$@" || exit 2
TARGET="127.0.0.1:50095"
SERVER_FLAGS=(--allow_shared_memory)

rate() {  # target, bench flags... ; prints req/s (0 when the bench failed)
  local out
  out=$(timeout 120 "$B/sagectl" bench --target="$1" "${@:2}" 2>&1)
  echo "$out" >>"$LOG/gain_bench.log"
  if ! grep -q " 0 failed" <<<"$out"; then echo 0; return; fi
  sed -n 's/^throughput: \([0-9.]*\) req\/s.*/\1/p' <<<"$out"
}

date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
# Unary: one thread per client. Streams: AttendStream calls fed by a thread each (sagectl bench
# --mode=stream), one per connection, with the clients' requests in flight over them.
declare -A FLAGS=(
  [tiny]="$TINY --concurrency=128 --connections=16 --requests=60000 --warmup=200"
  [tiny-s128]="$TINY --concurrency=128 --connections=16 --requests=120000 --warmup=200 --mode=stream"
  [tiny-s256]="$TINY --concurrency=256 --connections=16 --requests=150000 --warmup=200 --mode=stream"
  [small]="$SMALL --concurrency=64 --connections=8 --requests=40000 --warmup=100"
  [small-s64]="$SMALL --concurrency=64 --connections=8 --requests=80000 --warmup=100 --mode=stream"
)
declare -A LABEL=(
  [tiny]="tiny, 128 clients unary on 16 connections" [tiny-s128]="tiny, 128 in flight on 16 streams"
  [tiny-s256]="tiny, 256 in flight on 16 streams" [small]="small, 64 clients unary on 8 connections"
  [small-s64]="small, 64 in flight on 8 streams"
)
CASES=("tiny cuda" "tiny-s128 cuda" "tiny-s256 cuda" "tiny none" "small cuda" "small-s64 cuda" "small none")
declare -A RATE
for rep in $(seq 1 "$REPS"); do
  for mode in on off; do
    extra=(); [ "$mode" = off ] && extra=(--max_batch_tokens=0)
    serve "gain-$mode-$rep" "${extra[@]}" || exit 1
    for c in "${CASES[@]}"; do
      read -r shape shm <<<"$c"
      RATE["$c $mode $rep"]=$(rate "$TARGET" ${FLAGS[$shape]} --shared_memory=$shm)
    done
    stop >/dev/null
  done
done
printf "%-58s %s\n" "case" "merging / one per launch, req/s per repetition -> median ratio"
for c in "${CASES[@]}"; do
  ratios=(); cells=""
  for rep in $(seq 1 "$REPS"); do
    on=${RATE["$c on $rep"]}; off=${RATE["$c off $rep"]}
    cells+=" $(printf '%.0f/%.0f' "$on" "$off")"
    ratios+=("$(awk -v a="$on" -v b="$off" 'BEGIN { print (b > 0 ? a / b : 0) }')")
  done
  median=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
  read -r shape shm <<<"$c"
  printf "%-58s %s -> %.2fx\n" "${LABEL[$shape]}, shm $shm" "$cells" "$median"
done
echo "=== done"; date -u
