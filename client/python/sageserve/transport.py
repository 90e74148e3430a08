"""How a call's tensors travel: bytes in the message, or a leased shared-memory region.

`Transport.place` fills a request's tensors either way and returns a `Placement`, whose `outputs`
reads O and LSE back (from the response, or from the region) and gives the region back to the
pool. Mode "auto" uses shared memory when the server allows it and the target is on this host,
and falls back to bytes for good when registering a region fails; "bytes" and "shared_memory"
force one path (a forced path that cannot work raises).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sageserve import codec, errors
from sageserve.shared_memory import CudaRegion, Lease, RegionPool, SystemRegion, align
from sageserve.v1 import tensor_pb2

MODES = ("auto", "bytes", "shared_memory")

# Registration failures that mean "this path cannot work here" (another host, the server's
# settings, a CPU-engine server for CUDA memory): auto mode falls back to bytes for good.
_FALLBACK_CODES = (errors.NotFoundError, errors.FailedPreconditionError, errors.PermissionDeniedError,
                   errors.UnimplementedError, errors.InvalidArgumentError)


@dataclass
class Output:
    """Where one output tensor goes: its bytes and the Tensor message that will describe it."""

    offset: int
    nbytes: int


class Placement:
    """A call's tensors, placed; `outputs` reads the answers and releases the region."""

    def __init__(self, pool: Optional[RegionPool] = None, lease: Optional[Lease] = None) -> None:
        self.pool = pool
        self.lease = lease
        self.outs: Dict[str, Output] = {}
        # Bytes path with deferred tensors: (key, dtype, shape, buffer) for wire.serialize, the
        # request's own tensor fields left unset.
        self.deferred: List[Tuple[str, int, Sequence[int], Any]] = []

    @property
    def kind(self) -> str:
        return "bytes" if self.lease is None else self.lease.region.kind

    def read(self, key: str, t: tensor_pb2.Tensor, like: Any) -> Any:
        """Output `key` (described by the response's tensor `t`) as numpy or torch, like `like`."""
        if self.lease is None:
            return codec.decode(t, like=like)
        out = self.outs[key]
        return self._read_range(t, out.offset, out.nbytes, like)

    def read_ref(self, t: tensor_pb2.Tensor, like: Any) -> Any:
        """A response tensor that names its own range of the region (a session step's rows), or
        carries its bytes."""
        if self.lease is None or not t.HasField("shared_memory"):
            return codec.decode(t, like=like)
        return self._read_range(t, t.shared_memory.offset, t.shared_memory.byte_size, like)

    def _read_range(self, t: tensor_pb2.Tensor, offset: int, nbytes: int, like: Any) -> Any:
        region = self.lease.region
        if region.kind == "system":
            return codec.decode(t, data=region.bytes[offset:offset + nbytes].copy(), like=like)
        import torch

        dtype = {tensor_pb2.DTYPE_FP16: torch.float16, tensor_pb2.DTYPE_BF16: torch.bfloat16,
                 tensor_pb2.DTYPE_FP32: torch.float32}[t.dtype]
        raw = region.bytes[offset:offset + nbytes].clone()
        return raw.view(dtype).reshape(tuple(t.shape))

    def release(self) -> None:
        if self.lease is None or self.pool is None:
            return
        if self.lease.region.kind == "cuda":
            import torch

            # Later users of the region wait for the reads above (device-side, not here).
            self.lease.done = torch.cuda.Event()
            self.lease.done.record(torch.cuda.current_stream(self.lease.region.device))
        self.pool.release(self.lease)
        self.lease = None


