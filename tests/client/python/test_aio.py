"""asyncio: AsyncClient calls, AttendStream and AttendSessionStream with many requests in flight,
a bad request failing alone, and a cancelled stream's requests as CancelledError."""
from __future__ import annotations

import asyncio
import unittest

import numpy as np

import support

import sageserve  # noqa: E402

server: support.Server


def setUpModule() -> None:
    global server
    server = support.Server("--allow_shared_memory")


def tearDownModule() -> None:
    server.stop()


def problem(seed: int, tq: int = 24, tk: int = 40, hq: int = 4, hkv: int = 2, d: int = 64):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((tq, hq, d)).astype(np.float16), rng.standard_normal((tk, hkv, d)).astype(np.float16),
            rng.standard_normal((tk, hkv, d)).astype(np.float16))


class AioTest(unittest.TestCase):
    def test_concurrent_unary_calls_equal_the_blocking_client(self) -> None:
        problems = [problem(i) for i in range(16)]
        with sageserve.Client(server.target, transport="bytes") as sync:
            expected = [sync.attend(*p, causal=True, return_lse=True).o for p in problems]

        async def main():
            async with sageserve.AsyncClient(server.target) as client:
                self.assertEqual(await client.health(), "SERVING")
                self.assertTrue((await client.info()).shared_memory.enabled)
                return await asyncio.gather(*(client.attend(*p, causal=True, return_lse=True) for p in problems))

        results = asyncio.run(main())
        for r, o in zip(results, expected):
            self.assertEqual(r.transport, "system")  # loopback and --allow_shared_memory
            self.assertEqual(r.o.tobytes(), o.tobytes())

    def test_attend_stream_keeps_many_in_flight_and_a_bad_request_fails_alone(self) -> None:
        problems = [problem(i) for i in range(32)]
        with sageserve.Client(server.target, transport="bytes") as sync:
            expected = [sync.attend(*p).o for p in problems]

        async def main():
            async with sageserve.AsyncClient(server.target, transport="bytes") as client:
                async with client.attend_stream() as stream:
                    tasks = [asyncio.ensure_future(stream.attend(*p)) for p in problems]
                    bad = asyncio.ensure_future(stream.attend(*problem(99, d=96)))  # unsupported head dim
                    await asyncio.sleep(0)
                    peak = stream.in_flight()
                    results = await asyncio.gather(*tasks)
                    with self.assertRaises(sageserve.InvalidArgumentError):
                        await bad
                    return results, peak

        results, peak = asyncio.run(main())
        self.assertGreater(peak, 1)
        for r, o in zip(results, expected):
            self.assertEqual(r.o.tobytes(), o.tobytes())

    def test_session_stream_pipelines_layers(self) -> None:
        layers, n_sessions, hq, hkv, d = 3, 4, 4, 2, 64
        rng = np.random.default_rng(5)
        steps = [[(rng.standard_normal((n, hkv, d)).astype(np.float16),
                   rng.standard_normal((n, hkv, d)).astype(np.float16),
                   rng.standard_normal((n, hq, d)).astype(np.float16)) for n in (6, 1, 1)]
                 for _ in range(n_sessions)]
        opts = sageserve.SessionOptions(layers=layers, heads_q=hq, heads_kv=hkv, head_dim=d, max_tokens=64)
        # The blocking client, one step at a time: what the pipelined stream must reproduce.
        expected = {}
        with sageserve.Client(server.target) as sync:
            for i in range(n_sessions):
                s = sync.create_session(opts)
                for t, (k, v, q) in enumerate(steps[i]):
                    for layer in range(layers):
                        expected[i, t, layer] = s.step(layer, k, v, q).o.tobytes()
                s.close()

        async def main():
            out = {}
            async with sageserve.AsyncClient(server.target) as client:
                sessions = [await client.create_session(opts) for _ in range(n_sessions)]
                async with client.session_stream() as stream:
                    for t in range(3):
                        # Every layer of every session in flight at once.
                        calls = {(i, layer): asyncio.ensure_future(stream.step(sessions[i], layer, *steps[i][t]))
                                 for i in range(n_sessions) for layer in range(layers)}
                        for (i, layer), fut in calls.items():
                            out[i, t, layer] = (await fut).o.tobytes()
                for s in sessions:
                    self.assertEqual(s.lengths, [8] * layers)
                    self.assertEqual(list(s.info().layer_lengths), [8] * layers)
                    s.close()
            return out

        self.assertEqual(asyncio.run(main()), expected)

    def test_a_cancelled_stream_fails_its_requests_with_cancelled(self) -> None:
        async def main():
            async with sageserve.AsyncClient(server.target, transport="bytes") as client:
                stream = client.attend_stream()
                # Large enough that the CPU engine is still busy when the cancel arrives (a request
                # not sent yet fails the same way).
                pending = [asyncio.ensure_future(stream.attend(*problem(i, tq=2048, tk=2048, hq=8, hkv=8, d=128)))
                           for i in range(4)]
                await asyncio.sleep(0.01)
                stream.cancel()
                return await asyncio.gather(*pending, return_exceptions=True)

        outcomes = asyncio.run(main())
        self.assertTrue(all(isinstance(o, sageserve.CancelledError) for o in outcomes), outcomes)


if __name__ == "__main__":
    unittest.main()
