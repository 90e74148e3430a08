"""Shared by the Python client tests: the package on sys.path, and a sageserve child process.

CTest passes the binaries' paths (tests/client/python/CMakeLists.txt); scripts/device-python.sh
passes .bundle's. A missing binary fails the test (it never skips).
"""
from __future__ import annotations

import faulthandler
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))

# A hung test prints every thread's stack and exits before CTest's timeout kills it silently.
faulthandler.dump_traceback_later(float(os.environ.get("SAGESERVE_TEST_WATCHDOG_S", "270")), exit=True)
PACKAGE_ROOT = os.environ.get("SAGESERVE_PYTHON_PACKAGE",
                              os.path.join(HERE, os.pardir, os.pardir, os.pardir, "client", "python"))
if os.environ.get("SAGESERVE_PYTHON_INSTALLED") != "1":  # the install test imports the venv's copy
    sys.path.insert(0, os.path.abspath(PACKAGE_ROOT))


def gpu_test() -> None:
    """For the gpu-labelled tests, called before they import torch. Where no GPU is visible they
    are skipped (exit 77, CTest's SKIP_RETURN_CODE), as the C++ GPU tests skip themselves; where one
    is (or SAGESERVE_GPU_TESTS=1, as scripts/device-python.sh sets), a missing torch or
    transformers fails them."""
    if os.environ.get("SAGESERVE_GPU_TESTS") != "1" and not glob.glob("/dev/nvidia[0-9]*"):
        print("no GPU visible: skipped (SAGESERVE_GPU_TESTS=1 runs it anyway)")
        sys.exit(77)


def binary(env: str) -> str:
    path = os.environ.get(env, "")
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError(f"${env} must name an executable (got {path!r}); the test cannot run without it")
    return path


# Small KV pools: the CI box is shared, and the tests hold a few sessions at most.
DEFAULT_ARGS = ["--kv_pool_bytes=67108864", "--log_level=warn"]


# A test killed by a timeout must not leave its servers running (holding a GPU, a port):
# util-linux's setpriv sets PR_SET_PDEATHSIG and execs the server. (Not Popen's preexec_fn: Python
# code between fork and exec in a process with gRPC's threads can deadlock or trip gRPC's fork
# handlers.) The signal follows the thread that started the server: start them from the main thread.
_SETPRIV = shutil.which("setpriv")
_DIE_WITH_PARENT = [_SETPRIV, "--pdeathsig", "TERM", "--"] if _SETPRIV else []


class Server:
    """`sageserve --listen=127.0.0.1:0 --backend=<$SAGESERVE_BACKEND or cpu> ...` until stop()."""

    def __init__(self, *extra: str, backend: Optional[str] = None, unix_socket: Optional[str] = None) -> None:
        backend = backend or os.environ.get("SAGESERVE_BACKEND", "cpu")
        listen = f"unix:{unix_socket}" if unix_socket else "127.0.0.1:0"
        self.unix_target = listen if unix_socket else None
        self.args: List[str] = [binary("SAGESERVE_BINARY"), f"--listen={listen}", f"--backend={backend}",
                                *DEFAULT_ARGS, *extra]
        self.proc = subprocess.Popen(_DIE_WITH_PARENT + self.args, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.output: List[str] = []
        self.port = 0
        self.listening = False
        ready = threading.Event()

        def drain() -> None:
            # Keeps reading so a chatty server never blocks on a full pipe.
            assert self.proc.stdout is not None
            try:
                for line in self.proc.stdout:
                    self.output.append(line)
                    m = re.search(r"sageserve listening on port (\d+)", line)
                    if m:
                        self.port = int(m.group(1))  # 0 on a Unix socket
                        self.listening = True
                        ready.set()
            except (ValueError, OSError):  # stop() closed the pipe
                pass
            ready.set()

        self._drain = threading.Thread(target=drain, daemon=True)
        self._drain.start()
        ready.wait(120)
        if not self.listening:
            self.stop()
            raise RuntimeError("sageserve did not start:\n" + "".join(self.output))

    @property
    def target(self) -> str:
        return self.unix_target or f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Close the pipe only once the reader has seen its end: closing it under a blocked read
        # would wait on the reader's buffer lock.
        self._drain.join(10)
        if self.proc.stdout is not None and not self._drain.is_alive():
            self.proc.stdout.close()


def wait_until(predicate, timeout_s: float = 10.0) -> bool:
    end = time.time() + timeout_s
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
