"""`attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False)`:
torch.nn.functional.scaled_dot_product_attention's arguments, shapes and meaning, computed by a
sageserve server.

Torch's `is_causal` is aligned top-left (query i sees keys 0..i) and the server's mask bottom-right,
so causal calls with L != S are reshaped to give torch's answer exactly: L < S attends over the
first L keys (no query sees further), L > S splits the queries into a square causal part and a
part that sees every key. What the server cannot do (an attn_mask, dropout, dtypes other than
fp16/bf16, head dims it does not run, autograd) raises UnsupportedError or, with
fallback="local", runs torch's own SDPA; the choice is `configure(fallback=...)` or per call.
"""
from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import Any, Iterator, Optional, Union

import torch
import torch.nn.functional as F

import sageserve

if not hasattr(F, "scaled_dot_product_attention"):
    raise ImportError(f"sageserve.torch needs torch >= 2.1 (F.scaled_dot_product_attention with scale=); "
                      f"this is torch {torch.__version__}")
# Torch's own, captured before enable() can replace it.
_TORCH_SDPA = F.scaled_dot_product_attention


class UnsupportedError(ValueError):
    """An SDPA call the server cannot serve (and fallback is "raise")."""


class _Config:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.client: Optional[sageserve.Client] = None
        self.fallback = "raise"
        self.recipe: Union[str, int, None] = None
        self.transport: Optional[str] = None
        # Head dims each client's server runs (GetServerInfo once per client).
        self.head_dims: "weakref.WeakKeyDictionary[sageserve.Client, frozenset]" = weakref.WeakKeyDictionary()


_config = _Config()


def configure(client: Optional[sageserve.Client] = None, *, target: Optional[str] = None,
              fallback: Optional[str] = None, recipe: Union[str, int, None] = None,
              transport: Optional[str] = None, **client_kwargs: Any) -> sageserve.Client:
    """Sets the client (given, or made from `target` and Client's keyword arguments), the default
    fallback ("raise" or "local"), recipe and transport of every call; returns the client."""
    with _config.lock:
        if client is None and (target is not None or client_kwargs):
            client = sageserve.Client(target, **client_kwargs)
        if client is not None:
            _config.client = client
        if fallback is not None:
            if fallback not in ("raise", "local"):
                raise ValueError("fallback must be 'raise' or 'local'")
            _config.fallback = fallback
        if recipe is not None:
            _config.recipe = recipe
        if transport is not None:
            _config.transport = transport
    return get_client()


def set_client(client: sageserve.Client) -> None:
    configure(client)


def get_client() -> sageserve.Client:
    """The configured client; without one, a client of $SAGESERVE_TARGET (default 127.0.0.1:50051)."""
    with _config.lock:
        if _config.client is None:
            _config.client = sageserve.Client(os.environ.get("SAGESERVE_TARGET"))
        return _config.client


def _head_dims(client: sageserve.Client) -> frozenset:
    dims = _config.head_dims.get(client)
    if dims is None:
        dims = frozenset(client.info().head_dims)
        _config.head_dims[client] = dims
    return dims


