#!/usr/bin/env python3
"""GPU attention benchmark: libsageattn (ctypes) against torch SDPA's flash and cuDNN backends.

One run times, on the same inputs and the same stream:
  sage-full    our pipeline as the server runs it: quantize (fp16/bf16 -> INT8/FP8 workspace) + attend
  sage-kernel  the attention kernel alone (sage_attn_attend on an already quantized workspace)
  flash        torch SDPA, FLASH_ATTENTION backend (FlashAttention-2)
  cudnn        torch SDPA, CUDNN_ATTENTION backend
over the FlashAttention benchmark shapes: head dim 64 and 128, batch x seq = 16k tokens (batch 1
above 16k), hidden 2048 (32 heads at d=64, 16 at d=128), causal and not. TOPS = 4*b*h*s^2*d / t,
halved for causal. Accuracy (cosine, relative L1) of our output and of flash's against an fp32
torch reference, on inputs with a K channel bias (what K smoothing exists for).

  python3 bench/attention_bench.py [--lib PATH] [--quick] [--recipe int8_qk_fp8_pv] [--json OUT]
"""
import argparse
import ctypes
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# ---- the C API (kernels/include/sageattn.h) -------------------------------------------------------
SAGE_DTYPE = {torch.float16: 1, torch.bfloat16: 2}
SAGE_RECIPES = {"int4_qk_fp8_pv": 0, "int8_qk_fp8_pv": 1, "int8_qk_fp16_pv": 2, "unquantized": 3}


class RecipeConfig(ctypes.Structure):
    _fields_ = [("recipe", ctypes.c_int), ("granularity", ctypes.c_int), ("qk_smoothing", ctypes.c_int),
                ("v_smoothing", ctypes.c_int), ("accumulation", ctypes.c_int)]


class AttnParams(ctypes.Structure):
    _fields_ = [("config", RecipeConfig), ("dtype", ctypes.c_int),
                ("q", ctypes.c_void_p), ("k", ctypes.c_void_p), ("v", ctypes.c_void_p), ("o", ctypes.c_void_p),
                ("lse", ctypes.c_void_p), ("cu_seqlens_q", ctypes.c_void_p), ("cu_seqlens_k", ctypes.c_void_p),
                ("batch", ctypes.c_int32), ("max_seqlen_q", ctypes.c_int32), ("max_seqlen_k", ctypes.c_int32),
                ("total_q", ctypes.c_int64), ("total_k", ctypes.c_int64), ("num_q_heads", ctypes.c_int32),
                ("num_kv_heads", ctypes.c_int32), ("head_dim", ctypes.c_int32), ("mask", ctypes.c_int),
                ("softmax_scale", ctypes.c_float), ("workspace", ctypes.c_void_p), ("workspace_bytes", ctypes.c_size_t),
                # Left NULL (ctypes zero-fills): cu_seqlens are uploaded by torch.
                ("host_cu_seqlens_q", ctypes.c_void_p), ("host_cu_seqlens_k", ctypes.c_void_p)]


def load_lib(path):
    candidates = [path] if path else [
        os.path.join(os.getcwd(), ".bundle/lib/libsageattn.so"),
        os.path.join(os.getcwd(), "build-device/kernels/cuda/libsageattn.so"),
        os.path.join(os.getcwd(), "build/kernels/cuda/libsageattn.so"),
    ]
    for c in candidates:
        if c and os.path.exists(c):
            lib = ctypes.CDLL(c)
            break
    else:
        sys.exit(f"libsageattn.so not found (tried {candidates}); pass --lib")
    P = ctypes.POINTER(AttnParams)
    for name in ("sage_attn_forward", "sage_attn_quantize", "sage_attn_attend"):
        fn = getattr(lib, name)
        fn.argtypes = [P, ctypes.c_void_p]
        fn.restype = ctypes.c_int
    lib.sage_attn_workspace_size.argtypes = [P, ctypes.POINTER(ctypes.c_size_t)]
    lib.sage_attn_workspace_size.restype = ctypes.c_int
    lib.sage_last_error.restype = ctypes.c_char_p
    lib.sage_status_name.restype = ctypes.c_char_p
    lib.sage_status_name.argtypes = [ctypes.c_int]
    return lib, c


