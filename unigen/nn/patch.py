"""Patchify / unpatchify for NHWC images; within a patch the order is (p, q, c).

That order matches DiT's conv patch embedding read as a Linear and its `unpatchify`
(einsum "nhwpqc->nchpwq"), and diffusers' DiT.
"""

from __future__ import annotations

import jax
from einops import rearrange


def check_divisible(height: int, width: int, patch: int) -> None:
    if height % patch or width % patch:
        raise ValueError(
            f"image size {height}x{width} is not divisible by patch size {patch}; "
            f"resize/crop to a multiple of {patch} or choose another patch size"
        )


def patchify(x: jax.Array, patch: int) -> jax.Array:
    """(B, H, W, C) -> (B, (H/p)(W/p), p*p*C)."""
    check_divisible(x.shape[1], x.shape[2], patch)
    return rearrange(x, "b (h p) (w q) c -> b (h w) (p q c)", p=patch, q=patch)


def unpatchify(tokens: jax.Array, patch: int, height: int, width: int) -> jax.Array:
    """(B, (H/p)(W/p), p*p*C) -> (B, H, W, C)."""
    return rearrange(tokens, "b (h w) (p q c) -> b (h p) (w q) c", h=height // patch, p=patch, q=patch)
