#!/usr/bin/env python3
"""Paged decode benchmark: sage_paged_decode (libsageattn.so via ctypes) against torch SDPA.

One process, one GPU. Hq=32, Hkv=8, D=128, one query row per sequence. For each case and storage
(16-bit fp16 pages, INT8-K/FP8-V pages) the KV pool is built as a torch uint8 tensor in the
kv_pages.h layout with pages in a shuffled order. Cold L2: every timed call reads the next of 4
copies of the pool (each case's 4 copies total > 200 MB), so no call finds the previous call's
pages in the 50 MB L2. Timing: CUDA events around the one call, preceded by a spin kernel so the
launch is queued before the start event fires (host overhead not counted); median of --iters.
Bandwidth is compared with streaming reads measured in the same run over 2 GiB: torch's int32 sum,
torch's fp32 sum, and (where CuPy is installed) a read-only CUDA kernel compiled with NVRTC; "% of
stream" uses the fastest of them.

  python3 bench/decode_bench.py --lib ours=.bundle/lib/libsageattn.so --out decode.json
(--lib may repeat, NAME=PATH, to compare builds in one run; --layouts token,head times both page row
orders of sageattn.h's sage_kv_layout_t; --no-torch skips the SDPA baselines.)
"""
import argparse
import ctypes
import json
import math
import statistics
import sys
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HQ, HKV, D = 32, 8, 128
CASES = [(64, 4096), (16, 16384), (4, 65536), (1, 32768), (16, 8192), (64, 8192), (32, 16384)]
PAGE_TOKENS = 16
COPIES = 4
SAGE_KV_16BIT, SAGE_KV_INT8K_FP8V, SAGE_KV_INT4K_FP8V = 0, 1, 2
STORAGES = ((SAGE_KV_16BIT, "fp16_pages"), (SAGE_KV_INT8K_FP8V, "int8k_fp8v_pages"), (SAGE_KV_INT4K_FP8V, "int4k_fp8v_pages"))
INT4_GROUP = 32


def int4_nibble_channel(n, d=D):
    """The channel nibble n of a token-head's INT4 K codes holds (kv_pages.h, Int4NibbleChannel)."""
    lane, r = divmod(n, d // 4)
    w, j = divmod(r, 8)
    e, m = divmod(j, 4)
    ks, operand = 2 * w + m // 2, m % 2
    i, kset = ks % 4, ks // 4
    return 32 * (2 * kset + operand) + 8 * i + 2 * lane + e
SAGE_DTYPE_F16 = 1
LAYOUTS = {"token": 0, "head": 1}  # sage_kv_layout_t: TOKEN_MAJOR, HEAD_MAJOR


class Params(ctypes.Structure):
    _fields_ = [("storage", ctypes.c_int), ("dtype", ctypes.c_int), ("q", ctypes.c_void_p),
                ("o", ctypes.c_void_p), ("lse", ctypes.c_void_p), ("pages", ctypes.c_void_p),
                ("page_bytes", ctypes.c_uint64), ("page_tokens", ctypes.c_int32),
                ("page_table", ctypes.c_void_p), ("cu_pages", ctypes.c_void_p),
                ("cu_seqlens_q", ctypes.c_void_p), ("seqlens_k", ctypes.c_void_p),
                ("batch", ctypes.c_int32), ("max_seqlen_q", ctypes.c_int32),
                ("max_seqlen_k", ctypes.c_int32), ("total_q", ctypes.c_int64),
                ("num_q_heads", ctypes.c_int32), ("num_kv_heads", ctypes.c_int32),
                ("head_dim", ctypes.c_int32), ("softmax_scale", ctypes.c_float),
                ("workspace", ctypes.c_void_p), ("workspace_bytes", ctypes.c_size_t), ("layout", ctypes.c_int)]


def timed(fn, iters, spin_cycles=200_000):
    """Median kernel time in µs: spin, start event, fn(i), end event (the spin hides host overhead)."""
    times = []
    for i in range(iters):
        torch.cuda._sleep(spin_cycles)
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(i)
        b.record()
        times.append((a, b))
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) * 1e3 for a, b in times)


READ_KERNEL = r"""
extern "C" __global__ void read_only(const int4* __restrict__ x, long long n, int* out) {
  int acc = 0;
  const long long stride = (long long)gridDim.x * blockDim.x;
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {  // 4 independent 16-byte loads in flight per thread
    const int4 a = x[i], b = x[i + stride], c = x[i + 2 * stride], d = x[i + 3 * stride];
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
  }
  for (; i < n; i += stride) { const int4 a = x[i]; acc ^= a.x ^ a.y ^ a.z ^ a.w; }
  if (acc == 0x7fffffff) atomicAdd(out, 1);  // keeps the loads; never true for this data
}
"""