def check(lib, status, what):
    if status != 0:
        raise RuntimeError(f"{what}: {lib.sage_status_name(status).decode()}: {lib.sage_last_error().decode()}")


class SageCall:
    """Params, workspace and output of one problem, reused across timing iterations."""

    def __init__(self, lib, q, k, v, cu, batch, seq, causal, recipe, with_lse=False):
        self.lib = lib
        total, hq, d = q.shape
        hkv = k.shape[1]
        self.o = torch.empty_like(q)
        self.lse = torch.empty(total, hq, dtype=torch.float32, device=q.device) if with_lse else None
        p = AttnParams()
        # Recipe defaults of recipe.h: per-thread, K smoothing, no V smoothing, two-level accumulation.
        qk_smoothing = 2 if recipe == "int4_qk_fp8_pv" else 1
        p.config = RecipeConfig(SAGE_RECIPES[recipe], 2, qk_smoothing, 0, 0)
        p.dtype = SAGE_DTYPE[q.dtype]
        p.q, p.k, p.v, p.o = q.data_ptr(), k.data_ptr(), v.data_ptr(), self.o.data_ptr()
        p.lse = self.lse.data_ptr() if with_lse else None
        p.cu_seqlens_q = p.cu_seqlens_k = cu.data_ptr()
        p.batch, p.max_seqlen_q, p.max_seqlen_k = batch, seq, seq
        p.total_q = p.total_k = total
        p.num_q_heads, p.num_kv_heads, p.head_dim = hq, hkv, d
        p.mask = 1 if causal else 0
        p.softmax_scale = 1.0 / math.sqrt(d)
        nbytes = ctypes.c_size_t(0)
        check(lib, lib.sage_attn_workspace_size(ctypes.byref(p), ctypes.byref(nbytes)), "workspace_size")
        self.workspace = torch.empty(max(nbytes.value, 1), dtype=torch.uint8, device=q.device)
        p.workspace, p.workspace_bytes = self.workspace.data_ptr(), nbytes.value
        self.p = p

    def forward(self, stream):
        check(self.lib, self.lib.sage_attn_forward(ctypes.byref(self.p), stream.cuda_stream), "forward")

    def quantize(self, stream):
        check(self.lib, self.lib.sage_attn_quantize(ctypes.byref(self.p), stream.cuda_stream), "quantize")

    def attend(self, stream):
        check(self.lib, self.lib.sage_attn_attend(ctypes.byref(self.p), stream.cuda_stream), "attend")


def time_ms(fn, stream, warmup, reps):
    """Median of CUDA-event timings of fn() on `stream`, after warmup runs."""
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(stream)
            fn()
            b.record(stream)
            times.append((a, b))
        stream.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in times)


def accuracy(out, ref):
    o, r = out.float().flatten(), ref.float().flatten()
    cos = torch.dot(o, r) / (o.norm() * r.norm())
    rel_l1 = (o - r).abs().sum() / r.abs().sum()
    return float(cos), float(rel_l1)


