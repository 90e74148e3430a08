#!/usr/bin/env python3
"""A client whose shared memory goes away while its requests run must not hurt anyone else.

For each way of going away, a child process registers a region holding Q/K/V (and O/LSE outputs),
starts a burst of Attend calls that read and write it, and then, with the calls in flight:
  cuda-exit        exits at once (os._exit): the driver frees its CUDA allocation
  cuda-free        cudaFree()s the allocation and stays alive
  system-truncate  truncates its POSIX shm object to 0 bytes (pinned by the cuda backend)
The child's own calls may fail (FAILED_PRECONDITION, CANCELLED, UNAVAILABLE for its dead channel);
what must hold afterwards, checked from this (parent) process: the server is alive and SERVING,
answers inline requests bit for bit as before the child ran, and serves a fresh CUDA region of its
own correctly (the CUDA context is not poisoned). Exit status 1 on any failure.

  python3 bench/shm_vanish_client.py --target 127.0.0.1:50051
"""
import argparse
import multiprocessing as mp
import os
import sys
import time

import grpc
import torch

from grpc_client import load_messages, rpc
from grpc_shm_client import ALIGN, SHM_MESSAGES, SHM_SERVICE, CudaRegion, SystemRegion

LENS, HQ, HKV, D = [2048], 8, 8, 128


def align(x):
    return (x + ALIGN - 1) // ALIGN * ALIGN


def problem(seed):
    gen = torch.Generator().manual_seed(seed)
    n = sum(LENS)
    return [torch.randn(n, h, D, generator=gen).half() for h in (HQ, HKV, HKV)]


def layout():
    n = sum(LENS)
    sizes = {"q": n * HQ * D * 2, "k": n * HKV * D * 2, "v": n * HKV * D * 2, "o": n * HQ * D * 2, "lse": n * HQ * 4}
    at, end = {}, 0
    for name, size in sizes.items():
        at[name] = end
        end = align(end + size)
    return sizes, at, end


class Calls:
    def __init__(self, target):
        self.msgs, self.enums = load_messages(SHM_MESSAGES)
        opts = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)]
        self.channel = grpc.insecure_channel(target, options=opts)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.attend = rpc(self.channel, "Attend", self.msgs["AttendRequest"], self.msgs["AttendResponse"])

    def shm(self, name):
        response = "RegisterSharedMemoryResponse" if name.startswith("Register") else name + "Response"
        return rpc(self.channel, name, self.msgs[name + "Request"], self.msgs[response], service=SHM_SERVICE)

    def request(self, tensors, region=None, request_id="vanish"):
        sizes, at, _ = layout()
        fp16 = self.enums["DType"].values_by_name["DTYPE_FP16"].number
        req = self.msgs["AttendRequest"](request_id=request_id, return_lse=True)
        for field, name, t in zip((req.q, req.k, req.v), ("q", "k", "v"), tensors):
            field.dtype = fp16
            field.shape.extend(list(t.shape))
            if region is None:
                field.data = t.contiguous().numpy().tobytes()
            else:
                field.shared_memory.region, field.shared_memory.offset = region, at[name]
                field.shared_memory.byte_size = sizes[name]
        cu = [0]
        for n in LENS:
            cu.append(cu[-1] + n)
        req.cu_seqlens_q.extend(cu)
        req.cu_seqlens_k.extend(cu)
        if region is not None:
            for field, name in ((req.o_output, "o"), (req.lse_output, "lse")):
                field.region, field.offset, field.byte_size = region, at[name], sizes[name]
        return req


def fill(region, tensors):
    sizes, at, _ = layout()
    for name, t in zip(("q", "k", "v"), tensors):
        region.bytes[at[name]:at[name] + sizes[name]].copy_(t.reshape(-1).view(torch.uint8).to(region.bytes.device))
    if region.bytes.is_cuda:
        torch.cuda.synchronize()


def child(target, mode, ready):
    try:
        _child(target, mode, ready)
    except BaseException as e:  # say why instead of leaving the parent waiting
        ready.put(f"child failed: {type(e).__name__}: {e}")
        raise


def _child(target, mode, ready):
    calls = Calls(target)
    _, _, end = layout()
    tensors = problem(1)
    region = CudaRegion(end, 0) if mode.startswith("cuda") else SystemRegion(end)
    fill(region, tensors)
    name = f"vanish-{os.getpid()}"
    region.register(calls.shm, calls.msgs, name)
    req = calls.request(tensors, region=name)
    pending = [calls.attend.future(req, timeout=60) for _ in range(16)]
    time.sleep(0.02)  # some calls queued, some running
    ready.put("going")
    if mode == "cuda-exit":
        os._exit(0)
    if mode == "cuda-free":
        region.close()
    else:
        os.ftruncate(os.open("/dev/shm" + region.key, os.O_RDWR), 0)
    codes = {}
    for f in pending:
        try:
            f.result()
            codes["OK"] = codes.get("OK", 0) + 1
        except grpc.RpcError as e:
            codes[e.code().name] = codes.get(e.code().name, 0) + 1
    ready.put(codes)
    if mode == "system-truncate":
        region.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--modes", default="cuda-exit,cuda-free,system-truncate")
    args = ap.parse_args()
    calls = Calls(args.target)
    tensors = problem(2)
    baseline = calls.attend(calls.request(tensors, request_id="baseline"), timeout=60)
    failures = 0
    ctx = mp.get_context("spawn")  # a CUDA child must not be forked
    for mode in args.modes.split(","):
        ready = ctx.Queue()
        p = ctx.Process(target=child, args=(args.target, mode, ready))
        p.start()
        first = ready.get(timeout=120)
        if first != "going":
            print(f"{mode}: {first}")
            failures += 1
            p.join(timeout=30)
            continue
        child_codes = ready.get(timeout=120) if mode != "cuda-exit" else "exited"
        p.join(timeout=120)
        ok = True
        # The server answers everyone else as before: inline, bit for bit, several times.
        for i in range(8):
            r = calls.attend(calls.request(tensors, request_id=f"after-{mode}-{i}"), timeout=60)
            ok = ok and r.o.data == baseline.o.data and r.lse.data == baseline.lse.data
        # And a CUDA region of this (healthy) client still works: the context is not poisoned.
        sizes, at, end = layout()
        mine = CudaRegion(end, 0)
        fill(mine, tensors)
        name = f"healthy-{mode}"
        mine.register(calls.shm, calls.msgs, name)
        mine.bytes[at["o"]:at["lse"] + sizes["lse"]].fill_(0xFF)
        torch.cuda.synchronize()
        calls.attend(calls.request(tensors, region=name, request_id=f"healthy-{mode}"), timeout=60)
        o = mine.bytes[at["o"]:at["o"] + sizes["o"]].cpu().numpy().tobytes()
        ok = ok and o == baseline.o.data
        calls.shm("UnregisterSharedMemory")(calls.msgs["UnregisterSharedMemoryRequest"](name=name), timeout=30)
        mine.close()
        print(f"{mode}: child's calls {child_codes}; afterwards inline and a fresh CUDA region "
              f"{'match the baseline bit for bit' if ok else 'DIFFER or failed'}")
        failures += 0 if ok else 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
