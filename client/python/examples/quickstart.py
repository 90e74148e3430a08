"""Attention on a sageserve server from numpy: packed varlen and [B, H, S, D] layouts, GQA, causal,
LSE, a recipe, and an error as its exception.

    python3 client/python/examples/quickstart.py --target 127.0.0.1:50051
"""
import argparse

import numpy as np

import sageserve

ap = argparse.ArgumentParser()
ap.add_argument("--target", default="127.0.0.1:50051")
args = ap.parse_args()
rng = np.random.default_rng(0)

with sageserve.Client(args.target) as client:
    print("server:", client.info().backend, "health:", client.health())

    # Two sequences packed as [tokens, heads, head_dim]: 100 and 28 queries over 300 and 28 keys.
    q = rng.standard_normal((128, 16, 128)).astype(np.float16)
    k = rng.standard_normal((328, 4, 128)).astype(np.float16)  # GQA 16:4
    v = rng.standard_normal((328, 4, 128)).astype(np.float16)
    r = client.attend(q, k, v, cu_seqlens_q=[0, 100, 128], cu_seqlens_k=[0, 300, 328], causal=True,
                      return_lse=True, recipe="int8_qk_fp8_pv")
    print(f"packed: O {r.o.shape} {r.o.dtype}, LSE {r.lse.shape}, recipe {r.recipe}, via {r.transport}, "
          f"server {r.timings.total_us} us")

    # torch SDPA's layout: [batch, heads, seq, head_dim].
    qb = rng.standard_normal((2, 8, 64, 64)).astype(np.float16)
    r = client.attend(qb, qb, qb, causal=True)
    print(f"[B, H, S, D]: O {r.o.shape}")

    try:
        client.attend(qb[..., :48].copy(), qb[..., :48].copy(), qb[..., :48].copy())  # head dim 48
    except sageserve.InvalidArgumentError as e:
        print(f"refused: {e} (field {e.field})")
