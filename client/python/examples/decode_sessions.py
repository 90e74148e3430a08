"""A decode loop on server-resident KV sessions: a prefill, then steps that send only the new token,
every layer of a batch of sessions pipelined on one AttendSessionStream (asyncio).

    python3 client/python/examples/decode_sessions.py --target 127.0.0.1:50051
"""
import argparse
import asyncio

import numpy as np

import sageserve

LAYERS, SESSIONS, HQ, HKV, D = 4, 8, 8, 2, 128


async def main(target: str) -> None:
    rng = np.random.default_rng(0)

    def tokens(n: int, heads: int) -> np.ndarray:
        return rng.standard_normal((n, heads, D)).astype(np.float16)

    async with sageserve.AsyncClient(target) as client:
        sessions = [await client.create_session(layers=LAYERS, heads_q=HQ, heads_kv=HKV, head_dim=D, max_tokens=1024)
                    for _ in range(SESSIONS)]
        async with client.session_stream() as stream:
            for step, n_new in enumerate([32] + [1] * 16):  # a 32-token prompt, then 16 decode steps
                # One call per layer for the whole batch; all layers in flight together. (A real
                # model feeds layer l's output into layer l+1: pipeline across micro-batches then.)
                calls = [stream.attend(layer, [(s, tokens(n_new, HKV), tokens(n_new, HKV), tokens(n_new, HQ))
                                               for s in sessions]) for layer in range(LAYERS)]
                results = await asyncio.gather(*calls)
                if step in (0, 16):
                    print(f"step {step}: layer 0 length {results[0][0].length}, O {results[0][0].o.shape}")
        fork = sessions[0].fork(length=32)  # share the prompt, copy on write
        print("fork lengths:", fork.lengths)
        for s in sessions + [fork]:
            s.close()


ap = argparse.ArgumentParser()
ap.add_argument("--target", default="127.0.0.1:50051")
asyncio.run(main(ap.parse_args().target))
