#!/usr/bin/env python3
"""sageserve over shared memory from Python: grpcio and torch, with the Python package's stubs.

Places random fp16 Q/K/V (K with a per-channel bias) in a region the server reads directly, either
POSIX shared memory (--shared-memory system) or a CUDA allocation shared by IPC handle (--shared-memory
cuda; the server must run the cuda backend on this host), registers it with SharedMemoryService and
asks AttentionService/Attend to write O and LSE back into the region. Checks that O and LSE are bit
for bit what the same request returns with the tensors inline (the output range is poisoned first),
compares O with torch's fp32 attention, and times both paths. Exit status 1 on any mismatch.

The server must run with --allow_shared_memory.

  python3 bench/grpc_shm_client.py --target 127.0.0.1:50051 --shared-memory cuda --lens 4096 --hq 8 --hkv 8 --causal
"""
import argparse
import ctypes
import os
import secrets
import statistics
import sys
import time
from multiprocessing import shared_memory

import grpc
import torch

from grpc_client import load_messages, metrics, reference, rpc

SHM_SERVICE = "/sageserve.v1.SharedMemoryService/"
ALIGN = 256  # offsets of the tensors inside the region (the server needs the element size; 256 is generous)
SHM_MESSAGES = ["RegisterSystemSharedMemoryRequest", "RegisterCudaSharedMemoryRequest", "RegisterSharedMemoryResponse",
                "UnregisterSharedMemoryRequest", "UnregisterSharedMemoryResponse"]


def align(x):
    return (x + ALIGN - 1) // ALIGN * ALIGN


class SystemRegion:
    """A POSIX shared-memory object; `bytes` is a uint8 torch view of all of it."""

    kind = "system"

    def __init__(self, nbytes):
        # Under the server's default --shared_memory_key_prefix ("/sage"), unguessable to other clients.
        self._shm = shared_memory.SharedMemory(name=f"sage-py-{os.getpid()}-{secrets.token_hex(8)}",
                                               create=True, size=nbytes)
        self.key = "/" + self._shm.name  # shm_open's name; Python's own names lack the slash
        self.bytes = torch.frombuffer(self._shm.buf, dtype=torch.uint8)

    def register(self, call, msgs, name):
        call("RegisterSystemSharedMemory")(msgs["RegisterSystemSharedMemoryRequest"](
            name=name, key=self.key, offset=0, byte_size=self.bytes.numel()), timeout=30)

    def close(self):
        self.bytes = None  # the view must go before the mapping
        self._shm.close()
        self._shm.unlink()


class _CudaArray:
    """Just enough of __cuda_array_interface__ for torch.as_tensor to wrap raw device memory."""

    def __init__(self, ptr, nbytes):
        self.__cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (ptr, False),
                                         "strides": None, "version": 2}


def loaded_cudart():
    """The CUDA runtime torch loaded (its path from /proc/self/maps), so both use one runtime."""
    torch.cuda.init()
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if "libcudart.so" in os.path.basename(path):
                return ctypes.CDLL(path)
    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            pass
    raise RuntimeError("no CUDA runtime library found (torch built without CUDA?)")


