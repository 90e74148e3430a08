"""Serializing a request with its tensor bytes copied once.

protobuf's Python runtime copies a bytes field's value into the message and again when it
serializes; for attention tensors (megabytes per call) those copies cost more than the rest of the
call. Here the request's small fields are serialized by protobuf and each tensor is appended as its
own field, framed by hand, with the array's buffer joined in directly. Fields in any order are valid
protobuf; each tensor appears once, so the result parses exactly as the message would.
"""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple

from google.protobuf.message import Message

_WIRE_VARINT, _WIRE_LEN = 0, 2


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def tensor_chunks(field: int, dtype: int, shape: Sequence[int], data: Any) -> List[Any]:
    """sageserve.v1.Tensor{dtype = 1, shape = 2 (packed), data = 3} as field `field`: a small header
    and the data buffer itself (bytes-like, uncopied)."""
    nbytes = memoryview(data).nbytes
    packed = b"".join(varint(int(s)) for s in shape)
    inner = (_tag(1, _WIRE_VARINT) + varint(dtype) + _tag(2, _WIRE_LEN) + varint(len(packed)) + packed
             + _tag(3, _WIRE_LEN) + varint(nbytes))
    return [_tag(field, _WIRE_LEN) + varint(len(inner) + nbytes) + inner, data]


def serialize(message: Message, tensors: Sequence[Tuple[int, int, Sequence[int], Any]]) -> bytes:
    """`message` (its tensor fields left unset) followed by (field, dtype, shape, buffer) tensors."""
    chunks: List[Any] = [message.SerializeToString()]
    for field, dtype, shape, data in tensors:
        chunks.extend(tensor_chunks(field, dtype, shape, data))
    return b"".join(chunks)
