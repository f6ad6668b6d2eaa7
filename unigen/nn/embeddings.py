"""Timestep, class-label and vector embeddings (the one place they are written).

Sinusoidal timestep features, DiT's `TimestepEmbedder.timestep_embedding`:
    freqs_i = exp(-ln(max_period) * i / (half - shift)),  i = 0..half-1
    emb = [cos(t * freqs), sin(t * freqs)]
`shift = 0` is the official DiT/ADM convention; diffusers' `Timesteps(...,
downscale_freq_shift=1)` (used by its DiT port) divides by `half - 1`, so `shift = 1`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from unigen.nn.layers import Dense, param


def timestep_embedding(t: jax.Array, dim: int, *, max_period: float = 10000.0,
                       freq_shift: float = 0.0) -> jax.Array:
    """(B,) timesteps (int or float, any scale) -> (B, dim) float32 features [cos, sin]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


class TimestepEmbedder(nnx.Module):
    """t -> sinusoidal(t) -> Linear -> SiLU -> Linear (DiT eq. in §3.2; weights N(0, 0.02))."""

    def __init__(self, dim: int, *, freq_dim: int = 256, freq_shift: float = 0.0,
                 rngs: nnx.Rngs, dtype=None):
        init = nnx.initializers.normal(0.02)
        self.freq_dim, self.freq_shift = freq_dim, freq_shift
        self.fc1 = Dense(freq_dim, dim, axes=(None, "embed"), kernel_init=init, rngs=rngs, dtype=dtype)
        self.fc2 = Dense(dim, dim, axes=("embed", None), kernel_init=init, rngs=rngs, dtype=dtype)

    def __call__(self, t):
        f = timestep_embedding(t, self.freq_dim, freq_shift=self.freq_shift)
        return self.fc2(jax.nn.silu(self.fc1(f)))


class LabelEmbedder(nnx.Module):
    """Class labels -> vectors, with an extra "null" row (id = num_classes) for
    classifier-free guidance; training drops labels to the null id with prob `dropout`."""

    def __init__(self, num_classes: int, dim: int, *, dropout: float, rngs: nnx.Rngs):
        self.num_classes, self.dropout = num_classes, dropout
        # DiT only adds the null row when it trains with label dropout (use_cfg_embedding).
        rows = num_classes + int(dropout > 0)
        self.table = param(nnx.initializers.normal(0.02), (rows, dim), ("classes", "embed"), rngs)

    def drop(self, y: jax.Array, key: jax.Array) -> jax.Array:
        """Replace each label by the null id with probability `dropout`."""
        return jnp.where(jax.random.uniform(key, y.shape) < self.dropout, self.num_classes, y)

    def __call__(self, y, drop_key: jax.Array | None = None):
        if drop_key is not None and self.dropout > 0:
            y = self.drop(y, drop_key)
        return jnp.take(self.table[...], y, axis=0)


class VectorEmbedder(nnx.Module):
    """A conditioning vector -> Linear -> SiLU -> Linear, added to the timestep embedding:
    SD3's pooled-text projection (diffusers `PixArtAlphaTextProjection`, act_fn="silu"), and
    the latent z of an LZN decoder (unigen.models.lzn)."""

    def __init__(self, d_in: int, d: int, *, rngs: nnx.Rngs, dtype=None):
        self.fc1 = Dense(d_in, d, axes=(None, "embed"), rngs=rngs, dtype=dtype)
        self.fc2 = Dense(d, d, axes=("embed", None), rngs=rngs, dtype=dtype)

    def __call__(self, x):
        return self.fc2(jax.nn.silu(self.fc1(x)))
