#!/usr/bin/env python3
"""Paged prefill benchmark: one chunked-prefill step of one sequence, contiguous vs paged KV.

The step: Q = 4096 new query rows over K/V = 32768 tokens (28672 cached + the chunk's own 4096),
causal bottom-right aligned (query i sees keys 0 .. 28672 + i), Hq 32, Hkv 8, D 128, fp16.
  contiguous  sage_attn_forward (quantize + attend, as the server runs it) over contiguous q/k/v
  paged       the 32768 tokens in a page pool (kernels/reference/kv_pages.h layout, 16-token pages
              in shuffled order), sage_paged_gather into a scratch K/V, then the same forward over it;
              16-bit pages (fp16 K/V bytes as is) and INT8-K/FP8-V pages (random codes, scales 0.005-0.025)
Timing: CUDA events on one torch stream around the call(s), each preceded by a spin kernel so the
launches are queued before the start event (host overhead not counted); median of --iters after
warmup. TOPS = 4 * Hq * D * W / t, W = the causal work = sum over query rows of the keys they see
= Q * (K - Q) + Q * (Q + 1) / 2 (one multiply-add of QK^T and one of PV per (row, key, channel)).
ratio = contiguous ms / paged ms (= paged TOPS / contiguous TOPS); the issue's target is >= 0.85.
Sanity: the gathered K/V equal the expected values bit for bit (16-bit pages: the contiguous K/V;
8-bit pages: fp16(code * scale) computed by torch), and the output over 16-bit pages is compared
with the contiguous output (torch.equal).

  python3 bench/paged_prefill_bench.py --lib .bundle/lib/libsageattn.so --out paged_prefill.json [--quick]
"""
import argparse
import ctypes
import json
import math
import statistics
import time

import torch

import attention_bench  # bench/, beside this file
from attention_bench import AttnParams, RecipeConfig, check

HQ, HKV, D = 32, 8, 128
Q_LEN, CACHED = 4096, 28672
K_LEN = CACHED + Q_LEN
PAGE_TOKENS = 16
SAGE_DTYPE_F16 = 1
SAGE_MASK_CAUSAL = 1
SAGE_KV_16BIT, SAGE_KV_INT8K_FP8V = 0, 1
# recipe -> sage_recipe_config_t (recipe, granularity, qk_smoothing, v_smoothing, accumulation): the
# defaults of recipe.cc ConfigFor, as the server passes them (per-thread; K smoothing when quantized).
RECIPES = {"int8_qk_fp8_pv": (1, 2, 1, 0, 0), "unquantized": (3, 2, 0, 0, 0)}


# ---- the C API (kernels/include/sageattn.h): sage_attn_params_t and the library loader are
# attention_bench.py's (one ctypes definition per struct); the gather's params are added here.
class GatherParams(ctypes.Structure):  # sage_paged_gather_params_t
    _fields_ = [("storage", ctypes.c_int), ("dtype", ctypes.c_int), ("pages", ctypes.c_void_p),
                ("page_bytes", ctypes.c_uint64), ("page_tokens", ctypes.c_int32),
                ("page_table", ctypes.c_void_p), ("cu_pages", ctypes.c_void_p), ("cu_seqlens_k", ctypes.c_void_p),
                ("batch", ctypes.c_int32), ("max_seqlen_k", ctypes.c_int32), ("total_k", ctypes.c_int64),
                ("num_kv_heads", ctypes.c_int32), ("head_dim", ctypes.c_int32),
                ("k_out", ctypes.c_void_p), ("v_out", ctypes.c_void_p),
                ("layout", ctypes.c_int)]  # sage_kv_layout_t: 0, TOKEN_MAJOR, the order build_pool writes


def load_lib(path):
    lib, found = attention_bench.load_lib(path)
    lib.sage_paged_gather.argtypes = [ctypes.POINTER(GatherParams), ctypes.c_void_p]
    lib.sage_paged_gather.restype = ctypes.c_int
    return lib, found


