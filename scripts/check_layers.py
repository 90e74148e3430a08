#!/usr/bin/env python3
"""Checks the include rules of docs/ARCHITECTURE.md over the source tree.

Layers, top to bottom; a file may include its own layer or any layer below, never one above.
Leaves (metrics, util) may be included from anywhere and include no other server layer.
Below the frontend nothing includes protobuf or gRPC headers; the client library and sagectl
include no server source, nor does the soak driver (bench/soak). Exit status 1 lists every breach.
"""
import pathlib
import re
import sys

LAYERS = [  # (rank, folder prefix); higher rank = higher layer
    (7, "server/app/"),
    (6, "server/frontend/"),
    (5, "server/core/"),
    (4, "server/scheduler/"),
    (4, "server/shared_memory/"),
    (4, "server/registry/"),
    (4, "server/session/"),
    (3, "server/backend/"),
    (2, "kernels/"),
]
LEAVES = ("server/metrics/", "server/util/")
NO_RPC = ("server/core/", "server/scheduler/", "server/shared_memory/", "server/registry/", "server/session/",
          "server/backend/",
          "server/metrics/", "server/util/", "kernels/")
RPC_HEADER = re.compile(r'^(grpc/|grpcpp/|google/protobuf/|sageserve/v1/|grpc/health/)|\.pb\.h$')
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^">]+)[">]')
SOURCES = (".h", ".cc", ".cu", ".cuh")


def rank(path):
    for r, prefix in LAYERS:
        if path.startswith(prefix):
            return r
    return None


def main(root):
    root = pathlib.Path(root)
    breaches = []
    checked = 0
    for top in ("server", "kernels", "client", "bench/soak"):
        for f in sorted((root / top).rglob("*")):
            if f.suffix not in SOURCES or not f.is_file():
                continue
            rel = f.relative_to(root).as_posix()
            checked += 1
            mine = rank(rel)
            leaf = rel.startswith(LEAVES)
            for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
                m = INCLUDE.match(line)
                if not m:
                    continue
                inc = m.group(1)
                where = f"{rel}:{n}: #include {inc}"
                if rel.startswith(NO_RPC) and RPC_HEADER.search(inc):
                    breaches.append(f"{where}: protobuf/gRPC header below the frontend")
                if rel.startswith(("client/", "bench/soak/")) and inc.startswith("server/"):
                    breaches.append(f"{where}: the client includes a server source")
                    continue
                if not inc.startswith(("server/", "kernels/")) or inc.startswith(LEAVES):
                    continue
                if leaf:
                    breaches.append(f"{where}: a leaf includes a server layer")
                    continue
                theirs = rank(inc)
                if mine is not None and theirs is not None and theirs > mine:
                    breaches.append(f"{where}: includes a higher layer")
    for b in breaches:
        print(b)
    print(f"check_layers: {checked} files, {len(breaches)} breaches")
    return 1 if breaches or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent))
