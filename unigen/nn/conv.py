"""2-D convolution and GroupNorm on NHWC images, parameters with logical axis names (docs/design.md §7).

`Conv2d` keeps its kernel HWIO, (kh, kw, in, out), so a torch Conv2d weight (out, in, kh, kw)
is `weight.transpose(2, 3, 1, 0)`. Padding is given per spatial axis as torch pads:
`padding=p` is ((p, p), (p, p)); diffusers' Downsample2D pads only bottom and right,
((0, 1), (0, 1)), then convolves with stride 2. The channel axes are named "conv_in" and
"conv_out"; no preset rule names them, so they are replicated (a conv net's channels are
small next to a transformer's width).

`GroupNorm` normalises each (example, group of channels) over its spatial positions and the
group's channels, as torch.nn.GroupNorm does (biased variance), statistics in float32.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from unigen.nn.layers import Init, param

Padding = int | Sequence[Sequence[int]]


def _pairs(padding: Padding) -> tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    pairs = tuple(tuple(int(p) for p in side) for side in padding)
    if len(pairs) != 2 or any(len(side) != 2 for side in pairs):
        raise ValueError(f"Conv2d padding {padding!r}: give an int or ((top, bottom), (left, right))")
    return pairs


class Conv2d(nnx.Module):
    """y = conv(x, W) + b on NHWC x; W is (kernel, kernel, in, out).

    The default init is torch's (uniform with variance 1/(3 fan_in)); loaders replace it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, rngs: nnx.Rngs,
                 stride: int = 1, padding: Padding = 0, use_bias: bool = True,
                 kernel_init: Init | None = None, dtype=None, param_dtype=jnp.float32):
        kernel_init = kernel_init or nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
        self.stride, self.padding, self.dtype = stride, _pairs(padding), dtype
        self.kernel = param(kernel_init, (kernel_size, kernel_size, in_channels, out_channels),
                            (None, None, "conv_in", "conv_out"), rngs, param_dtype)
        self.bias = (param(nnx.initializers.zeros_init(), (out_channels,), ("conv_out",), rngs, param_dtype)
                     if use_bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.kernel.shape[2]:
            raise ValueError(f"Conv2d expects NHWC input with {self.kernel.shape[2]} channels; got shape {x.shape}")
        dtype = self.dtype or x.dtype
        y = jax.lax.conv_general_dilated(
            x.astype(dtype), self.kernel[...].astype(dtype), window_strides=(self.stride, self.stride),
            padding=self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


def group_norm(x: jax.Array, num_groups: int, eps: float) -> jax.Array:
    """Affine-free GroupNorm of (B, ..., C): statistics per example and group of C // num_groups
    channels over every other axis, in float32 (two-pass variance, as torch)."""
    c = x.shape[-1]
    if c % num_groups:
        raise ValueError(f"group_norm: {c} channels do not split into {num_groups} groups")
    xf = x.astype(jnp.float32).reshape(*x.shape[:-1], num_groups, c // num_groups)
    axes = tuple(range(1, xf.ndim - 2)) + (xf.ndim - 1,)
    mean = xf.mean(axes, keepdims=True)
    var = jnp.square(xf - mean).mean(axes, keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)


class GroupNorm(nnx.Module):
    """torch.nn.GroupNorm(num_groups, channels, eps, affine=True) over the last (channel) axis;
    the affine step runs in float32 too, then the result takes the input's dtype."""

    def __init__(self, num_groups: int, channels: int, *, eps: float = 1e-5, rngs: nnx.Rngs | None = None):
        if num_groups <= 0 or channels % num_groups:
            raise ValueError(f"GroupNorm: {channels} channels do not split into {num_groups} groups")
        rngs = rngs or nnx.Rngs(0)
        self.num_groups, self.eps = num_groups, eps
        self.scale = param(nnx.initializers.ones_init(), (channels,), ("norm",), rngs)
        self.bias = param(nnx.initializers.zeros_init(), (channels,), ("norm",), rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = group_norm(x, self.num_groups, self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(x.dtype)