def attn_params(lib, recipe, q, k, v, o, cu_q, cu_k):
    """sage_attn_params_t of the step (one sequence, Q_LEN rows over K_LEN keys, causal) and its workspace."""
    p = AttnParams()
    p.config = RecipeConfig(*RECIPES[recipe])
    p.dtype = SAGE_DTYPE_F16
    p.q, p.k, p.v, p.o, p.lse = q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), None
    p.cu_seqlens_q, p.cu_seqlens_k = cu_q.data_ptr(), cu_k.data_ptr()
    p.batch, p.max_seqlen_q, p.max_seqlen_k, p.total_q, p.total_k = 1, Q_LEN, K_LEN, Q_LEN, K_LEN
    p.num_q_heads, p.num_kv_heads, p.head_dim = HQ, HKV, D
    p.mask = SAGE_MASK_CAUSAL  # bottom-right aligned: row i sees keys j <= i + (K_LEN - Q_LEN)
    p.softmax_scale = 1.0 / math.sqrt(D)
    n = ctypes.c_size_t(0)
    check(lib, lib.sage_attn_workspace_size(ctypes.byref(p), ctypes.byref(n)), "sage_attn_workspace_size")
    ws = torch.empty(max(n.value, 1), dtype=torch.uint8, device="cuda")  # caching allocator: 512-aligned
    p.workspace, p.workspace_bytes = ws.data_ptr(), n.value
    return p, ws


def build_pool(parts, perm):
    """Pool [P, page_bytes] uint8 from per-token tensors [K_LEN, ...] in page order ([K codes][V codes]
    [K scales][V scales], kv_pages.h): page i of the sequence goes to pool slot perm[i]."""
    n_pages = K_LEN // PAGE_TOKENS
    out = []
    for t in parts:
        b = t.contiguous().view(torch.uint8).view(n_pages, -1)
        s = torch.empty_like(b)
        s[perm] = b
        out.append(s)
    return torch.cat(out, dim=1).contiguous()


