"""A transformers attention function: `register()`, then
`AutoModelForCausalLM.from_pretrained(..., attn_implementation="sageserve")` (or
`model.set_attn_implementation("sageserve")` / `config._attn_implementation = "sageserve"`).

transformers calls it with query [B, H, L, D] and the un-repeated key/value [B, Hkv, S, D] (GQA is
the server's). Masks: none, or one that is exactly the causal pattern the model built (checked
here), go to the server; any other mask (padding, sliding windows) runs torch's SDPA locally or
raises, as `configure(fallback=...)` says.

`SessionCache` keeps the KV cache on the server instead: `generate(..., past_key_values=
SessionCache(model.config))` sends each step's new tokens only (one session per batch row).
"""
from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional, Tuple

import torch
from transformers import DynamicCache

import sageserve
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
    cache = getattr(_active, "cache", None)
    layer = getattr(module, "layer_idx", None)
    if cache is not None and layer is not None and layer in cache._pending:
        if cache._pending[layer] is not key:
            # The model changed the cache's keys on their way here: attending over them alone
            # would silently drop the cached tokens.
            raise sdpa.UnsupportedError("SessionCache: the keys reaching attention are not the ones the cache "
                                        "handed out (a model that transforms cached keys is not supported)")
        return cache._attend(layer, query, key, value, attention_mask, scaling), None
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


# The SessionCache whose update() ran last on this thread: the attention function that follows
# (same layer, same key tensor) attends through its sessions.
_active = threading.local()


class SessionCache(DynamicCache):
    """A transformers Cache whose K/V live in sageserve sessions (docs/API.md, "Sessions").

    update() keeps nothing here: it hands the new tokens on, and the attention function appends
    them to the layer's session and attends over the whole cache in one AttendSession call for
    the batch. Needs attn_implementation="sageserve", no padding (each batch row is one session,
    causal bottom-right), the default softmax scale, and no cache surgery (beam search, crop).
    close() (or `with`) frees the sessions; the server also expires idle ones.
    """

    def __init__(self, config: Any, client: Optional[sageserve.Client] = None, max_tokens: Optional[int] = None,
                 kv_storage: str = "16bit", recipe: Any = None) -> None:
        super().__init__()
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        self._layers = int(text.num_hidden_layers)
        self._max_tokens = int(max_tokens or getattr(text, "max_position_embeddings", 4096))
        self._client = client
        self._kv_storage = kv_storage
        self._recipe = recipe
        self._pending: Dict[int, torch.Tensor] = {}
        self.sessions: List[sageserve.Session] = []

    # -- the Cache interface ----------------------------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               cache_kwargs: Optional[Dict[str, Any]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        self._pending[layer_idx] = key_states
        _active.cache = self
        return key_states, value_states

    def get_seq_length(self, layer_idx: Optional[int] = 0) -> int:
        return self.sessions[0].length(layer_idx or 0) if self.sessions else 0

    def get_mask_sizes(self, query: Any, layer_idx: int = 0) -> Tuple[int, int]:
        # (kv_length, kv_offset); transformers passes cache_position (older) or query_length (newer).
        length = int(query.shape[0]) if hasattr(query, "shape") else int(query)
        return self.get_seq_length(layer_idx) + length, 0

    @property
    def is_initialized(self) -> bool:
        return bool(self.sessions)

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return -1

    def _unsupported(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("SessionCache keeps K/V on the server: beam search, crop and "
                                  "batch reordering are not supported")

    reorder_cache = crop = batch_repeat_interleave = batch_select_indices = _unsupported

    # -- sessions ---------------------------------------------------------------------------------
    def _attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: Optional[torch.Tensor], scaling: Optional[float]) -> torch.Tensor:
        del self._pending[layer]
        B, hq, L, D = query.shape
        if scaling is not None and abs(scaling - D ** -0.5) > 1e-6 * D ** -0.5:
            raise sdpa.UnsupportedError(f"SessionCache: sessions use the default scale 1/sqrt({D}), not {scaling}")
        if attention_mask is not None and _mask_kind(attention_mask, L, self.get_seq_length(layer) + L) is None:
            raise sdpa.UnsupportedError("SessionCache: a mask other than causal (padding?) cannot be served; "
                                        "give each sequence its own batch row without padding")
        client = self._client or sdpa.get_client()
        if not self.sessions:
            dtype = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(query.dtype)
            if dtype is None:
                raise sdpa.UnsupportedError(f"SessionCache: dtype {query.dtype} (sessions take fp16 or bf16)")
            options = sageserve.SessionOptions(layers=self._layers, heads_q=hq, heads_kv=key.shape[1], head_dim=D,
                                               dtype=dtype, kv_storage=self._kv_storage, max_tokens=self._max_tokens)
            self.sessions = [client.create_session(options) for _ in range(B)]
        steps = [(self.sessions[b], key[b].transpose(0, 1), value[b].transpose(0, 1), query[b].transpose(0, 1))
                 for b in range(B)]
        recipe = self._recipe if self._recipe is not None else sdpa._config.recipe
        results = client.attend_sessions(layer, steps, recipe=recipe)
        return torch.stack([r.o for r in results])  # [B, L, Hq, D]

    def close(self) -> None:
        for s in self.sessions:
            try:
                s.close()
            except sageserve.SageServeError:  # expired or the server restarted: gone either way
                pass
        self.sessions = []

    def __enter__(self) -> "SessionCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
