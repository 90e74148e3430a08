"""sageserve.Client against a CPU-backend server: answers equal the C++ client's bit for bit
(sagectl attend --o_file), layouts agree, and the info, selftest, health and registry calls."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

import support

import sageserve  # noqa: E402  (support puts the package on sys.path)
from sageserve import codec
from sageserve.v1 import attention_service_pb2, registry_pb2, tensor_pb2

server: support.Server


def setUpModule() -> None:
    global server
    server = support.Server()


def tearDownModule() -> None:
    server.stop()


def random_inputs(rng: np.random.Generator, tokens_q: int, tokens_k: int, hq: int, hkv: int, d: int, dtype: str):
    """q, k, v as the client takes them: numpy float16, or uint16 bf16 bits."""
    def one(n: int, h: int) -> np.ndarray:
        x = rng.standard_normal((n, h, d), dtype=np.float32)
        return x.astype(np.float16) if dtype == "fp16" else codec.bf16_bits(x)
    return one(tokens_q, hq), one(tokens_k, hkv), one(tokens_k, hkv)


def wire_bytes(x: np.ndarray, dtype: str) -> bytes:
    """The answer's bytes as the server sent them (bf16 came back as float32 values)."""
    if dtype == "bf16":
        return codec.bf16_bits(x).tobytes()
    return np.ascontiguousarray(x).tobytes()


class CppParityTest(unittest.TestCase):
    """The same inputs through sagectl (the C++ client) and through sageserve.Client."""

    CASES = [
        # batch, q_len, k_len, hq, hkv, d, dtype, recipe, causal, lse
        (2, 33, 70, 4, 2, 64, "fp16", "unquantized", True, True),
        (1, 40, 40, 2, 2, 128, "bf16", "int8_qk_fp8_pv", False, True),
        (3, 17, 29, 8, 2, 64, "fp16", "int4_qk_fp8_pv", True, False),
        (2, 24, 48, 4, 4, 128, "fp16", "int8_qk_fp16_pv", False, False),
        (1, 16, 16, 4, 1, 64, "bf16", None, True, True),
    ]

    def test_answers_equal_the_cpp_clients_bit_for_bit(self) -> None:
        sagectl = support.binary("SAGECTL_BINARY")
        rng = np.random.default_rng(7)
        client = sageserve.Client(server.target, transport="bytes")
        for batch, lq, lk, hq, hkv, d, dtype, recipe, causal, lse in self.CASES:
            with self.subTest(batch=batch, lq=lq, lk=lk, hq=hq, hkv=hkv, d=d, dtype=dtype, recipe=recipe,
                              causal=causal), tempfile.TemporaryDirectory() as tmp:
                q, k, v = random_inputs(rng, batch * lq, batch * lk, hq, hkv, d, dtype)
                paths = {n: os.path.join(tmp, n) for n in ("q", "k", "v", "o", "lse")}
                for name, x in (("q", q), ("k", k), ("v", v)):
                    with open(paths[name], "wb") as f:
                        f.write(x.tobytes())
                cmd = [sagectl, "attend", f"--target={server.target}", f"--batch={batch}", f"--q_len={lq}",
                       f"--k_len={lk}", f"--heads_q={hq}", f"--heads_kv={hkv}", f"--head_dim={d}",
                       f"--dtype={dtype}", f"--q_file={paths['q']}", f"--k_file={paths['k']}",
                       f"--v_file={paths['v']}", f"--o_file={paths['o']}", f"--lse_file={paths['lse']}"]
                cmd += [f"--recipe={recipe}"] if recipe else []
                cmd += ["--causal"] if causal else []
                cmd += ["--lse"] if lse else []
                run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
                cu_q = [i * lq for i in range(batch + 1)]
                cu_k = [i * lk for i in range(batch + 1)]
                r = client.attend(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=causal, return_lse=lse,
                                  recipe=recipe, input_dtype=dtype)
                self.assertEqual(r.transport, "bytes")
                self.assertEqual(r.o.shape, (batch * lq, hq, d))
                with open(paths["o"], "rb") as f:
                    self.assertEqual(wire_bytes(r.o, dtype), f.read(), "O differs from sagectl's")
                if lse:
                    self.assertEqual(r.lse.shape, (batch * lq, hq))
                    with open(paths["lse"], "rb") as f:
                        self.assertEqual(r.lse.astype("<f4").tobytes(), f.read(), "LSE differs from sagectl's")
                else:
                    self.assertIsNone(r.lse)
                if recipe:
                    self.assertEqual(r.recipe, recipe)
        client.close()


class AttendTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.client = sageserve.Client(server.target)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()

    def test_batch_layouts_equal_the_packed_one(self) -> None:
        rng = np.random.default_rng(1)
        b, hq, hkv, lq, lk, d = 2, 4, 2, 12, 20, 64
        q = rng.standard_normal((b, hq, lq, d)).astype(np.float16)  # [B, H, S, D]
        k = rng.standard_normal((b, hkv, lk, d)).astype(np.float16)
        v = rng.standard_normal((b, hkv, lk, d)).astype(np.float16)
        bhsd = self.client.attend(q, k, v, causal=True, return_lse=True, recipe="unquantized")
        self.assertEqual(bhsd.o.shape, (b, hq, lq, d))
        self.assertEqual(bhsd.lse.shape, (b, hq, lq))
        bshd = self.client.attend(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
                                  layout="bshd", causal=True, return_lse=True, recipe="unquantized")
        packed = self.client.attend(
            q.transpose(0, 2, 1, 3).reshape(b * lq, hq, d), k.transpose(0, 2, 1, 3).reshape(b * lk, hkv, d),
            v.transpose(0, 2, 1, 3).reshape(b * lk, hkv, d), cu_seqlens_q=[0, lq, 2 * lq],
            cu_seqlens_k=[0, lk, 2 * lk], causal=True, return_lse=True, recipe="unquantized")
        np.testing.assert_array_equal(bhsd.o, packed.o.reshape(b, lq, hq, d).transpose(0, 2, 1, 3))
        np.testing.assert_array_equal(bshd.o, packed.o.reshape(b, lq, hq, d))
        np.testing.assert_array_equal(bhsd.lse, packed.lse.reshape(b, lq, hq).transpose(0, 2, 1))

    def test_unquantized_matches_a_float64_reference_with_gqa_and_scale(self) -> None:
        rng = np.random.default_rng(2)
        lq, lk, hq, hkv, d, scale = 9, 21, 4, 2, 64, 0.05
        q = rng.standard_normal((lq, hq, d)).astype(np.float16)
        k = rng.standard_normal((lk, hkv, d)).astype(np.float16)
        v = rng.standard_normal((lk, hkv, d)).astype(np.float16)
        r = self.client.attend(q, k, v, causal=True, scale=scale, return_lse=True, recipe="unquantized",
                               output_dtype="fp32")
        self.assertEqual(r.o.dtype, np.float32)
        kk = np.repeat(k.astype(np.float64), hq // hkv, axis=1)
        vv = np.repeat(v.astype(np.float64), hq // hkv, axis=1)
        s = np.einsum("qhd,khd->hqk", q.astype(np.float64), kk) * scale
        allowed = np.arange(lk)[None, :] <= np.arange(lq)[:, None] + (lk - lq)  # bottom-right
        s = np.where(allowed[None], s, -np.inf)
        lse = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1)) + s.max(-1)
        o = np.einsum("hqk,khd->qhd", np.exp(s - lse[..., None]), vv)
        np.testing.assert_allclose(r.o, o, atol=2e-3, rtol=2e-3)
        np.testing.assert_allclose(r.lse, lse.T, atol=1e-3, rtol=1e-4)

    def test_registry_layer_key_and_calibrate(self) -> None:
        spec = registry_pb2.ModelSpec(name="py-model", num_layers=2, q_heads=2, kv_heads=2, head_dim=64,
                                      accuracy_target=0.9)
        info = self.client.register_model(spec, replace=True)
        self.assertEqual(info.spec.name, "py-model")
        self.assertIn("py-model", [m.spec.name for m in self.client.list_models()])
        self.assertEqual(self.client.get_model("py-model").spec.num_layers, 2)
        rng = np.random.default_rng(3)
        q = rng.standard_normal((32, 2, 64)).astype(np.float16)
        k = rng.standard_normal((32, 2, 64)).astype(np.float16)
        v = rng.standard_normal((32, 2, 64)).astype(np.float16)
        samples = [sageserve.calibration_sample(layer, q, k, v, causal=True) for layer in (0, 1)]
        report = self.client.calibrate("py-model", samples, dry_run=True, candidates=["unquantized", "int8_qk_fp8_pv"])
        self.assertEqual(report.model, "py-model")
        self.assertFalse(report.stored)
        self.assertEqual(len(report.cells), 2)
        # The KV storage of each layer for the model's sessions, scored fewest bytes first.
        self.assertEqual([l.layer for l in report.kv_layers], [0, 1])
        for layer in report.kv_layers:
            self.assertEqual([s.kv_storage for s in layer.scores],
                             [tensor_pb2.KV_STORAGE_INT4_K_FP8_V, tensor_pb2.KV_STORAGE_INT8_K_FP8_V,
                              tensor_pb2.KV_STORAGE_16BIT])
            first_ok = next((s.kv_storage for s in layer.scores if s.meets_target), tensor_pb2.KV_STORAGE_16BIT)
            self.assertEqual(layer.chosen, first_ok)
        self.assertIn("kv storage", report.report)
        stored = self.client.calibrate("py-model", samples, candidates=["unquantized", "int8_qk_fp8_pv"],
                                       kv_storages=["int8_k_fp8_v"])
        self.assertTrue(stored.stored)
        self.assertEqual([s.kv_storage for s in stored.kv_layers[0].scores], [tensor_pb2.KV_STORAGE_INT8_K_FP8_V])
        session = self.client.create_session(model="py-model", layers=2, heads_q=2, heads_kv=2, head_dim=64, max_tokens=64)
        self.assertEqual(list(session.info().layer_kv_storages), [l.chosen for l in stored.kv_layers])
        session.close()
        plan = registry_pb2.Plan(entries=[registry_pb2.PlanEntry(
            layers=registry_pb2.IndexRange(first=0, last=1), recipe=sageserve.request.parse_recipe("unquantized"))])
        stored = self.client.set_plan("py-model", plan)
        self.assertGreaterEqual(stored.version, 1)
        self.assertEqual(self.client.get_plan("py-model").version, stored.version)
        r = self.client.attend(q, k, v, model="py-model", layer=1, causal=True)
        self.assertEqual(r.recipe, "unquantized")  # the plan's, not the server default
        self.client.delete_model("py-model")
        with self.assertRaises(sageserve.NotFoundError):
            self.client.get_model("py-model")

    def test_info_selftest_health(self) -> None:
        info = self.client.info()
        self.assertEqual(info.backend, os.environ.get("SAGESERVE_BACKEND", "cpu"))
        self.assertIn(64, list(info.head_dims))
        self.assertEqual(self.client.health(), "SERVING")
        self.assertEqual(self.client.health("sageserve.v1.AttentionService"), "SERVING")
        report = self.client.selftest(["unquantized"])
        self.assertTrue(report.passed, report)
        self.assertEqual(len(report.results), 1)

    def test_the_one_copy_serialization_parses_as_the_message(self) -> None:
        rng = np.random.default_rng(9)
        q = rng.standard_normal((7, 4, 64)).astype(np.float16)
        k = rng.standard_normal((9, 2, 64)).astype(np.float16)
        v = rng.standard_normal((9, 2, 64)).astype(np.float16)
        kw = dict(cu_seqlens_q=[0, 3, 7], cu_seqlens_k=[0, 4, 9], causal=True, return_lse=True, scale=0.1,
                  recipe="int8_qk_fp8_pv", model="m", layer=1, request_id="wire", transport_mode="bytes")
        raw = sageserve.AttendCall(self.client.transport, q, k, v, defer_bytes=True, **kw).serialized()
        message = sageserve.AttendCall(self.client.transport, q, k, v, **kw).request
        self.assertEqual(attention_service_pb2.AttendRequest.FromString(raw), message)

    def test_rejects_unsendable_dtypes_locally(self) -> None:
        x = np.zeros((4, 1, 64), dtype=np.float32)
        with self.assertRaisesRegex(TypeError, "q: dtype float32"):
            self.client.attend(x, x, x)

    def test_importing_the_package_does_not_import_torch(self) -> None:
        code = "import sys, sageserve, sageserve.client, sageserve.aio; sys.exit('torch' in sys.modules)"
        env = dict(os.environ, PYTHONPATH=support.PACKAGE_ROOT)
        self.assertEqual(subprocess.run([sys.executable, "-c", code], env=env).returncode, 0)


