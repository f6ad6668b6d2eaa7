"""The blocks of the KL autoencoder (unigen/tokenizers/autoencoder_kl.py), NHWC throughout.

As in diffusers' VAE (`Encoder` / `Decoder` of models/autoencoders/vae.py, REFERENCES.md):
  * ResnetBlock: GroupNorm -> SiLU -> 3x3 conv -> GroupNorm -> SiLU -> 3x3 conv, plus the input
    (through a 1x1 conv when the channel count changes); no time embedding, no output scale;
  * SpatialAttention: one head over all H*W positions of a GroupNorm'd map, q/k/v/out Linears
    with bias, scale 1/sqrt(C), added to the input;
  * MidBlock: resnet -> attention (optional) -> resnet;
  * DownBlock: resnets, then (except the last level) pad bottom/right by one and a stride-2
    3x3 conv; UpBlock: resnets, then (except the last level) nearest 2x upsampling and a 3x3 conv.
`remat=True` recomputes each ResnetBlock's activations in the backward pass (nnx.remat).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from unigen.nn.attention import attention
from unigen.nn.conv import Conv2d, GroupNorm
from unigen.nn.layers import Dense


class ResnetBlock(nnx.Module):
    def __init__(self, c_in: int, c_out: int, groups: int, eps: float, *, rngs: nnx.Rngs, dtype=None):
        self.norm1 = GroupNorm(groups, c_in, eps=eps, rngs=rngs)
        self.conv1 = Conv2d(c_in, c_out, 3, padding=1, rngs=rngs, dtype=dtype)
        self.norm2 = GroupNorm(groups, c_out, eps=eps, rngs=rngs)
        self.conv2 = Conv2d(c_out, c_out, 3, padding=1, rngs=rngs, dtype=dtype)
        self.shortcut = Conv2d(c_in, c_out, 1, rngs=rngs, dtype=dtype) if c_in != c_out else None

    def __call__(self, x):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return (x if self.shortcut is None else self.shortcut(x)) + h


def run_resnets(resnets, x, remat: bool):
    """Apply ResnetBlocks in order, each under nnx.remat when asked."""
    def step(block, x):
        return block(x)
    if remat:
        step = nnx.remat(step)
    for block in resnets:
        x = step(block, x)
    return x


class SpatialAttention(nnx.Module):
    """Single-head self-attention over the H*W positions (diffusers' `Attention` as the VAE's mid
    block builds it: group_norm, to_q/to_k/to_v/to_out.0, residual)."""

    def __init__(self, channels: int, groups: int, eps: float, *, rngs: nnx.Rngs, dtype=None):
        self.norm = GroupNorm(groups, channels, eps=eps, rngs=rngs)
        axes = ("conv_in", "conv_out")
        self.q, self.k, self.v, self.out = (Dense(channels, channels, axes=axes, rngs=rngs, dtype=dtype)
                                            for _ in range(4))

    def __call__(self, x):
        b, h, w, c = x.shape
        tokens = self.norm(x).reshape(b, h * w, c)
        q, k, v = (proj(tokens)[:, :, None, :] for proj in (self.q, self.k, self.v))  # (B, T, 1, C)
        # "xla": any head size, any dtype (cuDNN's fused kernels cap the head at 128-256 channels,
        # and the VAE's one head is 512 wide).
        o = attention(q, k, v, backend="xla")[:, :, 0, :]
        return x + self.out(o).reshape(b, h, w, c)


class MidBlock(nnx.Module):
    def __init__(self, channels: int, groups: int, eps: float, add_attention: bool, *, rngs: nnx.Rngs, dtype=None):
        self.resnets = nnx.List([ResnetBlock(channels, channels, groups, eps, rngs=rngs, dtype=dtype)
                                 for _ in range(2)])
        self.attn = SpatialAttention(channels, groups, eps, rngs=rngs, dtype=dtype) if add_attention else None

    def __call__(self, x, remat: bool = False):
        x = run_resnets([self.resnets[0]], x, remat)
        if self.attn is not None:
            x = self.attn(x)
        return run_resnets([self.resnets[1]], x, remat)


class DownBlock(nnx.Module):
    """`layers` resnets (c_in -> c_out, then c_out -> c_out) and an optional 2x downsample."""

    def __init__(self, c_in: int, c_out: int, layers: int, groups: int, eps: float, downsample: bool, *,
                 rngs: nnx.Rngs, dtype=None):
        self.resnets = nnx.List([ResnetBlock(c_in if i == 0 else c_out, c_out, groups, eps, rngs=rngs, dtype=dtype)
                                 for i in range(layers)])
        # diffusers Downsample2D(padding=0): F.pad(x, (0, 1, 0, 1)) then a stride-2 conv.
        self.downsample = (Conv2d(c_out, c_out, 3, stride=2, padding=((0, 1), (0, 1)), rngs=rngs, dtype=dtype)
                           if downsample else None)

    def __call__(self, x, remat: bool = False):
        x = run_resnets(self.resnets, x, remat)
        return x if self.downsample is None else self.downsample(x)


def upsample_nearest_2x(x):
    """F.interpolate(scale_factor=2, mode="nearest") on NHWC."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class UpBlock(nnx.Module):
    """`layers` resnets and an optional nearest 2x upsample followed by a 3x3 conv."""

    def __init__(self, c_in: int, c_out: int, layers: int, groups: int, eps: float, upsample: bool, *,
                 rngs: nnx.Rngs, dtype=None):
        self.resnets = nnx.List([ResnetBlock(c_in if i == 0 else c_out, c_out, groups, eps, rngs=rngs, dtype=dtype)
                                 for i in range(layers)])
        self.upsample = Conv2d(c_out, c_out, 3, padding=1, rngs=rngs, dtype=dtype) if upsample else None

    def __call__(self, x, remat: bool = False):
        x = run_resnets(self.resnets, x, remat)
        return x if self.upsample is None else self.upsample(upsample_nearest_2x(x))