class Transport:
    """Per-client choice of path and the region pools."""

    def __init__(self, mode: str, same_host: bool, server_info: Callable[[], Any],
                 register_system: Callable[[str, str, int], None],
                 register_cuda: Callable[[str, bytes, int, int], None],
                 unregister: Callable[[str], None], key_prefix: str = "/sage", max_regions: int = 4) -> None:
        if mode not in MODES:
            raise ValueError(f"transport must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.same_host = same_host
        self._info = server_info
        self._register_system = register_system
        self._register_cuda = register_cuda
        self._unregister = unregister
        self._key_prefix = key_prefix
        self._max_regions = max_regions
        self._lock = threading.Lock()
        self._pools: Dict[Tuple[str, int], RegionPool] = {}
        self._broken: Dict[str, str] = {}  # kind -> why auto mode gave up on it

    def _kind_for(self, first: Any, output_same_dtype: bool, mode: Optional[str]) -> str:
        mode = mode or self.mode
        if mode not in MODES:
            raise ValueError(f"transport must be one of {MODES}, got {mode!r}")
        if mode == "bytes":
            return "bytes"
        kind = "cuda" if codec.is_cuda(first) else "system"
        if mode == "shared_memory":
            if kind == "cuda" and not output_same_dtype:
                raise ValueError("CUDA shared memory returns O in q's dtype only: drop output_dtype "
                                 "or use transport='bytes'")
            return kind
        # auto
        if not self.same_host or kind in self._broken:
            return "bytes"
        info = self._info()
        if not info.shared_memory.enabled or (kind == "cuda" and not info.shared_memory.cuda):
            return "bytes"
        if kind == "cuda" and not output_same_dtype:
            return "bytes"
        return kind

    def _pool(self, kind: str, device: int) -> RegionPool:
        with self._lock:
            pool = self._pools.get((kind, device))
            if pool is None:
                if kind == "system":
                    def make(n: int) -> SystemRegion:
                        return SystemRegion(n, self._key_prefix)

                    def register(lease: Lease) -> None:
                        self._register_system(lease.name, lease.region.key, lease.region.nbytes)
                else:
                    def make(n: int) -> CudaRegion:
                        return CudaRegion(n, device)

                    def register(lease: Lease) -> None:
                        self._register_cuda(lease.name, lease.region.handle, device, lease.region.nbytes)
                pool = RegionPool(make, register, self._unregister, self._max_regions)
                self._pools[(kind, device)] = pool
            return pool

    def place(self, inputs: Sequence[Tuple[str, Any, tensor_pb2.Tensor, Sequence[int], int]],
              outputs: Sequence[Tuple[str, int]], set_output: Callable[[str, str, int, int], None],
              output_same_dtype: bool = True, mode: Optional[str] = None, defer_bytes: bool = False) -> Placement:
        """Places `inputs` (key, array, message, wire shape, dtype) and reserves `outputs` (key, bytes).

        `set_output(key, region, offset, nbytes)` points the request's output field at the region.
        defer_bytes: on the bytes path, leave the messages empty and list the buffers in
        Placement.deferred (the caller serializes them with sageserve.wire, one copy).
        """
        first = inputs[0][1]
        kind = self._kind_for(first, output_same_dtype, mode)
        if kind != "bytes":
            try:
                return self._place_shared(kind, inputs, outputs, set_output)
            except _FALLBACK_CODES as e:
                if (mode or self.mode) != "auto":
                    raise
                self._broken[kind] = str(e)
        placement = Placement()
        for key, x, msg, shape, dtype in inputs:
            if defer_bytes:
                placement.deferred.append((key, dtype, shape, _host_view(x)))
            else:
                codec.set_tensor(msg, x, dtype, shape)
        return placement

    def _place_shared(self, kind: str, inputs, outputs, set_output) -> Placement:
        sizes: List[int] = []
        for _, x, _, shape, dtype in inputs:
            sizes.append(int(np.prod(shape)) * codec.itemsize(dtype))
        total = sum(align(n) for n in sizes) + sum(align(n) for _, n in outputs)
        device = int(inputs[0][1].device.index or 0) if kind == "cuda" else -1
        pool = self._pool(kind, device)
        lease = pool.acquire(total)
        placement = Placement(pool, lease)
        try:
            at = 0
            region = lease.region
            if kind == "cuda":
                import torch

                stream = torch.cuda.current_stream(device)
                if lease.done is not None:
                    stream.wait_event(lease.done)
            for (_, x, msg, shape, dtype), n in zip(inputs, sizes):
                if n == 0:  # nothing to place (a session step with no new tokens)
                    codec.set_tensor(msg, x, dtype, shape)
                    continue
                if kind == "cuda":
                    region.bytes[at:at + n].copy_(x.detach().contiguous().reshape(-1).view(torch.uint8))
                else:
                    region.bytes[at:at + n] = np.frombuffer(_host_view(x), dtype=np.uint8)
                msg.dtype = dtype
                msg.shape[:] = [int(s) for s in shape]
                msg.shared_memory.region = lease.name
                msg.shared_memory.offset = at
                msg.shared_memory.byte_size = n
                at += align(n)
            for key, n in outputs:
                placement.outs[key] = Output(at, n)
                set_output(key, lease.name, at, n)
                at += align(n)
            if kind == "cuda":
                stream.synchronize()  # the server reads the region from its own process and stream
        except BaseException:
            placement.release()
            raise
        return placement

    def pools(self) -> Dict[Tuple[str, int], RegionPool]:
        with self._lock:
            return dict(self._pools)

    def close(self, unregister: bool = True) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close(unregister)

    def forget(self) -> None:
        """Frees the regions without unregistering them: the server no longer has them (it
        restarted, or they were unregistered behind the client's back). Later calls register anew."""
        self.close(unregister=False)


def region_unknown(error: errors.SageServeError) -> bool:
    """Whether a refused call named a shared-memory region the server does not know."""
    return isinstance(error, errors.NotFoundError) and "region" in error.message.lower()


def _host_view(x: Any) -> memoryview:
    """A host tensor's bytes without a copy where it is already contiguous."""
    if codec.is_torch(x):
        import torch

        t = x.detach().cpu().contiguous().reshape(-1)  # a CUDA k/v beside a host q: copied here
        return memoryview(t.view(torch.uint8).numpy())
    a = np.ascontiguousarray(x)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return memoryview(a.reshape(-1).view(np.uint8))