class TlsTest(unittest.TestCase):
    """TLS and mutual TLS with certificates the openssl CLI makes here (scripts/bootstrap.sh)."""

    def test_tls_and_mutual_tls(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            def sh(*cmd: str) -> None:
                r = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, r.stderr)
            sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
               "-days", "1", "-subj", "/CN=sageserve-test-ca")
            with open(os.path.join(tmp, "san.ext"), "w") as f:
                f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
            for name, cn, ext in (("server", "localhost", ["-extfile", "san.ext"]), ("client", "py-client", [])):
                sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                   "-subj", f"/CN={cn}")
                sh("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                   "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", *ext)
            path = lambda n: os.path.join(tmp, n)  # noqa: E731
            tls = support.Server(f"--tls_cert={path('server.pem')}", f"--tls_key={path('server.key')}")
            mtls = support.Server(f"--tls_cert={path('server.pem')}", f"--tls_key={path('server.key')}",
                                  f"--tls_client_ca={path('ca.pem')}")
            try:
                ca = sageserve.TlsOptions.from_files(path("ca.pem"))
                with sageserve.Client(tls.target, tls=ca) as client:
                    x = np.ones((8, 2, 64), np.float16)
                    self.assertEqual(client.attend(x, x, x).o.shape, (8, 2, 64))
                with self.assertRaises(sageserve.UnavailableError):  # plaintext to a TLS port
                    sageserve.Client(tls.target, timeout_s=5).info()
                mutual = sageserve.TlsOptions.from_files(path("ca.pem"), path("client.pem"), path("client.key"))
                with sageserve.Client(mtls.target, tls=mutual) as client:
                    self.assertEqual(client.health(), "SERVING")
                with self.assertRaises(sageserve.UnavailableError):  # no client certificate
                    sageserve.Client(mtls.target, tls=ca, timeout_s=5).info()
            finally:
                tls.stop()
                mtls.stop()


if __name__ == "__main__":
    unittest.main()
