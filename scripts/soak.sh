#!/usr/bin/env bash
# Soak run on loopback: starts sageserve on 127.0.0.1 (CPU backend unless told otherwise, shared
# memory allowed, metrics on), drives it with bench/soak's sageserve_soak for --seconds with
# --clients threads mixing unary, streamed, shared-memory, cancelled, late and malformed calls, and
# samples the server's RSS and open descriptors (/proc and the metrics endpoint) every --interval
# seconds. Passes (exit 0) only when:
#   - the driver saw no unexpected outcome (every call OK or exactly the error it provoked),
#   - after warm-up (the first --warmup_percent of the run) RSS stays within --rss_tolerance_percent
#     of its level at the end of warm-up,
#   - the descriptor count does not grow: its level at the end of the load is at most --fd_slack
#     above its level after warm-up, and once the driver has gone it is back at or below the idle
#     count before the load,
#   - the server still answers health SERVING, and exits 0 on SIGTERM.
# (RSS and descriptor "levels" are medians over a tenth of the post-warm-up samples, at least 3.)
# Writes to --out: summary.txt (the verdict and the numbers), samples.csv, driver.log, server.log.
#
#   scripts/soak.sh [--seconds N] [--clients N] [--out DIR] [--build DIR] [--backend cpu|cuda|auto]
#                   [--interval S] [--warmup_percent P] [--rss_tolerance_percent P] [--fd_slack N]
#
# --build: a configured build directory to use (default build-soak, configured CPU-only with tests
# and benchmarks off when it does not exist); sageserve, sagectl and sageserve_soak are built in it
# when out of date.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

seconds=660 clients=32 out="" build=build-soak backend=cpu interval=5
warmup_percent=20 rss_tolerance_percent=10 fd_slack=2
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --backend) backend=$2; shift 2 ;;
    --interval) interval=$2; shift 2 ;;
    --warmup_percent) warmup_percent=$2; shift 2 ;;
    --rss_tolerance_percent) rss_tolerance_percent=$2; shift 2 ;;
    --fd_slack) fd_slack=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "soak.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
for v in seconds clients interval warmup_percent rss_tolerance_percent fd_slack; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "soak.sh: --$v must be a whole number" >&2; exit 2; }
done
(( seconds >= 10 && clients >= 1 && interval >= 1 )) || { echo "soak.sh: --seconds >= 10, --clients >= 1, --interval >= 1" >&2; exit 2; }
[[ -n $out ]] || out="$build/soak-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$out"
out=$(cd "$out" && pwd)

# --- build -----------------------------------------------------------------------------------
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSAGESERVE_ENABLE_CUDA=OFF \
    -DSAGESERVE_BUILD_TESTS=OFF -DSAGESERVE_BUILD_BENCH=OFF
fi
cmake --build "$build" -j "$(nproc)" --target sageserve sagectl sageserve_soak
server_bin="$build/server/sageserve"
sagectl="$build/client/sagectl"
driver_bin="$build/bench/soak/sageserve_soak"

# --- server ----------------------------------------------------------------------------------
server_pid="" sampler_pid="" driver_pid=""
cleanup() {
  [[ -n $sampler_pid ]] && kill "$sampler_pid" 2>/dev/null || true
  [[ -n $driver_pid ]] && kill "$driver_pid" 2>/dev/null || true
  [[ -n $server_pid ]] && kill -KILL "$server_pid" 2>/dev/null || true
  # The driver's POSIX objects, should it have been killed before removing them.
  [[ -n $driver_pid ]] && rm -f /dev/shm/sage-soak-"$driver_pid"-* /dev/shm/sage-soak-cycle-"$driver_pid"-* || true
}
trap cleanup EXIT

mkdir -p "$out/state"
# MALLOCSTATS=1: a server linked with tcmalloc prints its heap summary at exit; what the application
# still holds after a clean shutdown is where a leak of per-request objects would show.
MALLOCSTATS=1 "$server_bin" --listen=127.0.0.1:0 --backend="$backend" --allow_shared_memory \
  --metrics_listen=127.0.0.1:0 --state_dir="$out/state" >"$out/server.log" 2>&1 &
