"""`python -m sageserve health|info|selftest|attend|bench`: sagectl's commands from Python.

Flags and exit codes follow sagectl (docs/API.md, "sagectl exit codes"): 0 success, 1 a negative
answer, 2 usage, 10 + the gRPC code of a failed call.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import sys
import threading
import time
from typing import Any, List, Optional, Sequence

import numpy as np

import sageserve
from sageserve import codec, errors
from sageserve.client import AttendCall
from sageserve.options import ClientOptions, TlsOptions

EXIT_NEGATIVE, EXIT_USAGE, EXIT_STATUS_BASE = 1, 2, 10


def _connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="127.0.0.1:50051", help="host:port or unix:PATH")
    p.add_argument("--deadline_ms", type=int, default=30000)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--ca_file")
    p.add_argument("--cert_file")
    p.add_argument("--key_file")
    p.add_argument("--token", help="prefer --token_file or $SAGESERVE_TOKEN (ps shows arguments)")
    p.add_argument("--token_file", help="its first whitespace-separated word is the token")
    p.add_argument("--max_attempts", type=int, default=1)


def _problem(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--q_len", type=int, default=512)
    p.add_argument("--k_len", type=int, default=512)
    p.add_argument("--heads_q", type=int, default=8)
    p.add_argument("--heads_kv", type=int, default=8)
    p.add_argument("--head_dim", type=int, default=128)
    p.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    p.add_argument("--output_dtype", choices=["fp16", "bf16", "fp32"])
    p.add_argument("--recipe")
    p.add_argument("--causal", action="store_true")
    p.add_argument("--lse", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--q_file")
    p.add_argument("--k_file")
    p.add_argument("--v_file")
    p.add_argument("--model")
    p.add_argument("--layer", type=int)
    p.add_argument("--timestep", type=int)
    p.add_argument("--shared_memory", choices=["none", "system", "cuda", "auto"], default="none",
                   help="none: bytes in the messages; system: numpy in POSIX shm; cuda: torch CUDA "
                        "tensors by CUDA IPC; auto: the client's choice")
    p.add_argument("--cuda_device", type=int, default=0)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m sageserve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("health", help="grpc.health.v1 Check; exit 0 only when SERVING")
    _connection(p)
    p.add_argument("--service", default="")
    p = sub.add_parser("info", help="GetServerInfo as JSON")
    _connection(p)
    p = sub.add_parser("selftest", help="the server's built-in problem; exit 0 when it passes")
    _connection(p)
    p.add_argument("--recipe")
    p = sub.add_parser("attend", help="one request; accuracy vs a local float64 oracle, timings")
    _connection(p)
    _problem(p)
    p.add_argument("--id", default="python-attend")
    p.add_argument("--o_file", help="write O's raw bytes as answered")
    p.add_argument("--lse_file", help="write LSE's raw fp32 bytes (with --lse)")
    p = sub.add_parser("bench", help="latency percentiles and throughput of one shape")
    _connection(p)
    _problem(p)
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--mode", choices=["unary", "stream"], default="unary")
    p.add_argument("--prepared", action="store_true",
                   help="unary: send one prepared request per thread (what sagectl bench times) instead of "
                        "building each call from the arrays and decoding its answer")
    return ap


def options_from_args(args: argparse.Namespace, transport: str = "auto") -> ClientOptions:
    token = args.token
    if args.token is not None and args.token_file:
        raise ValueError("give --token or --token_file, not both")
    if args.token_file:
        with open(args.token_file) as f:
            words = f.read().split()
        if not words:
            raise ValueError("--token_file: the file holds no token")
        token = words[0]
    tls = None
    if args.tls:
        tls = TlsOptions.from_files(args.ca_file, args.cert_file, args.key_file)
    elif args.ca_file or args.cert_file:
        raise ValueError("--ca_file and --cert_file need --tls")
    return ClientOptions(target=args.target, tls=tls, token=token, max_attempts=args.max_attempts,
                         timeout_s=args.deadline_ms / 1000 if args.deadline_ms > 0 else None, transport=transport)


def connect(args: argparse.Namespace, transport: str = "auto") -> sageserve.Client:
    return sageserve.Client(options=options_from_args(args, transport))


class Problem:
    """Random (seeded) or file-backed q/k/v, packed [tokens, heads, head_dim]."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        tq, tk = args.batch * args.q_len, args.batch * args.k_len
        shapes = {"q": (tq, args.heads_q, args.head_dim), "k": (tk, args.heads_kv, args.head_dim),
                  "v": (tk, args.heads_kv, args.head_dim)}
        rng = np.random.default_rng(args.seed)
        self.host = {}
        for name, shape in shapes.items():
            path = getattr(args, f"{name}_file")
            if path:
                raw = np.fromfile(path, dtype="<u2")
                if raw.size != math.prod(shape):
                    raise ValueError(f"{path}: {raw.size * 2} bytes, the shape needs {math.prod(shape) * 2}")
                bits = raw.reshape(shape)
            else:
                x = rng.standard_normal(shape, dtype=np.float32)
                bits = x.astype(np.float16).view(np.uint16) if args.dtype == "fp16" else codec.bf16_bits(x)
            self.host[name] = bits
        self.cu_q = [i * args.q_len for i in range(args.batch + 1)]
        self.cu_k = [i * args.k_len for i in range(args.batch + 1)]

    def tensors(self, kind: str) -> List[Any]:
        """q, k, v as the client takes them: numpy (fp16, or bf16 bits), or torch on the GPU."""
        if kind == "cuda":
            import torch

            dtype = torch.float16 if self.args.dtype == "fp16" else torch.bfloat16
            return [torch.from_numpy(self.host[n].view(np.int16)).view(dtype).to(f"cuda:{self.args.cuda_device}")
                    for n in ("q", "k", "v")]
        if self.args.dtype == "fp16":
            return [self.host[n].view(np.float16) for n in ("q", "k", "v")]
        return [self.host[n] for n in ("q", "k", "v")]

    def floats(self, name: str) -> np.ndarray:
        bits = self.host[name]
        if self.args.dtype == "fp16":
            return bits.view(np.float16).astype(np.float64)
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)

    def kwargs(self) -> dict:
        a = self.args
        return dict(cu_seqlens_q=self.cu_q, cu_seqlens_k=self.cu_k, causal=a.causal, return_lse=a.lse,
                    recipe=a.recipe, output_dtype=a.output_dtype, model=a.model, layer=a.layer,
                    timestep=a.timestep, input_dtype=a.dtype)

    def oracle(self) -> np.ndarray:
        """float64 attention per sequence (GQA by head repetition, bottom-right causal)."""
        q, k, v = self.floats("q"), self.floats("k"), self.floats("v")
        group = q.shape[1] // k.shape[1]
        out = np.zeros_like(q)
        for b in range(self.args.batch):
            qs = q[self.cu_q[b]:self.cu_q[b + 1]]
            ks = np.repeat(k[self.cu_k[b]:self.cu_k[b + 1]], group, axis=1)
            vs = np.repeat(v[self.cu_k[b]:self.cu_k[b + 1]], group, axis=1)
            s = np.einsum("qhd,khd->hqk", qs, ks) / math.sqrt(q.shape[2])
            if self.args.causal:
                lq, lk = qs.shape[0], ks.shape[0]
                s = np.where(np.arange(lk)[None, :] <= np.arange(lq)[:, None] + (lk - lq), s, -np.inf)
            m = np.max(s, axis=-1, keepdims=True)
            m = np.where(np.isfinite(m), m, 0)
            p = np.exp(s - m)
            denom = p.sum(-1, keepdims=True)
            out[self.cu_q[b]:self.cu_q[b + 1]] = np.einsum("hqk,khd->qhd", p / np.where(denom > 0, denom, 1), vs)
        return out