def make_inputs(dist, total, batch, seq, heads, d, dtype, dev, stream, seed, k_bias):
    """Packed [total, heads, d] q/k/v, cu_seqlens, and contiguous [b, h, s, d] copies for torch.
    'outliers' mirrors tests/cuda/gpu_test_util.h (InputDist::kOutliers), per head."""
    gen = torch.Generator(device=dev).manual_seed(seed)
    with torch.cuda.stream(stream):
        q = torch.randn(total, heads, d, device=dev, generator=gen)
        k = torch.randn(total, heads, d, device=dev, generator=gen)
        v = torch.randn(total, heads, d, device=dev, generator=gen)
        k += k_bias * torch.randn(1, heads, d, device=dev, generator=gen)  # K channel bias
        if dist == "outliers":
            n_out = max(1, d // 32)
            idx = torch.randint(0, d, (heads, n_out), device=dev, generator=gen)
            gain = torch.ones(heads, d, device=dev).scatter_(1, idx, 8.0)      # Q outlier channels
            q *= gain
            idx = torch.randint(0, d, (heads, n_out), device=dev, generator=gen)
            big = torch.zeros(heads, d, device=dev).scatter_(1, idx, 12.0)     # a few very large K channels
            k += big
            v += 2.0 * torch.randn(1, heads, d, device=dev, generator=gen)    # V channel offset
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        cu = torch.arange(0, batch + 1, device=dev, dtype=torch.int32) * seq
        qt, kt, vt = (x.view(batch, seq, heads, d).transpose(1, 2).contiguous() for x in (q, k, v))
    stream.synchronize()
    return q, k, v, cu, qt, kt, vt


def measure_accuracy(call, qt, kt, vt, causal, stream):
    """(cos, relL1) of our output and of torch flash against an fp32 reference."""
    batch, heads, seq, d = qt.shape
    with torch.cuda.stream(stream):
        call.forward(stream)
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
            ref = F.scaled_dot_product_attention(qt.float(), kt.float(), vt.float(), is_causal=causal)
        ours = call.o.view(batch, seq, heads, d).transpose(1, 2)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            fl = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
    stream.synchronize()
    cos, rel = accuracy(ours, ref)
    fcos, frel = accuracy(fl, ref)
    return cos, rel, fcos, frel


def shapes(args):
    seqs = [1024, 2048, 4096, 8192, 16384, 32768]
    dims = [64, 128]
    causals = [False, True]
    if args.quick:
        seqs, dims = [4096, 8192], [128]
    if args.seqs:
        seqs = [int(s) for s in args.seqs.split(",")]
    if args.dims:
        dims = [int(s) for s in args.dims.split(",")]
    for d in dims:
        for causal in causals:
            for s in seqs:
                yield d, s, causal


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", help="path to libsageattn.so")
    ap.add_argument("--recipe", default="int8_qk_fp8_pv", choices=sorted(SAGE_RECIPES))
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--quick", action="store_true", help="d=128, seq 4k and 8k only")
    ap.add_argument("--seqs", help="comma-separated sequence lengths")
    ap.add_argument("--dims", help="comma-separated head dims")
    ap.add_argument("--tokens", type=int, default=16384, help="batch x seq (batch 1 above)")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--k-bias", type=float, default=3.0, help="std of the per-channel K bias")
    ap.add_argument("--dist", default="outliers", choices=["outliers", "kbias"],
                    help="timed inputs: 'outliers' = the GPU tests' outlier-heavy inputs (K channel bias with a "
                         "few very large K channels, Q outlier channels, V channel offset); 'kbias' = N(0,1) "
                         "plus a K channel bias only. Accuracy is reported for both.")
    ap.add_argument("--json", help="write all rows to this file")
    args = ap.parse_args()

    lib, lib_path = load_lib(args.lib)
    dev = torch.device("cuda")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    stream = torch.cuda.Stream()
    gpu = torch.cuda.get_device_name()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  device {gpu}  torch {torch.__version__}  "
          f"lib {lib_path}  recipe {args.recipe}  dtype {args.dtype}", flush=True)
    rows = []
    for d, seq, causal in shapes(args):
        heads = args.hidden // d
        batch = max(1, args.tokens // seq)
        total = batch * seq
        q, k, v, cu, qt, kt, vt = make_inputs(args.dist, total, batch, seq, heads, d, dtype, dev, stream,
                                              seed=seq * 7 + d + causal, k_bias=args.k_bias)
        stream.synchronize()
        call = SageCall(lib, q, k, v, cu, batch, seq, causal, args.recipe)
        flops = 4.0 * batch * heads * seq * seq * d * (0.5 if causal else 1.0)
        tops = lambda ms: flops / (ms * 1e-3) / 1e12  # noqa: E731

        def sdpa(backend):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

        res = {"d": d, "seq": seq, "batch": batch, "heads": heads, "causal": causal}
        res["sage_full_ms"] = time_ms(lambda: call.forward(stream), stream, args.warmup, args.reps)
        call.quantize(stream)
        res["sage_kernel_ms"] = time_ms(lambda: call.attend(stream), stream, args.warmup, args.reps)
        res["sage_quant_ms"] = time_ms(lambda: call.quantize(stream), stream, args.warmup, args.reps)
        for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
            try:
                res[f"{name}_ms"] = time_ms(lambda: sdpa(backend), stream, args.warmup, args.reps)
            except RuntimeError as e:  # backend unavailable for this shape
                res[f"{name}_ms"] = float("nan")
                print(f"# {name} failed at d={d} seq={seq}: {e}", flush=True)
        # accuracy against fp32 (memory-efficient backend in fp32), on the timed inputs and on plain
        # Gaussian inputs with a K channel bias (near-uniform attention: the hardest case for FP8 P̃)
        res["cos"], res["rel_l1"], res["flash_cos"], res["flash_rel_l1"] = measure_accuracy(call, qt, kt, vt, causal, stream)
        other = "kbias" if args.dist == "outliers" else "outliers"
        q2, k2, v2, cu2, qt2, kt2, vt2 = make_inputs(other, total, batch, seq, heads, d, dtype, dev, stream,
                                                     seed=seq * 11 + d + causal, k_bias=args.k_bias)
        call2 = SageCall(lib, q2, k2, v2, cu2, batch, seq, causal, args.recipe)
        res["cos_" + other], res["rel_l1_" + other], _, res["flash_rel_l1_" + other] = measure_accuracy(
            call2, qt2, kt2, vt2, causal, stream)
        del call2, q2, k2, v2, qt2, kt2, vt2
        for key in ("sage_full", "sage_kernel", "flash", "cudnn"):
            res[f"{key}_tops"] = tops(res[f"{key}_ms"])
        rows.append(res)
        print(f"d={d:3d} seq={seq:5d} b={batch:2d} {'causal' if causal else 'full  '} | "
              f"full {res['sage_full_tops']:6.1f} kernel {res['sage_kernel_tops']:6.1f} (quant {res['sage_quant_ms']:.3f} ms) | "
              f"flash {res['flash_tops']:6.1f} cudnn {res['cudnn_tops']:6.1f} TOPS | "
              f"full/flash {res['sage_full_tops'] / res['flash_tops']:.2f} full/cudnn {res['sage_full_tops'] / res['cudnn_tops']:.2f} | "
              f"cos {res['cos']:.6f} relL1 {res['rel_l1']:.4f} (flash {res['flash_rel_l1']:.4f}) | "
              f"{other}: cos {res['cos_' + other]:.6f} relL1 {res['rel_l1_' + other]:.4f}", flush=True)
        del call, q, k, v, qt, kt, vt
        torch.cuda.empty_cache()

    other = "kbias" if args.dist == "outliers" else "outliers"
    print(f"\n| d | seq | causal | sage full | sage kernel | flash | cudnn | full/flash | full/cudnn | kernel/cudnn "
          f"| cos ({args.dist}) | rel L1 ({args.dist}) | cos ({other}) | rel L1 ({other}) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['d']} | {r['seq']} | {'yes' if r['causal'] else 'no'} | {r['sage_full_tops']:.1f} | "
              f"{r['sage_kernel_tops']:.1f} | {r['flash_tops']:.1f} | {r['cudnn_tops']:.1f} | "
              f"{r['sage_full_tops'] / r['flash_tops']:.2f} | {r['sage_full_tops'] / r['cudnn_tops']:.2f} | "
              f"{r['sage_kernel_tops'] / r['cudnn_tops']:.2f} | {r['cos']:.5f} | {r['rel_l1']:.4f} | "
              f"{r['cos_' + other]:.5f} | {r['rel_l1_' + other]:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": gpu, "torch": torch.__version__, "dtype": args.dtype, "recipe": args.recipe,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
