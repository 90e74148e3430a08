#!/usr/bin/env bash
# The least device call that checks the session path end to end: the GPU tests of the KV memory,
# quantize, decode kernel and sessions, then the decode cases of issue 19 (1 x 32k on a stream, inline and
# with Q/O in CUDA shared memory; 64 x 8k in one call; 256 clients on streams merged, unmerged and on
# <bundle>/bin/sageserve_base) beside gRPC's echo ceiling. Logs under $OUT. From the checkout root:
#   scripts/device-session-quick.sh     (bundle: scripts/device-bundle.sh sageserve sagectl sageattn grpc_stream_ceiling + the tests)
set -uo pipefail
OUT="${OUT:-/tmp}"
export LD_LIBRARY_PATH=$PWD/.bundle/lib; B=.bundle/bin; L=$OUT; # session_cuda_shm_gpu_test starts the server it was built beside: point that path at the bundle's.
# TESTS: the GPU tests to run (default below); AB=1: only one 32k session and 256 clients on streams, this
# bundle's server against <bundle>/bin/sageserve_base, in turn.
TESTS=${TESTS:-kv_quantize_gpu_test kv_memory_gpu_test paged_decode_gpu_test session_gpu_test session_cuda_shm_gpu_test}
mkdir -p build/server && { [ -e build/server/sageserve ] || ln -s "$PWD/.bundle/bin/sageserve" build/server/sageserve; }
for t in $TESTS; do echo "== $t"; timeout 120 $B/$t --gtest_brief=1 2>&1 | grep -E "PASSED|FAILED|Failure|Expected|Which|error" | head -8; done > $L/tests.log 2>&1; cat $L/tests.log
S="--heads_q=32 --heads_kv=8 --head_dim=128"; D="bench --target=127.0.0.1:50081 --mode=decode $S"
srv() { $B/$1 --backend=cuda --listen=127.0.0.1:50081 --log_level=warn --kv_pool_bytes=$((16<<30)) --max_message_bytes=$((1<<30)) --allow_shared_memory ${2:-} > $L/srv_$1.log 2>&1 & P=$!; for i in $(seq 60); do $B/sagectl health --target=127.0.0.1:50081 >/dev/null 2>&1 && break; sleep 0.25; done; }
b() { echo "== $1"; shift; timeout 100 $B/sagectl $D "$@" 2>&1 | grep -E "p50|layer-steps|failed|rror"; }
# PACKED=1: 64 sessions x 8k per call, per-step against packed (AttendSessionRequest.packed), inline,
# system and CUDA shared memory; then, when the bundle has <bundle>/bin/sageserve_prep (a server that
# logs its prepare stages), the CUDA cases again with those lines; then one 32k session on a stream
# and 256 clients on streams, and gRPC's own round trip of one 12 KiB message on one stream (the
# floor under any decode step) and its 256-stream ceiling.
if [ -n "${PACKED:-}" ]; then
  { srv sageserve; for m in none system cuda; do for p in "" --packed; do
      b "s64_8k_${m}${p}" --layers=4 --sessions=64 --context=8192 --steps=16 --shared_memory=$m $p; done; done
    b s1_32k_stream --layers=8 --sessions=1 --context=32768 --steps=32 --stream
    b s1_32k_stream_cuda_packed --layers=8 --sessions=1 --context=32768 --steps=32 --stream --shared_memory=cuda --packed
    b c256_stream --layers=2 --sessions=256 --clients=256 --context=2048 --steps=16 --connections=8 --stream
    kill $P; wait $P
    if [ -x $B/sageserve_prep ]; then srv sageserve_prep; for p in "" --packed; do
      b "prep_s64_8k_cuda${p}" --layers=4 --sessions=64 --context=8192 --steps=16 --shared_memory=cuda $p
      grep PREP $L/srv_sageserve_prep.log | tail -3 | cut -c 40-; done; kill $P; wait $P; fi
    $B/grpc_stream_ceiling server --listen=127.0.0.1:50300 --api=callback > /dev/null 2>&1 & C=$!; sleep 1
    echo "== floor"; $B/grpc_stream_ceiling client --target=127.0.0.1:50300 --streams=1 --in_flight=1 --bytes=12288 --messages=20000 2>&1 | tail -1
    echo "== ceiling"; $B/grpc_stream_ceiling client --target=127.0.0.1:50300 --streams=256 --in_flight=1 --bytes=12288 --messages=300000 2>&1 | tail -1
    kill $C; } > $L/e2e.log 2>&1
  cut -c1-240 $L/e2e.log; exit 0
fi
if [ -n "${AB:-}" ]; then
  { for x in sageserve sageserve_base sageserve sageserve_base; do srv $x; b "${x}_s1_32k_stream" --layers=8 --sessions=1 --context=32768 --steps=32 --stream
    b "${x}_c256_stream" --layers=2 --sessions=256 --clients=256 --context=2048 --steps=16 --connections=8 --stream; kill $P; wait $P; done; } > $L/e2e.log 2>&1
  cut -c1-220 $L/e2e.log; exit 0
fi
{ srv sageserve; b s1_32k_stream --layers=8 --sessions=1 --context=32768 --steps=32 --stream; b s1_32k_cuda --layers=8 --sessions=1 --context=32768 --steps=32 --stream --shared_memory=cuda; b s64_8k_cuda --layers=4 --sessions=64 --context=8192 --steps=16 --shared_memory=cuda; b s64_8k --layers=4 --sessions=64 --context=8192 --steps=16; b c256_stream --layers=2 --sessions=256 --clients=256 --context=2048 --steps=16 --connections=8 --stream; kill $P; wait $P
srv sageserve --max_batch_tokens=0; b c256_stream_nomerge --layers=2 --sessions=256 --clients=256 --context=2048 --steps=16 --connections=8 --stream; kill $P; wait $P
srv sageserve_base; b base_c256_stream --layers=2 --sessions=256 --clients=256 --context=2048 --steps=16 --connections=8 --stream; kill $P; wait $P
$B/grpc_stream_ceiling server --listen=127.0.0.1:50300 --api=callback > /dev/null 2>&1 & C=$!; sleep 1; echo "== ceiling"; $B/grpc_stream_ceiling client --target=127.0.0.1:50300 --streams=256 --in_flight=1 --bytes=12288 --messages=300000 2>&1 | tail -1; kill $C; } > $L/e2e.log 2>&1; cat $L/e2e.log | cut -c1-220
