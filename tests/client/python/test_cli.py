"""`python -m sageserve`: sagectl's commands, flags and exit codes from Python."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import unittest

import support

server: support.Server


def setUpModule() -> None:
    global server
    server = support.Server("--allow_shared_memory")


def tearDownModule() -> None:
    server.stop()


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(support.PACKAGE_ROOT))
    return subprocess.run([sys.executable, "-m", "sageserve", *args], capture_output=True, text=True, env=env,
                          timeout=300)


class CliTest(unittest.TestCase):
    def test_health_info_selftest(self) -> None:
        r = cli("health", f"--target={server.target}")
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "SERVING"), r.stderr)
        r = cli("info", f"--target={server.target}")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["backend"], os.environ.get("SAGESERVE_BACKEND", "cpu"))
        r = cli("selftest", f"--target={server.target}", "--recipe=unquantized")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("PASSED", r.stdout)

    def test_attend_writes_what_sagectl_writes(self) -> None:
        sagectl = support.binary("SAGECTL_BINARY")
        with tempfile.TemporaryDirectory() as tmp:
            common = [f"--target={server.target}", "--batch=2", "--q_len=20", "--k_len=36", "--heads_q=4",
                      "--heads_kv=2", "--head_dim=64", "--causal", "--lse", "--recipe=int8_qk_fp8_pv"]
            r = cli("attend", *common, "--seed=3", "--shared_memory=system")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("via system", r.stdout)
            self.assertIn("cosine 0.99", r.stdout)
            # Inputs from files, so both clients send the same bits.
            import numpy as np

            rng = np.random.default_rng(0)
            for name, shape in (("q", (40, 4, 64)), ("k", (72, 2, 64)), ("v", (72, 2, 64))):
                rng.standard_normal(shape).astype(np.float16).tofile(f"{tmp}/{name}")
            files = [f"--q_file={tmp}/q", f"--k_file={tmp}/k", f"--v_file={tmp}/v"]
            r = cli("attend", *common, *files, f"--o_file={tmp}/o_py", f"--lse_file={tmp}/lse_py")
            self.assertEqual(r.returncode, 0, r.stderr)
            c = subprocess.run([sagectl, "attend", *common, *files, f"--o_file={tmp}/o_cc", f"--lse_file={tmp}/lse_cc"],
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(c.returncode, 0, c.stderr)
            for a, b in (("o_py", "o_cc"), ("lse_py", "lse_cc")):
                with open(f"{tmp}/{a}", "rb") as fa, open(f"{tmp}/{b}", "rb") as fb:
                    self.assertEqual(fa.read(), fb.read(), a)

    def test_bench_prints_sagectls_latency_line(self) -> None:
        for mode in ("unary", "stream"):
            r = cli("bench", f"--target={server.target}", f"--mode={mode}", "--requests=20", "--concurrency=2",
                    "--q_len=16", "--k_len=16", "--heads_q=2", "--heads_kv=2", "--head_dim=64")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("20 ok / 0 failed", r.stdout)
            self.assertRegex(r.stdout, r"latency us: p50 \d+, p90 \d+, p99 \d+, max \d+")

    def test_exit_codes(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        r = cli("health", f"--target=127.0.0.1:{port}", "--deadline_ms=3000")
        self.assertEqual(r.returncode, 10 + 14, r.stderr)  # UNAVAILABLE
        self.assertIn("UNAVAILABLE", r.stderr)
        r = cli("attend", f"--target={server.target}", "--head_dim=96", "--q_len=8", "--k_len=8")
        self.assertEqual(r.returncode, 10 + 3, r.stderr)  # INVALID_ARGUMENT
        r = cli("attend", f"--target={server.target}", "--recipe=nope", "--q_len=8", "--k_len=8")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertEqual(cli("frobnicate").returncode, 2)


if __name__ == "__main__":
    unittest.main()
