#!/usr/bin/env python3
"""A plain grpcio client of sageserve: sends random fp16 Q/K/V (with a K channel bias, as real
LLM keys have) to AttentionService/Attend for each recipe, and compares O (and LSE) with torch's
scaled_dot_product_attention computed in fp32, printing cosine similarity and relative L1.

Needs grpcio, protobuf and torch (all on the H100 machine) and nothing generated at run time: the
messages are the Python package's committed stubs (client/python/sageserve/v1, generated from
proto/ by the build), and the RPCs are plain channel.unary_unary calls, so the protocol is exercised
without the sageserve client's own request building.

  python3 bench/grpc_client.py --target 127.0.0.1:50051 --lens 1000,37,513 --hq 16 --hkv 4 --d 128 --causal
"""
import argparse
import os
import sys
import time

import grpc
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "client", "python"))
from sageserve.v1 import attention_service_pb2, shared_memory_pb2, tensor_pb2  # noqa: E402

SERVICE = "/sageserve.v1.AttentionService/"
RECIPES = ["RECIPE_UNSPECIFIED", "RECIPE_INT8_QK_FP8_PV", "RECIPE_INT8_QK_FP16_PV",
           "RECIPE_UNQUANTIZED", "RECIPE_INT4_QK_FP8_PV"]


def load_messages(extra_names=()):
    """Message classes (AttentionService's, plus `extra_names` of package sageserve.v1) and enums."""
    names = ["AttendRequest", "AttendResponse", "GetServerInfoRequest", "GetServerInfoResponse",
             "SelfTestRequest", "SelfTestResponse", *extra_names]
    modules = (attention_service_pb2, shared_memory_pb2, tensor_pb2)
    msgs = {n: next(getattr(m, n) for m in modules if hasattr(m, n)) for n in names}
    enums = {"Recipe": tensor_pb2.DESCRIPTOR.enum_types_by_name["Recipe"],
             "DType": tensor_pb2.DESCRIPTOR.enum_types_by_name["DType"],
             "MaskMode": attention_service_pb2.DESCRIPTOR.enum_types_by_name["MaskMode"]}
    return msgs, enums


def rpc(channel, name, req_cls, resp_cls, service=SERVICE):
    return channel.unary_unary(service + name, request_serializer=req_cls.SerializeToString,
                               response_deserializer=resp_cls.FromString)


