"""A diffusion transformer's attention on the server. With diffusers installed, every attention
module of a pipeline's transformer takes the processor:

    pipe.transformer.set_attn_processor(SageServeAttnProcessor())

Without it, this example runs a plain-torch attention module laid out like diffusers' Attention.

    python3 client/python/examples/dit_processor.py --target 127.0.0.1:50051
"""
import argparse

import torch
import torch.nn as nn

import sageserve.torch as st
from sageserve.torch.dit import SageServeAttnProcessor

ap = argparse.ArgumentParser()
ap.add_argument("--target", default="127.0.0.1:50051")
args = ap.parse_args()
st.configure(target=args.target, recipe="int8_qk_fp8_pv")


class Attention(nn.Module):
    """diffusers' Attention attributes: to_q/to_k/to_v/to_out, heads, processor."""

    def __init__(self, dim: int = 1024, heads: int = 16) -> None:
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.processor = SageServeAttnProcessor()

    def forward(self, x, encoder_hidden_states=None):
        return self.processor(self, x, encoder_hidden_states)


device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.float16 if device == "cuda" else torch.bfloat16
attn = Attention().to(device, dtype).eval()
latents = torch.randn(1, 4096, 1024, device=device, dtype=dtype)  # a 64x64 latent, patchified
with torch.no_grad():
    print("out:", tuple(attn(latents).shape))
