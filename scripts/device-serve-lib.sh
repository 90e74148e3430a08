# Sourced by the device bench scripts (after they set ROOT, the checkout): their argument parsing
# (device_args), starting `sageserve` from the bundle, stopping it, one `sagectl bench` (with or
# without CPU accounting), profiles. device_args sets LOG ($OUT or /tmp), B (the bundle's bin/) and
# puts the bundle's libraries on LD_LIBRARY_PATH. The functions expect TARGET (host:port); SERVER_BIN
# names the server binary in B (default sageserve) and SERVER_FLAGS (an array) is added to every start.
BUNDLE="$ROOT/.bundle"

# name, option specs..., --, the script's arguments: parses them, then sets LOG, B and the library
# path. Every script takes --bundle DIR; a spec "--flag:VAR" takes a value into VAR, "--flag:VAR=v"
# is a switch that sets VAR to v. A "--" among the arguments ends them: what follows goes into the
# array EXTRA_ARGS (server flags, for the scripts that take them). Returns 2 on a bad argument.
device_args() {
  local name="$1"; shift
  local -a specs=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do specs+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  EXTRA_ARGS=()
  local spec flag var matched
  while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; EXTRA_ARGS=("$@"); break; fi
    if [ "$1" = "--bundle" ] && [ $# -ge 2 ]; then BUNDLE="$(realpath "$2")"; shift 2; continue; fi
    matched=0
    for spec in "${specs[@]}"; do
      flag="${spec%%:*}"; var="${spec#*:}"
      [ "$1" = "$flag" ] || continue
      matched=1
      if [[ "$var" == *=* ]]; then
        printf -v "${var%%=*}" '%s' "${var#*=}"; shift
      elif [ $# -ge 2 ]; then
        printf -v "$var" '%s' "$2"; shift 2
      else
        echo "$name: $1 needs a value" >&2; return 2
      fi
      break
    done
    [ "$matched" = 1 ] || { echo "$name: unknown argument $1" >&2; return 2; }
  done
  LOG="${OUT:-/tmp}"
  B="$BUNDLE/bin"
  export LD_LIBRARY_PATH="$BUNDLE/lib:${LD_LIBRARY_PATH:-}"
}

# The bench shapes of docs/BENCHMARKS.md. small: 128 tokens x 8 heads x D128 (1.05 MB of q/k/v/O);
# small64: the same at D64; tiny: 16 tokens x 8 heads x D64 (64 KB per call, launch-bound);
# L4K: one 4k-token causal sequence.
SMALL="--batch=1 --q_len=128 --k_len=128 --heads_q=8 --heads_kv=8 --head_dim=128"
SMALL64="--batch=1 --q_len=128 --k_len=128 --heads_q=8 --heads_kv=8 --head_dim=64"
TINY="--batch=1 --q_len=16 --k_len=16 --heads_q=8 --heads_kv=8 --head_dim=64"
L4K="--batch=1 --q_len=4096 --k_len=4096 --heads_q=8 --heads_kv=8 --head_dim=128 --causal"
serve() {  # name, extra flags...
  local name="$1"; shift
  "$B/${SERVER_BIN:-sageserve}" --backend=cuda --listen="$TARGET" --log_level=warn "${SERVER_FLAGS[@]}" "$@" \
    >"$LOG/sageserve_$name.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 120); do
    if "$B/sagectl" health --target="$TARGET" >/dev/null 2>&1; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.25
  done
  echo "server $name did not start"; cat "$LOG/sageserve_$name.log"; return 1
}
stop() { kill -TERM "$SERVER_PID"; wait "$SERVER_PID"; echo "(sageserve exit $?)"; }
bench() {  # label, flags...
  local label="$1"; shift
  echo "--- $label" | tee -a "$LOG/bench.log"
  timeout 90 "$B/sagectl" bench --target="$TARGET" "$@" 2>&1 | tee -a "$LOG/bench.log"
}

# CPU accounting from /proc: ticks the machine spent busy, in all, and those of one process.
TICKS=$(getconf CLK_TCK)
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
all_ticks() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
proc_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# label, bench flags...: one bench with the cores used by server, client and machine around it.
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


# label, seconds, bench flags...: a flat profile of the server (perf from PATH or the bundle) while a
# bench loads it, appended to $LOG/bench.log: shares by library, then the hottest symbols. Kernel
# samples are left out where the machine allows user-space sampling only. PROFILE_COMM=NAME adds the
# same views for the server's threads of that name alone (e.g. sage-worker), inclusive of callees.
profile_server() {
  local label="$1" secs="$2"; shift 2
  local perf; perf="$(command -v perf || true)"; [ -z "$perf" ] && [ -x "$B/perf" ] && perf="$B/perf"
  if [ -z "$perf" ]; then echo "profile $label: no perf here" | tee -a "$LOG/bench.log"; return 0; fi
  "$B/sagectl" bench --target="$TARGET" "$@" >"$LOG/last.txt" 2>&1 &
  local cpid=$!
  sleep 0.5
  local ev
  for ev in cpu-clock cpu-clock:u; do
    "$perf" record -e "$ev" -F 1999 -g -p "$SERVER_PID" -o "$LOG/perf.data" -- sleep "$secs" >"$LOG/perf_rec.txt" 2>&1 && break
  done
  wait "$cpid"
  {
    echo "--- profile $label ($ev)"; grep -E "throughput|failed" "$LOG/last.txt"
    "$perf" report -i "$LOG/perf.data" --stdio --no-children --sort dso -g none 2>/dev/null | grep -v "^#" | grep -v "^$" | head -n 15
    "$perf" report -i "$LOG/perf.data" --stdio --no-children --sort dso,symbol -g none 2>/dev/null | grep -v "^#" | grep -v "^$" | head -n 45
    "$perf" report -i "$LOG/perf.data" --stdio --children --sort symbol -g none 2>/dev/null | grep -v "^#" | grep -v "^$" | head -n 40
    if [ -n "${PROFILE_COMM:-}" ]; then
      echo "--- threads named $PROFILE_COMM: by library, then inclusive by symbol"
      "$perf" report -i "$LOG/perf.data" --stdio --no-children --comm "$PROFILE_COMM" --sort dso -g none 2>/dev/null |
        grep -v "^#" | grep -v "^$" | head -n 12
      "$perf" report -i "$LOG/perf.data" --stdio --children --comm "$PROFILE_COMM" --sort symbol -g none 2>/dev/null |
        grep -v "^#" | grep -v "^$" | head -n 70
    fi
  } >>"$LOG/bench.log" 2>&1
  [ -s "$LOG/perf.data" ] || cat "$LOG/perf_rec.txt" >>"$LOG/bench.log"
  rm -f "$LOG/perf.data"
}

# label, processes, bench flags...: that many `sagectl bench` processes at once with the same flags
# (so the load generator is not the limit); prints their summed req/s and each one's line.
bench_multi() {
  local label="$1" n="$2"; shift 2
  local pids=() i
  for i in $(seq 1 "$n"); do
    "$B/sagectl" bench --target="$TARGET" "$@" >"$LOG/multi_$i.txt" 2>&1 &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i"; done
  {
    echo "--- $label ($n client processes)"
    cat "$LOG"/multi_*.txt | grep -E "failed in|throughput|server us"
    cat "$LOG"/multi_*.txt | sed -n 's/^throughput: \([0-9.]*\) req\/s.*/\1/p' |
      awk '{ s += $1 } END { printf "summed throughput: %.1f req/s\n", s }'
  } | tee -a "$LOG/bench.log"
  rm -f "$LOG"/multi_*.txt
}