def _unsupported(client: sageserve.Client, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 attn_mask: Optional[torch.Tensor], dropout_p: float, enable_gqa: bool) -> Optional[str]:
    if attn_mask is not None:
        return "attn_mask (the server takes no mask but its causal one)"
    if dropout_p > 0:
        return f"dropout_p={dropout_p}"
    if q.dtype not in (torch.float16, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtypes {q.dtype}/{k.dtype}/{v.dtype} (the server takes float16 or bfloat16, all alike)"
    if q.dim() < 3 or k.dim() != q.dim() or v.dim() != q.dim():
        return f"ranks {q.dim()}/{k.dim()}/{v.dim()} (needs [..., heads, seq, head_dim] alike)"
    if q.shape[:-3] != k.shape[:-3] or k.shape[:-1] != v.shape[:-1]:
        return f"shapes {tuple(q.shape)}/{tuple(k.shape)}/{tuple(v.shape)} (broadcasting is not served)"
    hq, hkv = q.shape[-3], k.shape[-3]
    if hq != hkv and not (enable_gqa and hq % hkv == 0):
        return f"heads {hq} and {hkv} (GQA needs enable_gqa=True and a multiple)"
    if q.shape[-1] != k.shape[-1] or v.shape[-1] != q.shape[-1]:
        return "value head dim unlike query's"
    if q.shape[-1] not in _head_dims(client):
        return f"head dim {q.shape[-1]} (the server runs {sorted(_head_dims(client))})"
    if q.shape[-2] == 0 or k.shape[-2] == 0:
        return "an empty sequence"
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return "autograd (the server computes the forward pass only)"
    return None


def serve(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal_bottom_right: bool = False,
          scale: Optional[float] = None, client: Optional[sageserve.Client] = None,
          recipe: Union[str, int, None] = None) -> torch.Tensor:
    """[B, H, L, D] attention on the server with its own (bottom-right) causal mask; no checks."""
    client = client or get_client()
    r = client.attend(q, k, v, layout="bhsd", causal=causal_bottom_right, scale=scale,
                      recipe=recipe if recipe is not None else _config.recipe, transport=_config.transport)
    return r.o.contiguous()


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
              dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
              enable_gqa: bool = False, *, client: Optional[sageserve.Client] = None,
              fallback: Optional[str] = None, recipe: Union[str, int, None] = None) -> torch.Tensor:
    """F.scaled_dot_product_attention on the server (see the module's docstring)."""
    client = client or get_client()
    reason = _unsupported(client, query, key, value, attn_mask, dropout_p, enable_gqa)
    if reason is not None:
        if (fallback or _config.fallback) == "local":
            kwargs = {"enable_gqa": enable_gqa} if enable_gqa else {}
            return _TORCH_SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                               scale=scale, **kwargs)
        raise UnsupportedError(f"sageserve cannot serve this SDPA call: {reason}")
    lead = query.shape[:-3]
    # Every leading dim is batch: [*, H, L, D] -> [B, H, L, D].
    q = query.reshape(-1, *query.shape[-3:])
    k = key.reshape(-1, *key.shape[-3:])
    v = value.reshape(-1, *value.shape[-3:])
    L, S = q.shape[-2], k.shape[-2]
    kw = dict(scale=scale, client=client, recipe=recipe)
    if not is_causal or L == S:
        out = serve(q, k, v, causal_bottom_right=is_causal, **kw)
    elif L < S:
        # Top-left: query i sees keys 0..i, so keys L.. are never seen; the square is bottom-right too.
        out = serve(q, k[:, :, :L], v[:, :, :L], causal_bottom_right=True, **kw)
    else:
        # L > S: queries 0..S-1 form a causal square; queries S.. see every key.
        head = serve(q[:, :, :S], k, v, causal_bottom_right=True, **kw)
        tail = serve(q[:, :, S:], k, v, causal_bottom_right=False, **kw)
        out = torch.cat([head, tail], dim=2)
    return out.reshape(*lead, *out.shape[-3:])


def enable(fallback: str = "local") -> None:
    """Replaces torch.nn.functional.scaled_dot_product_attention with `attention` (SageAttention's
    one-line switch); calls the server cannot serve run torch's own unless fallback="raise"."""
    configure(fallback=fallback)
    F.scaled_dot_product_attention = attention


def disable() -> None:
    F.scaled_dot_product_attention = _TORCH_SDPA


@contextlib.contextmanager
def patched(fallback: str = "local") -> Iterator[None]:
    """`with patched(): model(x)`: F.scaled_dot_product_attention is the server's inside the block.
    Process-wide while it lasts (other threads calling SDPA meanwhile get it too)."""
    previous = F.scaled_dot_product_attention
    enable(fallback)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = previous