def streaming_read_gbps(iters):
    """GB/s of read-only passes over 2 GiB: {method: GB/s}."""
    x = torch.ones(512 * 1024 * 1024, dtype=torch.int32, device="cuda")
    nbytes = x.numel() * 4
    out = {}
    x.sum()
    out["torch_int32_sum"] = nbytes / timed(lambda i: x.sum(), iters) / 1e3
    xf = x.view(torch.float32)
    xf.sum()
    out["torch_fp32_sum"] = nbytes / timed(lambda i: xf.sum(), iters) / 1e3
    try:
        import cupy
        kernel = cupy.RawKernel(READ_KERNEL, "read_only")
        xc = cupy.asarray(x)
        flag = cupy.zeros(1, dtype=cupy.int32)
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)

        def run(i):
            with stream:
                kernel((sms * 8,), (256,), (xc, cupy.int64(nbytes // 16), flag))
        run(0)
        torch.cuda.synchronize()
        out["cuda_read_kernel"] = nbytes / timed(run, iters) / 1e3
    except Exception as e:  # noqa: BLE001 - reported, the torch baselines stand
        out["cuda_read_kernel_error"] = f"{type(e).__name__}: {str(e)[:120]}"
    del x
    return out


def make_kv(batch, length, storage, gen):
    """Contiguous source K/V [B, L, Hkv, D] (codes + scales for 8-bit) and the fp32 values they stand for."""
    shape = (batch, length, HKV, D)
    if storage == SAGE_KV_16BIT:
        k = torch.randn(shape, device="cuda", dtype=torch.float16, generator=gen)
        v = torch.randn(shape, device="cuda", dtype=torch.float16, generator=gen)
        return {"k": k, "v": v}
    v = (torch.randn(shape, device="cuda", generator=gen) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    vs = torch.rand(shape[:3], device="cuda", generator=gen) * 0.01 + 0.002
    if storage == SAGE_KV_INT4K_FP8V:
        codes = torch.randint(-7, 8, shape, device="cuda", dtype=torch.int8, generator=gen)
        ks = torch.rand(*shape[:3], D // INT4_GROUP, device="cuda", generator=gen) * 0.2 + 0.05
        perm = torch.tensor([int4_nibble_channel(n) for n in range(D)], device="cuda")
        u = (codes[..., perm] + 8).to(torch.uint8)
        k = u[..., 0::2] | (u[..., 1::2] << 4)  # [B, L, H, D/2]: nibble 2b low, 2b + 1 high
        return {"k": k, "v": v, "ks": ks, "vs": vs, "k_codes": codes}
    k = torch.randint(-127, 128, shape, device="cuda", dtype=torch.int8, generator=gen)
    ks = torch.rand(shape[:3], device="cuda", generator=gen) * 0.02 + 0.005
    return {"k": k, "v": v, "ks": ks, "vs": vs}


def values(kv, storage, b):
    """fp32 K, V of sequence b as [Hkv, L, D]."""
    if storage == SAGE_KV_16BIT:
        k, v = kv["k"][b].float(), kv["v"][b].float()
    elif storage == SAGE_KV_INT4K_FP8V:
        k = kv["k_codes"][b].float() * kv["ks"][b].repeat_interleave(INT4_GROUP, dim=-1)
        v = kv["v"][b].float() * kv["vs"][b][..., None]
    else:
        k = kv["k"][b].float() * kv["ks"][b][..., None]
        v = kv["v"][b].float() * kv["vs"][b][..., None]
    return k.transpose(0, 1), v.transpose(0, 1)


def build_pool(kv, storage, perm, layout):
    """Pages [P, page_bytes] uint8: [K codes T×H×D][V codes][K scales T×H][V scales] (head-major:
    H×T×D and H×T); page i of the flattened (sequence, page) order goes to pool slot perm[i]."""
    batch, length = kv["k"].shape[:2]
    n_pages = batch * length // PAGE_TOKENS

    def paged(t):
        t = t.contiguous().view(torch.uint8).reshape(n_pages, PAGE_TOKENS, HKV, -1)  # bytes per (token, head)
        if layout == "head":
            t = t.transpose(1, 2)
        t = t.contiguous().view(n_pages, -1)
        out = torch.empty_like(t)
        out[perm] = t
        return out

    parts = [paged(kv["k"]), paged(kv["v"])]
    if storage != SAGE_KV_16BIT:
        parts += [paged(kv["ks"]), paged(kv["vs"])]
    return torch.cat(parts, dim=1).contiguous()


def run_case(lib, batch, length, storage, iters, stream, layout="token"):
    gen = torch.Generator(device="cuda").manual_seed(batch * 1000 + length + storage)
    kv = make_kv(batch, length, storage, gen)
    n_pages = batch * length // PAGE_TOKENS
    perm = torch.randperm(n_pages, device="cuda", generator=gen)
    pools = [build_pool(kv, storage, perm, layout)]
    pools += [pools[0].clone() for _ in range(COPIES - 1)]
    page_table = perm.to(torch.int32)
    cu_pages = torch.arange(0, batch + 1, device="cuda", dtype=torch.int32) * (length // PAGE_TOKENS)
    cu_q = torch.arange(0, batch + 1, device="cuda", dtype=torch.int32)
    seqlens = torch.full((batch,), length, device="cuda", dtype=torch.int32)
    q = torch.randn(batch, HQ, D, device="cuda", dtype=torch.float16)
    o = torch.full_like(q, float("nan"))
    lse = torch.empty(batch, HQ, device="cuda", dtype=torch.float32)
    scale = 1.0 / math.sqrt(D)
    p = Params(storage, SAGE_DTYPE_F16, q.data_ptr(), o.data_ptr(), lse.data_ptr(), pools[0].data_ptr(),
               pools[0].shape[1], PAGE_TOKENS, page_table.data_ptr(), cu_pages.data_ptr(), cu_q.data_ptr(),
               seqlens.data_ptr(), batch, 1, length, batch, HQ, HKV, D, scale, None, 0, LAYOUTS[layout])
    ws_bytes = ctypes.c_size_t(0)
    if lib.sage_paged_decode_workspace_size(ctypes.byref(p), ctypes.byref(ws_bytes)) != 0:
        raise RuntimeError(lib.sage_last_error().decode(errors="replace"))  # e.g. an older library's storages
    ws = torch.empty(max(ws_bytes.value, 16), dtype=torch.uint8, device="cuda")
    p.workspace, p.workspace_bytes = ws.data_ptr(), ws_bytes.value
    handle = ctypes.c_void_p(stream.cuda_stream)

    def call(i):
        p.pages = pools[i % COPIES].data_ptr()
        status = lib.sage_paged_decode(ctypes.byref(p), handle)
        if status != 0:
            raise RuntimeError(lib.sage_last_error().decode())

    call(0)
    torch.cuda.synchronize()
    # Sanity: the first (up to 4) sequences against fp32 math over the same stored values.
    err = 0.0
    for b in range(min(batch, 4)):
        k, v = values(kv, storage, b)
        k = k.repeat_interleave(HQ // HKV, dim=0)
        v = v.repeat_interleave(HQ // HKV, dim=0)
        s = torch.einsum("hd,hld->hl", q[b].float(), k) * scale
        ref = torch.einsum("hl,hld->hd", torch.softmax(s, dim=-1), v)
        e = ((o[b].float() - ref).abs().max() / ref.abs().max()).item()
        err = e if math.isnan(e) else max(err, e)  # NaN must show
    us = timed(call, iters)
    per_token_head = {SAGE_KV_16BIT: 4 * D, SAGE_KV_INT8K_FP8V: 2 * D + 8,
                      SAGE_KV_INT4K_FP8V: D // 2 + D + 4 * (D // INT4_GROUP) + 4}[storage]
    bytes_read = batch * length * HKV * per_token_head
    del pools, kv
    return {"us": us, "bytes": bytes_read, "gbps": bytes_read / us / 1e3, "max_rel_err_vs_fp32": err,
            "workspace_bytes": ws_bytes.value}


def run_torch(batch, length, iters):
    """SDPA decode on contiguous fp16 [B, H, L, D] KV, each backend forced."""
    out = {}
    q = torch.randn(batch, HQ, 1, D, device="cuda", dtype=torch.float16)
    kvs = [(torch.randn(batch, HKV, length, D, device="cuda", dtype=torch.float16),
            torch.randn(batch, HKV, length, D, device="cuda", dtype=torch.float16)) for _ in range(COPIES)]
    bytes_gqa = batch * length * HKV * D * 2 * 2
    for name, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
        for mode in ("gqa", "expanded"):
            try:
                if mode == "gqa":
                    args = kvs
                    fn = lambda i: F.scaled_dot_product_attention(q, args[i % COPIES][0], args[i % COPIES][1],
                                                                  enable_gqa=True)
                else:  # the backend refused enable_gqa: K/V repeated to Hq heads (4x the bytes)
                    args = [(k.repeat_interleave(HQ // HKV, 1), v.repeat_interleave(HQ // HKV, 1)) for k, v in kvs[:2]]
                    fn = lambda i: F.scaled_dot_product_attention(q, args[i % 2][0], args[i % 2][1])
                with sdpa_kernel(backend):
                    fn(0)
                    torch.cuda.synchronize()
                    us = timed(fn, iters)
                out[name] = {"us": us, "mode": mode, "kv_bytes_read": bytes_gqa * (1 if mode == "gqa" else HQ // HKV)}
                del args
                break
            except Exception as e:  # noqa: BLE001 - a refused backend is a result, not a crash
                out[name] = {"error": f"{mode}: {type(e).__name__}: {str(e).splitlines()[0][:120]}"}
                if "out of memory" in str(e):
                    break
        torch.cuda.empty_cache()
    del kvs
    torch.cuda.empty_cache()
    return out


def variant(lib_name, layout):
    return lib_name if layout == "token" else f"{lib_name}/head-major"


def main():
    warnings.filterwarnings("ignore", category=UserWarning)  # SDPA's "kernel not used because" notes
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True, action="append", help="NAME=PATH of a libsageattn.so (repeatable)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--cases", default="", help="BxL,BxL,... (default: all of CASES)")
    ap.add_argument("--layouts", default="token", help="page row orders to time: token, head or token,head")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch SDPA baselines (profiling runs)")
    args = ap.parse_args()
    cases = [tuple(int(x) for x in c.split("x")) for c in args.cases.split(",")] if args.cases else CASES
    libs = {}
    layouts = args.layouts.split(",")
    for spec in args.lib:
        name, path = spec.split("=", 1) if "=" in spec else ("ours", spec)
        lib = ctypes.CDLL(path)
        lib.sage_paged_decode.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.sage_paged_decode_workspace_size.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.sage_last_error.restype = ctypes.c_char_p
        libs[name] = lib
    stream = torch.cuda.Stream()  # the C API refuses the legacy default stream
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "config": {"Hq": HQ, "Hkv": HKV, "D": D, "n_q": 1, "page_tokens": PAGE_TOKENS, "copies": COPIES,
                         "iters": args.iters, "cold_l2": f"rotating {COPIES} copies of the pool / KV"},
              "cases": []}
    with torch.cuda.stream(stream):
        streams = streaming_read_gbps(args.iters)
        stream_gbps = max(v for v in streams.values() if isinstance(v, float))
        result["streaming_read_gbps"] = streams
        result["stream_reference_gbps"] = stream_gbps
        for batch, length in cases:
            case = {"batch": batch, "len": length}
            for name, lib in libs.items():
                for layout in layouts:
                    for storage, key in STORAGES:
                        try:
                            r = run_case(lib, batch, length, storage, args.iters, stream, layout)
                        except RuntimeError as e:  # e.g. a library without this storage: a result, not a crash
                            case[f"{variant(name, layout)}/{key}"] = {"error": str(e)[:160]}
                            continue
                        r["pct_stream"] = 100 * r["gbps"] / stream_gbps
                        case[f"{variant(name, layout)}/{key}"] = r
                        torch.cuda.empty_cache()
            case["torch"] = {} if args.no_torch else run_torch(batch, length, args.iters)
            times = [v["us"] for v in case["torch"].values() if "us" in v]
            best = min(times) if times else float("nan")
            case["torch_best_us"] = best
            for key, r in case.items():
                if isinstance(r, dict) and "gbps" in r:
                    r["speedup_vs_best_torch"] = best / r["us"]
            result["cases"].append(case)
            print(f"done {batch}x{length}", file=sys.stderr, flush=True)

    print(f"device {result['device']}, torch {result['torch']}; streaming read over 2 GiB (GB/s): "
          + ", ".join(f"{k} {v:.0f}" if isinstance(v, float) else f"{k}: {v}" for k, v in streams.items())
          + f"; cold L2 by {result['config']['cold_l2']}; median of {args.iters}")
    for name in [variant(n, layout) for n in libs for layout in layouts]:
        print(f"\n{name}: % = achieved GB/s / {stream_gbps:.0f} GB/s streaming; x = fastest torch µs / ours µs")
        print("| B x L | fp16 pages µs | % | x | 8-bit µs | % | x | int4-K µs | % | x | flash µs | cudnn µs |"
              " efficient µs | rel err fp16, 8-bit, int4-K |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for c in result["cases"]:
            t = c["torch"]

            def tt(backend):
                v = t.get(backend, {})
                return f"{v['us']:.1f}" + ("" if v["mode"] == "gqa" else " (expanded)") if "us" in v else "fail"

            cells, errs = [], []
            for _, key in STORAGES:
                r = c.get(f"{name}/{key}", {})
                if "us" in r:
                    cells.append(f"{r['us']:.1f} | {r['pct_stream']:.0f}% | {r['speedup_vs_best_torch']:.2f}")
                    errs.append(f"{r['max_rel_err_vs_fp32']:.1e}")
                else:
                    cells.append("— | — | —")
                    errs.append("—")
            print(f"| {c['batch']}x{c['len'] // 1024}k | " + " | ".join(cells) +
                  f" | {tt('flash')} | {tt('cudnn')} | {tt('efficient')} | {', '.join(errs)} |")
    for c in result["cases"]:
        for name, v in c["torch"].items():
            if "error" in v:
                print(f"torch {name} {c['batch']}x{c['len']}: {v['error']}")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
