#!/usr/bin/env bash
# Where a session call's server time goes on the GPU machine: perf samples of the cuda server while
# `sagectl bench --mode=decode` runs one case (default: 64 sessions x 8k in packed calls, K/V, Q and
# O in CUDA shared memory), reported per thread and function into $OUT/perf.txt. The bundle needs
# symbols and perf itself:
#   scripts/device-bundle.sh --build-dir build --no-build --keep-symbols --file /usr/bin/perf --xz sageserve sagectl sageattn [tests]
#   device: tar xJf .bundle.tar.xz && CASE="..." scripts/device-session-perf.sh
set -uo pipefail
OUT="${OUT:-/tmp}"
export LD_LIBRARY_PATH=$PWD/.bundle/lib; B=.bundle/bin
CASE=${CASE:---layers=4 --sessions=64 --context=8192 --steps=48 --shared_memory=cuda --packed}
$B/sageserve --backend=cuda --listen=127.0.0.1:50081 --log_level=warn --kv_pool_bytes=$((16<<30)) --allow_shared_memory \
  > $OUT/srv.log 2>&1 & P=$!
for i in $(seq 60); do $B/sagectl health --target=127.0.0.1:50081 >/dev/null 2>&1 && break; sleep 0.25; done
# The prefill runs first (unsampled); the sampling starts once the decode steps have begun.
$B/sagectl bench --target=127.0.0.1:50081 --mode=decode --heads_q=32 --heads_kv=8 --head_dim=128 $CASE > $OUT/bench.txt 2>&1 & C=$!
sleep ${PERF_DELAY:-6}
$B/perf record -F 4999 -g -p $P -o $OUT/perf.data -- sleep ${PERF_SECONDS:-3} > $OUT/perf_record.log 2>&1
wait $C; cat $OUT/bench.txt
$B/perf report -i $OUT/perf.data --no-children --sort comm,sym --stdio -g none 2>/dev/null | grep -E "^ +[0-9]" | head -120 > $OUT/perf.txt
$B/perf report -i $OUT/perf.data --children --sort sym --stdio -g none --comm session 2>/dev/null | grep -E "^ +[0-9]" | head -80 > $OUT/perf_worker.txt
kill $P; wait $P
head -60 $OUT/perf.txt; echo ==; head -60 $OUT/perf_worker.txt
