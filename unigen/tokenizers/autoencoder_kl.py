"""The KL autoencoder of latent diffusion (Rombach et al., 2022): the SD 1.x/2.x, SDXL, SD3 and
Flux VAEs, with the numbers of diffusers' `AutoencoderKL` (blocks: unigen/tokenizers/kl_blocks.py).

  encode(x) -> (mean, logvar)   x: NHWC images in [-1, 1]; mean/logvar (B, H/f, W/f, latent_channels),
                                f = 2**(levels - 1); logvar clamped to [-30, 20] (diffusers'
                                DiagonalGaussianDistribution)
  decode(z) -> x                z in the autoencoder's own latent space (not normalised)
  model(x, rng=None)            (reconstruction, mean, logvar); decodes a posterior sample when
                                `rng` (a jax key) is given, else the mean

Diffusion models work on `normalize_latents(z, cfg)` = (z - shift_factor) * scaling_factor
(SD: scale 0.18215, no shift; SD3: 1.5305 and 0.0609; Flux: 0.3611 and 0.1159), and
`denormalize_latents` undoes it before decoding. The encoder's last conv
(`model.encoder.conv_out`) is the layer an adversarial loss's adaptive weight is taken at.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from unigen.models.registry import InputSpec, ModelKind, register_model
from unigen.nn.checks import COMPUTE_DTYPES, is_positive_int
from unigen.nn.conv import Conv2d, GroupNorm
from unigen.tokenizers.kl_blocks import DownBlock, MidBlock, UpBlock

LOGVAR_RANGE = (-30.0, 20.0)


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig:
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple = (128, 256, 512, 512)  # one entry per resolution level
    layers_per_block: int = 2            # resnets per encoder level (the decoder has one more)
    latent_channels: int = 4
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    sample_size: int | tuple = 512       # informational: the image size it was trained at
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0            # diffusers' None is 0.0
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    dtype: str = "float32"               # compute dtype; parameters stay float32
    remat: bool = False                  # recompute each resnet block in the backward pass

    def validate(self) -> "AutoencoderKLConfig":
        return _checked(self, "AutoencoderKLConfig")


def _checked(cfg: AutoencoderKLConfig, where: str) -> AutoencoderKLConfig:
    """`cfg` if valid, else ValueError "<where>.<field>=<value>: <fix>"."""
    def bad(field, why):
        raise ValueError(f"{where}.{field}={getattr(cfg, field)!r}: {why}")

    def number(value):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    for field in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups"):
        if not is_positive_int(getattr(cfg, field)):
            bad(field, "must be a positive integer")
    chans = cfg.block_out_channels
    if not (isinstance(chans, tuple) and chans and all(is_positive_int(c) for c in chans)):
        bad("block_out_channels", "must be a non-empty tuple of positive integers, e.g. (128, 256, 512, 512)")
    if any(c % cfg.norm_num_groups for c in chans):
        bad("norm_num_groups", f"must divide every entry of block_out_channels={chans}; use a common divisor "
            f"such as {math.gcd(*chans)}")
    if not (number(cfg.norm_eps) and cfg.norm_eps > 0):
        bad("norm_eps", "must be a positive number (diffusers' VAE uses 1e-6)")
    size = cfg.sample_size if isinstance(cfg.sample_size, tuple) else (cfg.sample_size,)
    if not (len(size) in (1, 2) and all(is_positive_int(s) for s in size)):
        bad("sample_size", "must be a positive integer or an (height, width) pair of them")
    if not (number(cfg.scaling_factor) and cfg.scaling_factor > 0):
        bad("scaling_factor", "must be a positive number (SD: 0.18215, SD3: 1.5305, Flux: 0.3611)")
    if not number(cfg.shift_factor):
        bad("shift_factor", "must be a finite number (0.0 for no shift)")
    for field in ("use_quant_conv", "use_post_quant_conv", "mid_block_add_attention", "remat"):
        if not isinstance(getattr(cfg, field), bool):
            bad(field, "must be True or False")
    if cfg.dtype not in COMPUTE_DTYPES:
        bad("dtype", f"use one of {COMPUTE_DTYPES}")
    return cfg


class Encoder(nnx.Module):
    def __init__(self, cfg: AutoencoderKLConfig, *, rngs: nnx.Rngs):
        ch, g, eps, dtype, n = cfg.block_out_channels, cfg.norm_num_groups, cfg.norm_eps, jnp.dtype(cfg.dtype), \
            len(cfg.block_out_channels)
        self.conv_in = Conv2d(cfg.in_channels, ch[0], 3, padding=1, rngs=rngs, dtype=dtype)
        self.down = nnx.List([DownBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, eps, i < n - 1,
                                        rngs=rngs, dtype=dtype) for i in range(n)])
        self.mid = MidBlock(ch[-1], g, eps, cfg.mid_block_add_attention, rngs=rngs, dtype=dtype)
        self.norm_out = GroupNorm(g, ch[-1], eps=eps, rngs=rngs)
        self.conv_out = Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1, rngs=rngs, dtype=dtype)

    def __call__(self, x, remat: bool = False):
        h = self.conv_in(x)
        for block in self.down:
            h = block(h, remat)
        h = self.mid(h, remat)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))


class Decoder(nnx.Module):
    def __init__(self, cfg: AutoencoderKLConfig, *, rngs: nnx.Rngs):
        ch, g, eps, dtype = cfg.block_out_channels[::-1], cfg.norm_num_groups, cfg.norm_eps, jnp.dtype(cfg.dtype)
        n = len(ch)
        self.conv_in = Conv2d(cfg.latent_channels, ch[0], 3, padding=1, rngs=rngs, dtype=dtype)
        self.mid = MidBlock(ch[0], g, eps, cfg.mid_block_add_attention, rngs=rngs, dtype=dtype)
        self.up = nnx.List([UpBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, g, eps, i < n - 1,
                                    rngs=rngs, dtype=dtype) for i in range(n)])
        self.norm_out = GroupNorm(g, ch[-1], eps=eps, rngs=rngs)
        self.conv_out = Conv2d(ch[-1], cfg.out_channels, 3, padding=1, rngs=rngs, dtype=dtype)

    def __call__(self, z, remat: bool = False):
        h = self.mid(self.conv_in(z), remat)
        for block in self.up:
            h = block(h, remat)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))


class AutoencoderKL(nnx.Module):
    """See the module docstring. Submodules: `encoder`, `quant_conv` (or None), `post_quant_conv`
    (or None), `decoder`."""

    def __init__(self, cfg: AutoencoderKLConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg = cfg.validate()
        dtype, lat = jnp.dtype(cfg.dtype), cfg.latent_channels
        self.encoder = Encoder(cfg, rngs=rngs)
        self.quant_conv = Conv2d(2 * lat, 2 * lat, 1, rngs=rngs, dtype=dtype) if cfg.use_quant_conv else None
        self.post_quant_conv = Conv2d(lat, lat, 1, rngs=rngs, dtype=dtype) if cfg.use_post_quant_conv else None
        self.decoder = Decoder(cfg, rngs=rngs)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.cfg.block_out_channels) - 1)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(H/f, W/f, latent_channels): the latent of one height x width image."""
        f = self.downsample_factor
        if height % f or width % f:
            raise ValueError(f"image size {height}x{width} is not divisible by the autoencoder's downsample "
                             f"factor {f}; crop or pad the images to multiples of {f}")
        return height // f, width // f, self.cfg.latent_channels

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """NHWC images in [-1, 1] -> the posterior's (mean, logvar), each (B, H/f, W/f, latent_channels)."""
        cfg = self.cfg
        if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
            raise ValueError(f"AutoencoderKL.encode expects NHWC images with C={cfg.in_channels}; got shape {x.shape}")
        self.latent_shape(x.shape[1], x.shape[2])
        h = self.encoder(x.astype(jnp.dtype(cfg.dtype)), cfg.remat)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean.astype(x.dtype), jnp.clip(logvar, *LOGVAR_RANGE).astype(x.dtype)

    def decode(self, z: jax.Array) -> jax.Array:
        """NHWC latents (not normalised) -> NHWC images (nominally in [-1, 1])."""
        cfg = self.cfg
        if z.ndim != 4 or z.shape[-1] != cfg.latent_channels:
            raise ValueError(f"AutoencoderKL.decode expects NHWC latents with C={cfg.latent_channels}; "
                             f"got shape {z.shape}")
        h = z.astype(jnp.dtype(cfg.dtype))
        if self.post_quant_conv is not None:
            h = self.post_quant_conv(h)
        return self.decoder(h, cfg.remat).astype(z.dtype)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None):
        """(reconstruction, mean, logvar); with `rng`, the reconstruction of a posterior sample."""
        mean, logvar = self.encode(x)
        z = mean
        if rng is not None:
            noise = jax.random.normal(rng, mean.shape, jnp.float32)
            z = (mean.astype(jnp.float32) + jnp.exp(0.5 * logvar.astype(jnp.float32)) * noise).astype(mean.dtype)
        return self.decode(z), mean, logvar


