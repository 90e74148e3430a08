"""nginx in front of four CPU replicas on loopback (docs/DEPLOY.md, "A gRPC proxy in front"): the
configuration deploy/proxy/nginx-conf.py writes, run by Debian's nginx as the current user.

Through the proxy's one address: stateless calls spread over the replicas, and messages far over
nginx's defaults pass both ways; sessions created there land on several replicas and every later
call of a session (steps, a batch, fork, truncate, get, close, an AttendSessionStream) reaches its
owner by the `sageserve-session` metadata the client sends (without it, calls land elsewhere and
fail); a header naming no listed replica is UNAVAILABLE; a replica that is down is UNAVAILABLE for
its sessions (SessionOwnerGoneError) while stateless calls go on; restarted under the same name it
answers NOT_FOUND for its old sessions and serves new ones. The C++ SessionClient (through sagectl)
sends the header too. Also: the committed example
deploy/proxy/sageserve-proxy.conf is what the generator writes.

nginx missing fails the test (Debian package `nginx`, which scripts/bootstrap.sh installs).
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import unittest
from typing import Dict, List, Optional

import grpc
import numpy as np

import support

import sageserve  # noqa: E402
from sageserve.v1 import attention_service_pb2 as pb  # noqa: E402
from sageserve.v1 import attention_service_pb2_grpc as pb_grpc  # noqa: E402
from sageserve.v1 import session_pb2 as sp  # noqa: E402
from sageserve.v1 import session_pb2_grpc as sp_grpc  # noqa: E402

SOURCE = os.path.abspath(os.path.join(support.HERE, os.pardir, os.pardir, os.pardir))
GENERATOR = os.path.join(SOURCE, "deploy", "proxy", "nginx-conf.py")
EXAMPLE = os.path.join(SOURCE, "deploy", "proxy", "sageserve-proxy.conf")
# The command the example's first lines record (they are checked against the generator's output).
EXAMPLE_ARGS = ["--listen=0.0.0.0:50050", "gpu-a=10.0.0.5:50051", "gpu-b=10.0.0.6:50051", "gpu-c=10.0.0.7:50051"]
H_Q, H_KV, D = 4, 2, 64
NAMES = ("a", "b", "c", "d")  # d is the one the owner-down test stops and restarts


def nginx_binary() -> str:
    for path in (os.environ.get("SAGESERVE_NGINX", ""), shutil.which("nginx") or "", "/usr/sbin/nginx"):
        if path and os.access(path, os.X_OK):
            return path
    raise RuntimeError("nginx not found (not on PATH, not /usr/sbin/nginx; SAGESERVE_NGINX may name it): install "
                       "Debian's package nginx (scripts/bootstrap.sh does); this test cannot run without it")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replica_of(session_id: str) -> str:
    # "<name>-<16 hex>.<device>.<random>"
    return session_id.split(".", 1)[0][:-17]


def tokens(rng: np.random.Generator, n: int, heads: int, d: int = D) -> np.ndarray:
    return rng.standard_normal((n, heads, d)).astype(np.float16)


class Proxy:
    """nginx -p <tmpdir> -c <tmpdir>/nginx.conf -g 'daemon off;' until stop()."""

    def __init__(self, replicas: Dict[str, str]) -> None:
        nginx = nginx_binary()
        self.dir = tempfile.mkdtemp(prefix="sageserve-proxy-")
        self.conf = os.path.join(self.dir, "nginx.conf")
        self.proc: Optional[subprocess.Popen] = None
        for attempt in range(3):  # another process may take the free port before nginx binds it
            self.port = free_port()
            subprocess.run([sys.executable, GENERATOR, "--main", f"--listen=127.0.0.1:{self.port}", "--workers=1",
                            "-o", self.conf] + [f"{n}={t}" for n, t in replicas.items()], check=True)
            self.proc = subprocess.Popen(support._DIE_WITH_PARENT + [nginx, "-p", self.dir + "/", "-c", self.conf,
                                                                     "-g", "daemon off;"],
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if support.wait_until(lambda: self.proc.poll() is not None or self._accepts(), 10) and self._accepts():
                return
            self.stop()
            if "Address already in use" not in self.log() or attempt == 2:
                raise RuntimeError(f"nginx did not start (exit {self.proc.returncode}):\n{self.log()}")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def log(self, names=("error.log", "access.log")) -> str:
        out = ""
        if self.proc is not None and self.proc.poll() is not None and self.proc.stdout is not None:
            out += self.proc.stdout.read()
        for name in names:
            path = os.path.join(self.dir, name)
            if os.path.exists(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    out += f"--- {name}\n" + f.read()[-8000:]
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


servers: Dict[str, support.Server] = {}
proxy: Proxy


def setUpModule() -> None:
    global proxy
    nginx_binary()  # fails first, with the reason, when nginx is missing
    for name in NAMES:
        servers[name] = support.Server(f"--replica_name={name}")
    proxy = Proxy({name: s.target for name, s in servers.items()})


def tearDownModule() -> None:
    proxy.stop()
    if os.environ.get("SAGESERVE_PROXY_ACCESS_LOG"):
        print(proxy.log(("access.log",)), file=sys.stderr)
    print(proxy.log(("error.log",)), file=sys.stderr)  # a down replica's refused connections are expected
    for s in servers.values():
        s.stop()
    shutil.rmtree(proxy.dir, ignore_errors=True)


class ProxyTest(unittest.TestCase):
    def setUp(self) -> None:
        self.client = sageserve.Client(proxy.target, timeout_s=30)
        self.channel = grpc.insecure_channel(proxy.target)

    def tearDown(self) -> None:
        self.client.close()
        self.channel.close()

    def new_session(self, client: Optional[sageserve.Client] = None, layers: int = 2) -> sageserve.Session:
        return (client or self.client).create_session(layers=layers, heads_q=H_Q, heads_kv=H_KV, head_dim=D,
                                                      max_tokens=512)

    def test_each_replica_reports_its_name_in_its_instance(self) -> None:
        for name, s in servers.items():
            with sageserve.Client(s.target) as direct:
                instance = direct.info().instance
            self.assertRegex(instance, rf"^{name}-[0-9a-f]{{16}}$")

    def test_stateless_calls_spread_and_large_messages_pass(self) -> None:
        seen: Dict[str, int] = {}
        for _ in range(40):
            name = self.client.info().instance[:-17]
            seen[name] = seen.get(name, 0) + 1
        for name in ("a", "b", "c"):  # d may still be set aside after the owner-down test
            self.assertGreaterEqual(seen.get(name, 0), 5, seen)

        # A 32 MiB request (nginx's default limit is 1 MiB) and an 8 MiB answer, each as a replica
        # computes it directly.
        rng = np.random.default_rng(1)
        with sageserve.Client(servers["a"].target, timeout_s=60) as direct:
            for q, kv in ((tokens(rng, 16, 8, 128), tokens(rng, 16384, 8, 128)),
                          (tokens(rng, 4096, 8, 128), tokens(rng, 64, 8, 128))):
                want = direct.attend(q, kv, kv, recipe="unquantized").o
                got = self.client.attend(q, kv, kv, recipe="unquantized", timeout=60).o
                np.testing.assert_array_equal(got, want)

    def test_session_calls_reach_their_owner(self) -> None:
        rng = np.random.default_rng(2)
        sessions = [self.new_session() for _ in range(8)]
        owners = [replica_of(s.id) for s in sessions]
        self.assertGreaterEqual(len(set(owners)), 3, owners)  # least_conn spread the creates
        for t in range(3):
            for s in sessions:
                for layer in range(2):
                    r = s.step(layer, tokens(rng, 4, H_KV), tokens(rng, 4, H_KV), tokens(rng, 1, H_Q))
                    self.assertEqual(r.length, 4 * (t + 1))
        for s in sessions:
            self.assertEqual(list(s.info().layer_lengths), [12, 12])

        # Steps are exact: the session's cache equals a stateless call over everything appended.
        s = self.new_session(layers=1)
        k, v, q = tokens(rng, 9, H_KV), tokens(rng, 9, H_KV), tokens(rng, 2, H_Q)
        got = s.step(0, k, v, q, recipe="unquantized").o
        want = self.client.attend(q, k, v, causal=True, recipe="unquantized").o
        np.testing.assert_array_equal(got, want)

        # A batch of two sessions of one replica in one call (the first step's session routes it).
        by_owner: Dict[str, List[sageserve.Session]] = {}
        for s, owner in zip(sessions, owners):
            by_owner.setdefault(owner, []).append(s)
        pair = next(group for group in by_owner.values() if len(group) >= 2)[:2]
        results = self.client.attend_sessions(
            0, [(p, tokens(rng, 1, H_KV), tokens(rng, 1, H_KV), tokens(rng, 1, H_Q)) for p in pair])
        self.assertEqual([r.length for r in results], [13, 13])

        # Fork, truncate, close.
        child = sessions[0].fork(6)
        self.assertEqual(replica_of(child.id), owners[0])
        self.assertEqual(list(child.info().layer_lengths), [6, 6])
        sessions[1].truncate(2)
        self.assertEqual(list(sessions[1].info().layer_lengths), [2, 2])
        child.close()
        with self.assertRaises(sageserve.NotFoundError):
            child.info()

        # Without the header the proxy picks any replica: calls land where the session is not.
        stub = sp_grpc.SessionServiceStub(self.channel)
        elsewhere = 0
        for s in sessions[:4]:
            for _ in range(6):
                try:
                    stub.GetSession(sp.GetSessionRequest(session_id=s.id), timeout=10)
                except grpc.RpcError as e:
                    self.assertEqual(e.code(), grpc.StatusCode.NOT_FOUND, e.details())
                    self.assertIn("another server", e.details())
                    elsewhere += 1
        self.assertGreater(elsewhere, 0)
        # With it, always the owner.
        for s in sessions[:4]:
            for _ in range(6):
                stub.GetSession(sp.GetSessionRequest(session_id=s.id), timeout=10,
                                metadata=[("sageserve-session", s.id)])
        for s in sessions:
            s.close()

    def test_the_cpp_session_client_sends_the_header(self) -> None:
        # sagectl's session verbs are sageserve::SessionClient calls.
        sagectl = support.binary("SAGECTL_BINARY")

        def run(*args: str) -> str:
            r = subprocess.run([sagectl, "session", *args, f"--target={proxy.target}"], capture_output=True,
                               text=True, timeout=30)
            self.assertEqual(r.returncode, 0, f"sagectl session {' '.join(args)}: {r.stderr}")
            return r.stdout

        ids = [run("create", "--layers=2", f"--heads_q={H_Q}", f"--heads_kv={H_KV}", f"--head_dim={D}",
                   "--max_tokens=64").strip() for _ in range(4)]
        self.assertGreaterEqual(len({replica_of(i) for i in ids}), 3, ids)
        for i in ids:
            for _ in range(3):
                self.assertIn(i, run("get", f"--id={i}"))
            child = json.loads(run("fork", f"--id={i}", "--length=0"))["sessionId"]
            self.assertEqual(replica_of(child), replica_of(i))
            run("truncate", f"--id={i}", "--length=0")
            for session in (i, child):
                run("close", f"--id={session}")

    def test_a_session_stream_opens_on_the_replica_its_session_names(self) -> None:
        rng = np.random.default_rng(3)
        steps = [(tokens(rng, n, H_KV), tokens(rng, n, H_KV), tokens(rng, 1, H_Q)) for n in (5, 1, 1)]

        async def run() -> List[int]:
            async with sageserve.AsyncClient(proxy.target, timeout_s=30) as client:
                sessions = [await client.create_session(layers=2, heads_q=H_Q, heads_kv=H_KV, head_dim=D,
                                                        max_tokens=64) for _ in range(4)]
                lengths = []
                for s in sessions:
                    async with client.session_stream(session=s) as stream:
                        for k, v, q in steps:
                            results = await asyncio.gather(*(stream.step(s, layer, k, v, q) for layer in range(2)))
                            lengths += [r.length for r in results]
                    s.close()
                return lengths

        self.assertEqual(asyncio.run(run()), [5, 5, 6, 6, 7, 7] * 4)

    def test_a_header_naming_no_listed_replica_is_unavailable(self) -> None:
        stub = pb_grpc.AttentionServiceStub(self.channel)
        for value, shown in (("nosuch-0123456789abcdef.cpu.00", "no replica 'nosuch'"),
                             ("0123456789abcdef.cpu.00", "no replica '?'"),  # a server without a name
                             ("garbage", "no replica '?'")):
            with self.assertRaises(grpc.RpcError) as cm:
                stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10, metadata=[("sageserve-session", value)])
            self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE, cm.exception.details())
            self.assertIn(shown, cm.exception.details())
        # The client library: its session is gone from this cluster.
        with self.assertRaises(sageserve.SessionOwnerGoneError) as gone:
            self.client.sessions.get("nosuch-0123456789abcdef.cpu.00")
        self.assertIn("no replica 'nosuch'", str(gone.exception))

    def test_owner_down_then_restarted_under_its_name(self) -> None:
        rng = np.random.default_rng(4)
        d = servers["d"]
        port = d.port
        with sageserve.Client(d.target) as direct:
            old = self.new_session(direct)
            old.step(0, tokens(rng, 3, H_KV), tokens(rng, 3, H_KV), None)
        self.assertEqual(list(self.client.sessions.get(old.id).layer_lengths), [3, 0])

        d.stop()
        with self.assertRaises(sageserve.SessionOwnerGoneError) as gone:
            self.client.sessions.get(old.id)
        self.assertIn(f"no answer from 127.0.0.1:{port}", str(gone.exception))
        # Stateless calls go on, on the other replicas.
        for _ in range(12):
            self.assertNotEqual(self.client.info().instance[:-17], "d")

        # The same name and address, a new process: the old id names the old instance.
        servers["d"] = support.Server("--replica_name=d", f"--listen=127.0.0.1:{port}")
        with self.assertRaises(sageserve.NotFoundError) as cm:
            self.client.sessions.get(old.id)
        self.assertIn("restarted", str(cm.exception))
        with sageserve.Client(servers["d"].target) as direct:
            new = self.new_session(direct)
        self.assertEqual(replica_of(new.id), "d")
        through_proxy = self.client.sessions.get(new.id)
        self.assertEqual(through_proxy.session_id, new.id)
        self.client.sessions.close(new.id)

    def test_the_committed_example_is_the_generators_output(self) -> None:
        out = subprocess.run([sys.executable, GENERATOR] + EXAMPLE_ARGS, check=True, capture_output=True,
                             text=True).stdout
        with open(EXAMPLE, encoding="utf-8") as f:
            self.assertEqual(f.read(), out, f"regenerate it: {GENERATOR} {' '.join(EXAMPLE_ARGS)} > {EXAMPLE}")
        # Bad input is refused with the reason.
        for args, why in ((["Bad=1.2.3.4:5"], "NAME 1 to 40"), (["a=nohost"], "is not HOST:PORT"),
                          (["a=h:1", "a=h:2"], "once")):
            r = subprocess.run([sys.executable, GENERATOR] + args, capture_output=True, text=True)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(why, r.stderr)


if __name__ == "__main__":
    unittest.main()
