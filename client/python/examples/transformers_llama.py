"""transformers with attn_implementation="sageserve": a small randomly initialised Llama (no weights
to download) generates on the server, then again with its KV cache in server sessions; pass
--model to load a local checkpoint instead.

    python3 client/python/examples/transformers_llama.py --target 127.0.0.1:50051
"""
import argparse

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import sageserve.torch as st
from sageserve.torch import transformers as st_transformers

ap = argparse.ArgumentParser()
ap.add_argument("--target", default="127.0.0.1:50051")
ap.add_argument("--model", help="a local model directory (default: a random small Llama)")
args = ap.parse_args()

st.configure(target=args.target, fallback="local", recipe="int8_qk_fp8_pv")
st_transformers.register()  # attn_implementation="sageserve"
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.float16 if device == "cuda" else torch.bfloat16
if args.model:
    model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="sageserve", dtype=dtype)
else:
    config = LlamaConfig(vocab_size=1000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024)
    model = LlamaForCausalLM(config).to(dtype)
    model.config._attn_implementation = "sageserve"
model = model.to(device).eval()
prompt = torch.randint(3, model.config.vocab_size, (1, 24), device=device)
with torch.no_grad():
    out = model.generate(prompt, max_new_tokens=32, do_sample=False)
    print("generated:", out[0, 24:].tolist())
    # The KV cache in server sessions: each step sends only its new token's K/V.
    with st_transformers.SessionCache(model.config) as cache:
        out = model.generate(prompt, max_new_tokens=32, do_sample=False, past_key_values=cache)
    print("with sessions:", out[0, 24:].tolist())
