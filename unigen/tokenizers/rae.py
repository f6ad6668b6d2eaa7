"""RAE: a representation autoencoder (Zheng et al. 2025, bytetriper/RAE `src/stage1/rae.py`;
diffusers `AutoencoderRAE`): a frozen representation encoder, its patch tokens as the latent,
and a trained ViT decoder back to pixels.

  encode(x, rng=None) -> z      x: NHWC in [0, 1] -> z (B, h, w, C), h*w = the encoder's patch grid
  decode(z) -> x                z -> NHWC in [0, 1] (the decoder's image_size = patch_size * grid)
  model(x, rng=None)            decode(encode(x, rng))

encode, as diffusers does it: resize to `encoder_input_size` (torch bicubic, no antialias),
normalise with `encoder_norm_mean/std`, run the encoder, keep the patch tokens (DINOv2 drops
its CLS and register tokens) after the encoder's final LayerNorm WITHOUT its affine (RAE strips
it), add the training noise z + sigma n with sigma ~ U(0, noise_tau) per image when `rng` is
given (the paper's noise-augmented decoder training; on the raw tokens, as both references
do), then normalise (z - mean) / (std + 1e-5) and multiply by `scaling_factor`. `latents_mean`
/ `latents_std` are per position and channel (`latent_stats="position"`, (h, w, C): the reference's
stat.pt, (C, h, w) there), per channel ("channel", (C,)), one number ("global", (1,)) or absent
("none": no normalisation). decode undoes all of it and maps the decoder's output back through
the encoder normalisation (x * std + mean), so it returns [0, 1] images.

The encoder is a DINOv2 (unigen/tokenizers/dinov2.py; `encoder_type="dinov2"`, the diffusers
folders) or unigen's LZN image encoder (`"lzn"`, the digits job). The decoder is the MAE-style
ViT of the reference (`GeneralDecoder` / diffusers `RAEDecoder`): Linear to the decoder width,
a learned CLS token, the fixed 2-D sin-cos table (zero row for CLS), pre-LN blocks (LayerNorm
eps 1e-12, exact GELU), LayerNorm, Linear to p*p*C, CLS dropped, unpatchified.

For the data side (unigen/tokenizers/codec.py) `encode_latents(x in [-1, 1]) -> (z, None)` (a
deterministic posterior) and `decode_latents(z) -> [-1, 1]`; `latent_normalization` is
(shift 0, scale 1) because encode already normalises.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unigen.models.registry import InputSpec, ModelKind, register_model
from unigen.nn.attention import attention
from unigen.nn.checks import check_compute_options, check_positive_ints
from unigen.nn.layers import Dense, param
from unigen.nn.norms import LayerNorm, layer_norm
from unigen.nn.patch import patchify, unpatchify
from unigen.nn.posemb import scaled_positions, sincos_2d_at
from unigen.nn.resize import resize_bicubic
from unigen.parallel.logical import constrain

ENCODER_TYPES = ("dinov2", "lzn")
LATENT_STATS = ("position", "channel", "global", "none")
RUNTIME_FIELDS = ("dtype", "attention_backend")
LATENT_EPS = 1e-5  # diffusers: (z - mean) / (std + 1e-5); the repo's sqrt(var + eps) differs slightly


def _encoder_config(encoder_type: str, value):
    if encoder_type == "dinov2":
        from unigen.tokenizers.dinov2 import Dinov2Config as cls
    elif encoder_type == "lzn":
        from unigen.lzn.encoder import ImageEncoderConfig as cls
    else:
        raise ValueError(f"RAEConfig.encoder_type={encoder_type!r}: must be one of {ENCODER_TYPES}")
    if isinstance(value, dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"RAEConfig.encoder: unknown {cls.__name__} fields {unknown}")
        value = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
    if not isinstance(value, cls):
        raise ValueError(f"RAEConfig.encoder: expected a {cls.__name__} (or a dict of its fields) for "
                         f"encoder_type={encoder_type!r}, got {type(value).__name__}")
    return value


@dataclasses.dataclass(frozen=True)
class RAEConfig:
    encoder_type: str = "dinov2"
    encoder: Any = None                     # Dinov2Config | ImageEncoderConfig (a dict from JSON)
    encoder_input_size: int = 224
    encoder_norm_mean: tuple = (0.485, 0.456, 0.406)
    encoder_norm_std: tuple = (0.229, 0.224, 0.225)
    decoder_hidden_size: int = 512
    decoder_num_layers: int = 8
    decoder_num_heads: int = 16
    decoder_intermediate_size: int = 2048
    patch_size: int = 16                    # the decoder's patch: image_size = patch_size * grid
    num_channels: int = 3
    layer_norm_eps: float = 1e-12           # the decoder's LayerNorms (ViT-MAE's value)
    decoder_pos_base_size: int = 0          # sin-cos positions: 0 = integers (the repo), 16 = diffusers' table
    noise_tau: float = 0.0                  # training noise on the tokens: sigma ~ U(0, noise_tau)
    scaling_factor: float = 1.0
    latent_stats: str = "none"              # latents_mean / latents_std: "position" | "channel" | "global" | "none"
    dtype: str = "float32"
    attention_backend: str = "auto"

    def __post_init__(self):
        if self.encoder_type in ENCODER_TYPES:
            enc = _encoder_config(self.encoder_type, self.encoder)
            # runtime options follow the RAE's
            enc = dataclasses.replace(enc, dtype=self.dtype, attention_backend=self.attention_backend)
            object.__setattr__(self, "encoder", enc)
        for f in ("encoder_norm_mean", "encoder_norm_std"):
            if isinstance(getattr(self, f), list):
                object.__setattr__(self, f, tuple(getattr(self, f)))

    # ---- derived sizes ----
    @property
    def encoder_patch_size(self) -> int:
        return self.encoder.patch_size

    @property
    def latent_channels(self) -> int:
        return self.encoder.hidden_size if self.encoder_type == "dinov2" else self.encoder.width

    @property
    def grid(self) -> int:
        return self.encoder_input_size // self.encoder_patch_size

    @property
    def image_size(self) -> int:
        return self.patch_size * self.grid

    @property
    def latent_stats_shape(self) -> tuple:
        return {"position": (self.grid, self.grid, self.latent_channels), "channel": (self.latent_channels,),
                "global": (1,), "none": ()}[self.latent_stats]

    def validate(self) -> "RAEConfig":
        def bad(field, why):
            raise ValueError(f"RAEConfig.{field}={getattr(self, field)!r}: {why}")
        if self.encoder_type not in ENCODER_TYPES:
            bad("encoder_type", f"must be one of {ENCODER_TYPES}")
        self.encoder.validate()
        check_positive_ints(bad, self, ("encoder_input_size", "decoder_hidden_size", "decoder_num_layers",
                                        "decoder_num_heads", "decoder_intermediate_size", "patch_size",
                                        "num_channels"))
        if self.encoder_input_size % self.encoder_patch_size:
            bad("encoder_input_size", f"must be divisible by the encoder's patch size {self.encoder_patch_size}")
        if self.encoder_type == "lzn" and self.encoder_input_size != self.encoder.image_size:
            bad("encoder_input_size", f"the LZN encoder takes {self.encoder.image_size}px images only")
        enc_channels = self.encoder.num_channels if self.encoder_type == "dinov2" else self.encoder.channels
        if enc_channels != self.num_channels:
            bad("num_channels", f"the encoder takes {enc_channels}-channel images")
        for f in ("encoder_norm_mean", "encoder_norm_std"):
            v = getattr(self, f)
            if not (isinstance(v, tuple) and len(v) == self.num_channels and all(isinstance(a, (int, float)) for a in v)):
                bad(f, f"must be {self.num_channels} numbers (one per image channel)")
        if any(not s > 0 for s in self.encoder_norm_std):
            bad("encoder_norm_std", "must be > 0")
        if self.decoder_hidden_size % self.decoder_num_heads:
            bad("decoder_hidden_size", f"must be divisible by decoder_num_heads={self.decoder_num_heads}")
        if self.decoder_hidden_size % 4:
            bad("decoder_hidden_size", "must be divisible by 4 (2-D sin-cos positions)")
        if not (isinstance(self.noise_tau, (int, float)) and self.noise_tau >= 0):
            bad("noise_tau", "must be a number >= 0 (RAE trains its decoders with 0.8)")
        if not (isinstance(self.scaling_factor, (int, float)) and self.scaling_factor > 0):
            bad("scaling_factor", "must be > 0")
        if isinstance(self.decoder_pos_base_size, bool) or not isinstance(self.decoder_pos_base_size, int) \
                or self.decoder_pos_base_size < 0:
            bad("decoder_pos_base_size", "must be an integer >= 0 (diffusers: 16; 0 = integer positions)")
        if not self.layer_norm_eps > 0:
            bad("layer_norm_eps", "must be > 0")
        if self.latent_stats not in LATENT_STATS:
            bad("latent_stats", f"must be one of {LATENT_STATS} (per position and channel, per channel, one number, none)")
        check_compute_options(bad, self.dtype, self.attention_backend)
        return self


class DecoderLayer(nnx.Module):
    """ViT-MAE pre-LN block: x += Attn(LN(x)); x += Mlp(LN(x)) (exact GELU)."""

    def __init__(self, cfg: RAEConfig, *, rngs: nnx.Rngs):
        d, h = cfg.decoder_hidden_size, cfg.decoder_num_heads
        dtype = jnp.dtype(cfg.dtype)
        self.backend = cfg.attention_backend
        self.norm1 = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)
        self.qkv = Dense(d, (3, h, d // h), axes=("embed", None, "heads", "kv"), rngs=rngs, dtype=dtype)
        self.proj = Dense((h, d // h), d, axes=("heads", "kv", "embed"), rngs=rngs, dtype=dtype)
        self.norm2 = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)
        self.fc1 = Dense(d, cfg.decoder_intermediate_size, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.fc2 = Dense(cfg.decoder_intermediate_size, d, axes=("mlp", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x):
        q, k, v = jnp.unstack(self.qkv(self.norm1(x)), axis=2)
        x = x + self.proj(attention(q, k, v, backend=self.backend))
        x = x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))
        return constrain(x, ("batch", "length", "embed"))


class RAEDecoder(nnx.Module):
    """Tokens (B, grid*grid, C) -> pixels (B, image_size, image_size, num_channels), encoder-normalised."""

    def __init__(self, cfg: RAEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, dtype = cfg.decoder_hidden_size, jnp.dtype(cfg.dtype)
        self.embed = Dense(cfg.latent_channels, d, axes=(None, "embed"), rngs=rngs, dtype=dtype)
        self.cls_token = param(nnx.initializers.zeros_init(), (1, 1, d), (None, None, "embed"), rngs)
        self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.decoder_num_layers)])
        self.norm = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)
        self.pred = Dense(d, cfg.patch_size ** 2 * cfg.num_channels, axes=("embed", None), rngs=rngs, dtype=dtype)

    def __call__(self, tokens):
        cfg = self.cfg
        n = cfg.grid ** 2
        if tokens.shape[1] != n:
            raise ValueError(f"the RAE decoder takes {cfg.grid}x{cfg.grid} = {n} tokens; got {tokens.shape[1]}")
        x = self.embed(tokens)
        cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1)
        # The fixed sin-cos table with a zero row for the CLS slot. diffusers builds it with
        # `get_2d_sincos_pos_embed(..., cls_token=True, extra_tokens=1)`, whose default base_size 16
        # places the grid at arange(grid) * 16 / grid; the repo's MAE table uses integer positions.
        # Both agree at the reference's 16x16 grid; the diffusers loader sets 16, trained RAEs use 0.
        base = cfg.decoder_pos_base_size
        at = scaled_positions(cfg.grid, base) if base else np.arange(cfg.grid)
        pos = jnp.concatenate([jnp.zeros((1, x.shape[-1])), jnp.asarray(sincos_2d_at(x.shape[-1], at, at))])
        x = constrain(x + pos.astype(x.dtype), ("batch", "length", "embed"))
        for layer in self.layers:
            x = layer(x)
        x = self.pred(self.norm(x))[:, 1:]
        return unpatchify(x.astype(jnp.float32), cfg.patch_size, cfg.image_size, cfg.image_size)


class RAE(nnx.Module):
    deterministic = True  # the latent is the encoder's output: no posterior to sample (codec.py)

    def __init__(self, cfg: RAEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg = cfg.validate()
        if cfg.encoder_type == "dinov2":
            from unigen.tokenizers.dinov2 import Dinov2
            # RAE's encoder: the final LayerNorm without its affine.
            self.encoder = Dinov2(dataclasses.replace(cfg.encoder, layernorm_affine=False), rngs=rngs)
        else:
            from unigen.lzn.encoder import ImageEncoder
            self.encoder = ImageEncoder(cfg.encoder, rngs=rngs)
        self.decoder = RAEDecoder(cfg, rngs=rngs)
        shape = cfg.latent_stats_shape
        if shape:
            self.latents_mean = param(nnx.initializers.zeros_init(), shape, (None,) * len(shape), rngs)
            self.latents_std = param(nnx.initializers.ones_init(), shape, (None,) * len(shape), rngs)
        else:
            self.latents_mean = self.latents_std = None

    @property
    def downsample_factor(self) -> int:
        return self.cfg.patch_size

    @property
    def latent_normalization(self) -> tuple[float, float]:
        """(shift, scale) a diffusion model applies on top: none, encode normalises already."""
        return 0.0, 1.0

    # ---- the pieces ----
    def _image_stats(self):
        c = self.cfg
        return jnp.asarray(c.encoder_norm_mean, jnp.float32), jnp.asarray(c.encoder_norm_std, jnp.float32)

    def encoder_tokens(self, x):
        """x NHWC in [0, 1] -> the encoder's patch tokens (B, grid*grid, C), float32, after the
        affine-free final LayerNorm."""
        cfg = self.cfg
        x = jnp.asarray(x, jnp.float32)
        if x.ndim != 4 or x.shape[-1] != cfg.num_channels:
            raise ValueError(f"RAE.encode takes NHWC images with {cfg.num_channels} channels; got {x.shape}")
        size = cfg.encoder_input_size
        if x.shape[1:3] != (size, size):
            x = resize_bicubic(x, (size, size), antialias=False)
        mean, std = self._image_stats()
        x = (x - mean) / std
        if cfg.encoder_type == "dinov2":
            tokens = self.encoder.tokens(x)
        else:  # the LZN encoder's token states before its final LayerNorm, normalised without affine
            enc = self.encoder
            h = enc.patch_embed(patchify(x.astype(jnp.dtype(enc.cfg.dtype)), enc.cfg.patch_size))
            h = enc._run_blocks(h + enc.pos_embed().astype(h.dtype))
            tokens = layer_norm(h, enc.cfg.norm_eps)
        return tokens.astype(jnp.float32)

    def normalize(self, tokens):
        """Raw tokens (B, N, C) -> latents (B, grid, grid, C) in the diffusion model's space."""
        g = self.cfg.grid
        z = tokens.reshape(tokens.shape[0], g, g, tokens.shape[-1])
        if self.latents_mean is not None:
            z = (z - self.latents_mean[...]) / (self.latents_std[...] + LATENT_EPS)
        return z * self.cfg.scaling_factor

    def denormalize(self, z):
        z = jnp.asarray(z, jnp.float32) / self.cfg.scaling_factor
        if self.latents_mean is not None:
            z = z * (self.latents_std[...] + LATENT_EPS) + self.latents_mean[...]
        return z.reshape(z.shape[0], -1, z.shape[-1])

    def add_noise(self, tokens, rng):
        """z + sigma n, sigma ~ U(0, noise_tau) per image (RAE's noise-augmented decoder training)."""
        k_sigma, k_noise = jax.random.split(rng)
        sigma = self.cfg.noise_tau * jax.random.uniform(k_sigma, (tokens.shape[0], 1, 1))
        return tokens + sigma * jax.random.normal(k_noise, tokens.shape)

    # ---- the tokenizer ----
    def encode(self, x, rng=None):
        tokens = self.encoder_tokens(x)
        if rng is not None and self.cfg.noise_tau > 0:
            tokens = self.add_noise(tokens, rng)
        return self.normalize(tokens)

    def decode(self, z):
        mean, std = self._image_stats()
        return self.decoder(self.denormalize(z)) * std + mean

    def __call__(self, x, rng=None):
        return self.decode(self.encode(x, rng))

    def encode_latents(self, x):
        """Images in [-1, 1] -> (latents, None): the codec's view of a deterministic encoder."""
        return self.encode((jnp.asarray(x, jnp.float32) + 1.0) / 2.0), None

    def decode_latents(self, z):
        return self.decode(z) * 2.0 - 1.0


# ---- the "rae" model kind ----------------------------------------------------------------------
def from_section(m, spec: InputSpec) -> RAEConfig:
    """`config.model`: RAEConfig fields with `encoder` a dict of the encoder's config fields
    (for encoder_type "lzn" usually filled from config.rae.encoder by the rae task); dtype and
    num_channels (defaults) from the input `spec`."""
    fields = {k: v for k, v in m.items() if k != "kind" and v is not None}
    known = {f.name for f in dataclasses.fields(RAEConfig)}
    for k in fields:
        if k not in known:
            raise ValueError(f"config.model.{k}: not an RAE field; known: {sorted(known)}")
    fields["encoder"] = dict(fields.get("encoder") or {})
    fields.setdefault("num_channels", spec.channels)
    fields.setdefault("dtype", spec.dtype)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    try:
        return RAEConfig(**fields).validate()
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.model: {e}") from None


RAE_KIND = register_model(ModelKind("rae", RAE, RAEConfig, from_section=from_section,
                                    runtime_fields=RUNTIME_FIELDS))
