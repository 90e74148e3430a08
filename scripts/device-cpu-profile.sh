#!/usr/bin/env bash
# Where the host's CPU goes while `sagectl bench` loads `sageserve --backend=cuda` on a GPU machine
# (bundle: scripts/device-bundle.sh sageserve sagectl): cores used by the server, by the client and by
# the whole machine during each bench (from /proc), and, where `perf` exists, the server's hottest
# symbols. Logs go to $OUT or /tmp.
#
#   scripts/device-cpu-profile.sh [--bundle DIR] [--port N] [-- extra server flags...]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="$ROOT/.bundle"
PORT=50093
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) BUNDLE="$(realpath "$2")"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "device-cpu-profile: unknown argument $1" >&2; exit 2 ;;
  esac
done
LOG="${OUT:-/tmp}"
export LD_LIBRARY_PATH="$BUNDLE/lib:${LD_LIBRARY_PATH:-}"
B="$BUNDLE/bin"
TARGET="127.0.0.1:$PORT"
TICKS=$(getconf CLK_TCK)
SERVER_FLAGS=(--allow_shared_memory "$@")
source "$ROOT/scripts/device-serve-lib.sh"

busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
all_ticks() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
proc_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# label, bench flags...: runs the bench with the CPU accounting around it.
measure() {
  local label="$1"; shift
  local b0 a0 s0 t0 t1
  b0=$(busy_ticks); a0=$(all_ticks); s0=$(proc_ticks "$SERVER_PID"); t0=$(date +%s.%N)
  echo "--- $label" | tee -a "$LOG/bench.log"
  "$B/sagectl" bench --target="$TARGET" "$@" >"$LOG/last.txt" 2>&1 &
  local cpid=$!
  local c_ticks=0
  while kill -0 "$cpid" 2>/dev/null; do c_ticks=$(proc_ticks "$cpid"); sleep 0.05; done
  wait "$cpid"
  t1=$(date +%s.%N)
  grep -E "throughput|server us" "$LOG/last.txt" | tee -a "$LOG/bench.log"
  awk -v b0="$b0" -v b1="$(busy_ticks)" -v a0="$a0" -v a1="$(all_ticks)" -v s0="$s0" -v s1="$(proc_ticks "$SERVER_PID")" \
      -v c="$c_ticks" -v t0="$t0" -v t1="$t1" -v hz="$TICKS" 'BEGIN {
    w = t1 - t0; printf "cpu: machine %.0f%% busy; server %.1f cores; client %.1f cores (%.1f s)\n",
      100 * (b1 - b0) / (a1 - a0), (s1 - s0) / hz / w, c / hz / w, w }' | tee -a "$LOG/bench.log"
}

date -u; echo "cores: $(nproc)"; command -v perf nsys gdb || true
serve profile || exit 1
measure "cuda small c16" $SMALL --concurrency=16 --requests=20000 --warmup=50 --shared_memory=cuda
measure "cuda small c16 stream" $SMALL --concurrency=16 --requests=20000 --warmup=50 --mode=stream --shared_memory=cuda
measure "cuda small c16 conn16" $SMALL --concurrency=16 --requests=30000 --warmup=50 --connections=16 --shared_memory=cuda
measure "cuda tiny c128 conn16" $TINY --concurrency=128 --requests=60000 --warmup=100 --connections=16 --shared_memory=cuda
measure "bytes small c16 conn16" $SMALL --concurrency=16 --requests=20000 --warmup=50 --connections=16
if command -v perf >/dev/null; then
  "$B/sagectl" bench --target="$TARGET" $SMALL --concurrency=16 --requests=60000 --warmup=50 --shared_memory=cuda \
    >"$LOG/perf_bench.txt" 2>&1 &
  sleep 0.3
  perf record -F 2999 -g -p "$SERVER_PID" -o "$LOG/perf.data" -- sleep 2 >/dev/null 2>&1
  wait
  perf report -i "$LOG/perf.data" --stdio --no-children --sort comm,dso,symbol 2>/dev/null | grep -v "^$" | head -n 120 \
    >"$LOG/perf_report.txt"
  rm -f "$LOG/perf.data"
  head -n 80 "$LOG/perf_report.txt"
fi
stop
echo "=== done"; date -u
