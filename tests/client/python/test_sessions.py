"""Sessions through the Python client: append and attend per layer, a batch of sessions in one
call, fork, truncate, close, get, list; positions and step ids tracked like the C++ Session."""
from __future__ import annotations

import unittest

import numpy as np

import support

import sageserve  # noqa: E402

server: support.Server
H_Q, H_KV, D = 4, 2, 64


def setUpModule() -> None:
    global server
    server = support.Server()


def tearDownModule() -> None:
    server.stop()


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


if __name__ == "__main__":
    unittest.main()
