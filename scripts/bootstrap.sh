#!/usr/bin/env bash
# Installs what sageserve needs to build and test, from Debian packages (and Buf's CLI from npm).
# Idempotent: packages already present are skipped, and nothing runs when nothing is missing.
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build pkg-config git
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  nlohmann-json3-dev
  libtcmalloc-minimal4
  curl ca-certificates python3 openssl
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
else
  echo "bootstrap: all Debian packages present"
fi

# Buf's CLI: a real third-party gRPC client for the reflection tests (npm ships its binary).
if ! command -v buf >/dev/null 2>&1; then
  if command -v npm >/dev/null 2>&1; then
    echo "bootstrap: installing @bufbuild/buf from npm"
    $SUDO npm install -g @bufbuild/buf >/dev/null 2>&1 || echo "bootstrap: warning: npm install of @bufbuild/buf failed; buf tests will be skipped"
  else
    echo "bootstrap: warning: npm not found; buf tests will be skipped"
  fi
fi
echo "bootstrap: done"
