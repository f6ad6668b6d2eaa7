"""A SANA-style DiT block: ReLU linear attention + Mix-FFN, under adaLN-Zero.

SANA (Xie et al. 2024, §2.2) replaces softmax attention by ReLU linear attention
(O(N) in tokens) and the MLP by Mix-FFN: a 1×1 conv expanding to 2·hidden channels,
SiLU, a 3×3 depthwise conv (the local token mixing that linear attention lacks), a GLU
that multiplies the first half by SiLU of the second, and a 1×1 conv back. Here the block
takes DiT's adaLN-Zero conditioning: 6 modulations from Linear(SiLU(c)), zero-initialised
so the block starts as the identity (Peebles & Xie 2023). diffusers' `SanaTransformerBlock`
computes the same thing when its `timestep` input is that Linear(SiLU(c)) and its
`scale_shift_table` is zero (its Sana models add a learned table to a shared embedding).

Tokens are (B, T, D) in raster order over an (h, w) grid passed in, since the depthwise
conv needs the 2D layout. `chunk_size` switches the attention to SANA-Video's
block-causal form (e.g. one chunk per video frame).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from unigen.nn.attention import attention
from unigen.nn.layers import Dense, param
from unigen.nn.modulate import gate, modulate
from unigen.nn.norms import layer_norm
from unigen.parallel.logical import constrain


class SanaLinearAttention(nnx.Module):
    """Separate q/k/v projections (with bias, as diffusers' Sana `attn1`), ReLU linear
    attention through the "linear" backend, output projection."""

    def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, use_bias: bool = True,
                 chunk_size: int | None = None, impl: str = "xla", eps: float = 1e-15,
                 dtype=None):
        if dim % num_heads:
            raise ValueError(f"SanaLinearAttention: dim={dim} must be divisible by num_heads={num_heads}")
        head_dim = dim // num_heads
        proj = lambda: Dense(dim, (num_heads, head_dim), axes=("embed", "heads", "kv"),
                             rngs=rngs, use_bias=use_bias, dtype=dtype)
        self.to_q, self.to_k, self.to_v = proj(), proj(), proj()
        self.to_out = Dense((num_heads, head_dim), dim, axes=("heads", "kv", "embed"),
                            rngs=rngs, dtype=dtype)
        self.options = dict(chunk_size=chunk_size, impl=impl, eps=eps)

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = (constrain(p(x), ("batch", "length", "heads", "kv"))
                   for p in (self.to_q, self.to_k, self.to_v))
        return self.to_out(attention(q, k, v, backend="linear", **self.options))


class MixFFN(nnx.Module):
    """SANA's Mix-FFN (diffusers `GLUMBConv` without norm/residual) on (B, T, D) tokens."""

    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype=None):
        self.inverted = Dense(dim, 2 * hidden, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)
        # Depthwise 3×3 kernel, one filter per channel (HW + channel), torch's default
        # init bound 1/sqrt(fan_in = 9).
        depth_init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform",
                                                       in_axis=(0, 1), out_axis=2)
        self.depth_kernel = param(depth_init, (3, 3, 2 * hidden), (None, None, "mlp"), rngs)
        self.depth_bias = param(nnx.initializers.zeros_init(), (2 * hidden,), ("mlp",), rngs)
        self.point = Dense(hidden, dim, axes=("mlp", "embed"), rngs=rngs, use_bias=False, dtype=dtype)
        self.dtype = dtype

    def __call__(self, x: jax.Array, grid: tuple[int, int]) -> jax.Array:
        b, t, _ = x.shape
        h, w = grid
        if h * w != t:
            raise ValueError(f"MixFFN: grid {grid} has {h * w} cells but there are {t} tokens")
        y = jax.nn.silu(self.inverted(x))
        channels = y.shape[-1]
        y = y.reshape(b, h, w, channels)
        kernel = self.depth_kernel[...].astype(y.dtype)[:, :, None, :]  # HWIO with I = 1
        y = jax.lax.conv_general_dilated(
            y, kernel, window_strides=(1, 1), padding=((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
        ) + self.depth_bias[...].astype(y.dtype)
        value, gate_ = jnp.split(y.reshape(b, t, channels), 2, axis=-1)
        return self.point(value * jax.nn.silu(gate_))


class SanaBlock(nnx.Module):
    """x += g1·LinAttn(mod(LN(x))); x += g2·MixFFN(mod(LN(x)), grid). x: (B, T, D), c: (B, D)."""

    def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, mlp_ratio: float = 2.5,
                 norm_eps: float = 1e-6, chunk_size: int | None = None, impl: str = "xla",
                 dtype=None):
        self.norm_eps = norm_eps
        self.attn = SanaLinearAttention(dim, num_heads, rngs=rngs, chunk_size=chunk_size,
                                        impl=impl, dtype=dtype)
        self.ffn = MixFFN(dim, int(mlp_ratio * dim), rngs=rngs, dtype=dtype)
        self.ada = Dense(dim, (6, dim), axes=("embed", None, None), rngs=rngs, dtype=dtype,
                         kernel_init=nnx.initializers.zeros_init())

    def modulations(self, c: jax.Array) -> jax.Array:
        """(B, 6, D): shift, scale, gate for attention, then for the FFN."""
        return self.ada(jax.nn.silu(c))

    def __call__(self, x: jax.Array, c: jax.Array, grid: tuple[int, int]) -> jax.Array:
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.unstack(self.modulations(c), axis=1)
        x = x + gate(self.attn(modulate(layer_norm(x, self.norm_eps), shift1, scale1)), gate1)
        x = x + gate(self.ffn(modulate(layer_norm(x, self.norm_eps), shift2, scale2), grid), gate2)
        return constrain(x, ("batch", "length", "embed"))