def _transport(args: argparse.Namespace) -> str:
    return {"none": "bytes", "system": "shared_memory", "cuda": "shared_memory", "auto": "auto"}[args.shared_memory]


def _host(o: Any) -> np.ndarray:
    if codec.is_torch(o):
        return o.float().cpu().numpy()
    return np.asarray(o, dtype=np.float64)


def run_attend(args: argparse.Namespace) -> int:
    problem = Problem(args)
    with connect(args, _transport(args)) as client:
        q, k, v = problem.tensors("cuda" if args.shared_memory == "cuda" else "host")
        start = time.perf_counter()
        r = client.attend(q, k, v, request_id=args.id, **problem.kwargs())
        rtt_us = (time.perf_counter() - start) * 1e6
    t = r.timings
    print(f"request {r.request_id}: recipe {r.recipe}, O {tuple(r.o.shape)} via {r.transport}")
    print(f"timing: round trip {rtt_us:.0f} us; server queued {t.queued_us} us, compute {t.compute_us} us, "
          f"total {t.total_us} us")
    o = _host(r.o)
    for path, x, kind in ((args.o_file, r.o, "o"), (args.lse_file, r.lse, "lse")):
        if path:
            with open(path, "wb") as f:
                if x is not None:
                    f.write(_wire_bytes(x, kind, args))
    exact = problem.oracle()
    a, b = o.reshape(-1), exact.reshape(-1)
    cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))
    rel_l1 = float(np.abs(a - b).sum() / max(np.abs(b).sum(), 1e-300))
    print(f"accuracy vs local float64 oracle: cosine {cos:.6f}, relative L1 {rel_l1:.6f}, "
          f"RMSE {math.sqrt(float(np.mean((a - b) ** 2))):.6g}, max abs {float(np.max(np.abs(a - b))):.6g}")
    return 0


