"""unigen's attention kernels, installed as `unigen_kernels` (never plain `kernels`).

Public entry points (also re-exported by `unigen.kernels`):
  block_sparse_attention(q, k, v, block_mask, *, block_size, impl=...)
  linear_attention(q, k, v, *, chunk_size=None, state=None, impl=...)
Each has four implementations: "reference" (pure jnp), "xla" (fast jnp path),
"pallas" (custom_vjp kernels; interpret mode on CPU) and "triton" (jax-triton, GPU only,
imported lazily).
"""

from .block_sparse import (
    BlockLayout,
    block_layout,
    block_scores,
    block_sparse_attention,
    dense_warmup,
    explicit_block_mask,
    local_window_block_mask,
    tile_order,
    topk_block_mask,
)
from .linear_attention import LinearState, init_linear_state, linear_attention

__all__ = [
    "BlockLayout",
    "LinearState",
    "block_layout",
    "block_scores",
    "block_sparse_attention",
    "dense_warmup",
    "explicit_block_mask",
    "init_linear_state",
    "linear_attention",
    "local_window_block_mask",
    "tile_order",
    "topk_block_mask",
]
