# Sourced by the device bench scripts: start `sageserve` from the bundle, stop it, run one `sagectl bench`.
# Expects B (the bundle's bin/), TARGET (host:port) and LOG (log folder); SERVER_BIN names the server
# binary in B (default sageserve) and SERVER_FLAGS (an array) is added to every start.

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