def _wire_bytes(x: Any, kind: str, args: argparse.Namespace) -> bytes:
    """What the server sent: numpy bf16 answers arrive as float32 values and go back to bf16 bits."""
    if codec.is_torch(x):
        import torch

        t = x.detach().cpu().contiguous()
        return t.view(torch.int16).numpy().tobytes() if t.element_size() == 2 else t.numpy().tobytes()
    out_dtype = args.output_dtype or args.dtype
    if kind == "o" and out_dtype == "bf16":
        return codec.bf16_bits(x).tobytes()
    return np.ascontiguousarray(x).tobytes()


def _call_kwargs(kwargs: dict) -> dict:
    """Client.attend's keyword arguments as AttendCall's."""
    return {k: v for k, v in kwargs.items() if k not in ("transport", "timeout")}


def _percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def run_bench(args: argparse.Namespace) -> int:
    if args.concurrency < 1 or args.requests < 1:
        raise ValueError("--concurrency and --requests must be positive integers")
    problem = Problem(args)
    kind = "cuda" if args.shared_memory == "cuda" else "host"
    q, k, v = problem.tensors(kind)
    kwargs = problem.kwargs()
    latencies: List[float] = []
    server_total: List[float] = []
    failures: List[BaseException] = []
    lock = threading.Lock()
    client = connect(args, _transport(args))
    transports = set()
    try:
        for _ in range(args.warmup):
            transports.add(client.attend(q, k, v, **kwargs).transport)
        counter = iter(range(args.requests))
        start = time.perf_counter()
        if args.mode == "unary":
            def worker() -> None:
                # --prepared: one request built (tensors placed) per thread and sent as it is, as
                # sagectl bench does; otherwise every call goes from arrays to answer arrays.
                prepared = AttendCall(client.transport, q, k, v, transport_mode=_transport(args),
                                      **_call_kwargs(kwargs)) if args.prepared else None
                for _ in counter:
                    t0 = time.perf_counter()
                    try:
                        if prepared is not None:
                            response = client.attend_request(prepared.request)
                            r = sageserve.AttendResult(None, None, "", response.timings, response.request_id,
                                                       prepared.placement.kind)
                        else:
                            r = client.attend(q, k, v, **kwargs)
                    except errors.SageServeError as e:
                        with lock:
                            failures.append(e)
                        continue
                    us = (time.perf_counter() - t0) * 1e6
                    with lock:
                        latencies.append(us)
                        server_total.append(r.timings.total_us)
                        transports.add(r.transport)
                if prepared is not None:
                    prepared.abandon()  # gives its region back

            threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        else:
            asyncio.run(_bench_stream(args, q, k, v, kwargs, latencies, server_total, failures, transports))
        wall = time.perf_counter() - start
    finally:
        client.close()
    n = len(latencies)
    print(f"bench: mode {args.mode}, concurrency {args.concurrency}, {n} ok / {len(failures)} failed in {wall:.3f} s")
    print(f"transport: {', '.join(sorted(transports))} (python client{', prepared requests' if args.prepared else ''})")
    print(f"shape: batch {args.batch}, q {args.q_len}, k {args.k_len} tokens/seq, heads {args.heads_q}/{args.heads_kv}, "
          f"D {args.head_dim}, {args.dtype}")
    print(f"throughput: {n / wall:.1f} req/s, {n * args.batch * args.q_len / wall:.0f} tokens/s")
    print(f"latency us: p50 {_percentile(latencies, 50):.0f}, p90 {_percentile(latencies, 90):.0f}, "
          f"p99 {_percentile(latencies, 99):.0f}, max {max(latencies) if latencies else 0:.0f}")
    print(f"server us: total p50 {_percentile(server_total, 50):.0f} p99 {_percentile(server_total, 99):.0f}")
    if failures:
        print(f"first failure: {failures[0]}", file=sys.stderr)
        return EXIT_NEGATIVE
    return 0


