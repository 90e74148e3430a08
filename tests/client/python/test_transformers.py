"""transformers with attn_implementation="sageserve": a randomly initialised small Llama-style
model generates 64 tokens through the server (prefill and every cached decode step), and each
step's logits are compared with the same model on "sdpa" over the same tokens: cosine >= 0.99 with
the 16-bit (unquantized) recipe; the 8-bit recipes' numbers are printed (label gpu: needs torch and
transformers)."""
from __future__ import annotations

import unittest

import support

support.gpu_test()

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import sageserve.torch as st  # noqa: E402
from sageserve.torch import transformers as st_transformers  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.float16 if DEVICE == "cuda" else torch.bfloat16
PROMPT, NEW_TOKENS = 16, 64
server: support.Server
calls = {"n": 0, "sessions": 0}


def setUpModule() -> None:
    global server
    server = support.Server()
    client = st.configure(target=server.target, fallback="raise", recipe="unquantized")
    attend = client.attend

    def counted(*args, **kwargs):  # proves the server ran the attention, not a silent fallback
        calls["n"] += 1
        return attend(*args, **kwargs)

    client.attend = counted
    attend_sessions = client.attend_sessions

    def counted_sessions(*args, **kwargs):
        calls["sessions"] += 1
        return attend_sessions(*args, **kwargs)

    client.attend_sessions = counted_sessions
    st_transformers.register()


def tearDownModule() -> None:
    st.get_client().close()
    server.stop()


def use(model: torch.nn.Module, implementation: str) -> None:
    if hasattr(model, "set_attn_implementation"):  # transformers >= 4.56
        model.set_attn_implementation(implementation)
    else:
        model.config._attn_implementation = implementation


def small_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,  # head_dim 64, GQA 2:1
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config)
    use(model, "sdpa")
    return model.to(DEVICE, DTYPE).eval()


def step_cosines(model: LlamaForCausalLM, prompt: torch.Tensor, **generate_kwargs):
    """Generates NEW_TOKENS on "sageserve"; per step, the cosine of its logits with "sdpa"'s on the
    same prefix (teacher forcing over the generated sequence)."""
    use(model, "sageserve")
    before = calls["n"]
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0, **generate_kwargs)
    served = calls["n"] - before
    logits = torch.stack(out.logits, dim=1).double()  # [1, NEW_TOKENS, vocab]
    use(model, "sdpa")
    with torch.no_grad():
        ref = model(out.sequences[:, :-1]).logits[:, PROMPT - 1:].double()
    cos = torch.nn.functional.cosine_similarity(logits, ref, dim=-1)[0]
    same = int((logits.argmax(-1) == ref.argmax(-1)).sum())
    return cos, served, same, out.sequences


class TransformersTest(unittest.TestCase):
    def test_generate_64_tokens_against_sdpa(self) -> None:
        print(f"  transformers {transformers.__version__}, torch {torch.__version__}, {DEVICE} {DTYPE}")
        model = small_llama()
        prompt = torch.randint(3, 512, (1, PROMPT), device=DEVICE, generator=None)
        cos, served, same, seq = step_cosines(model, prompt)
        print(f"  unquantized: {served} attention calls served, min step cosine {float(cos.min()):.6f}, "
              f"mean {float(cos.mean()):.6f}, greedy argmax agrees on {same}/{NEW_TOKENS} steps")
        self.assertEqual(seq.shape[1], PROMPT + NEW_TOKENS)
        # Prefill plus every decode step, in each of the 2 layers.
        self.assertGreaterEqual(served, 2 * NEW_TOKENS)
        self.assertGreaterEqual(float(cos.min()), 0.99)
        for recipe in ("int8_qk_fp16_pv", "int8_qk_fp8_pv"):
            st.configure(recipe=recipe)
            try:
                cos8, served8, same8, _ = step_cosines(model, prompt)
            finally:
                st.configure(recipe="unquantized")
            # Recorded, not asserted: decode steps (one query row) run the recipe named here too.
            print(f"  {recipe}: min step cosine {float(cos8.min()):.6f}, mean {float(cos8.mean()):.6f}, "
                  f"argmax agrees on {same8}/{NEW_TOKENS}")

    def test_generate_with_the_kv_cache_in_server_sessions(self) -> None:
        model = small_llama()
        prompt = torch.randint(3, 512, (2, PROMPT), device=DEVICE)  # two rows: two sessions
        before = calls["sessions"]
        with st_transformers.SessionCache(model.config) as cache:
            cos, stateless, same, seq = step_cosines(model, prompt[:1], past_key_values=cache)
            lengths = list(cache.sessions[0].info().layer_lengths)
        print(f"  sessions: {calls['sessions'] - before} AttendSession calls, min step cosine {float(cos.min()):.6f}, "
              f"argmax agrees on {same}/{NEW_TOKENS}")
        self.assertEqual(stateless, 0)  # nothing went by stateless Attend
        self.assertEqual(calls["sessions"] - before, 2 * NEW_TOKENS)  # prefill + 63 steps, 2 layers
        self.assertEqual(lengths, [PROMPT + NEW_TOKENS - 1] * 2)  # the last token is never fed back
        self.assertGreaterEqual(float(cos.min()), 0.99)
        # A batch of two rows: one AttendSession per layer-step carries both sessions.
        use(model, "sageserve")
        with st_transformers.SessionCache(model.config) as cache, torch.no_grad():
            out = model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0,
                                 past_key_values=cache)
            self.assertEqual(len(cache.sessions), 2)
        use(model, "sdpa")
        with torch.no_grad():
            ref = model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
        print(f"  sessions, batch 2: tokens equal to sdpa's on {int((out == ref).sum())}/{out.numel()}")

    def test_a_padding_mask_is_refused_or_computed_locally(self) -> None:
        model = small_llama()
        use(model, "sageserve")
        ids = torch.randint(3, 512, (2, 12), device=DEVICE)
        mask = torch.ones_like(ids)
        mask[0, :4] = 0  # left padding: not a mask the server takes
        with torch.no_grad():
            with self.assertRaises(st.UnsupportedError):
                model(ids, attention_mask=mask)
            st.configure(fallback="local")
            try:
                local = model(ids, attention_mask=mask).logits
            finally:
                st.configure(fallback="raise")
            use(model, "sdpa")
            ref = model(ids, attention_mask=mask).logits
        # Rows that see keys agree (padded query rows are garbage in both).
        torch.testing.assert_close(local[:, 4:].float(), ref[:, 4:].float(), rtol=2e-2, atol=2e-2)


if __name__ == "__main__":
    unittest.main()