def reference(q, k, v, cu_q, cu_k, causal, scale):
    """fp32 SDPA per sequence (GQA by head repetition, bottom-right causal mask), plus LSE."""
    hq, hkv = q.shape[1], k.shape[1]
    outs, lses = [], []
    for b in range(len(cu_q) - 1):
        qs = q[cu_q[b]:cu_q[b + 1]].float().transpose(0, 1)  # [H, Lq, D]
        ks = k[cu_k[b]:cu_k[b + 1]].float().transpose(0, 1).repeat_interleave(hq // hkv, dim=0)
        vs = v[cu_k[b]:cu_k[b + 1]].float().transpose(0, 1).repeat_interleave(hq // hkv, dim=0)
        lq, lk = qs.shape[1], ks.shape[1]
        mask = None
        if causal:
            i = torch.arange(lq, device=q.device)[:, None]
            j = torch.arange(lk, device=q.device)[None, :]
            mask = j <= i + (lk - lq)
        o = torch.nn.functional.scaled_dot_product_attention(qs[None], ks[None], vs[None], attn_mask=mask,
                                                             scale=scale)[0]
        s = (qs @ ks.transpose(1, 2)) * scale
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        lse = torch.logsumexp(s, dim=-1)  # [H, Lq]
        if mask is not None:  # rows that see no key: O = 0 (SDPA gives NaN there)
            o = torch.where(mask.any(dim=-1)[None, :, None], o, torch.zeros_like(o))
        outs.append(o.transpose(0, 1))
        lses.append(lse.transpose(0, 1))
    return torch.cat(outs), torch.cat(lses)


def metrics(x, ref):
    x, ref = x.double().flatten(), ref.double().flatten()
    cos = torch.nn.functional.cosine_similarity(x, ref, dim=0).item()
    rel_l1 = ((x - ref).abs().sum() / ref.abs().sum()).item()
    return cos, rel_l1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--lens", default="1000,37,513,1", help="query lengths, comma separated")
    ap.add_argument("--k-lens", default="", help="key lengths (default: the query lengths)")
    ap.add_argument("--hq", type=int, default=16)
    ap.add_argument("--hkv", type=int, default=4)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--k-bias", type=float, default=4.0, help="std of the per-channel K bias")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per recipe (after one warm-up)")
    args = ap.parse_args()

    msgs, enums = load_messages()
    opts = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)]
    channel = grpc.insecure_channel(args.target, options=opts)
    grpc.channel_ready_future(channel).result(timeout=30)
    info = rpc(channel, "GetServerInfo", msgs["GetServerInfoRequest"], msgs["GetServerInfoResponse"])(
        msgs["GetServerInfoRequest"](), timeout=30)
    recipe_name = lambda n: enums["Recipe"].values_by_number[n].name  # noqa: E731
    print(f"server {info.version} backend={info.backend} devices="
          f"{[(d.name, d.architecture, d.memory_bytes >> 20) for d in info.devices]} "
          f"default={recipe_name(info.default_recipe)}")

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    lens_q = [int(x) for x in args.lens.split(",")]
    lens_k = [int(x) for x in args.k_lens.split(",")] if args.k_lens else lens_q
    cu_q = [0]
    cu_k = [0]
    for a, b in zip(lens_q, lens_k):
        cu_q.append(cu_q[-1] + a)
        cu_k.append(cu_k[-1] + b)
    d = args.d
    q = torch.randn(cu_q[-1], args.hq, d, generator=gen).half()
    k = (torch.randn(cu_k[-1], args.hkv, d, generator=gen) + args.k_bias * torch.randn(1, 1, d, generator=gen)).half()
    v = torch.randn(cu_k[-1], args.hkv, d, generator=gen).half()
    scale = d ** -0.5
    ref_o, ref_lse = reference(q.to(dev), k.to(dev), v.to(dev), cu_q, cu_k, args.causal, scale)

    def tensor(t):
        m = msgs["AttendRequest"]().q.__class__()
        m.dtype = enums["DType"].values_by_name["DTYPE_FP16"].number
        m.shape.extend(list(t.shape))
        m.data = t.contiguous().numpy().tobytes()
        return m

    attend = rpc(channel, "Attend", msgs["AttendRequest"], msgs["AttendResponse"])
    mb = (q.numel() + k.numel() + v.numel()) * 2 / 2**20
    print(f"problem: lens_q={lens_q} lens_k={lens_k} hq={args.hq} hkv={args.hkv} d={d} "
          f"causal={args.causal} k_bias={args.k_bias} ({mb:.1f} MiB of fp16 Q/K/V)")
    print(f"{'recipe asked':24s} {'recipe run':24s} {'cos':>9s} {'relL1':>8s} {'lse maxerr':>10s} "
          f"{'client ms':>9s} {'server compute us':>17s}")
    failures = 0
    for name in args.recipes.split(","):
        req = msgs["AttendRequest"](request_id=f"py-{name}", q=tensor(q), k=tensor(k), v=tensor(v),
                                    return_lse=True)
        req.cu_seqlens_q.extend(cu_q)
        req.cu_seqlens_k.extend(cu_k)
        req.mask = enums["MaskMode"].values_by_name["MASK_MODE_CAUSAL" if args.causal else "MASK_MODE_NONE"].number
        req.recipe = enums["Recipe"].values_by_name[name].number
        try:
            resp = attend(req, timeout=120)  # warm-up (and the result we check)
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                attend(req, timeout=120)
                times.append((time.perf_counter() - t0) * 1e3)
        except grpc.RpcError as e:
            print(f"{name:24s} RPC failed: {e.code().name}: {e.details()}")
            failures += 1
            continue
        o_dtype = {"DTYPE_FP16": torch.float16, "DTYPE_BF16": torch.bfloat16, "DTYPE_FP32": torch.float32}[
            enums["DType"].values_by_number[resp.o.dtype].name]
        o = torch.frombuffer(bytearray(resp.o.data), dtype=o_dtype)
        o = o.reshape(ref_o.shape).float().to(dev)
        lse = torch.frombuffer(bytearray(resp.lse.data), dtype=torch.float32).reshape(ref_lse.shape).to(dev)
        cos, rel = metrics(o, ref_o)
        finite = torch.isfinite(ref_lse)
        lse_err = (lse[finite] - ref_lse[finite]).abs().max().item() if finite.any() else 0.0
        times.sort()
        print(f"{name:24s} {recipe_name(resp.recipe):24s} {cos:9.6f} {rel:8.5f} {lse_err:10.2e} "
              f"{times[len(times) // 2]:9.1f} {resp.timings.compute_us:17d}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
