#!/usr/bin/env bash
# Installs what is missing, builds the server and starts it in the foreground on 0.0.0.0:50051
# (CUDA backend where a GPU is visible, else the embedded CPU engine). Extra arguments go to sageserve.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
cmake --preset default
cmake --build --preset default -j "$(nproc)" --target sageserve sagectl
exec ./build/server/sageserve --backend=auto "$@"