class CudaRegion:
    """One cudaMalloc allocation shared with the server by cudaIpcGetMemHandle; `bytes` views it."""

    kind = "cuda"

    def __init__(self, nbytes, device):
        self._rt = loaded_cudart()
        self._rt.cudaGetErrorString.restype = ctypes.c_char_p
        self.device = device
        self._check(self._rt.cudaSetDevice(ctypes.c_int(device)), "cudaSetDevice")
        self._ptr = ctypes.c_void_p()
        self._check(self._rt.cudaMalloc(ctypes.byref(self._ptr), ctypes.c_size_t(nbytes)), "cudaMalloc")
        handle = (ctypes.c_char * 64)()
        self._check(self._rt.cudaIpcGetMemHandle(handle, self._ptr), "cudaIpcGetMemHandle")
        self.handle = bytes(handle)
        self.bytes = torch.as_tensor(_CudaArray(self._ptr.value, nbytes), device=f"cuda:{device}")

    def _check(self, err, what):
        if err != 0:
            raise RuntimeError(f"{what}: {self._rt.cudaGetErrorString(err).decode()}")

    def register(self, call, msgs, name):
        call("RegisterCudaSharedMemory")(msgs["RegisterCudaSharedMemoryRequest"](
            name=name, raw_handle=self.handle, device_id=self.device, byte_size=self.bytes.numel()), timeout=30)

    def close(self):
        self.bytes = None
        torch.cuda.synchronize()
        self._check(self._rt.cudaFree(self._ptr), "cudaFree")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--shared-memory", choices=["system", "cuda"], default="cuda")
    ap.add_argument("--device", type=int, default=0, help="CUDA ordinal of the region (cuda)")
    ap.add_argument("--lens", default="4096", help="query lengths, comma separated")
    ap.add_argument("--hq", type=int, default=8)
    ap.add_argument("--hkv", type=int, default=8)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--k-bias", type=float, default=4.0, help="std of the per-channel K bias")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per path (after one warm-up)")
    args = ap.parse_args()

    msgs, enums = load_messages(SHM_MESSAGES)
    opts = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)]
    channel = grpc.insecure_channel(args.target, options=opts)
    grpc.channel_ready_future(channel).result(timeout=30)
    info = rpc(channel, "GetServerInfo", msgs["GetServerInfoRequest"], msgs["GetServerInfoResponse"])(
        msgs["GetServerInfoRequest"](), timeout=30)
    if not info.shared_memory.enabled:
        print("the server does not take shared memory: start sageserve with --allow_shared_memory")
        return 1
    if args.shared_memory == "cuda" and not info.shared_memory.cuda:
        print(f"the server cannot open CUDA shared memory (backend {info.backend}); try --shared-memory system")
        return 1

    def shm_call(name):
        response = "RegisterSharedMemoryResponse" if name.startswith("Register") else name + "Response"
        return rpc(channel, name, msgs[name + "Request"], msgs[response], service=SHM_SERVICE)

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    lens = [int(x) for x in args.lens.split(",")]
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    d, hq, hkv = args.d, args.hq, args.hkv
    q = torch.randn(cu[-1], hq, d, generator=gen).half()
    k = (torch.randn(cu[-1], hkv, d, generator=gen) + args.k_bias * torch.randn(1, 1, d, generator=gen)).half()
    v = torch.randn(cu[-1], hkv, d, generator=gen).half()
    ref_o, _ = reference(q.to(dev), k.to(dev), v.to(dev), cu, cu, args.causal, d ** -0.5)

    # Region layout: q | k | v | O | LSE.
    sizes = {"q": q.numel() * 2, "k": k.numel() * 2, "v": v.numel() * 2, "o": q.numel() * 2, "lse": cu[-1] * hq * 4}
    at, end = {}, 0
    for name, n in sizes.items():
        at[name] = end
        end = align(end + n)
    region = SystemRegion(end) if args.shared_memory == "system" else CudaRegion(end, args.device)
    for name, t in (("q", q), ("k", k), ("v", v)):
        region.bytes[at[name]:at[name] + sizes[name]].copy_(t.reshape(-1).view(torch.uint8).to(region.bytes.device))
    region_name = f"py-{os.getpid()}"
    region.register(shm_call, msgs, region_name)

    fp16 = enums["DType"].values_by_name["DTYPE_FP16"].number
    ref_cls = msgs["AttendRequest"]().o_output.__class__
    tensor_cls = msgs["AttendRequest"]().q.__class__

    def ref(name):
        return ref_cls(region=region_name, offset=at[name], byte_size=sizes[name])

    def tensor(t, name=None):
        m = tensor_cls(dtype=fp16)
        m.shape.extend(list(t.shape))
        if name is None:
            m.data = t.contiguous().numpy().tobytes()
        else:
            m.shared_memory.CopyFrom(ref(name))
        return m

    def request(shared):
        r = msgs["AttendRequest"](request_id="py-shm" if shared else "py-bytes", return_lse=True,
                                  q=tensor(q, "q" if shared else None), k=tensor(k, "k" if shared else None),
                                  v=tensor(v, "v" if shared else None))
        r.cu_seqlens_q.extend(cu)
        r.cu_seqlens_k.extend(cu)
        r.mask = enums["MaskMode"].values_by_name["MASK_MODE_CAUSAL" if args.causal else "MASK_MODE_NONE"].number
        if shared:
            r.o_output.CopyFrom(ref("o"))
            r.lse_output.CopyFrom(ref("lse"))
        return r

    attend = rpc(channel, "Attend", msgs["AttendRequest"], msgs["AttendResponse"])
    failures = 0
    try:
        inline_req, shared_req = request(False), request(True)
        inline = attend(inline_req, timeout=120)
        region.bytes[at["o"]:at["lse"] + sizes["lse"]].fill_(0xFF)  # poison: an unwritten byte shows
        if dev == "cuda":
            torch.cuda.synchronize()
        shared = attend(shared_req, timeout=120)
        o_bytes = region.bytes[at["o"]:at["o"] + sizes["o"]].cpu().numpy().tobytes()
        lse_bytes = region.bytes[at["lse"]:at["lse"] + sizes["lse"]].cpu().numpy().tobytes()
        same_o, same_lse = o_bytes == inline.o.data, lse_bytes == inline.lse.data
        if not (same_o and same_lse) or len(shared.o.data) != 0:
            failures += 1
        o = torch.frombuffer(bytearray(o_bytes), dtype=torch.float16).reshape(ref_o.shape).float().to(dev)
        cos, rel = metrics(o, ref_o)
        print(f"problem: lens={lens} hq={hq} hkv={hkv} d={d} causal={args.causal}, "
              f"{sum(sizes.values()) / 2**20:.1f} MiB of q/k/v/O/LSE; region {region.kind} ({end} bytes)")
        print(f"O in the region equals the inline answer bit for bit: {same_o}; LSE: {same_lse}; "
              f"response carries no O bytes: {len(shared.o.data) == 0}")
        print(f"O vs torch fp32: cosine {cos:.6f}, relative L1 {rel:.5f} "
              f"(recipe {enums['Recipe'].values_by_number[shared.recipe].name})")

        def timed(req):
            client, server, kernel = [], [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                r = attend(req, timeout=120)
                client.append((time.perf_counter() - t0) * 1e3)
                server.append(r.timings.total_us)
                kernel.append(r.timings.kernel_us)
            return statistics.median(client), statistics.median(server), statistics.median(kernel)

        rows = {"inline bytes": timed(inline_req), f"{region.kind} shared memory": timed(shared_req)}
        print(f"{'path':24s} {'client ms p50':>14s} {'server total us':>16s} {'kernel us':>10s}")
        for name, (c, s, kern) in rows.items():
            print(f"{name:24s} {c:14.3f} {s:16.0f} {kern:10.0f}")
        base = rows["inline bytes"][0]
        print(f"client latency, inline / shared: {base / rows[f'{region.kind} shared memory'][0]:.1f}x")
    except grpc.RpcError as e:
        print(f"RPC failed: {e.code().name}: {e.details()}")
        failures += 1
    finally:
        shm_call("UnregisterSharedMemory")(msgs["UnregisterSharedMemoryRequest"](name=region_name), timeout=30)
        region.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