def timed(fn, stream, warmup, iters, spin_cycles=1_000_000):
    """Median ms of fn() between CUDA events on `stream`; a spin kernel first hides the host's launch time."""
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
        ev = []
        for _ in range(iters):
            torch.cuda._sleep(spin_cycles)
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(stream)
            fn()
            b.record(stream)
            ev.append((a, b))
    stream.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", help="path to libsageattn.so")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--quick", action="store_true", help="int8_qk_fp8_pv only, 5 iterations")
    args = ap.parse_args()
    recipes = ["int8_qk_fp8_pv"] if args.quick else ["int8_qk_fp8_pv", "unquantized"]
    iters, warmup = (min(args.iters, 5), 1) if args.quick else (args.iters, args.warmup)

    lib, lib_path = load_lib(args.lib)
    stream = torch.cuda.Stream()  # the C API refuses the legacy default stream
    handle = ctypes.c_void_p(stream.cuda_stream)
    work = Q_LEN * (K_LEN - Q_LEN) + Q_LEN * (Q_LEN + 1) // 2
    flops = 4.0 * HQ * D * work
    tops = lambda ms: flops / (ms * 1e-3) / 1e12  # noqa: E731
    gen = torch.Generator(device="cuda").manual_seed(1234)
    with torch.cuda.stream(stream):
        q = torch.randn(Q_LEN, HQ, D, device="cuda", generator=gen).half()
        k = torch.randn(K_LEN, HKV, D, device="cuda", generator=gen).half()
        v = torch.randn(K_LEN, HKV, D, device="cuda", generator=gen).half()
        cu_q = torch.tensor([0, Q_LEN], dtype=torch.int32, device="cuda")
        cu_k = torch.tensor([0, K_LEN], dtype=torch.int32, device="cuda")
        n_pages = K_LEN // PAGE_TOKENS
        perm = torch.randperm(n_pages, device="cuda", generator=gen)
        page_table = perm.to(torch.int32)
        cu_pages = torch.tensor([0, n_pages], dtype=torch.int32, device="cuda")
        # 8-bit pages: int8 K codes, finite e4m3 V codes, positive fp32 scales ~0.01 per token and head
        kc = torch.randint(-127, 128, (K_LEN, HKV, D), device="cuda", dtype=torch.int8, generator=gen)
        vc = (torch.randn(K_LEN, HKV, D, device="cuda", generator=gen) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
        ks = torch.rand(K_LEN, HKV, device="cuda", generator=gen) * 0.02 + 0.005
        vs = torch.rand(K_LEN, HKV, device="cuda", generator=gen) * 0.02 + 0.005
        storages = {
            "fp16_pages": (SAGE_KV_16BIT, build_pool([k, v], perm), k, v),
            "int8k_fp8v_pages": (SAGE_KV_INT8K_FP8V, build_pool([kc, vc, ks, vs], perm),
                                 (kc.float() * ks[..., None]).half(), (vc.float() * vs[..., None]).half()),
        }
        del kc, vc, ks, vs
        k_out, v_out = torch.empty_like(k), torch.empty_like(v)  # the gather's scratch K/V (16-byte aligned)
        o_contig, o_paged = torch.empty_like(q), torch.empty_like(q)
    stream.synchronize()

    gpu = torch.cuda.get_device_name()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {gpu}  torch {torch.__version__}  lib {lib_path}")
    print(f"# Q {Q_LEN} rows over K {K_LEN} keys ({CACHED} cached), causal bottom-right, Hq {HQ} Hkv {HKV} D {D} "
          f"fp16, {PAGE_TOKENS}-token pages shuffled; W = {work} (row, key) pairs, {flops / 1e12:.3f} T ops; "
          f"median of {iters}", flush=True)
    rows = []
    for recipe in recipes:
        try:
            pc, ws_c = attn_params(lib, recipe, q, k, v, o_contig, cu_q, cu_k)
            fwd_c = lambda: check(lib, lib.sage_attn_forward(ctypes.byref(pc), handle), "forward")  # noqa: E731
            contig_ms = timed(fwd_c, stream, warmup, iters)
        except RuntimeError as e:
            print(f"# {recipe}: contiguous failed: {e}", flush=True)
            rows.append({"recipe": recipe, "error": str(e)})
            continue
        rows.append({"recipe": recipe, "case": "contiguous", "ms": contig_ms, "tops": tops(contig_ms)})
        pp, ws_p = attn_params(lib, recipe, q, k_out, v_out, o_paged, cu_q, cu_k)
        for name, (storage, pool, want_k, want_v) in storages.items():
            g = GatherParams(storage, SAGE_DTYPE_F16, pool.data_ptr(), pool.shape[1], PAGE_TOKENS,
                             page_table.data_ptr(), cu_pages.data_ptr(), cu_k.data_ptr(), 1, K_LEN, K_LEN,
                             HKV, D, k_out.data_ptr(), v_out.data_ptr())
            gather = lambda: check(lib, lib.sage_paged_gather(ctypes.byref(g), handle), "gather")  # noqa: E731
            fwd_p = lambda: check(lib, lib.sage_attn_forward(ctypes.byref(pp), handle), "forward")  # noqa: E731
            row = {"recipe": recipe, "case": name, "page_bytes": pool.shape[1], "pool_bytes": pool.numel()}
            try:
                with torch.cuda.stream(stream):  # sanity, on poisoned scratch
                    k_out.fill_(float("nan"))
                    v_out.fill_(float("nan"))
                    gather()
                    fwd_c()
                    fwd_p()
                stream.synchronize()
                row["gather_exact"] = bool(torch.equal(k_out, want_k) and torch.equal(v_out, want_v))
                if storage == SAGE_KV_16BIT:
                    row["o_equal_contiguous"] = bool(torch.equal(o_paged, o_contig))
                row["gather_ms"] = timed(gather, stream, warmup, iters)
                row["ms"] = timed(lambda: (gather(), fwd_p()), stream, warmup, iters)
            except RuntimeError as e:
                print(f"# {recipe} {name}: failed: {e}", flush=True)
                row["error"] = str(e)
                rows.append(row)
                continue
            row["tops"] = tops(row["ms"])
            row["attend_ms_est"] = row["ms"] - row["gather_ms"]  # paged step minus gather (not timed alone)
            row["ratio"] = contig_ms / row["ms"]
            row["gather_gbps"] = (pool.numel() + 2 * k_out.numel() * 2) / (row["gather_ms"] * 1e-3) / 1e9
            rows.append(row)
        del ws_c, ws_p

    print("\n| recipe | KV | ms | TOPS | gather ms | gather GB/s (r+w) | contiguous/paged | >= 0.85 | gather exact | "
          "O == contiguous |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['recipe']} | {r.get('case', '-')} | error: {r['error'][:80]} |||||||||")
        elif r["case"] == "contiguous":
            print(f"| {r['recipe']} | contiguous | {r['ms']:.3f} | {r['tops']:.1f} | - | - | 1.00 | - | - | - |")
        else:
            print(f"| {r['recipe']} | {r['case']} | {r['ms']:.3f} | {r['tops']:.1f} | {r['gather_ms']:.3f} | "
                  f"{r['gather_gbps']:.0f} | {r['ratio']:.3f} | {'yes' if r['ratio'] >= 0.85 else 'NO'} | "
                  f"{r['gather_exact']} | {r.get('o_equal_contiguous', '-')} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": gpu, "torch": torch.__version__, "lib": lib_path, "iters": iters, "warmup": warmup,
                       "shape": {"q_len": Q_LEN, "k_len": K_LEN, "cached": CACHED, "hq": HQ, "hkv": HKV, "d": D,
                                 "dtype": "fp16", "mask": "causal bottom-right", "page_tokens": PAGE_TOKENS},
                       "work": work, "ops": flops,
                       "tops_formula": "4*Hq*D*W/t, W = Q*(K-Q) + Q*(Q+1)/2 = sum over query rows of keys seen",
                       "target_ratio": 0.85, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