async def _bench_stream(args, q, k, v, kwargs, latencies, server_total, failures, transports) -> None:
    async with sageserve.AsyncClient(options=options_from_args(args, _transport(args))) as client:
        async with client.attend_stream() as stream:
            remaining = iter(range(args.requests))

            async def slot() -> None:
                for _ in remaining:
                    t0 = time.perf_counter()
                    try:
                        r = await stream.attend(q, k, v, **kwargs)
                    except errors.SageServeError as e:
                        failures.append(e)
                        continue
                    latencies.append((time.perf_counter() - t0) * 1e6)
                    server_total.append(r.timings.total_us)
                    transports.add(r.transport)

            await asyncio.gather(*(slot() for _ in range(args.concurrency)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "health":
            with connect(args) as client:
                status = client.health(args.service)
            print(status)
            return 0 if status == "SERVING" else EXIT_NEGATIVE
        if args.command == "info":
            from google.protobuf import json_format

            with connect(args) as client:
                print(json_format.MessageToJson(client.info(), including_default_value_fields=True))
            return 0
        if args.command == "selftest":
            with connect(args) as client:
                r = client.selftest([args.recipe] if args.recipe else [])
            print(f"selftest on {r.backend}: {'PASSED' if r.passed else 'FAILED'} ({r.total_us} us)\n  problem: {r.problem}")
            for x in r.results:
                print(f"  {sageserve.request.recipe_name(x.recipe):16s} cos {x.cosine_similarity:.6f}  "
                      f"relL1 {x.relative_l1:.5f}  {x.compute_us:6d} us  {'ok' if x.passed else 'FAIL'} {x.error}")
            return 0 if r.passed else EXIT_NEGATIVE
        if args.command == "attend":
            return run_attend(args)
        return run_bench(args)
    except errors.SageServeError as e:
        print(f"python -m sageserve: {e}", file=sys.stderr)
        return EXIT_STATUS_BASE + e.code.value[0]
    except (ValueError, TypeError, OSError) as e:
        print(f"python -m sageserve: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
