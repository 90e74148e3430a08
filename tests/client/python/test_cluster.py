"""sageserve.Cluster over three CPU replicas on loopback: stateless calls spread and avoid a busy
replica (the load every answer reports), sessions go to the replica holding them, a replica killed
with SIGKILL mid-run: stateless calls finish on the others, its sessions raise
SessionOwnerGoneError, the others' sessions are untouched; a dns:/// target resolves."""
from __future__ import annotations

import signal
import threading
import time
import unittest

import numpy as np

import support

import sageserve  # noqa: E402

H_Q, H_KV, D = 4, 2, 64


def tokens(rng: np.random.Generator, n: int, heads: int, d: int = D) -> np.ndarray:
    return rng.standard_normal((n, heads, d)).astype(np.float16)


class ClusterTest(unittest.TestCase):
    def setUp(self) -> None:
        self.servers = [support.Server() for _ in range(3)]
        self.cluster = sageserve.Cluster([s.target for s in self.servers])

    def tearDown(self) -> None:
        self.cluster.close()
        for s in self.servers:
            s.stop()

    def replica(self, server: support.Server) -> sageserve.cluster.Replica:
        return next(r for r in self.cluster.replicas() if r.target == server.target)

    def test_stateless_calls_spread_and_avoid_a_busy_replica(self) -> None:
        rng = np.random.default_rng(1)
        q, k, v = tokens(rng, 8, H_Q), tokens(rng, 64, H_KV), tokens(rng, 64, H_KV)
        want = sageserve.Client(self.servers[0].target).attend(q, k, v, recipe="unquantized").o
        for _ in range(30):
            np.testing.assert_array_equal(self.cluster.attend(q, k, v, recipe="unquantized").o, want)
        calls = [self.replica(s).calls for s in self.servers]
        self.assertEqual(sum(calls), 30)
        self.assertTrue(all(c >= 5 for c in calls), calls)  # equal loads: round robin

        # Replica 0 busy with a long call from another client: its load (reported with every answer
        # and by GetServerInfo) keeps the cluster's calls on the other two.
        busy = sageserve.Client(self.servers[0].target)
        big = tokens(rng, 4096, 8, 128)
        done = threading.Event()
        threading.Thread(target=lambda: (busy.attend(big, big, big, recipe="unquantized", timeout=120), done.set()),
                         daemon=True).start()
        r0 = self.replica(self.servers[0])
        self.assertTrue(support.wait_until(lambda: r0.client.info().load >= 1, 30))
        r0.client.info()  # an answer of replica 0: its trailer now says it is busy
        self.assertGreaterEqual(r0.reported_load, 1)
        before = r0.calls
        for _ in range(6):
            self.cluster.attend(q, k, v, recipe="unquantized")
        if not done.is_set():
            self.assertEqual(r0.calls, before, "a call went to the busy replica")
        done.wait(120)
        busy.close()

    def test_sessions_follow_their_owner_and_a_dead_replica_is_named(self) -> None:
        rng = np.random.default_rng(2)
        sessions = [self.cluster.create_session(layers=1, heads_q=H_Q, heads_kv=H_KV, head_dim=D, max_tokens=256)
                    for _ in range(6)]
        owners = {s.id: self.cluster.client_for_session(s.id) for s in sessions}
        self.assertEqual(len({id(c) for c in owners.values()}), 3, "sessions spread over the replicas")
        for s in sessions:
            self.assertEqual(s.step(0, tokens(rng, 16, H_KV), tokens(rng, 16, H_KV), tokens(rng, 1, H_Q)).length, 16)
        # One call for a batch whose sessions live on three replicas: split by owner, in step order.
        steps = [(s, tokens(rng, 1, H_KV), tokens(rng, 1, H_KV), tokens(rng, 1, H_Q)) for s in sessions]
        results = self.cluster.attend_sessions(0, steps)
        self.assertEqual([r.session_id for r in results], [s.id for s in sessions])
        self.assertTrue(all(r.length == 17 for r in results))

        # SIGKILL one replica mid-run.
        dead = self.servers[1]
        dead.proc.send_signal(signal.SIGKILL)
        dead.proc.wait(30)
        on_dead = [s for s in sessions if owners[s.id] is self.replica(dead).client]
        alive = [s for s in sessions if s not in on_dead]
        self.assertTrue(on_dead and alive)
        q, k, v = tokens(rng, 8, H_Q), tokens(rng, 64, H_KV), tokens(rng, 64, H_KV)
        for _ in range(12):  # every stateless call completes, on the two left
            self.cluster.attend(q, k, v)
        for s in on_dead:
            with self.assertRaises(sageserve.SessionOwnerGoneError) as cm:
                s.step(0, tokens(rng, 1, H_KV), tokens(rng, 1, H_KV), tokens(rng, 1, H_Q))
            self.assertIn(s.id, cm.exception.session_ids)
            self.assertIsInstance(cm.exception, sageserve.UnavailableError)
        for s in alive:
            self.assertEqual(s.step(0, tokens(rng, 1, H_KV), tokens(rng, 1, H_KV), tokens(rng, 1, H_Q)).length, 18)
        new = self.cluster.create_session(layers=1, heads_q=H_Q, heads_kv=H_KV, head_dim=D, max_tokens=64)
        self.assertIsNot(self.cluster.client_for_session(new.id), self.replica(dead).client)
        with self.assertRaises(sageserve.SessionOwnerGoneError):
            self.cluster.client_for_session("00000000deadbeef.cpu.0123")  # no replica is that instance


class DnsTargetTest(unittest.TestCase):
    def test_a_dns_target_resolves_to_its_replicas(self) -> None:
        server = support.Server()
        try:
            # A numeric name: getaddrinfo answers it without /etc/hosts or a resolver, which a minimal
            # root (the fresh-machine check) lacks; the dns:/// path is the same.
            with sageserve.Cluster(f"dns:///127.0.0.1:{server.port}", resolve_every_s=0.1) as cluster:
                self.assertIn(f"127.0.0.1:{server.port}", [r.target for r in cluster.replicas()])
                rng = np.random.default_rng(3)
                q, k, v = tokens(rng, 4, H_Q), tokens(rng, 16, H_KV), tokens(rng, 16, H_KV)
                self.assertEqual(cluster.attend(q, k, v).o.shape, (4, H_Q, D))
                time.sleep(0.2)
                self.assertTrue(cluster.replicas())  # re-resolved, still there
        finally:
            server.stop()
        with self.assertRaises(ValueError):
            sageserve.Cluster("dns:///no-port")


if __name__ == "__main__":
    unittest.main()
