"""Same-host zero copy with POSIX shared memory: auto mode picks it on loopback, answers equal the
bytes path bit for bit, a region is registered once and reused, and auto mode falls back to bytes
where the server takes no shared memory."""
from __future__ import annotations

import os
import tempfile
import unittest

import numpy as np

import support

import sageserve  # noqa: E402
from sageserve.options import ClientOptions

server: support.Server
plain: support.Server


def setUpModule() -> None:
    global server, plain
    server = support.Server("--allow_shared_memory")
    plain = support.Server()


def tearDownModule() -> None:
    server.stop()
    plain.stop()


def problem(seed: int, tq: int = 40, tk: int = 64, hq: int = 4, hkv: int = 2, d: int = 64):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((tq, hq, d)).astype(np.float16), rng.standard_normal((tk, hkv, d)).astype(np.float16),
            rng.standard_normal((tk, hkv, d)).astype(np.float16))


class SharedMemoryTest(unittest.TestCase):
    def test_auto_uses_shared_memory_and_equals_the_bytes_path(self) -> None:
        q, k, v = problem(1)
        kw = dict(cu_seqlens_q=[0, 15, 40], cu_seqlens_k=[0, 30, 64], causal=True, return_lse=True,
                  recipe="int8_qk_fp8_pv")
        with sageserve.Client(server.target) as client:
            by_shm = client.attend(q, k, v, **kw)
            by_bytes = client.attend(q, k, v, transport="bytes", **kw)
        self.assertEqual(by_shm.transport, "system")
        self.assertEqual(by_bytes.transport, "bytes")
        self.assertEqual(by_shm.o.tobytes(), by_bytes.o.tobytes())
        self.assertEqual(by_shm.lse.tobytes(), by_bytes.lse.tobytes())
        self.assertEqual(by_shm.o.dtype, np.float16)

    def test_a_region_is_registered_once_and_reused(self) -> None:
        client = sageserve.Client(server.target)
        for seed in range(5):
            q, k, v = problem(seed)
            r = client.attend(q, k, v, causal=True)
            self.assertEqual(r.transport, "system")
            expected = client.attend(q, k, v, causal=True, transport="bytes")
            self.assertEqual(r.o.tobytes(), expected.o.tobytes())
        pools = client.transport.pools()
        self.assertEqual(len(pools), 1)
        names = list(next(iter(pools.values())).regions())
        self.assertEqual(len(names), 1)
        status = {r.name: r for r in client.shared_memory_status().regions}
        self.assertEqual(status[names[0]].requests, 5)
        client.close()
        # close() unregistered it.
        with sageserve.Client(server.target) as other:
            self.assertNotIn(names[0], [r.name for r in other.shared_memory_status().regions])

    def test_the_pool_keeps_at_most_max_regions_idle(self) -> None:
        options = ClientOptions(target=server.target, max_regions=1)
        with sageserve.Client(options=options) as client:
            client.attend(*problem(1))
            small = set(next(iter(client.transport.pools().values())).regions())
            client.attend(*problem(2, tq=16, tk=4096, hq=8, hkv=8, d=128))  # 16 MiB of k/v: a bigger region
            big = set(next(iter(client.transport.pools().values())).regions())
            self.assertEqual(len(big), 1)
            self.assertFalse(small & big)
            registered = {r.name for r in client.shared_memory_status().regions}
            self.assertEqual(registered & (small | big), big)

    def test_forced_bytes_and_a_server_without_shared_memory(self) -> None:
        q, k, v = problem(3)
        with sageserve.Client(server.target, transport="bytes") as client:
            self.assertEqual(client.attend(q, k, v).transport, "bytes")
            self.assertEqual(client.transport.pools(), {})
            self.assertEqual(list(client.shared_memory_status().regions), [])
        with sageserve.Client(plain.target) as client:  # auto: the server says it takes none
            self.assertEqual(client.attend(q, k, v).transport, "bytes")

    def test_a_restarted_server_gets_the_regions_registered_again(self) -> None:
        # A Unix socket: the restarted server gets the same address, which no other test can take.
        sock = os.path.join(tempfile.mkdtemp(), "sageserve.sock")
        first = support.Server("--allow_shared_memory", unix_socket=sock)
        client = sageserve.Client(first.target, timeout_s=20)
        q, k, v = problem(5)
        before = client.attend(q, k, v)
        self.assertEqual(before.transport, "system")
        first.stop()
        second = support.Server("--allow_shared_memory", unix_socket=sock)  # same address, no regions
        try:
            after = client.attend(q, k, v)
            self.assertEqual(after.transport, "system")
            self.assertEqual(after.o.tobytes(), before.o.tobytes())
            self.assertEqual(len(client.shared_memory_status().regions), 1)
        finally:
            client.close()
            second.stop()

    def test_same_host_false_sends_bytes(self) -> None:
        options = ClientOptions(target=server.target, same_host=False)
        with sageserve.Client(options=options) as client:
            self.assertEqual(client.attend(*problem(4)).transport, "bytes")


if __name__ == "__main__":
    unittest.main()
