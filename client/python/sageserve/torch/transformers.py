"""A transformers attention function: `register()`, then
`AutoModelForCausalLM.from_pretrained(..., attn_implementation="sageserve")` (or
`model.set_attn_implementation("sageserve")` / `config._attn_implementation = "sageserve"`).

transformers calls it with query [B, H, L, D] and the un-repeated key/value [B, Hkv, S, D] (GQA is
the server's). Masks: none, or one that is exactly the causal pattern the model built (checked
here), go to the server; any other mask (padding, sliding windows) runs torch's SDPA locally or
raises, as `configure(fallback=...)` says.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from sageserve.torch import sdpa

NAME = "sageserve"


def _mask_kind(mask: torch.Tensor, L: int, S: int) -> Optional[str]:
    """"none" (every key allowed), "causal" (bottom-right) or None (anything else)."""
    mask = mask[..., :S]
    if mask.dtype == torch.bool:
        allowed = mask
    else:
        # Additive masks: 0 where allowed, a large negative (finfo.min, -inf) where not; any other
        # value is a bias the server does not take.
        blocked = mask <= torch.finfo(mask.dtype).min / 2
        if not bool(((mask == 0) | blocked).all()):
            return None
        allowed = ~blocked
    allowed = allowed.reshape(-1, allowed.shape[-2], allowed.shape[-1])
    if allowed.shape[-2:] != (L, S) and allowed.shape[-2] != 1:
        return None
    first = allowed[0].expand(L, S)
    if not bool((allowed == first).all()):
        return None  # rows differ across batch or heads (padding)
    if bool(first.all()):
        return "none"
    i = torch.arange(L, device=first.device)[:, None]
    j = torch.arange(S, device=first.device)[None, :]
    if bool((first == (j <= i + (S - L))).all()):
        return "causal"
    return None


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Optional[torch.Tensor], dropout: float = 0.0,
                      scaling: Optional[float] = None, is_causal: Optional[bool] = None,
                      **kwargs: Any) -> Tuple[torch.Tensor, None]:
    """transformers' attention-function signature; returns ([B, L, H, D], None)."""
    L, S = query.shape[2], key.shape[2]
    if attention_mask is None:
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        kind = "causal" if causal and L > 1 else "none"
    else:
        kind = _mask_kind(attention_mask, L, S)
    if module.training and dropout > 0:
        kind = None
    client = sdpa.get_client()
    reason = sdpa._unsupported(client, query, key, value, None, 0.0, True) if kind is not None else "mask"
    if reason is not None:
        if sdpa._config.fallback != "local":
            raise sdpa.UnsupportedError(f"sageserve cannot serve this attention call: {reason}")
        groups = query.shape[1] // key.shape[1]
        k = key.repeat_interleave(groups, dim=1) if groups > 1 else key
        v = value.repeat_interleave(groups, dim=1) if groups > 1 else value
        mask = attention_mask[..., :S] if attention_mask is not None else None
        out = sdpa._TORCH_SDPA(query, k, v, attn_mask=mask, dropout_p=dropout if module.training else 0.0,
                               is_causal=mask is None and kind == "causal" and L > 1, scale=scaling)
    else:
        out = sdpa.serve(query, key, value, causal_bottom_right=kind == "causal", scale=scaling, client=client)
    return out.transpose(1, 2).contiguous(), None


def register(name: str = NAME) -> None:
    """Registers the function (and sdpa's mask builder, which skips masks that are only causal)."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, attention_forward)
    try:
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:  # older transformers build the mask themselves; _mask_kind reads it
        return
    # Without a mask builder of its own, an implementation gets no mask at all (transformers
    # assumes a backend that masks by itself), and padding would be lost silently.
    AttentionMaskInterface.register(name, sdpa_mask)
