#!/usr/bin/env bash
# Installs what sageserve needs to build and test, from Debian packages (and Buf's CLI from npm).
# Exits non-zero when something the tests need could not be installed.
# Idempotent: packages already present are skipped, and nothing runs when nothing is missing.
#   --build-only   what building the server and sagectl needs, without the test tools (GoogleTest,
#                  Google Benchmark, Buf's CLI, kubectl and npm): for images (deploy/Dockerfile).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

BUILD_ONLY=0
for a in "$@"; do
  case "$a" in
    --build-only) BUILD_ONLY=1 ;;
    *) echo "bootstrap: unknown argument $a" >&2; exit 2 ;;
  esac
done

PKGS=(
  build-essential cmake ninja-build pkg-config git
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libssl-dev
  libabsl-dev libspdlog-dev libfmt-dev
  nlohmann-json3-dev
  libtcmalloc-minimal4
  curl ca-certificates python3 openssl
)
# clang and its runtimes for the sanitizer builds and the fuzz targets (scripts/sanitize.sh,
# scripts/fuzz.sh): libFuzzer and the ASan/UBSan/TSan runtimes are in libclang-rt-14-dev, which
# clang-14 only recommends; llvm gives llvm-symbolizer for readable sanitizer stack traces.
# The Python client's tests (tests/client/python) run with Debian's /usr/bin/python3 and these;
# protobuf-compiler-grpc (above) brings grpc_python_plugin for its stubs.
# nginx: the proxy test (tests/client/python/test_proxy.py) runs its own nginx, as the invoking user,
# with the configuration deploy/proxy/nginx-conf.py writes; installed without a service start (below).
TEST_PKGS=(libgtest-dev libgmock-dev googletest libbenchmark-dev clang libclang-rt-14-dev llvm
           python3-grpcio python3-protobuf python3-numpy python3-venv python3-pip python3-setuptools nginx
           etcd-server)
# etcd-server: the registry's etcd store test (tests/registry/etcd_store_test.cc) runs its own etcd on
# loopback ports of its own; installed without a service start, as nginx is (below).
# kubectl renders deploy/k8s for its schema check (tests/deploy, CTest k8s.*): Debian's is 1.20,
# whose built-in kustomize is enough. A kubectl already on PATH (another vendor's) is used as it is.
if ! command -v kubectl >/dev/null 2>&1; then TEST_PKGS+=(kubernetes-client); fi
if [ "$BUILD_ONLY" = 0 ]; then PKGS+=("${TEST_PKGS[@]}"); fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Debian's nginx and etcd-server packages start their system service from the postinst, and
# nginx's install fails when that start fails (e.g. a host without IPv6, where the default site's
# [::]:80 cannot bind). The tests need the binaries only, so these go in on their own with every
# service start refused by a policy-rc.d (invoke-rc.d and deb-systemd-invoke ask it), unless the
# machine has its own policy-rc.d (containers usually do), which then decides.
SERVICE_PKGS=(nginx etcd-server)
install_without_starting_services() {
  local policy=/usr/sbin/policy-rc.d ours=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# scripts/bootstrap.sh, while it installs test tools: no service starts\nexit 101\n' |
      $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    ours=1
    trap "$SUDO rm -f $policy" EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "$@"
  if [ "$ours" = 1 ]; then
    $SUDO rm -f "$policy"
    trap - EXIT
    if [ -d /run/systemd/system ]; then
      echo "bootstrap: $* installed without starting their services; Debian enables them at boot" \
           "(systemctl disable nginx etcd keeps them off)"
    fi
  fi
}

if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  $SUDO apt-get update
  others=()
  services=()
  for p in "${missing[@]}"; do
    if [[ " ${SERVICE_PKGS[*]} " == *" $p "* ]]; then services+=("$p"); else others+=("$p"); fi
  done
  if [ ${#others[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${others[@]}"
  fi
  if [ ${#services[@]} -gt 0 ]; then install_without_starting_services "${services[@]}"; fi
else
  echo "bootstrap: all Debian packages present"
fi

# npm serves two test tools: Buf's CLI and the packages of the Kubernetes manifests' schema check.
# The check's packages (tests/deploy/package.json, exact versions in its package-lock.json) go into
# tests/deploy/node_modules (ignored by git); a copy of the lock file there marks them installed.
DEPLOY_DIR="$ROOT/tests/deploy"
DEPLOY_STAMP="$DEPLOY_DIR/node_modules/.bootstrap-package-lock.json"
need_buf=0
need_deploy=0
if [ "$BUILD_ONLY" = 0 ]; then
  if ! command -v buf >/dev/null 2>&1; then need_buf=1; fi
  if ! cmp -s "$DEPLOY_DIR/package-lock.json" "$DEPLOY_STAMP"; then need_deploy=1; fi
fi

# Buf's CLI: a real third-party gRPC client for the reflection tests (npm ships its binary). The
# tests fail without it, so a machine without npm gets Debian's (which brings Debian's nodejs).
# Machines with a non-Debian nodejs build (NodeSource) already have npm from it; Debian's npm
# package would conflict there.
if [ "$need_buf" = 1 ] || [ "$need_deploy" = 1 ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "bootstrap: installing npm (Debian) for Buf's CLI and the manifests' schema check"
    $SUDO apt-get update
    if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends npm; then
      echo "bootstrap: error: could not install Debian's npm (a non-Debian nodejs without npm?);" \
           "install npm, then run this again" >&2
      exit 1
    fi
  fi
fi
if [ "$need_buf" = 1 ]; then
  echo "bootstrap: installing @bufbuild/buf from npm"
  if ! $SUDO npm install -g @bufbuild/buf >/tmp/bootstrap-npm.log 2>&1; then
    cat /tmp/bootstrap-npm.log >&2
    echo "bootstrap: error: npm install -g @bufbuild/buf failed (log above)" >&2
    exit 1
  fi
  if [ "$BUILD_ONLY" = 0 ] && ! command -v buf >/dev/null 2>&1; then
    echo "bootstrap: error: npm installed @bufbuild/buf into $(npm prefix -g)/bin, which is not on PATH" >&2
    exit 1
  fi
fi
if [ "$need_deploy" = 1 ]; then
  # As the invoking user: the packages go into this checkout, not the system.
  echo "bootstrap: installing the manifests' schema check packages (npm ci in tests/deploy)"
  if ! npm ci --prefix "$DEPLOY_DIR" --no-audit --no-fund >/tmp/bootstrap-npm-deploy.log 2>&1; then
    cat /tmp/bootstrap-npm-deploy.log >&2
    echo "bootstrap: error: npm ci in $DEPLOY_DIR failed (log above)" >&2
    exit 1
  fi
  cp "$DEPLOY_DIR/package-lock.json" "$DEPLOY_STAMP"
fi
echo "bootstrap: done"
