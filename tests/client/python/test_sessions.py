"""Sessions through the Python client: append and attend per layer, a batch of sessions in one
call, fork, truncate, close, get, list; positions and step ids tracked like the C++ Session."""
from __future__ import annotations

import unittest

import numpy as np

import support

import sageserve  # noqa: E402

server: support.Server
shm_server: support.Server
H_Q, H_KV, D = 4, 2, 64


def setUpModule() -> None:
    global server, shm_server
    server = support.Server()
    shm_server = support.Server("--allow_shared_memory")


def tearDownModule() -> None:
    server.stop()
    shm_server.stop()


def tokens(rng: np.random.Generator, n: int, heads: int) -> np.ndarray:
    return rng.standard_normal((n, heads, D)).astype(np.float16)


class SessionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.client = sageserve.Client(server.target)

    def new_session(self, layers: int = 2) -> sageserve.Session:
        return self.client.create_session(layers=layers, heads_q=H_Q, heads_kv=H_KV, head_dim=D, max_tokens=256)

    def test_steps_equal_stateless_attend_over_the_whole_cache(self) -> None:
        rng = np.random.default_rng(1)
        s = self.new_session()
        k_all, v_all = [], []
        for n_new in (12, 1, 1, 3):  # a prefill chunk, two decode steps, a 3-token speculative step
            k, v, q = tokens(rng, n_new, H_KV), tokens(rng, n_new, H_KV), tokens(rng, n_new, H_Q)
            k_all.append(k)
            v_all.append(v)
            r = s.step(0, k, v, q, return_lse=True, recipe="unquantized")
            self.assertEqual(r.length, sum(len(x) for x in k_all))
            self.assertEqual(s.length(0), r.length)
            stateless = self.client.attend(q, np.concatenate(k_all), np.concatenate(v_all), causal=True,
                                           return_lse=True, recipe="unquantized")
            np.testing.assert_array_equal(r.o, stateless.o)
            np.testing.assert_array_equal(r.lse, stateless.lse)
        self.assertEqual(s.length(1), 0)
        self.assertEqual(list(s.info().layer_lengths), [17, 0])
        s.close()
        with self.assertRaises(sageserve.NotFoundError):
            s.info()

    def test_a_batch_of_sessions_in_one_call_and_bulk_import(self) -> None:
        rng = np.random.default_rng(2)
        a, b = self.new_session(), self.new_session()
        # Bulk import a prefix into b (no q), then one call serves both sessions' layer 0.
        self.assertIsNone(self.client.attend_sessions(0, [(b, tokens(rng, 5, H_KV), tokens(rng, 5, H_KV), None)])[0].o)
        ka, va, qa = tokens(rng, 2, H_KV), tokens(rng, 2, H_KV), tokens(rng, 1, H_Q)
        kb, vb, qb = tokens(rng, 1, H_KV), tokens(rng, 1, H_KV), tokens(rng, 1, H_Q)
        ra, rb = self.client.attend_sessions(0, [(a, ka, va, qa), (b, kb, vb, qb)])
        self.assertEqual((ra.length, rb.length), (2, 6))
        self.assertEqual((a.length(0), b.length(0)), (2, 6))
        self.assertEqual(ra.o.shape, (1, H_Q, D))
        listed = {i.session_id for i in self.client.sessions.list().sessions}
        self.assertTrue({a.id, b.id} <= listed)
        a.close()
        b.close()

    def test_fork_truncate_and_a_wrong_position(self) -> None:
        rng = np.random.default_rng(3)
        s = self.new_session(layers=1)
        s.step(0, tokens(rng, 8, H_KV), tokens(rng, 8, H_KV), tokens(rng, 8, H_Q))
        child = s.fork(length=6)
        self.assertEqual(child.lengths, [6])
        k, v, q = tokens(rng, 1, H_KV), tokens(rng, 1, H_KV), tokens(rng, 1, H_Q)
        self.assertEqual(child.step(0, k, v, q).length, 7)
        self.assertEqual(s.length(0), 8)  # the parent is untouched
        s.truncate(4)
        self.assertEqual(s.lengths, [4])
        self.assertEqual(s.step(0, k, v, q).length, 5)
        s.lengths[0] = 9  # stale: the server's length is 5
        with self.assertRaises(sageserve.FailedPreconditionError) as cm:
            s.step(0, k, v, q)
        self.assertIn("5", cm.exception.message)
        self.assertEqual(s.length(0), 9)  # a failed step commits nothing
        s.close()
        child.close()

    def test_the_models_plan_picks_each_layers_kv_storage(self) -> None:
        from sageserve.v1 import registry_pb2 as reg
        from sageserve.v1 import tensor_pb2 as tp

        self.client.register_model(reg.ModelSpec(name="py-kv-plan", num_layers=3, q_heads=H_Q, kv_heads=H_KV,
                                                 head_dim=D), replace=True)
        plan = reg.Plan(kv_storages=[
            reg.KvStorageEntry(layers=reg.IndexRange(first=0, last=1), kv_storage=tp.KV_STORAGE_INT4_K_FP8_V),
            reg.KvStorageEntry(layers=reg.IndexRange(first=2, last=2), kv_storage=tp.KV_STORAGE_INT8_K_FP8_V)])
        stored = self.client.set_plan("py-kv-plan", plan)
        self.assertEqual(len(stored.kv_storages), 2)
        s = self.client.create_session(model="py-kv-plan", layers=3, heads_q=H_Q, heads_kv=H_KV, head_dim=D,
                                       max_tokens=256)
        info = s.info()
        self.assertEqual(list(info.layer_kv_storages),
                         [tp.KV_STORAGE_INT4_K_FP8_V, tp.KV_STORAGE_INT4_K_FP8_V, tp.KV_STORAGE_INT8_K_FP8_V])
        self.assertEqual(info.kv_storage, tp.KV_STORAGE_UNSPECIFIED)  # layers differ
        rng = np.random.default_rng(9)
        for layer in range(3):
            r = s.step(layer, tokens(rng, 40, H_KV), tokens(rng, 40, H_KV), tokens(rng, 1, H_Q))
            self.assertEqual(r.length, 40)
        s.close()
        # Named per layer by the client, and a model whose shape differs from the session's.
        s = self.client.create_session(layers=2, heads_q=H_Q, heads_kv=H_KV, head_dim=D, max_tokens=64,
                                       layer_kv_storages=["16bit", "int8_k_fp8_v"])
        self.assertEqual(list(s.info().layer_kv_storages), [tp.KV_STORAGE_16BIT, tp.KV_STORAGE_INT8_K_FP8_V])
        s.close()
        with self.assertRaises(sageserve.InvalidArgumentError) as cm:
            self.client.create_session(model="py-kv-plan", layers=2, heads_q=H_Q, heads_kv=H_KV, head_dim=D,
                                       max_tokens=64)
        self.assertIn("layers: 2, but model 'py-kv-plan' has 3", cm.exception.message)
        self.client.delete_model("py-kv-plan")

    def test_a_retried_step_is_appended_once(self) -> None:
        rng = np.random.default_rng(4)
        s = self.new_session(layers=1)
        k, v, q = tokens(rng, 3, H_KV), tokens(rng, 3, H_KV), tokens(rng, 3, H_Q)
        step = s.make_step(0, k, v, q)
        req = sageserve.session.sp.AttendSessionRequest(request_id="retry", steps=[step])
        first = self.client.sessions.attend_request(req)
        again = self.client.sessions.attend_request(req)  # the answer was "lost": same position and id
        self.assertEqual(first.results[0].length, 3)
        self.assertEqual(again.results[0].length, 3)
        self.assertEqual(first.results[0].o.data, again.results[0].o.data)
        s.commit(0, again.results[0])
        self.assertEqual(s.step(0, k, v, q).length, 6)
        s.close()


