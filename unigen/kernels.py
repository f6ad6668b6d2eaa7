"""unigen's view of the attention kernels (the `kernels/` folder, package `unigen_kernels`).

Importing this module registers two backends in `unigen.nn.attention`:

  "block_sparse"  options: `block_mask` (boolean map [B|1, H|1, ceil(Tq/bq), ceil(Tk/bk)]
                  or a prebuilt `BlockLayout`), `block_size`, `impl` (default "xla";
                  "pallas" / "triton" on GPU), `max_kv_blocks`. The attention `scale` is
                  the softmax scale, as for the dense backends.
  "linear"        options: `chunk_size` (None = bidirectional SANA; int = block-causal
                  SANA-Video), `impl`, `eps`. The `scale` argument is accepted and
                  ignored: ReLU features are positively homogeneous, so a scale s > 0 on
                  q multiplies numerator and denominator alike and cancels (up to eps).
                  Streaming with a carried state is done with `linear_attention` directly,
                  since the backend signature returns only the output.
"""

from __future__ import annotations

from unigen.nn.attention import register_backend
import unigen_kernels
from unigen_kernels import *  # noqa: F401,F403  (the public kernel API, re-exported)
from unigen_kernels import block_sparse_attention, linear_attention

__all__ = list(unigen_kernels.__all__)


def _block_sparse_backend(q, k, v, *, scale, block_mask=None, block_size=None, impl="xla",
                          max_kv_blocks=None, mask=None):
    if mask is not None:
        raise ValueError(
            "backend 'block_sparse' takes a block map via block_mask=, not a token mask=; "
            "use backend='xla' or 'einsum' for token masks"
        )
    if block_mask is None:
        raise ValueError("backend 'block_sparse' needs block_mask= (and block_size=)")
    return block_sparse_attention(q, k, v, block_mask, block_size=block_size, scale=scale,
                                  impl=impl, max_kv_blocks=max_kv_blocks)


def _linear_backend(q, k, v, *, scale, chunk_size=None, impl="xla", eps=1e-15, mask=None):
    del scale  # cancels in the ratio for ReLU features; see the module docstring
    if mask is not None:
        raise ValueError("backend 'linear' does not take a token mask; use chunk_size= for "
                         "block-causal attention")
    return linear_attention(q, k, v, chunk_size=chunk_size, impl=impl, eps=eps)


register_backend("block_sparse", _block_sparse_backend)
register_backend("linear", _linear_backend)
