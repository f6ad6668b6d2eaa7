"""LayerNorm and RMSNorm over the last axis, statistics in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from unigen.nn.layers import param


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """Affine-free LayerNorm (two-pass variance, as torch computes it)."""
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def rms_norm(x: jax.Array, eps: float) -> jax.Array:
    xf = x.astype(jnp.float32)
    return (xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + eps)).astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with optional scale and bias (DiT's blocks use none: adaLN supplies them)."""

    def __init__(self, dim: int, *, eps: float = 1e-6, affine: bool = True, rngs: nnx.Rngs | None = None):
        self.eps = eps
        if affine:
            rngs = rngs or nnx.Rngs(0)
            self.scale = param(nnx.initializers.ones_init(), (dim,), ("norm",), rngs)
            self.bias = param(nnx.initializers.zeros_init(), (dim,), ("norm",), rngs)
        else:
            self.scale = self.bias = None

    def __call__(self, x):
        y = layer_norm(x, self.eps)
        if self.scale is not None:
            y = y * self.scale[...].astype(y.dtype) + self.bias[...].astype(y.dtype)
        return y


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, *, eps: float = 1e-6, affine: bool = True, rngs: nnx.Rngs | None = None):
        self.eps = eps
        self.scale = param(nnx.initializers.ones_init(), (dim,), ("norm",), rngs or nnx.Rngs(0)) if affine else None

    def __call__(self, x):
        y = rms_norm(x, self.eps)
        return y * self.scale[...].astype(y.dtype) if self.scale is not None else y
