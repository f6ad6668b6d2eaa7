"""LZN's image encoder (a small ViT trunk) and its learnable label anchors.

In a Latent Zoning Network (Lin et al. 2025) every data type has an encoder that maps a
sample to one point of the shared latent space (the *anchor* of that sample, t = 0 of the
latent flow in `unigen.lzn.flow`), and the flow carries the anchors of a batch onto
N(0, I). The reference uses a ResNet (SimCLRv2 style) for images; here the trunk is a plain
pre-LN ViT made of the library's shared pieces:

    x (B, H, W, C) in [-1, 1]
      -> patchify (p, q, c order) -> Dense to `width`      patch embedding ("patch", "embed")
      + fixed 2-D sin-cos positions                        (unigen.nn.posemb.sincos_2d)
      -> depth x [x += Attn(LN(x)); x += Mlp(LN(x))]       LayerNorm with scale and bias
      -> LN                                                `encoder.tokens(x)`: (B, T, width)
      -> mean over tokens                                  `encoder.features(x)`: (B, width)
      -> Dense to `latent_dim`                             `encoder(x)`: (B, latent_dim)

The representation (the anchor) is returned in float32 whatever the compute dtype: the
latent flow's posteriors are ~|a|^2 / t^2 logits and need float32 anchors. Token states are
in the compute dtype. Attention goes through `unigen.nn.attention.attention`, so forward-mode
AD (`jax.jvp`) works by default; `scan_layers=True` stacks the blocks on a leading "layers"
axis and runs them with `lax.scan`, exactly as `unigen.models.dit`.

`LabelAnchors` are LZN's label "encoder": one learnable point per class, drawn from N(0, I)
at initialisation as the reference's `LabelAnchor` does (`torch.randn(num_classes, z_dim)`).
Classification reverses an image latent through the flow with the label anchors as the
anchor set and picks the nearest label anchor to the end point (`LabelAnchors.classify`;
the reference's `get_discrete_class_label_from_latent` + `LabelAnchor.get_label`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from unigen.lzn.flow import reverse
from unigen.nn.attention import attention
from unigen.nn.checks import check_compute_options, check_positive_ints, is_positive_int
from unigen.nn.layers import Dense, param
from unigen.nn.mlp import Mlp
from unigen.nn.norms import LayerNorm
from unigen.nn.patch import check_divisible, patchify
from unigen.nn.posemb import sincos_2d
from unigen.parallel.logical import constrain

# Backends that need options this encoder does not take (a block map).
_BACKENDS_NEEDING_OPTIONS = ("block_sparse",)


@dataclasses.dataclass(frozen=True)
class ImageEncoderConfig:
    image_size: int = 8             # square input side
    channels: int = 1
    patch_size: int = 2
    width: int = 128                # token width D
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    latent_dim: int = 64            # size of the representation / anchor
    norm_eps: float = 1e-6          # every LayerNorm (timm ViT's value)
    attention_backend: str = "auto"
    dtype: str = "float32"          # compute dtype; parameters stay float32
    scan_layers: bool = False

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid ** 2

    def validate(self) -> "ImageEncoderConfig":
        def bad(field, why):
            raise ValueError(f"ImageEncoderConfig.{field}={getattr(self, field)!r}: {why}")
        check_positive_ints(bad, self, ("image_size", "channels", "patch_size", "width", "depth", "num_heads",
                                        "latent_dim"))
        if self.image_size % self.patch_size:
            bad("image_size", f"not divisible by patch_size={self.patch_size}; use a multiple of it")
        if self.width % self.num_heads:
            bad("width", f"not divisible by num_heads={self.num_heads}")
        if self.width % 4:
            bad("width", "must be divisible by 4 (2-D sin-cos position embedding)")
        if not self.mlp_ratio > 0:
            bad("mlp_ratio", "must be > 0")
        if int(self.width * self.mlp_ratio) <= 0:
            bad("mlp_ratio", f"gives an empty MLP for width={self.width}")
        if not self.norm_eps > 0:
            bad("norm_eps", "must be > 0")
        check_compute_options(bad, self.dtype, self.attention_backend)
        if self.attention_backend in _BACKENDS_NEEDING_OPTIONS:
            bad("attention_backend", "needs a block map, which this encoder does not take; "
                                     "use 'auto', 'xla', 'einsum', 'cudnn' or 'linear'")
        if not isinstance(self.scan_layers, bool):
            bad("scan_layers", "must be True or False")
        return self


class EncoderBlock(nnx.Module):
    """Pre-LN transformer block: x += proj(Attn(LN(x))); x += Mlp(LN(x))."""

    def __init__(self, cfg: ImageEncoderConfig, *, rngs: nnx.Rngs):
        d, h = cfg.width, cfg.num_heads
        dtype = jnp.dtype(cfg.dtype)
        self.backend = cfg.attention_backend
        self.norm1 = LayerNorm(d, eps=cfg.norm_eps, rngs=rngs)
        self.qkv = Dense(d, (3, h, d // h), axes=("embed", None, "heads", "kv"), rngs=rngs, dtype=dtype)
        self.proj = Dense((h, d // h), d, axes=("heads", "kv", "embed"), rngs=rngs, dtype=dtype)
        self.norm2 = LayerNorm(d, eps=cfg.norm_eps, rngs=rngs)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio), rngs=rngs, dtype=dtype)

    def __call__(self, x):
        q, k, v = jnp.unstack(self.qkv(self.norm1(x)), axis=2)
        q, k, v = (constrain(a, ("batch", "length", "heads", "kv")) for a in (q, k, v))
        x = x + self.proj(attention(q, k, v, backend=self.backend))
        x = x + self.mlp(self.norm2(x))
        return constrain(x, ("batch", "length", "embed"))


class ImageEncoder(nnx.Module):
    """`encoder(x)`: x (B, H, W, C) in [-1, 1] -> (B, latent_dim) float32 representation.
    `encoder.tokens(x)` -> (B, T, width) final-normed token states (before pooling)."""

    def __init__(self, cfg: ImageEncoderConfig, *, rngs: nnx.Rngs):
        cfg = cfg.validate()
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        patch_dim = cfg.patch_size ** 2 * cfg.channels
        self.patch_embed = Dense(patch_dim, cfg.width, axes=("patch", "embed"), rngs=rngs, dtype=dtype)
        if cfg.scan_layers:
            @nnx.split_rngs(splits=cfg.depth)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make_blocks(rngs):
                return EncoderBlock(cfg, rngs=rngs)
            self.blocks = make_blocks(rngs)
        else:
            self.blocks = nnx.List([EncoderBlock(cfg, rngs=rngs) for _ in range(cfg.depth)])
        self.norm = LayerNorm(cfg.width, eps=cfg.norm_eps, rngs=rngs)
        # The head runs in float32: its output is the anchor of the latent flow.
        self.head = Dense(cfg.width, cfg.latent_dim, axes=("embed", None), rngs=rngs, dtype=jnp.float32)

    def pos_embed(self) -> jax.Array:
        return jnp.asarray(sincos_2d(self.cfg.width, self.cfg.grid, self.cfg.grid))

    def _check_input(self, x):
        cfg = self.cfg
        if x.ndim != 4 or x.shape[3] != cfg.channels:
            raise ValueError(f"ImageEncoder expects NHWC input with C={cfg.channels}; got shape {x.shape}")
        check_divisible(x.shape[1], x.shape[2], cfg.patch_size)
        if x.shape[1:3] != (cfg.image_size, cfg.image_size):
            raise ValueError(f"ImageEncoder built for {cfg.image_size}x{cfg.image_size} inputs; "
                             f"got {x.shape[1]}x{x.shape[2]} (set ImageEncoderConfig.image_size)")

    def _run_blocks(self, h):
        if not self.cfg.scan_layers:
            for block in self.blocks:
                h = block(h)
            return h
        graphdef, state = nnx.split(self.blocks)

        def body(h, block_state):
            return nnx.merge(graphdef, block_state)(h), None

        h, _ = jax.lax.scan(body, h, state)
        return h

    def tokens(self, x: jax.Array) -> jax.Array:
        """(B, T, width) token states after the final LayerNorm, row-major patch order."""
        x = jnp.asarray(x)
        self._check_input(x)
        dtype = jnp.dtype(self.cfg.dtype)
        h = self.patch_embed(patchify(x.astype(dtype), self.cfg.patch_size)) + self.pos_embed().astype(dtype)
        h = constrain(h, ("batch", "length", "embed"))
        h = self._run_blocks(h)
        return constrain(self.norm(h), ("batch", "length", "embed"))

    def features(self, x: jax.Array) -> jax.Array:
        """(B, width) float32 mean of the token states: the pre-head representation (the
        reference's linear-probe mode "no_head")."""
        return self.tokens(x).astype(jnp.float32).mean(axis=1)

    def __call__(self, x: jax.Array) -> jax.Array:
        return constrain(self.head(self.features(x)), ("batch", None))


class LabelAnchors(nnx.Module):
    """Learnable label anchors (num_classes, latent_dim), initialised from N(0, I)."""

    def __init__(self, num_classes: int, latent_dim: int, *, rngs: nnx.Rngs):
        for name, v in (("num_classes", num_classes), ("latent_dim", latent_dim)):
            if not is_positive_int(v):
                raise ValueError(f"LabelAnchors.{name}={v!r}: must be a positive integer")
        self.anchors = param(nnx.initializers.normal(stddev=1.0), (num_classes, latent_dim),
                             ("classes", None), rngs)

    def __call__(self) -> jax.Array:
        return self.anchors[...]

    def nearest(self, points: jax.Array) -> jax.Array:
        """(N,) int32 index of the label anchor nearest (Euclidean) to each point (N, D)."""
        a = self()
        d2 = (jnp.sum(jnp.square(a), axis=-1)[None, :]
              - 2.0 * jnp.matmul(points, a.T, precision=jax.lax.Precision.HIGHEST))
        return jnp.argmin(d2, axis=-1).astype(jnp.int32)

    def classify(self, latents: jax.Array, *, log_prior=None, steps: int = 100, solver: str = "euler",
                 **flow_options) -> jax.Array:
        """(N,) predicted labels: reverse the latents (N, D) through the label anchors with the
        latent flow (`unigen.lzn.flow.reverse`; the reference's label flow is Euler, 100 steps),
        then take the nearest label anchor to each end point. log_prior (num_classes,), e.g.
        log class frequencies, weights the anchors as the reference's class weights do."""
        end, _ = reverse(latents, self(), log_prior=log_prior, steps=steps, solver=solver, **flow_options)
        return self.nearest(end)
