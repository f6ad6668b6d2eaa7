"""ReLU linear attention: SANA (bidirectional) and SANA-Video (block-causal with a
constant-memory state). `linear_attention(q, k, v, *, chunk_size=None, state=None,
impl=...)` with `impl` in reference / xla / pallas / triton."""

from .api import linear_attention
from .state import LinearState, init_linear_state

__all__ = ["LinearState", "init_linear_state", "linear_attention"]
