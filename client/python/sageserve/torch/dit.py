"""Diffusion-transformer attention on the server.

`SageServeAttnProcessor` is a diffusers-style attention processor (`attn.set_processor(...)`, or
`attn.processor = ...`): it reads the module's to_q/to_k/to_v/to_out, `heads`, and the optional
norm_q/norm_k, and sends the [B, tokens, heads, D] projections as they are (no transposes).
`wrap(module)` covers modules that call F.scaled_dot_product_attention themselves: while the
module runs, that function is the server's.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from sageserve.torch import sdpa


class SageServeAttnProcessor:
    """diffusers AttnProcessor2_0's common path (self- and cross-attention), on the server."""

    def __init__(self, client: Any = None, recipe: Any = None) -> None:
        self.client = client
        self.recipe = recipe

    def __call__(self, attn: torch.nn.Module, hidden_states: torch.Tensor,
                 encoder_hidden_states: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                 temb: Optional[torch.Tensor] = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        spatial = hidden_states.ndim == 4
        if spatial:  # [B, C, H, W] feature maps attend over their pixels
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, tokens, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        heads = attn.heads
        head_dim = query.shape[-1] // heads
        query = query.view(batch, -1, heads, head_dim)
        key = key.view(batch, -1, key.shape[-1] // head_dim, head_dim)
        value = value.view(batch, -1, value.shape[-1] // head_dim, head_dim)
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        # AttnProcessor2_0 leaves SDPA's default scale (1/sqrt(head_dim)) whatever attn.scale says.
        scale = None
        if attention_mask is None:
            client = self.client or sdpa.get_client()
            bhsd = [x.transpose(1, 2) for x in (query, key, value)]
            reason = sdpa._unsupported(client, *bhsd, None, 0.0, True)
            if reason is None:
                r = client.attend(query, key, value, layout="bshd", scale=scale,
                                  recipe=self.recipe if self.recipe is not None else sdpa._config.recipe,
                                  transport=sdpa._config.transport)
                out = r.o
            else:
                out = sdpa.attention(*bhsd, scale=scale, enable_gqa=True, client=client).transpose(1, 2)
        else:
            out = sdpa.attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                 attn_mask=attention_mask, scale=scale, enable_gqa=True).transpose(1, 2)
        out = out.reshape(batch, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        if len(attn.to_out) > 1:
            out = attn.to_out[1](out)  # dropout
        if spatial:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if getattr(attn, "residual_connection", False):
            out = out + residual
        return out / getattr(attn, "rescale_output_factor", 1.0)


def wrap(module: torch.nn.Module, fallback: str = "local") -> torch.nn.Module:
    """Makes `module`'s own F.scaled_dot_product_attention calls go to the server while it runs
    (forward hooks swap the function in and back; process-wide meanwhile).
    Returns the module."""
    state = {}

    def before(*_: Any) -> None:
        state["previous"] = torch.nn.functional.scaled_dot_product_attention
        sdpa.configure(fallback=fallback)
        torch.nn.functional.scaled_dot_product_attention = sdpa.attention

    def after(*_: Any) -> None:
        torch.nn.functional.scaled_dot_product_attention = state.pop("previous")

    module.register_forward_pre_hook(before)
    try:
        module.register_forward_hook(after, always_call=True)  # restored even when forward raises
    except TypeError:  # torch < 2.1
        module.register_forward_hook(after)
    return module