class PackedSessionTest(unittest.TestCase):
    def test_the_packed_form_equals_the_per_step_form(self) -> None:
        """One k, v and q for the whole batch (AttendSessionRequest.packed), inline and through a
        shared-memory region, against the same steps sent one tensor set per step."""
        rng = np.random.default_rng(6)
        opts = sageserve.SessionOptions(layers=1, heads_q=H_Q, heads_kv=H_KV, head_dim=D, max_tokens=128)
        for target in (server.target, shm_server.target):
            with self.subTest(target=target):
                client = sageserve.Client(target)
                packed = [client.create_session(opts) for _ in range(3)]
                per_step = [client.create_session(opts) for _ in range(3)]
                # (n_new, n_q) per session and call: a prefill with a bulk import, decode steps, a
                # step with no new tokens.
                for plan in ([(5, 5), (4, 0), (6, 2)], [(1, 1), (1, 1), (1, 1)], [(0, 1), (2, 2), (1, 0)]):
                    data = [(tokens(rng, n, H_KV), tokens(rng, n, H_KV), tokens(rng, nq, H_Q) if nq else None)
                            for n, nq in plan]
                    got = client.attend_sessions(0, [(s, *d) for s, d in zip(packed, data)], return_lse=True,
                                                 packed=True, recipe="unquantized")
                    want = client.attend_sessions(0, [(s, *d) for s, d in zip(per_step, data)], return_lse=True,
                                                  recipe="unquantized")
                    for g, w in zip(got, want):
                        self.assertEqual(g.length, w.length)
                        if w.o is None:
                            self.assertIsNone(g.o)
                        else:
                            self.assertEqual(g.o.tobytes(), w.o.tobytes())
                            self.assertEqual(g.lse.tobytes(), w.lse.tobytes())
                self.assertEqual([s.length(0) for s in packed], [6, 7, 8])
                for s in packed + per_step:
                    s.close()
                client.close()


