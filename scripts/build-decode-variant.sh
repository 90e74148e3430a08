#!/usr/bin/env bash
# Builds a copy of libsageattn.so whose paged decode is compiled with extra defines (the tuning
# knobs of kernels/cuda/decode/*.cuh), for A/B runs of bench/decode_bench.py in one device call:
#
#   scripts/build-decode-variant.sh build/variants/s3 -DSAGE_DECODE_MMA_STAGES=3
#   python3 bench/decode_bench.py --lib base=build/kernels/cuda/libsageattn.so --lib s3=build/variants/s3/libsageattn.so ...
#
# It reuses the build directory's own compile and link commands (ninja -t commands), so the
# variant differs from build/kernels/cuda/libsageattn.so only in the given defines. Prints the
# registers and spills ptxas reports for the decode kernels; a spill fails the build (as in the
# real build) unless ALLOW_SPILLS=1.
set -euo pipefail
out=${1:?usage: build-decode-variant.sh OUT_DIR [-DNAME=VALUE ...]}
shift
build=${BUILD_DIR:-build}
ninja -C "$build" kernels/cuda/libsageattn.so >/dev/null
mkdir -p "$out"
out=$(cd "$out" && pwd)
cmds=$(ninja -C "$build" -t commands kernels/cuda/libsageattn.so)
compile=$(grep -E -- '-c [^ ]*/decode/paged_decode\.cu ' <<<"$cmds")
link=$(grep -E -- '-o kernels/cuda/libsageattn\.so ' <<<"$cmds")
obj=kernels/cuda/CMakeFiles/sageattn.dir/decode/paged_decode.cu.o
[[ -n $compile && -n $link ]] || { echo "build-decode-variant: compile or link command not found" >&2; exit 1; }
compile=${compile//-o $obj/-o $out/paged_decode.cu.o}
compile=${compile//-MD -MT $obj -MF $obj.d/}
# ALLOW_SPILLS=1: a variant that spills (reported below) still builds, for timing it anyway.
[ "${ALLOW_SPILLS:-0}" = 1 ] && compile=${compile//-Werror=all-warnings/}
link=${link//-o kernels\/cuda\/libsageattn.so/-o $out/libsageattn.so}
link=${link// $obj / $out/paged_decode.cu.o }
# One line per decode kernel: registers and spills (the mangled name is cut to its template part).
rm -f "$out/paged_decode.cu.o" "$out/libsageattn.so"
if ! (cd "$build" && eval "$compile $* -Xptxas=-v") > "$out/ptxas.log" 2>&1; then
  grep -E "error" "$out/ptxas.log" | head -5 >&2
  echo "build-decode-variant: compile failed (log: $out/ptxas.log)" >&2
  exit 1
fi
awk '/Compiling entry/ { name = $0; sub(/.*_ZN[0-9a-z_]*decode/, "", name); sub(/_param.*|EEvNS.*/, "", name) }
       /registers/ { match($0, /Used [0-9]+ registers/); print "  " substr($0, RSTART, RLENGTH), name }
       /spill/ && !/ 0 bytes spill stores/ { print "  SPILL", name, $0 }' "$out/ptxas.log" | sort | uniq -c
(cd "$build" && eval "$link")
echo "$out/libsageattn.so"
