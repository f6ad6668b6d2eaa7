"""unigen's view of the attention kernels (the `kernels/` folder, installed as `unigen_kernels`).

The kernels are self-contained; `unigen.nn.attention` exposes them as the "block_sparse" and
"linear" attention backends (see there for their options). Import them from here to call
them directly, e.g. `linear_attention` with a carried state for streaming.
"""

from __future__ import annotations

import unigen_kernels
from unigen_kernels import *  # noqa: F401,F403  (the public kernel API, re-exported)

__all__ = list(unigen_kernels.__all__)