class SharedMemorySessionTest(unittest.TestCase):
    def test_steps_through_shared_memory_equal_steps_in_bytes(self) -> None:
        """K, V, Q in a registered POSIX region and O/LSE written back there, against the same
        steps with every tensor in the messages."""
        rng = np.random.default_rng(5)
        opts = sageserve.SessionOptions(layers=2, heads_q=H_Q, heads_kv=H_KV, head_dim=D, max_tokens=128)
        by_shm = sageserve.Client(shm_server.target)
        by_bytes = sageserve.Client(shm_server.target, transport="bytes")
        a1, a2 = by_shm.create_session(opts), by_shm.create_session(opts)
        b1, b2 = by_bytes.create_session(opts), by_bytes.create_session(opts)
        plan = [(6, 6, None), (0, 1, 1), (2, 2, 2), (1, 0, 1)]  # (n_new for s1, for s2 (0: bulk-free), n_q)
        for n1, n2, nq in plan:
            for layer in (0, 1):
                k1, v1, k2, v2 = (tokens(rng, n, H_KV) for n in (n1, n1, n2, n2))
                q1 = tokens(rng, nq, H_Q) if nq else None
                q2 = tokens(rng, nq, H_Q) if nq else None
                got = by_shm.attend_sessions(layer, [(a1, k1, v1, q1), (a2, k2, v2, q2)], return_lse=True,
                                             recipe="unquantized")
                want = by_bytes.attend_sessions(layer, [(b1, k1, v1, q1), (b2, k2, v2, q2)], return_lse=True,
                                                recipe="unquantized")
                for g, w in zip(got, want):
                    self.assertEqual(g.length, w.length)
                    if w.o is None:
                        self.assertIsNone(g.o)
                    else:
                        self.assertEqual(g.o.tobytes(), w.o.tobytes())
                        self.assertEqual(g.lse.tobytes(), w.lse.tobytes())
        self.assertEqual(a1.lengths, [9, 9])
        self.assertEqual(a1.step(0, tokens(rng, 1, H_KV), tokens(rng, 1, H_KV), tokens(rng, 1, H_Q)).length, 10)
        regions = {r.name: r for r in by_shm.shared_memory_status().regions}
        ours = [n for p in by_shm.transport.pools().values() for n in p.regions()]
        self.assertEqual(len(ours), 1)  # one region, reused by every call
        self.assertEqual(regions[ours[0]].requests, 2 * len(plan) + 1)
        for s in (a1, a2, b1, b2):
            s.close()
        by_shm.close()
        by_bytes.close()


if __name__ == "__main__":
    unittest.main()
