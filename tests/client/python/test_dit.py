"""A diffusion-transformer block in plain torch (no diffusers on the GPU machine): its attention
modules follow diffusers' Attention layout (to_q/to_k/to_v/to_out, heads, processor), so
SageServeAttnProcessor drops in; wrap() covers a block that calls F.scaled_dot_product_attention
itself. Outputs against the same block on torch's SDPA (label gpu: needs torch)."""
from __future__ import annotations

import unittest

import support

support.gpu_test()

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import sageserve.torch as st  # noqa: E402
from sageserve.torch.dit import SageServeAttnProcessor, wrap  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.float16 if DEVICE == "cuda" else torch.bfloat16  # CPU matmuls of old torch lack fp16
server: support.Server
calls = {"n": 0}


def setUpModule() -> None:
    global server
    server = support.Server()
    client = st.configure(target=server.target, fallback="raise", recipe="unquantized")
    attend = client.attend

    def counted(*args, **kwargs):  # proves the server ran the attention, not a silent fallback
        calls["n"] += 1
        return attend(*args, **kwargs)

    client.attend = counted


def tearDownModule() -> None:
    st.get_client().close()
    server.stop()


class TorchProcessor:
    """The reference: diffusers AttnProcessor2_0's path on torch's SDPA."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        b, n, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        d = q.shape[-1] // attn.heads
        q, k, v = (x.view(b, -1, attn.heads, d).transpose(1, 2) for x in (q, k, v))
        q, k = attn.norm_q(q), attn.norm_k(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        return attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(b, n, -1)))


class Attention(nn.Module):
    """diffusers.models.attention_processor.Attention's attributes, nothing more."""

    def __init__(self, dim: int, heads: int, context_dim: int = None) -> None:
        super().__init__()
        context_dim = context_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(context_dim, dim)
        self.to_v = nn.Linear(context_dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.norm_q = nn.LayerNorm(dim // heads)
        self.norm_k = nn.LayerNorm(dim // heads)
        self.processor = TorchProcessor()

    def set_processor(self, processor) -> None:
        self.processor = processor

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None):
        return self.processor(self, hidden_states, encoder_hidden_states, attention_mask)


class DiTBlock(nn.Module):
    """PixArt-style: adaLN-single modulated self-attention, cross-attention to text, MLP."""

    def __init__(self, dim: int = 512, heads: int = 8, context_dim: int = 256) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn1 = Attention(dim, heads)
        self.attn2 = Attention(dim, heads, context_dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.modulation = nn.Linear(dim, 6 * dim)

    def forward(self, x, t, context):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(t))[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attn1(self.norm1(x) * (1 + scale1) + shift1)
        x = x + self.attn2(x, encoder_hidden_states=context)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class PlainSdpaBlock(nn.Module):
    """A block that calls F.scaled_dot_product_attention itself (what wrap() is for)."""

    def __init__(self, dim: int = 256, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


class DiTTest(unittest.TestCase):
    def test_processor_in_a_dit_block(self) -> None:
        torch.manual_seed(0)
        block = DiTBlock().to(DEVICE, DTYPE).eval()
        x = torch.randn(2, 256, 512, device=DEVICE, dtype=DTYPE)  # a 16x16 latent, patchified
        t = torch.randn(2, 512, device=DEVICE, dtype=DTYPE)
        context = torch.randn(2, 77, 256, device=DEVICE, dtype=DTYPE)
        with torch.no_grad():
            ref = block(x, t, context)
            for attn in (block.attn1, block.attn2):
                attn.set_processor(SageServeAttnProcessor())
            before = calls["n"]
            out = block(x, t, context)
            self.assertEqual(calls["n"] - before, 2)  # self- and cross-attention, on the server
            cos = cosine(out, ref)
            print(f"  DiT block, unquantized: cos {cos:.6f}")
            self.assertGreaterEqual(cos, 0.9999)
            for attn in (block.attn1, block.attn2):
                attn.set_processor(SageServeAttnProcessor(recipe="int8_qk_fp8_pv"))
            cos8 = cosine(block(x, t, context), ref)
            print(f"  DiT block, int8_qk_fp8_pv: cos {cos8:.6f}")
            self.assertGreaterEqual(cos8, 0.99)

    def test_wrap_routes_a_blocks_own_sdpa_calls(self) -> None:
        torch.manual_seed(1)
        block = PlainSdpaBlock().to(DEVICE, DTYPE).eval()
        x = torch.randn(2, 100, 256, device=DEVICE, dtype=DTYPE)
        original = F.scaled_dot_product_attention
        with torch.no_grad():
            ref = block(x)
            wrap(block)
            before = calls["n"]
            out = block(x)
        self.assertEqual(calls["n"] - before, 1)
        self.assertIs(F.scaled_dot_product_attention, original)  # restored after the forward
        self.assertGreaterEqual(cosine(out, ref), 0.9999)


if __name__ == "__main__":
    unittest.main()
