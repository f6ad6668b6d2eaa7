"""Block-sparse attention (Sparse VideoGen2, AdaSpa, Video-BLADE, Scale-DiT local windows).

`block_sparse_attention(q, k, v, block_mask, *, block_size, impl=...)` with `impl` in
reference / xla / pallas / triton; mask builders in `mask.py`; the compact per-query-block
lists that the kernels read in `layout.py`.
"""

from .api import block_sparse_attention
from .layout import BlockLayout, block_layout
from .mask import (
    block_scores,
    dense_warmup,
    explicit_block_mask,
    local_window_block_mask,
    tile_order,
    topk_block_mask,
)

__all__ = [
    "BlockLayout",
    "block_layout",
    "block_scores",
    "block_sparse_attention",
    "dense_warmup",
    "explicit_block_mask",
    "local_window_block_mask",
    "tile_order",
    "topk_block_mask",
]
