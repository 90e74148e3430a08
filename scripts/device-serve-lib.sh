# Sourced by the device bench scripts: start `sageserve` from the bundle, stop it, run one `sagectl bench`.
# Expects B (the bundle's bin/), TARGET (host:port) and LOG (log folder); SERVER_BIN names the server
# binary in B (default sageserve) and SERVER_FLAGS (an array) is added to every start.
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
