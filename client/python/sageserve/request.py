"""Attend requests from arrays: layouts, recipes and the unpacking of answers.

Layouts: "thd" is the wire's packed varlen [tokens, heads, head_dim] (with cu_seqlens for several
sequences); "bhsd" is torch SDPA's [batch, heads, seq, head_dim]; "bshd" is flash-attn's
[batch, seq, heads, head_dim]. Default: 3-D arrays are "thd", 4-D ones "bhsd".
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np

from sageserve import codec
from sageserve.v1 import attention_service_pb2 as pb
from sageserve.v1 import tensor_pb2

LAYOUTS = ("thd", "bhsd", "bshd")
RECIPE_NAMES = {"int4_qk_fp8_pv": tensor_pb2.RECIPE_INT4_QK_FP8_PV,
                "int8_qk_fp8_pv": tensor_pb2.RECIPE_INT8_QK_FP8_PV,
                "int8_qk_fp16_pv": tensor_pb2.RECIPE_INT8_QK_FP16_PV,
                "unquantized": tensor_pb2.RECIPE_UNQUANTIZED}

_ids = itertools.count(1)


def next_request_id(prefix: str = "py") -> str:
    return f"{prefix}-{os.getpid()}-{next(_ids)}"


def parse_recipe(recipe: Union[str, int, None]) -> int:
    """`int8_qk_fp8_pv` / `RECIPE_INT8_QK_FP8_PV` / a Recipe number; None: the server's choice."""
    if recipe is None:
        return tensor_pb2.RECIPE_UNSPECIFIED
    if isinstance(recipe, int):
        return recipe
    key = recipe.lower()
    if key.startswith("recipe_"):
        key = key[len("recipe_"):]
    if key not in RECIPE_NAMES:
        raise ValueError(f"unknown recipe {recipe!r} ({', '.join(RECIPE_NAMES)})")
    return RECIPE_NAMES[key]


def recipe_name(recipe: int) -> str:
    for name, number in RECIPE_NAMES.items():
        if number == recipe:
            return name
    return "unspecified"


@dataclass
class Packed:
    """Q/K/V in the wire's layout, and how to give O and LSE the caller's layout back."""

    q: Any
    k: Any
    v: Any
    q_shape: List[int]
    k_shape: List[int]
    cu_q: Optional[List[int]]
    cu_k: Optional[List[int]]
    dtype: int
    unpack_o: Callable[[Any], Any]
    unpack_lse: Callable[[Any], Any]


def _transpose12(x: Any) -> Any:
    return x.transpose(1, 2) if codec.is_torch(x) else x.transpose(0, 2, 1, 3)


def pack(q: Any, k: Any, v: Any, layout: Optional[str] = None,
         cu_seqlens_q: Optional[Sequence[int]] = None, cu_seqlens_k: Optional[Sequence[int]] = None,
         input_dtype: Union[str, int, None] = None) -> Packed:
    if layout is None:
        layout = "thd" if len(q.shape) == 3 else "bhsd"
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    hint = codec.parse_dtype(input_dtype)
    dtype = codec.wire_dtype(q, "q", hint)
    for name, x in (("k", k), ("v", v)):
        if codec.wire_dtype(x, name, hint) != dtype:
            raise TypeError(f"{name}: dtype {x.dtype} differs from q's {q.dtype}")
    rank = 3 if layout == "thd" else 4
    for name, x in (("q", q), ("k", k), ("v", v)):
        if len(x.shape) != rank:
            raise ValueError(f"{name}: layout {layout} takes {rank}-D arrays, got shape {tuple(x.shape)}")
    if tuple(k.shape) != tuple(v.shape):
        raise ValueError(f"v: shape {tuple(v.shape)} differs from k's {tuple(k.shape)}")
    if layout == "thd":
        cu_q = None if cu_seqlens_q is None else [int(c) for c in cu_seqlens_q]
        cu_k = None if cu_seqlens_k is None else [int(c) for c in cu_seqlens_k]
        return Packed(q, k, v, list(q.shape), list(k.shape), cu_q, cu_k, dtype, lambda o: o, lambda l: l)
    if cu_seqlens_q is not None or cu_seqlens_k is not None:
        raise ValueError(f"cu_seqlens apply to layout 'thd' only, not {layout!r}")
    if layout == "bhsd":
        b, hq, lq, d = q.shape
        _, hkv, lk, _ = k.shape
        qs, ks, vs = (_transpose12(x) for x in (q, k, v))  # [B, S, H, D] views
    else:
        b, lq, hq, d = q.shape
        _, lk, hkv, _ = k.shape
        qs, ks, vs = q, k, v
    if k.shape[0] != b:
        raise ValueError(f"k: batch {k.shape[0]} differs from q's {b}")

    def flat(x: Any, rows: int, heads: int) -> Any:
        if codec.is_torch(x):
            return x.reshape(rows, heads, d)
        return np.ascontiguousarray(x).reshape(rows, heads, d)

    def unpack_o(o: Any) -> Any:
        o = o.reshape(b, lq, hq, o.shape[-1])
        return _transpose12(o) if layout == "bhsd" else o

    def unpack_lse(lse: Any) -> Any:  # [total_q, Hq] -> [B, Hq, Lq] (bhsd) or [B, Lq, Hq]
        lse = lse.reshape(b, lq, hq)
        if layout == "bhsd":
            return lse.transpose(1, 2) if codec.is_torch(lse) else lse.transpose(0, 2, 1)
        return lse

    cu_q = [i * lq for i in range(b + 1)]
    cu_k = [i * lk for i in range(b + 1)]
    return Packed(flat(qs, b * lq, hq), flat(ks, b * lk, hkv), flat(vs, b * lk, hkv), [b * lq, hq, d],
                  [b * lk, hkv, d], cu_q, cu_k, dtype, unpack_o, unpack_lse)


def attend_request(packed: Packed, *, causal: bool = False, scale: Optional[float] = None,
                   return_lse: bool = False, recipe: Union[str, int, None] = None,
                   output_dtype: Union[str, int, None] = None, model: Optional[str] = None,
                   layer: Optional[int] = None, timestep: Optional[int] = None,
                   request_id: Optional[str] = None) -> pb.AttendRequest:
    """An AttendRequest without tensor bytes (Transport.place fills q, k, v)."""
    r = pb.AttendRequest(request_id=request_id or next_request_id())
    if packed.cu_q is not None:
        r.cu_seqlens_q.extend(packed.cu_q)
    if packed.cu_k is not None:
        r.cu_seqlens_k.extend(packed.cu_k)
    r.mask = pb.MASK_MODE_CAUSAL if causal else pb.MASK_MODE_NONE
    if scale is not None:
        r.softmax_scale = float(scale)
    r.return_lse = bool(return_lse)
    r.output_dtype = codec.parse_dtype(output_dtype)
    r.recipe = parse_recipe(recipe)
    if model:
        r.layer_key.model = model
        if layer is not None:
            r.layer_key.layer = int(layer)
        if timestep is not None:
            r.layer_key.timestep = int(timestep)
    elif layer is not None or timestep is not None:
        raise ValueError("layer and timestep need model (the precision registry's key)")
    return r


@dataclass
class AttendResult:
    """O (and LSE) in the caller's layout and array type, plus what the server reported."""

    o: Any
    lse: Optional[Any]
    recipe: str  # the recipe that ran, e.g. "int8_qk_fp8_pv"
    timings: pb.Timings
    request_id: str
    transport: str  # "bytes", "system" or "cuda"