server_pid=$!
port="" metrics_port=""
for _ in $(seq 1 300); do
  port=$(sed -n 's/^sageserve listening on port \([0-9]*\)$/\1/p' "$out/server.log" | head -1)
  metrics_port=$(sed -n 's/.*metrics on port \([0-9]*\) .*/\1/p' "$out/server.log" | head -1)
  [[ -n $port && -n $metrics_port ]] && break
  kill -0 "$server_pid" 2>/dev/null || { echo "soak.sh: the server exited at start:" >&2; cat "$out/server.log" >&2; exit 1; }
  sleep 0.1
done
[[ -n $port && -n $metrics_port ]] || { echo "soak.sh: the server did not report its ports" >&2; exit 1; }
echo "soak.sh: server pid $server_pid on 127.0.0.1:$port, metrics on 127.0.0.1:$metrics_port; output in $out"

# GET /metrics; prints the body (curl where installed, else Python's urllib).
scrape() {
  local url="http://127.0.0.1:$metrics_port/metrics"
  if command -v curl >/dev/null; then
    curl -sf --max-time 10 "$url"
  else
    python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$url"
  fi
}
elapsed() { awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.1f", a - b }'; }
metric() { awk -v n="$1" '$1 == n { print $2; exit }'; }

# One line: seconds since t0, phase, VmRSS kB, open fds, threads (from /proc), then the endpoint's
# RSS bytes, open fds and in-flight requests. /proc is read before the scrape opens its connection.
sample() {
  local phase=$1 t rss fds threads m
  t=$(elapsed)
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$server_pid/status" 2>/dev/null) || return 0
  threads=$(awk '/^Threads:/ { print $2 }' "/proc/$server_pid/status" 2>/dev/null) || return 0
  fds=$(ls "/proc/$server_pid/fd" 2>/dev/null | wc -l)
  m=$(scrape 2>/dev/null || true)
  printf '%s,%s,%s,%s,%s,%s,%s,%s\n' "$t" "$phase" "$rss" "$fds" "$threads" \
    "$(metric process_resident_memory_bytes <<<"$m")" "$(metric process_open_fds <<<"$m")" \
    "$(metric sageserve_in_flight_requests <<<"$m")"
}

t0=$(date +%s.%N)
csv="$out/samples.csv"
echo "t_s,phase,rss_kb,fds,threads,metrics_rss_bytes,metrics_open_fds,in_flight" >"$csv"
sleep 1
sample idle_before >>"$csv"

# --- load ------------------------------------------------------------------------------------
"$driver_bin" --target="127.0.0.1:$port" --clients="$clients" --seconds="$seconds" \
  >"$out/driver.log" 2>&1 &
driver_pid=$!
load_start=$(elapsed)
( while kill -0 "$driver_pid" 2>/dev/null; do sample load; sleep "$interval"; done ) >>"$csv" &
sampler_pid=$!
driver_rc=0
wait "$driver_pid" || driver_rc=$?
load_end=$(elapsed)
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""
leftover_shm=$(ls /dev/shm 2>/dev/null | grep -cE "^sage-soak-(cycle-)?$driver_pid-" || true)
rm -f /dev/shm/sage-soak-"$driver_pid"-* /dev/shm/sage-soak-cycle-"$driver_pid"-*
driver_pid=""

# Idle again: gRPC closes the driver's connections once it has gone; give it a moment.
sleep 5
sample idle_after >>"$csv"
health=NOT_SERVING
"$sagectl" health --target="127.0.0.1:$port" >/dev/null 2>&1 && health=SERVING
final_metrics=$(scrape 2>/dev/null || true)
printf '%s\n' "$final_metrics" >"$out/metrics_final.txt"

# --- shutdown --------------------------------------------------------------------------------
kill -TERM "$server_pid"
server_rc=""
for _ in $(seq 1 600); do
  if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
  sleep 0.1
done
if kill -0 "$server_pid" 2>/dev/null; then
  server_rc="still running 60 s after SIGTERM"
else
  server_rc=0
  wait "$server_pid" || server_rc=$?
fi
server_pid=""

# --- verdict ---------------------------------------------------------------------------------
python3 - "$out" "$csv" "$seconds" "$clients" "$warmup_percent" "$rss_tolerance_percent" "$fd_slack" \
  "$driver_rc" "$health" "$server_rc" "$leftover_shm" "$load_start" "$load_end" "$backend" <<'EOF'
import csv, re, sys, pathlib
(out, csv_path, seconds, clients, warmup_pct, rss_tol_pct, fd_slack, driver_rc, health, server_rc, leftover_shm,
 load_start, load_end, backend) = sys.argv[1:]
out = pathlib.Path(out)
seconds, clients, warmup_pct, rss_tol_pct, fd_slack = int(seconds), int(clients), int(warmup_pct), int(rss_tol_pct), int(fd_slack)
load_start, load_end = float(load_start), float(load_end)
rows = list(csv.DictReader(open(csv_path)))
idle_before = next(r for r in rows if r["phase"] == "idle_before")
idle_after = next((r for r in rows if r["phase"] == "idle_after"), None)
load = [r for r in rows if r["phase"] == "load" and r["rss_kb"]]
warm_end = load_start + (load_end - load_start) * warmup_pct / 100.0
post = [r for r in load if float(r["t_s"]) >= warm_end]
lines, failures = [], []

driver_log = (out / "driver.log").read_text(errors="replace")
total = re.search(r"^SOAK_TOTAL (.*)$", driver_log, re.M)
tot = dict(kv.split("=") for kv in total.group(1).split()) if total else {}
kinds = [dict(kv.split("=") for kv in m.group(1).split()) for m in re.finditer(r"^SOAK_KIND (.*)$", driver_log, re.M)]
table = re.search(r"^kind .*?(?=^SOAK_KIND)", driver_log, re.M | re.S)

lines.append(f"soak: {clients} clients, {seconds} s, backend {backend}, loopback 127.0.0.1")
if table:
    lines.append(table.group(0).rstrip())
if not total:
    failures.append(f"the driver printed no totals (exit {driver_rc}); see driver.log")
else:
    lines.append(f"calls {tot['calls']} ({tot['calls_per_s']}/s): ok {tot['ok']}, expected errors {tot['expected']}, "
                 f"unexpected {tot['unexpected']}")
    if int(tot["unexpected"]) != 0:
        failures.append(f"{tot['unexpected']} unexpected outcomes (driver.log lists the first ones)")
if driver_rc != "0":
    failures.append(f"the driver exited {driver_rc}")
if leftover_shm != "0":
    failures.append(f"{leftover_shm} shared-memory objects of the driver left in /dev/shm")

def mb(kb): return f"{int(kb) / 1024:.1f} MiB"
if not post:
    failures.append("no samples after warm-up")
else:
    # Levels are medians over a tenth of the post-warm-up samples (at least 3): one sample can catch
    # a burst of buffers in flight; a leak moves the level.
    k = max(3, len(post) // 10)
    def level(rs, key): return sorted(int(r[key]) for r in rs)[len(rs) // 2]
    base, end = level(post[:k], "rss_kb"), level(post[-k:], "rss_kb")
    peak = max(int(r["rss_kb"]) for r in post)
    low = min(int(r["rss_kb"]) for r in post)
    limit = base * (1 + rss_tol_pct / 100.0)
    lines.append(f"RSS: idle before {mb(idle_before['rss_kb'])}; first load sample {mb(load[0]['rss_kb'])}; "
                 f"level after warm-up ({warmup_pct}% = {warm_end - load_start:.0f} s; median of {k} samples) {mb(base)}; "
                 f"post-warm-up min {mb(low)}, max {mb(peak)} ({(peak / base - 1) * 100:+.1f}%); level at the end "
                 f"{mb(end)} ({(end / base - 1) * 100:+.1f}%)"
                 + (f"; idle after {mb(idle_after['rss_kb'])}" if idle_after else ""))
    if peak > limit:
        failures.append(f"RSS rose more than {rss_tol_pct}% above its post-warm-up level ({mb(peak)} > {mb(limit)})")
    # Registered regions hold a descriptor each, so shm_cycle calls in flight move the count a little.
    fd_base, fd_end = level(post[:k], "fds"), level(post[-k:], "fds")
    fd_peak = max(int(r["fds"]) for r in post)
    lines.append(f"fds: idle before {idle_before['fds']}; level after warm-up {fd_base}; post-warm-up max {fd_peak}; "
                 f"level at the end {fd_end}" + (f"; idle after {idle_after['fds']}" if idle_after else ""))
    if fd_end > fd_base + fd_slack:
        failures.append(f"open fds grew during the load (level {fd_end} > {fd_base} + {fd_slack})")
    if idle_after is None or int(idle_after["fds"]) > int(idle_before["fds"]):
        failures.append(f"open fds after the load ({idle_after['fds'] if idle_after else '?'}) above the idle level "
                        f"before it ({idle_before['fds']})")
    def endpoint(r):
        return (f"{int(r['metrics_rss_bytes']) / 2**20:.1f} MiB, {r['metrics_open_fds']} fds"
                if r["metrics_rss_bytes"] else "no answer")
    lines.append(f"metrics endpoint (process_resident_memory_bytes, process_open_fds; its own connection counts): "
                 f"after warm-up {endpoint(post[0])}, end of load {endpoint(post[-1])}"
                 + (f", idle after {endpoint(idle_after)}" if idle_after else ""))
    lines.append(f"threads: after warm-up {post[0]['threads']}, max {max(int(r['threads']) for r in post)}, "
                 f"end of load {post[-1]['threads']}")
    lines.append(f"samples: {len(load)} during the load, every few seconds ({out / 'samples.csv'})")

final = (out / "metrics_final.txt").read_text(errors="replace") if (out / "metrics_final.txt").exists() else ""
by_code = {}
for m in re.finditer(r'^sageserve_requests_total\{[^}]*code="([^"]*)"[^}]*\} (\S+)$', final, re.M):
    by_code[m.group(1)] = by_code.get(m.group(1), 0) + float(m.group(2))
if by_code:
    lines.append("server's sageserve_requests_total by code: " +
                 ", ".join(f"{c} {int(n)}" for c, n in sorted(by_code.items(), key=lambda x: -x[1])))
server_log = (out / "server.log").read_text(errors="replace")
levels = {lvl: len(re.findall(rf"\] \[{lvl}\] ", server_log)) for lvl in ("warning", "error", "critical")}
lines.append(f"server log: {levels['warning']} warnings (rejected/cancelled/late requests are logged at warn), "
             f"{levels['error']} errors, {levels['critical']} critical")
if levels["critical"]:
    failures.append("the server logged critical errors")
heap = re.search(r"^MALLOC: +(\d+) \( *([\d.]+) MiB\) Bytes in use by application", server_log, re.M)
heap_total = re.search(r"^MALLOC: = +(\d+) \( *([\d.]+) MiB\) Actual memory used", server_log, re.M)
if heap:
    lines.append(f"tcmalloc at exit: {heap.group(2)} MiB in use by the application after shutdown"
                 + (f", {heap_total.group(2)} MiB held in all" if heap_total else ""))
lines.append(f"health after the load: {health}; server exit status on SIGTERM: {server_rc}")
if health != "SERVING":
    failures.append("the server did not answer health SERVING after the load")
if server_rc != "0":
    failures.append(f"the server did not exit 0 on SIGTERM ({server_rc})")
lines.append("verdict: " + ("PASS" if not failures else "FAIL"))
lines += [f"  - {f}" for f in failures]
text = "\n".join(lines) + "\n"
(out / "summary.txt").write_text(text)
print(text, end="")
sys.exit(0 if not failures else 1)
EOF
