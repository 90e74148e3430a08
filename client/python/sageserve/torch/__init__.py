"""sageserve for PyTorch stacks: a drop-in for F.scaled_dot_product_attention, a transformers
attention function, and a diffusers-style processor for DiT attention modules.

    import sageserve.torch as st
    st.configure(target="gpu-box:50051")          # or set_client(client); $SAGESERVE_TARGET works too
    out = st.attention(q, k, v, is_causal=True)   # as torch.nn.functional.scaled_dot_product_attention
    st.enable()                                   # or replace F.scaled_dot_product_attention itself

Importing this module imports torch; `import sageserve` alone does not.
"""
from sageserve.torch.sdpa import (UnsupportedError, attention, configure, disable, enable, get_client, patched,
                                  set_client)

__all__ = ["UnsupportedError", "attention", "configure", "disable", "enable", "get_client", "patched", "set_client"]
