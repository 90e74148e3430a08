"""Tensors on the wire: numpy arrays and torch tensors to and from sageserve.v1.Tensor.

Torch is optional and never imported here: a torch tensor is recognised by its type's module, and
its own methods do the work. Wire tensors are little-endian row-major bytes, no padding.
"""
from __future__ import annotations

import sys
from typing import Any, Optional, Sequence, Union

import numpy as np

from sageserve.v1 import tensor_pb2

Array = Any  # numpy.ndarray or torch.Tensor

DTYPE_NAMES = {"fp16": tensor_pb2.DTYPE_FP16, "bf16": tensor_pb2.DTYPE_BF16, "fp32": tensor_pb2.DTYPE_FP32,
               "float16": tensor_pb2.DTYPE_FP16, "bfloat16": tensor_pb2.DTYPE_BF16,
               "float32": tensor_pb2.DTYPE_FP32}
_ITEMSIZE = {tensor_pb2.DTYPE_FP16: 2, tensor_pb2.DTYPE_BF16: 2, tensor_pb2.DTYPE_FP32: 4}


def is_torch(x: object) -> bool:
    return type(x).__module__.startswith("torch")


def is_cuda(x: object) -> bool:
    return is_torch(x) and bool(getattr(x, "is_cuda", False))


def itemsize(dtype: int) -> int:
    return _ITEMSIZE[dtype]


def parse_dtype(value: Union[str, int, None]) -> int:
    """`fp16`/`bf16`/`fp32` (or a DType number) as a DType; None is DTYPE_UNSPECIFIED."""
    if value is None:
        return tensor_pb2.DTYPE_UNSPECIFIED
    if isinstance(value, int):
        return value
    key = str(value).lower().replace("torch.", "")
    if key not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {value!r} (fp16, bf16, fp32)")
    return DTYPE_NAMES[key]


def wire_dtype(x: Array, name: str, hint: Optional[int] = None) -> int:
    """The DType of an input tensor: fp16 or bf16 (torch, or numpy bfloat16 via ml_dtypes).

    numpy has no bfloat16 of its own: a uint16 array is taken as bf16 bit patterns when `hint`
    (the call's input_dtype) says DTYPE_BF16.
    """
    kind = str(x.dtype).replace("torch.", "")
    if kind in ("float16", "bfloat16"):
        return DTYPE_NAMES[kind]
    if kind == "uint16" and hint == tensor_pb2.DTYPE_BF16 and not is_torch(x):
        return tensor_pb2.DTYPE_BF16
    raise TypeError(f"{name}: dtype {x.dtype} is not sent; sageserve takes float16 or bfloat16 "
                    f"(convert first, e.g. {name}.astype(numpy.float16) or {name}.half(); "
                    f"numpy bf16 bits: a uint16 array with input_dtype='bf16')")


def host_bytes(x: Array) -> bytes:
    """The tensor's elements as little-endian row-major bytes (one copy)."""
    if is_torch(x):
        t = x.detach()
        if t.is_cuda:
            t = t.cpu()
        t = t.contiguous()
        # numpy has no bfloat16: reinterpret the 16-bit pattern.
        return t.view(_torch().int16).numpy().tobytes() if t.element_size() == 2 else t.numpy().tobytes()
    a = np.asarray(x)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big"):
        a = a.astype(a.dtype.newbyteorder("<"))
    return np.ascontiguousarray(a).tobytes()


def set_tensor(out: tensor_pb2.Tensor, x: Array, dtype: int, shape: Sequence[int]) -> None:
    """Fills `out` with `x`'s bytes under `shape` (the wire's [tokens, heads, head_dim])."""
    out.dtype = dtype
    out.shape[:] = [int(s) for s in shape]
    out.data = host_bytes(x)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (nearest even), as uint16 bit patterns."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def decode(t: tensor_pb2.Tensor, data: Optional[bytes] = None, like: Optional[Array] = None) -> Array:
    """A received tensor as a writable numpy array (or, when `like` is a torch tensor, torch on
    `like`'s device).

    `data` overrides t.data (bytes read back from shared memory). fp16 and fp32 keep their dtype;
    bf16 becomes numpy float32 (exact) or torch bfloat16.
    """
    raw = t.data if data is None else data
    if isinstance(raw, bytes) and not (like is not None and is_torch(like)):
        raw = bytearray(raw)  # numpy answers are the caller's to write to, as torch ones are
    shape = tuple(int(s) for s in t.shape)
    if t.dtype == tensor_pb2.DTYPE_FP32:
        host = np.frombuffer(raw, dtype="<f4").reshape(shape)
    else:
        host = np.frombuffer(raw, dtype="<u2").reshape(shape)
    if like is not None and is_torch(like):
        torch = _torch()
        # One copy into memory torch owns (the bytes are immutable); int16, as torch before 2.3
        # has no uint16.
        out = torch.from_numpy((host.view(np.int16) if host.dtype == np.uint16 else host).copy())
        if t.dtype == tensor_pb2.DTYPE_FP16:
            out = out.view(torch.float16)
        elif t.dtype == tensor_pb2.DTYPE_BF16:
            out = out.view(torch.bfloat16)
        return out.to(like.device) if like.device.type != "cpu" else out
    if t.dtype == tensor_pb2.DTYPE_FP16:
        return host.view(np.float16)
    if t.dtype == tensor_pb2.DTYPE_BF16:
        return (host.astype(np.uint32) << 16).view(np.float32)
    return host


def _torch():
    import torch  # only reached for torch inputs, so torch is already imported

    return torch
