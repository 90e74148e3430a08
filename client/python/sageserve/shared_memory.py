"""Same-host zero copy: registered shared-memory regions and the client's small pool of them.

System regions are POSIX shared-memory objects (numpy views); CUDA regions are cudaMalloc
allocations shared by cudaIpcGetMemHandle (torch views), made through the CUDA runtime torch
loaded. A region is registered with the server once and then leased call after call; the pool
keeps at most `max_regions` idle regions, dropping the smallest first. docs/API.md, "Shared memory".
"""
from __future__ import annotations

import ctypes
import itertools
import os
import secrets
import threading
import warnings
from dataclasses import dataclass, field
from multiprocessing import shared_memory as mp_shm
from typing import Any, Callable, Dict, List, Optional

import numpy as np

# Tensors inside a region start at multiples of this (the server needs the element size; 256
# keeps every tensor aligned for vector loads on either side).
ALIGN = 256
# Smallest region made; larger requests get the next power of two, so a few sizes cover a model.
MIN_REGION_BYTES = 1 << 20


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class SystemRegion:
    """A POSIX shared-memory object this process creates, maps and unlinks."""

    kind = "system"

    def __init__(self, nbytes: int, key_prefix: str = "/sage") -> None:
        # Python's names lack shm_open's leading '/'; the key must start with the server's
        # --shared_memory_key_prefix, and 64 random bits keep it unguessable to other clients.
        stem = key_prefix.lstrip("/")
        self._shm = mp_shm.SharedMemory(name=f"{stem}-py-{os.getpid()}-{secrets.token_hex(8)}",
                                        create=True, size=nbytes)
        self.key = "/" + self._shm.name
        self.nbytes = nbytes
        self.bytes = np.ndarray((nbytes,), dtype=np.uint8, buffer=self._shm.buf)
        self.device = -1

    def contains(self, addr: int, nbytes: int) -> bool:
        base = self.bytes.ctypes.data
        return base <= addr and addr + nbytes <= base + self.nbytes

    def close(self) -> None:
        self.bytes = None  # the view must go before the mapping
        self._shm.close()
        self._shm.unlink()


class _CudaArray:
    """Just enough __cuda_array_interface__ for torch.as_tensor to view raw device memory."""

    def __init__(self, ptr: int, nbytes: int) -> None:
        self.__cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (ptr, False),
                                         "strides": None, "version": 2}


_cudart_lock = threading.Lock()
_cudart: Optional[ctypes.CDLL] = None


def cudart() -> ctypes.CDLL:
    """The CUDA runtime torch loaded (found in /proc/self/maps), so both share one context."""
    global _cudart
    with _cudart_lock:
        if _cudart is not None:
            return _cudart
        import torch

        torch.cuda.init()
        lib = None
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "libcudart.so" in os.path.basename(path):
                    lib = ctypes.CDLL(path)
                    break
        for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
            if lib is not None:
                break
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                pass
        if lib is None:
            raise RuntimeError("no CUDA runtime library found (torch built without CUDA?)")
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        _cudart = lib
        return lib


class CudaRegion:
    """Device memory from cudaMalloc, shared by IPC handle; `bytes` is a uint8 torch view of it."""

    kind = "cuda"

    def __init__(self, nbytes: int, device: int) -> None:
        import torch

        self._rt = cudart()
        self.device = device
        self.nbytes = nbytes
        self._ptr = ctypes.c_void_p()
        with torch.cuda.device(device):  # cudaMalloc allocates on the calling thread's device
            self._check(self._rt.cudaSetDevice(ctypes.c_int(device)), "cudaSetDevice")
            self._check(self._rt.cudaMalloc(ctypes.byref(self._ptr), ctypes.c_size_t(nbytes)), "cudaMalloc")
        handle = (ctypes.c_char * 64)()
        self._check(self._rt.cudaIpcGetMemHandle(handle, self._ptr), "cudaIpcGetMemHandle")
        self.handle = bytes(handle)
        self.bytes = torch.as_tensor(_CudaArray(self._ptr.value, nbytes), device=f"cuda:{device}")

    def _check(self, err: int, what: str) -> None:
        if err != 0:
            raise RuntimeError(f"{what}: {self._rt.cudaGetErrorString(err).decode()}")

    def contains(self, addr: int, nbytes: int) -> bool:
        base = self._ptr.value or 0
        return base <= addr and addr + nbytes <= base + self.nbytes

    def close(self) -> None:
        import torch

        self.bytes = None
        torch.cuda.synchronize(self.device)
        self._check(self._rt.cudaFree(self._ptr), "cudaFree")


Region = Any  # SystemRegion or CudaRegion


@dataclass
class Lease:
    """A whole region lent to one call; `name` is how requests refer to it."""

    region: Region
    name: str
    # CUDA: an event recorded after the last read of the region's outputs; the next user waits on
    # it, so releasing never blocks on the device.
    done: Any = None
    busy: bool = field(default=False)


class RegionPool:
    """Registered regions of one kind (and device), lent one call at a time and reused.

    `register(lease)` and `unregister(name)` are the client's SharedMemoryService calls.
    """

    _names = itertools.count()

    def __init__(self, make: Callable[[int], Region], register: Callable[[Lease], None],
                 unregister: Callable[[str], None], max_regions: int = 4) -> None:
        self._make = make
        self._register = register
        self._unregister = unregister
        self._max = max_regions
        self._lock = threading.Lock()
        self._leases: List[Lease] = []

    def acquire(self, nbytes: int) -> Lease:
        """An idle registered region of at least `nbytes`, made and registered when none is idle."""
        with self._lock:
            fitting = [l for l in self._leases if not l.busy and l.region.nbytes >= nbytes]
            if fitting:
                lease = min(fitting, key=lambda l: l.region.nbytes)
                lease.busy = True
                return lease
        size = max(MIN_REGION_BYTES, 1 << (max(nbytes, 1) - 1).bit_length())
        region = self._make(size)
        lease = Lease(region, f"py-{os.getpid()}-{secrets.token_hex(4)}-{next(self._names)}", busy=True)
        try:
            self._register(lease)
        except BaseException:
            region.close()
            raise
        with self._lock:
            self._leases.append(lease)
            evict = self._evictable()
        for old in evict:
            self._drop(old)
        return lease

    def release(self, lease: Lease) -> None:
        with self._lock:
            lease.busy = False
            evict = self._evictable()
        for old in evict:
            self._drop(old)

    def _evictable(self) -> List[Lease]:
        # Idle regions beyond the limit, smallest first (callers hold the lock). Busy ones do not
        # count: under steady concurrency above the limit, counting them would unregister a region
        # at every release and register a new one at the next call.
        idle = sorted((l for l in self._leases if not l.busy), key=lambda l: l.region.nbytes)
        out = idle[:max(0, len(idle) - self._max)]
        for l in out:
            self._leases.remove(l)
        return out

    def _drop(self, lease: Lease, unregister: bool = True) -> None:
        # Best effort: a failed unregister (the server gone or restarted) must not fail the call
        # that released the region; the memory is ours to free either way.
        try:
            if unregister:
                self._unregister(lease.name)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"sageserve: could not unregister shared-memory region {lease.name}: {e}")
        finally:
            lease.region.close()

    def regions(self) -> Dict[str, int]:
        """Registered region names and sizes (for tests and status output)."""
        with self._lock:
            return {l.name: l.region.nbytes for l in self._leases}

    def close(self, unregister: bool = True) -> None:
        """Frees every region; unregister=False when the server no longer knows them (restarted)."""
        with self._lock:
            leases, self._leases = self._leases, []
        for lease in leases:
            self._drop(lease, unregister)
