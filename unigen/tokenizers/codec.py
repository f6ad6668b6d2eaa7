"""A frozen image tokenizer as the data side sees it: pixels -> latent moments, latents -> pixels.

    codec = LatentCodec(unigen.from_pretrained("sd-vae-ft-ema"))   # a tokenizer module
    mean, logvar = codec.encode(images)           # NHWC in [-1, 1] -> (B, h, w, C) each
    images = codec.decode(latents)                # raw (unnormalised) latents -> [-1, 1]

A task reads the tokenizer its config names with `unigen.tasks.frozen.latent_codec(path)` (one per
path and process); this module loads nothing itself, being below the loaders (unigen/convert).

The tokenizer module must have `encode(x) -> (mean, logvar)`, `decode(z)`, `downsample_factor`
and a config with `latent_channels`, `scaling_factor` and `shift_factor` (unigen's
AutoencoderKL and the VA-VAE built on it). A tokenizer whose own encode/decode take other
pixel ranges provides `encode_latents(x in [-1, 1]) -> (latents, logvar or None)` and
`decode_latents(z) -> [-1, 1]` instead, and its `latent_normalization` (shift, scale) when the
config's factors do not apply on top (an RAE: `deterministic = True`, logvar None, already normalised). `fingerprint` names the exact weights: a latent
store records it, so latents written by another encoder are refused (unigen/data/latents.py).
"""

from __future__ import annotations

import functools
import hashlib
import json

import numpy as np

from unigen.errors import ConfigError

REQUIRED = ("encode", "decode", "downsample_factor")


class LatentCodec:
    def __init__(self, model, source: str = ""):
        missing = [name for name in REQUIRED if not hasattr(model, name)]
        cfg = getattr(model, "cfg", None)
        missing += [f"cfg.{f}" for f in ("latent_channels", "scaling_factor") if not hasattr(cfg, f)]
        if missing:
            raise ConfigError(f"{source or type(model).__name__}: a {type(model).__name__} is not an image tokenizer "
                              f"(it lacks {missing}); give a KL autoencoder (a diffusers AutoencoderKL folder, a "
                              f"unigen autoencoder_kl / vavae folder or training work dir) or an RAE (a diffusers "
                              f"AutoencoderRAE folder or a unigen rae work dir)")
        import jax
        from flax import nnx

        self.source, self.model = source, model
        self.latent_channels = int(cfg.latent_channels)
        self.downsample = int(model.downsample_factor)
        shift, scale = getattr(model, "latent_normalization", (getattr(cfg, "shift_factor", 0.0), cfg.scaling_factor))
        self.scaling_factor, self.shift_factor = float(scale), float(shift or 0.0)
        graphdef, self._state = nnx.split(model)

        def encode(state, x):
            m = nnx.merge(graphdef, state)
            return (getattr(m, "encode_latents", None) or m.encode)(x)

        def decode(state, z):
            m = nnx.merge(graphdef, state)
            return (getattr(m, "decode_latents", None) or m.decode)(z)
        self._encode, self._decode = jax.jit(encode), jax.jit(decode)
        # A deterministic tokenizer (an RAE: no posterior variance) stores its latents alone and
        # diffusion trains on them as they are.
        self.deterministic = bool(getattr(model, "deterministic", False))

    @functools.cached_property
    def fingerprint(self) -> str:
        """A hash of the tokenizer's kind, config and every weight (hex, 32 characters)."""
        from flax import nnx

        from unigen.models import kind_of
        h = hashlib.blake2b(digest_size=16)
        try:
            kind = kind_of(self.model).name
        except ValueError:
            kind = type(self.model).__name__
        h.update(kind.encode())
        h.update(json.dumps(_config_fields(self.model.cfg), sort_keys=True, default=str).encode())
        for path, value in sorted(nnx.to_flat_state(nnx.state(self.model, nnx.Param)),
                                  key=lambda item: tuple(map(str, item[0]))):
            h.update("/".join(map(str, path)).encode())
            h.update(np.ascontiguousarray(np.asarray(value[...], np.float32)).tobytes())
        return h.hexdigest()

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        if image_size % self.downsample:
            raise ConfigError(f"config.data.image_size={image_size}: the tokenizer {self.source} downsamples by "
                              f"{self.downsample}; use a multiple of {self.downsample}")
        side = image_size // self.downsample
        return side, side, self.latent_channels

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(mean, logvar) of NHWC images in [-1, 1]; logvar is None for a deterministic tokenizer."""
        mean, logvar = self._encode(self._state, np.asarray(images, np.float32))
        return np.asarray(mean, np.float32), None if logvar is None else np.asarray(logvar, np.float32)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(self._decode(self._state, np.asarray(latents, np.float32)), np.float32), -1.0, 1.0)


def _config_fields(cfg) -> dict:
    import dataclasses
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(vars(cfg))
