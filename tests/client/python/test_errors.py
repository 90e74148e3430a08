"""Every gRPC status code as its exception: the table itself, and each code the server (or gRPC)
produces, provoked for real against CPU-backend servers."""
from __future__ import annotations

import os
import socket
import tempfile
import unittest

import grpc
import numpy as np

import support

import sageserve  # noqa: E402
from sageserve import errors
from sageserve.v1 import registry_pb2

servers: dict = {}
ADMIN, USER = "tok-admin-0123456789abcdef", "tok-user-0123456789abcdef"  # the server wants >= 16 chars


def setUpModule() -> None:
    tmp = tempfile.mkdtemp()
    tokens = os.path.join(tmp, "tokens")
    with open(os.open(tokens, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(f"{ADMIN} ops admin\n{USER} alice attend\n")
    try:
        servers["plain"] = support.Server("--max_tokens=256")
        servers["shm"] = support.Server("--allow_shared_memory")
        servers["tokens"] = support.Server(f"--token_file={tokens}")
    except BaseException:
        tearDownModule()  # unittest skips it when setUpModule fails
        raise


def tearDownModule() -> None:
    for s in servers.values():
        s.stop()


def qkv(tokens: int, heads: int = 2, d: int = 64):
    rng = np.random.default_rng(0)
    return tuple(rng.standard_normal((tokens, heads, d)).astype(np.float16) for _ in range(3))


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, message: str, trailing=()):
        self._code, self._message, self._trailing = code, message, trailing

    def code(self):
        return self._code

    def details(self):
        return self._message

    def trailing_metadata(self):
        return self._trailing


class TableTest(unittest.TestCase):
    def test_every_code_but_ok_has_its_own_class(self) -> None:
        codes = [c for c in grpc.StatusCode if c != grpc.StatusCode.OK]
        self.assertEqual(sorted(c.name for c in errors.EXCEPTIONS), sorted(c.name for c in codes))
        self.assertEqual(len(set(errors.EXCEPTIONS.values())), len(codes))
        for code in codes:
            e = errors.from_rpc_error(_FakeRpcError(code, f"msg {code.name}"))
            self.assertIs(type(e), errors.EXCEPTIONS[code])
            self.assertIsInstance(e, sageserve.SageServeError)
            self.assertEqual(e.code, code)
            self.assertEqual(e.message, f"msg {code.name}")
            self.assertIn(code.name, str(e))

    def test_bad_request_detail_names_the_field(self) -> None:
        # google.rpc.Status{code 3, message, details [Any{BadRequest{violations [{field, description}]}}]}
        violation = b"\x0a\x0aq.shape[2]\x12\x03bad"
        bad_request = b"\x0a" + bytes([len(violation)]) + violation
        url = b"type.googleapis.com/google.rpc.BadRequest"
        any_msg = b"\x0a" + bytes([len(url)]) + url + b"\x12" + bytes([len(bad_request)]) + bad_request
        status = b"\x08\x03\x1a" + bytes([len(any_msg)]) + any_msg
        e = errors.from_rpc_error(_FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "q.shape[2]: bad",
                                                (("grpc-status-details-bin", status),)))
        self.assertIsInstance(e, sageserve.InvalidArgumentError)
        self.assertEqual(e.field, "q.shape[2]")


class ServerCodesTest(unittest.TestCase):
    def test_invalid_argument_names_the_field(self) -> None:
        client = sageserve.Client(servers["plain"].target)
        q, k, v = qkv(8, d=96)  # a head dim the server does not run
        with self.assertRaises(sageserve.InvalidArgumentError) as cm:
            client.attend(q, k, v)
        self.assertIsNotNone(cm.exception.field)
        self.assertIn(cm.exception.field, cm.exception.message)

    def test_resource_exhausted_over_max_tokens(self) -> None:
        client = sageserve.Client(servers["plain"].target)
        with self.assertRaises(sageserve.ResourceExhaustedError):
            client.attend(*qkv(257))

    def test_not_found_and_already_exists(self) -> None:
        client = sageserve.Client(servers["plain"].target)
        with self.assertRaises(sageserve.NotFoundError):
            client.get_model("no-such-model")
        spec = registry_pb2.ModelSpec(name="twice", num_layers=1, q_heads=1, kv_heads=1, head_dim=64)
        client.register_model(spec)
        client.register_model(spec)  # the same spec again is a no-op
        spec.num_layers = 2
        with self.assertRaises(sageserve.AlreadyExistsError):
            client.register_model(spec)

    def test_failed_precondition_and_out_of_range_from_sessions(self) -> None:
        client = sageserve.Client(servers["plain"].target)
        s = client.create_session(layers=2, heads_q=2, heads_kv=2, head_dim=64, max_tokens=16)
        k, v, q = qkv(4)
        s.lengths[0] = 3  # a stale position: the server expects 0
        with self.assertRaises(sageserve.FailedPreconditionError) as cm:
            s.step(0, k, v, q)
        self.assertIn("0", cm.exception.message)
        s.lengths[0] = 0
        with self.assertRaises(sageserve.OutOfRangeError):
            s.step(5, k, v, q)  # a layer outside the session
        s.close()

    def test_shared_memory_codes(self) -> None:
        # Forced shared memory on a server without --allow_shared_memory.
        with self.assertRaises(sageserve.FailedPreconditionError):
            sageserve.Client(servers["plain"].target, transport="shared_memory").attend(*qkv(8))
        client = sageserve.Client(servers["shm"].target)
        with self.assertRaises(sageserve.UnimplementedError):  # CUDA memory on the CPU engine
            client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 1024)
        with self.assertRaises(sageserve.NotFoundError):
            client.register_system_shared_memory("r", "/sage-no-such-object", 0, 64)
        with self.assertRaises(sageserve.PermissionDeniedError):  # outside --shared_memory_key_prefix
            client.register_system_shared_memory("r", "/other-prefix", 0, 64)
        with self.assertRaises(sageserve.NotFoundError):
            client.unregister_shared_memory("never-registered")

    def test_tokens(self) -> None:
        target = servers["tokens"].target
        with self.assertRaises(sageserve.UnauthenticatedError):
            sageserve.Client(target, token="").info()
        with self.assertRaises(sageserve.UnauthenticatedError):
            sageserve.Client(target, token="wrong").info()
        user = sageserve.Client(target, token=USER)
        self.assertEqual(user.info().access_control.tokens_required, True)
        spec = registry_pb2.ModelSpec(name="m", num_layers=1, q_heads=1, kv_heads=1, head_dim=64)
        with self.assertRaises(sageserve.PermissionDeniedError) as cm:
            user.register_model(spec)  # admin scope
        self.assertIn("admin", cm.exception.message)
        sageserve.Client(target, token=ADMIN).register_model(spec)
        self.assertEqual(user.attend(*qkv(8)).o.shape, (8, 2, 64))

    def test_deadline_exceeded(self) -> None:
        client = sageserve.Client(servers["plain"].target)
        with self.assertRaises(sageserve.DeadlineExceededError):
            client.attend(*qkv(256, heads=8, d=128), timeout=1e-4)

    def test_unavailable_without_a_server(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed when the block ends: nobody listens there
        with self.assertRaises(sageserve.UnavailableError):
            sageserve.Client(f"127.0.0.1:{port}", timeout_s=5).info()


if __name__ == "__main__":
    unittest.main()
