"""`pip install --no-build-isolation ./client/python` into a `python3 -m venv --system-site-packages`
venv (Debian's python refuses system-wide pip installs; no package index is needed), then the
installed package, run from outside the source tree, talks to a server."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import support


class InstallTest(unittest.TestCase):
    def test_pip_install_into_a_venv(self) -> None:
        server = support.Server()
        tmp = tempfile.mkdtemp()
        try:
            venv = os.path.join(tmp, "venv")
            subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
            py = os.path.join(venv, "bin", "python")
            # A copy, so the build's egg-info and build/ never land in the source tree.
            src = os.path.join(tmp, "src")
            shutil.copytree(os.path.abspath(support.PACKAGE_ROOT), src,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
            r = subprocess.run([py, "-m", "pip", "install", "--no-build-isolation", src],
                               capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            code = ("import sageserve, sageserve.v1.session_pb2_grpc, numpy as np, os\n"
                    "assert not sageserve.__file__.startswith(os.environ['SRC']), sageserve.__file__\n"
                    "pkg = os.path.dirname(sageserve.__file__)\n"
                    "for f in ('py.typed', 'v1/session_pb2.pyi', 'torch/sdpa.py'):\n"
                    "    assert os.path.exists(os.path.join(pkg, f)), f\n"
                    "c = sageserve.Client(os.environ['TARGET'])\n"
                    "x = np.ones((4, 2, 64), np.float16)\n"
                    "print(c.attend(x, x, x).o.shape, c.health())\n")
            env = dict(os.environ, SRC=os.path.abspath(support.PACKAGE_ROOT), TARGET=server.target)
            env.pop("PYTHONPATH", None)
            r = subprocess.run([py, "-c", code], capture_output=True, text=True, cwd=tmp, env=env, timeout=120)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("(4, 2, 64) SERVING", r.stdout)
            r = subprocess.run([py, "-m", "sageserve", "health", f"--target={server.target}"], capture_output=True,
                               text=True, cwd=tmp, env=env, timeout=120)
            self.assertEqual((r.returncode, r.stdout.strip()), (0, "SERVING"), r.stderr)
            r = subprocess.run([os.path.join(venv, "bin", "sageserve-py"), "health", f"--target={server.target}"],
                               capture_output=True, text=True, cwd=tmp, env=env, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
        finally:
            server.stop()
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
