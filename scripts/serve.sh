#!/usr/bin/env bash
# Installs what is missing, builds the server and starts it in the foreground on 0.0.0.0:50051
# (CUDA backend where a GPU is visible, else the embedded CPU engine), with Prometheus metrics on
# :9090 and the precision registry kept in ./.state. Extra arguments go to sageserve.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
cmake --preset default
cmake --build --preset default -j "$(nproc)" --target sageserve sagectl
state_dir="${SAGESERVE_STATE_DIR:-$PWD/.state}"
mkdir -p "$state_dir"
# Flags after these (from "$@") win: absl takes the last value given.
exec ./build/server/sageserve --backend=auto --listen="${SAGESERVE_LISTEN:-0.0.0.0:50051}" \
  --state_dir="$state_dir" \
  --metrics_listen="${SAGESERVE_METRICS_LISTEN:-0.0.0.0:9090}" "$@"
