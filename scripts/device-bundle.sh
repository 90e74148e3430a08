#!/usr/bin/env bash
# Builds CMake targets here (CUDA for sm_90a) and gathers them, with every non-system shared library
# they load, into .bundle/ so a device run can execute them on a machine without our build deps:
#
#   scripts/device-bundle.sh sageserve sagectl sageattn cuda_quant_gpu_test ...
#   device run: carry [".bundle"], command "export LD_LIBRARY_PATH=$PWD/.bundle/lib; .bundle/bin/..."
#
# Layout: .bundle/bin/<executables>, .bundle/lib/<shared libraries> (ours and their dependencies),
# .bundle/MANIFEST (what was copied, from where). Binaries are stripped. The bundle is rebuilt from
# scratch on each call. Options:
#   --build-dir DIR   build tree to configure/use (default: build-device)
#   --no-build        gather already-built outputs only
#   --arch LIST       CMAKE_CUDA_ARCHITECTURES for a fresh configure (default 90a)
#   --jobs N          parallel build jobs (default: nproc)
#   --file PATH       also bundle this already-built file (repeatable; executables go to bin/, .so to lib/)
#   --keep-symbols    leave the executables' symbol tables in (for perf); libraries are stripped anyway
#   --xz              also pack the bundle into .bundle.tar.xz (about a quarter of the size) for runs
#                     whose bundle is over the 64 MiB a device run carries (perf and its libraries):
#                     carry [".bundle.tar.xz"], command "tar xJf .bundle.tar.xz && ..."
# Not copied: the C runtime family (glibc, libstdc++, libgcc_s: Ubuntu 24.04 ships newer, compatible
# ones) and the NVIDIA driver (libcuda, libnvidia-*: the device machine provides its own).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="$ROOT/build-device"
DO_BUILD=1
ARCH="90a"
JOBS="$(nproc)"
TARGETS=()
FILES=()
MAX_MIB=60
KEEP_SYMBOLS=0
XZ=0

while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) BUILD_DIR="$(realpath -m "$2")"; shift 2 ;;
    --no-build) DO_BUILD=0; shift ;;
    --arch) ARCH="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    --file) FILES+=("$(realpath "$2")"); shift 2 ;;
    --keep-symbols) KEEP_SYMBOLS=1; shift ;;
    --xz) XZ=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    -*) echo "device-bundle: unknown option $1" >&2; exit 2 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done
if [ ${#TARGETS[@]} -eq 0 ] && [ ${#FILES[@]} -eq 0 ]; then
  echo "device-bundle: name at least one CMake target or --file (see --help)" >&2
  exit 2
fi

if [ "$DO_BUILD" = 1 ] && [ ${#TARGETS[@]} -gt 0 ]; then
  if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
    cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DSAGESERVE_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DSAGESERVE_BUILD_BENCH=OFF
  fi
  cmake --build "$BUILD_DIR" -j "$JOBS" --target "${TARGETS[@]}"
fi

# Output file of each target: ask the build tree (executables and shared libraries only).
find_output() {
  local name="$1" hit
  # The newest match: the install test keeps an older installed copy of some targets in the tree.
  hit="$(find "$BUILD_DIR" -type f \( -name "$name" -o -name "lib$name.so" -o -name "lib$name.so.*" \) \
         -not -path '*/CMakeFiles/*' -not -path '*/install_test/*' -printf '%T@ %p\n' 2>/dev/null |
         sort -rn | head -n 1 | cut -d' ' -f2-)"
  if [ -z "$hit" ]; then
    echo "device-bundle: no output found for target '$name' under $BUILD_DIR" >&2
    return 1
  fi
  echo "$hit"
}

# Libraries the device machine already has (or must provide itself).
is_system_lib() {
  case "$(basename "$1")" in
    linux-vdso*|ld-linux*|libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|libresolv.so*|\
    libutil.so*|libstdc++.so*|libgcc_s.so*|libcuda.so*|libnvidia-*|libmvec.so*) return 0 ;;
  esac
  return 1
}

OUT="$ROOT/.bundle"
rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/lib"
: >"$OUT/MANIFEST"

copy_strip() {  # src dst_dir
  local src="$1" dst="$2/$(basename "$1")"
  [ -e "$dst" ] && return 0
  cp -L "$src" "$dst"
  chmod u+w "$dst"
  if [ "$KEEP_SYMBOLS" = 0 ] || [ "$2" != "$OUT/bin" ]; then strip --strip-unneeded "$dst" 2>/dev/null || true; fi
  echo "$(basename "$dst") <- $src" >>"$OUT/MANIFEST"
}

OUTPUTS=()
for t in "${TARGETS[@]}"; do OUTPUTS+=("$(find_output "$t")"); done
OUTPUTS+=("${FILES[@]}")

for f in "${OUTPUTS[@]}"; do
  case "$(basename "$f")" in
    *.so|*.so.*) copy_strip "$f" "$OUT/lib" ;;
    *) copy_strip "$f" "$OUT/bin" ;;
  esac
  # ldd resolves the whole closure; libraries of ours found in the build tree come along too.
  LD_LIBRARY_PATH="$(dirname "$f"):${LD_LIBRARY_PATH:-}" ldd "$f" | awk '/=> \// {print $3}' | while read -r lib; do
    if ! is_system_lib "$lib"; then
      base="$(basename "$lib")"
      if [ ! -e "$OUT/lib/$base" ]; then
        cp -L "$lib" "$OUT/lib/$base"
        chmod u+w "$OUT/lib/$base"
        strip --strip-unneeded "$OUT/lib/$base" 2>/dev/null || true
        echo "$base <- $lib" >>"$OUT/MANIFEST"
      fi
    fi
  done
done

SIZE_MIB=$(( $(du -sk "$OUT" | cut -f1) / 1024 ))
echo "device-bundle: $(ls "$OUT/bin" | wc -l) executables, $(ls "$OUT/lib" | wc -l) libraries, ${SIZE_MIB} MiB in $OUT"
if [ "$XZ" = 1 ]; then
  tar -C "$ROOT" -cf - .bundle | xz -T0 -3 >"$ROOT/.bundle.tar.xz"
  echo "device-bundle: packed into $ROOT/.bundle.tar.xz ($(( $(du -sk "$ROOT/.bundle.tar.xz" | cut -f1) / 1024 )) MiB)"
elif [ "$SIZE_MIB" -gt "$MAX_MIB" ]; then
  echo "device-bundle: warning: bundle is over ${MAX_MIB} MiB; a device run carries at most 64 MiB in all (--xz)" >&2
fi
echo "device-bundle: on the device: export LD_LIBRARY_PATH=\$PWD/.bundle/lib; .bundle/bin/<program>"