def _config(cfg_or_model) -> AutoencoderKLConfig:
    return getattr(cfg_or_model, "cfg", cfg_or_model)


def normalize_latents(z: jax.Array, cfg: AutoencoderKLConfig | AutoencoderKL) -> jax.Array:
    """Autoencoder latents -> the diffusion model's space: (z - shift_factor) * scaling_factor."""
    cfg = _config(cfg)
    return (z - cfg.shift_factor) * cfg.scaling_factor


def denormalize_latents(z: jax.Array, cfg: AutoencoderKLConfig | AutoencoderKL) -> jax.Array:
    """The inverse of `normalize_latents`: z / scaling_factor + shift_factor."""
    cfg = _config(cfg)
    return z / cfg.scaling_factor + cfg.shift_factor


# ---- the "autoencoder_kl" model kind -------------------------------------------------------------
def from_section(m, spec: InputSpec) -> AutoencoderKLConfig:
    """`config.model` (AutoencoderKLConfig fields; None = default); in/out channels and sample_size
    default to the input's (`spec`), dtype to the train compute dtype."""
    fields = {k: v for k, v in m.items() if k != "kind" and v is not None}
    known = {f.name for f in dataclasses.fields(AutoencoderKLConfig)}
    for k, v in fields.items():
        if k not in known:
            raise ValueError(f"config.model.{k}={v!r}: not an AutoencoderKL field; known: {sorted(known)}")
    for k in ("block_out_channels", "sample_size"):
        if isinstance(fields.get(k), list):
            fields[k] = tuple(fields[k])
    for k in ("in_channels", "out_channels"):
        if fields.setdefault(k, spec.channels) != spec.channels:
            raise ValueError(f"config.model.{k}={fields[k]!r}: the data set's images have {spec.channels} "
                             f"channels; drop the field or set it to {spec.channels}")
    fields.setdefault("sample_size", spec.side)
    fields.setdefault("dtype", spec.dtype)
    return _checked(AutoencoderKLConfig(**fields), "config.model")


AUTOENCODER_KL_KIND = register_model(ModelKind(
    "autoencoder_kl", AutoencoderKL, AutoencoderKLConfig, from_section=from_section,
    runtime_fields=("dtype", "remat")))
