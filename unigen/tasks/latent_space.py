"""Diffusion in a tokenizer's latent space (LDM, Rombach et al. 2022; DiT §4 on SD-VAE latents).

`config.data.latent_encoder` names a tokenizer (any path `unigen.from_pretrained` reads: a
diffusers AutoencoderKL folder such as sd-vae-ft-ema, a pipeline folder with `vae/`, a VA-VAE
training work dir). The task then:
  * encodes the data set once into a latent store (unigen/data/latents.py; `data.latent_dir`,
    default `<TFDS data dir>/unigen_latents/<name>-<size>px-<encoder fingerprint>`);
  * trains on a fresh posterior sample z = mean + exp(logvar / 2) eps of every image each step
    (as DiT's train.py calls `vae.encode(x).latent_dist.sample()`), normalised by
      latent_norm="vae"      (z - shift_factor) * scaling_factor  (SD / SD3 / DiT: 0.18215;
                             `data.latent_scale` overrides the tokenizer's factor)
      latent_norm="channel"  (z - mu_c) / sigma_c with the store's per-channel statistics
                             (LightningDiT / VA-VAE);
  * decodes samples back to pixels for grids, evaluation and `infer/sample.py`.

The model sees (image_size / downsample)^2 x latent_channels inputs; `data.latent_channels`
and `data.latent_downsample` state them in the config and must match the tokenizer.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from unigen.errors import ConfigError, DataError

NORMS = ("vae", "channel")
LATENT_SAMPLE_STREAM = 0x5A7E  # fold_in tag of the posterior-sample noise (apart from the loss's noise)


class LatentSpace:
    def __init__(self, cfg):
        from unigen.tasks.frozen import latent_codec

        d = cfg.data
        self.name, self.image_size, self.data_dir = d.name, int(d.image_size), d.get("data_dir") or None
        self.norm = d.get("latent_norm", "vae")
        if self.norm not in NORMS:
            raise ConfigError(f"config.data.latent_norm={self.norm!r}: use one of {NORMS}")
        self.codec = latent_codec(d.latent_encoder)
        self.shape = self.codec.latent_shape(self.image_size)
        for field, want in (("latent_channels", self.codec.latent_channels),
                            ("latent_downsample", self.codec.downsample)):
            given = d.get(field)
            if given is not None and given != want:
                raise ConfigError(f"config.data.{field}={given}: the tokenizer {d.latent_encoder} has {want}; "
                                  f"set config.data.{field}={want}")
        scale = d.get("latent_scale")
        self.scale = float(scale) if scale else self.codec.scaling_factor
        self.shift = self.codec.shift_factor
        self.store = d.get("latent_dir") or os.path.join(
            _data_dir(self.data_dir), "unigen_latents",
            f"{self.name.replace('/', '_').replace(':', '_')}-{self.image_size}px-{self.codec.fingerprint[:16]}")
        self._stats = None
        from unigen.data.latents import check_store, read_meta
        meta = read_meta(self.store)
        if meta is not None:  # an existing store must be this encoder's: refused now, before compiling
            try:
                check_store(meta, self.store, self.codec, name=self.name, split=None, image_size=self.image_size)
            except DataError as e:
                raise ConfigError(f"config.data.latent_dir={d.get('latent_dir', '')!r}: {e}") from None

    # ---- data -------------------------------------------------------------------------------
    def ensure_encoded(self, split: str) -> dict:
        """The store's metadata, encoding `split` first if it is not there (once)."""
        from unigen.data.latents import check_store, encode_dataset, read_meta
        meta = read_meta(self.store)
        if meta is None or split not in meta.get("splits", {}):
            if meta is not None:  # the split is missing: the rest must still be this encoder's
                check_store(meta, self.store, self.codec, name=self.name, split=None, image_size=self.image_size)
            print(f"encoding {self.name}/{split} with {self.codec.source} into {self.store} (once)", flush=True)
            encode_dataset(self.codec, self.name, split, image_size=self.image_size, out_dir=self.store,
                           data_dir=self.data_dir, process_index=jax.process_index(),
                           process_count=jax.process_count())
            meta = read_meta(self.store)
        check_store(meta, self.store, self.codec, name=self.name, split=split, image_size=self.image_size)
        return meta

    def dataset(self, split, *, batch_size, seed, shard, shards):
        from unigen.data.latents import latent_dataset
        self.ensure_encoded(split)
        return latent_dataset(self.store, split, batch_size=batch_size, seed=seed, process_index=shard,
                              process_count=shards)

    @property
    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (mean, std) of the training latents (read from the store)."""
        if self._stats is None:
            info = self.ensure_encoded("train")["splits"]["train"]
            self._stats = (np.asarray(info["channel_mean"], np.float32), np.asarray(info["channel_std"], np.float32))
        return self._stats

    # ---- normalisation (jnp or numpy) ---------------------------------------------------------
    def normalize(self, z):
        if self.norm == "channel":
            mean, std = self.stats
            return (z - mean) / std
        return (z - self.shift) * self.scale

    def denormalize(self, x):
        if self.norm == "channel":
            mean, std = self.stats
            return x * std + mean
        return x / self.scale + self.shift

    def clean_sample(self, batch: dict, rng) -> jax.Array:
        """x0 for the objective: a normalised posterior sample per example (rng: per-example keys);
        a deterministic tokenizer's latent as it is."""
        if "latent_logvar" not in batch:
            return self.normalize(batch["latent_mean"])
        mean, logvar = batch["latent_mean"], batch["latent_logvar"]
        eps = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, LATENT_SAMPLE_STREAM), mean.shape[1:]))(rng)
        return self.normalize(mean + jnp.exp(0.5 * logvar) * eps.astype(mean.dtype))

    def decode(self, samples: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Normalised latents (N, h, w, C) -> pixels (N, H, W, C_image) in [-1, 1]."""
        z = self.denormalize(np.asarray(samples, np.float32))
        out = []
        for start in range(0, len(z), batch_size):
            part = z[start:start + batch_size]
            n = len(part)
            if n < batch_size and len(z) > batch_size:  # one compiled shape
                part = np.concatenate([part, np.repeat(part[:1], batch_size - n, axis=0)])
            out.append(self.codec.decode(part)[:n])
        return np.concatenate(out)


def _data_dir(data_dir):
    from unigen.data.tfds_source import resolve_data_dir
    return resolve_data_dir(data_dir)
