"""Transformer feed-forward blocks: GELU-tanh MLP (ViT/DiT) and SwiGLU (LightningDiT)."""

from __future__ import annotations

import jax
from flax import nnx

from unigen.nn.layers import Dense


class Mlp(nnx.Module):
    """Linear -> GELU(tanh approximation) -> Linear, as timm's Mlp used by DiT."""

    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype=None):
        self.fc1 = Dense(dim, hidden, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.fc2 = Dense(hidden, dim, axes=("mlp", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=True))


class SwiGLU(nnx.Module):
    """(SiLU(x W1) * x W3) W2 (Shazeer 2020), as LightningDiT's SwiGLUFFN.

    `hidden` is the width of the gated branch; LightningDiT uses int(2/3 * 4 * dim)."""

    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype=None, use_bias: bool = True):
        self.w12 = Dense(dim, (2, hidden), axes=("embed", None, "mlp"), rngs=rngs, dtype=dtype, use_bias=use_bias)
        self.w3 = Dense(hidden, dim, axes=("mlp", "embed"), rngs=rngs, dtype=dtype, use_bias=use_bias)

    def __call__(self, x):
        h = self.w12(x)
        return self.w3(jax.nn.silu(h[..., 0, :]) * h[..., 1, :])
