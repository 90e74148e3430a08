"""sageserve as torch.nn.functional.scaled_dot_product_attention: per call, or swapped in for the
whole process (SageAttention's one-line switch). CUDA tensors go by CUDA IPC when the server is on
this host and runs --allow_shared_memory; otherwise bytes.

    python3 client/python/examples/torch_sdpa.py --target 127.0.0.1:50051
"""
import argparse

import torch
import torch.nn.functional as F

import sageserve.torch as st

ap = argparse.ArgumentParser()
ap.add_argument("--target", default="127.0.0.1:50051")
args = ap.parse_args()
st.configure(target=args.target, fallback="local")  # unsupported calls (masks, dropout) stay local

device = "cuda" if torch.cuda.is_available() else "cpu"
q = torch.randn(1, 32, 1024, 128, device=device, dtype=torch.float16)
k = torch.randn(1, 8, 1024, 128, device=device, dtype=torch.float16)
v = torch.randn(1, 8, 1024, 128, device=device, dtype=torch.float16)

out = st.attention(q, k, v, is_causal=True, enable_gqa=True)
ref = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(4, 1), v.float().repeat_interleave(4, 1),
                                     is_causal=True)
print("cosine vs torch:", F.cosine_similarity(out.double().flatten(), ref.double().flatten(), dim=0).item())

with st.patched():  # every F.scaled_dot_product_attention call in here goes to the server
    out2 = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
print("patched call equals the direct one:", torch.equal(out, out2))
