"""The "rae" task: train an RAE's ViT decoder on a frozen representation encoder (model kind
"rae", unigen/tokenizers/rae.py; Zheng et al. 2025, stage 1).

Before the first step (`fill_model`, on the host) the encoder named by `config.rae.encoder` is
read with `unigen.from_pretrained` (an LZN work dir gives its image encoder; a transformers
DINOv2 folder gives DINOv2) and copied into the model's `encoder`, whose architecture
`config.model.encoder` must describe (a mismatch fails naming the fields); then the latent
statistics are estimated on up to `stats_images` training images: mean and population std over
images per latent position and channel, as the reference's calculate_stat.py (or per channel
with `model.latent_stats="channel"`, over everything with "global"). `config.train.frozen` must hold the encoder and the
statistics: the decoder alone trains.

Loss per batch: the decoder reconstructs each image from its encoder tokens plus the training
noise sigma n, sigma ~ U(0, model.noise_tau) per image (the paper's noise-augmented decoding,
0.8 in the reference), as
    L = l1_weight * mean|x - D(z)| + l2_weight * mean (x - D(z))^2     on [0, 1] pixels.
The reference adds LPIPS and a GAN loss; their weights do not exist offline here, so they are
left out (a config can raise l2_weight instead).

Evaluation: test-split PSNR, latent statistics, a linear probe on the latents (digits: next to
raw pixels) and `reconstructions.png` (unigen/tasks/autoencoder.py `tokenizer_report`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unigen.diffusion.objective import per_example
from unigen.errors import ConfigError
from unigen.config_sections import config_section, read_section
from unigen.tasks.arrays import in_batches
from unigen.tasks.base import Task, register_task
from unigen.tasks.frozen import representation_encoder

@config_section("rae")
@dataclasses.dataclass(frozen=True)
class RAEOptions:
    encoder: str = ""            # the frozen encoder: an LZN work dir or a DINOv2 folder
    stats_images: int = 50_000   # training images that estimate latents_mean / latents_std
    l1_weight: float = 1.0
    l2_weight: float = 0.0

    @classmethod
    def from_config(cls, cfg) -> "RAEOptions":
        opts = read_section(cls, cfg)
        for field in ("l1_weight", "l2_weight"):
            v = getattr(opts, field)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"config.rae.{field}={v!r}: must be a number >= 0")
        if opts.l1_weight == 0 and opts.l2_weight == 0:
            raise ConfigError("config.rae.l1_weight and l2_weight are both 0: nothing to train")
        if isinstance(opts.stats_images, bool) or not isinstance(opts.stats_images, int) or opts.stats_images < 1:
            raise ConfigError(f"config.rae.stats_images={opts.stats_images!r}: must be a positive integer")
        if not isinstance(opts.encoder, str):
            raise ConfigError(f"config.rae.encoder={opts.encoder!r}: give the frozen encoder's path")
        return opts


def _architecture(cfg) -> dict:
    """The config fields that change weights (runtime options dropped)."""
    runtime = {"dtype", "attention_backend", "scan_layers", "remat", "layernorm_affine"}
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in runtime}


@register_task("rae")
class RAETask(Task):
    process = None  # no sampler: evaluation reconstructs

    def __init__(self, cfg, model_kind, model_cfg):
        super().__init__(cfg, model_kind, model_cfg)
        if model_kind.name != "rae":
            raise ConfigError(f"config.task.name='rae' trains model.kind='rae'; got {model_kind.name!r}")
        self.opts = RAEOptions.from_config(cfg)
        d = cfg.data
        if model_cfg.image_size != d.image_size:
            raise ConfigError(f"config.model.patch_size={model_cfg.patch_size}: the decoder writes "
                              f"{model_cfg.image_size}px images (patch_size x the encoder's {model_cfg.grid}x"
                              f"{model_cfg.grid} grid), config.data.image_size is {d.image_size}; set patch_size to "
                              f"{d.image_size / model_cfg.grid:g} or change the image size")
        frozen = tuple(cfg.train.get("frozen", ()) or ())
        paths = {"encoder": "encoder/patch_embed/kernel", "latents_mean": "latents_mean", "latents_std": "latents_std"}
        if model_cfg.latent_stats == "none":
            paths = {"encoder": paths["encoder"]}
        missing = [name for name, path in paths.items() if not any(re.search(f, path) for f in frozen)]
        if missing or any(re.search(f, "decoder/embed/kernel") for f in frozen):
            raise ConfigError(f"config.train.frozen={list(frozen)}: must freeze {sorted(paths)} and leave the decoder "
                              f"trainable (only the decoder trains); e.g. frozen=('^encoder/', '^latents_')")
        self.sample_shape = (d.image_size, d.image_size, d.channels)

    # ---- the pretrained parts -----------------------------------------------------------------
    def fill_model(self, model):
        if not self.opts.encoder:
            raise ConfigError("config.rae.encoder is empty: give the frozen encoder's path (an LZN work dir or a "
                              "transformers DINOv2 folder)")
        source = representation_encoder(self.opts.encoder, "rae.encoder")
        want = model.cfg.encoder
        if type(source.cfg) is not type(want) or _architecture(source.cfg) != _architecture(want):
            got = _architecture(source.cfg)
            diff = {k: v for k, v in got.items() if _architecture(want).get(k) != v}
            raise ConfigError(f"config.rae.encoder={self.opts.encoder!r} holds a {type(source).__name__} "
                              f"{got}; config.model.encoder (encoder_type={model.cfg.encoder_type!r}) describes "
                              f"another one: set config.model.encoder fields {diff}")
        target = dict(nnx.to_flat_state(nnx.state(model.encoder, nnx.Param)))
        given = dict(nnx.to_flat_state(nnx.state(source, nnx.Param)))
        # RAE drops the final LayerNorm's affine: a DINOv2 folder's layernorm scale/bias are not used.
        unused = sorted("/".join(map(str, k)) for k in set(given) - set(target))
        if any(not re.fullmatch(r"norm/(scale|bias)", u) for u in unused) or set(target) - set(given):
            raise ConfigError(f"config.rae.encoder={self.opts.encoder!r}: its parameters do not match the RAE "
                              f"encoder's (unused {unused[:4]}, missing "
                              f"{sorted('/'.join(map(str, k)) for k in set(target) - set(given))[:4]})")
        nnx.update(model.encoder, nnx.from_flat_state({k: given[k] for k in target}))
        if model.latents_mean is not None:
            mean, std = self.latent_statistics(model)
            model.latents_mean[...] = jnp.asarray(mean.reshape(model.latents_mean.shape))
            model.latents_std[...] = jnp.asarray(std.reshape(model.latents_std.shape))
        return model

    def latent_statistics(self, model, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Mean and population std of the encoder tokens over up to `stats_images` training images,
        reduced to `latent_stats` (per position and channel, per channel, or one number)."""
        from unigen.data.pipeline import Preprocess
        from unigen.data.tfds_source import data_source
        d = self.cfg.data
        source = data_source(d.name, "train", d.data_dir or None)
        # a fixed random subset when the split is larger (stored order may be sorted, e.g. by class)
        n = min(self.opts.stats_images, len(source))
        idx = np.sort(np.random.default_rng(0).choice(len(source), n, replace=False)) if n < len(source) \
            else np.arange(n)
        pre = Preprocess(d.image_size)
        x = np.stack([pre(source[int(i)])["image"] for i in idx])
        graphdef, state = nnx.split(model)
        tokens = jax.jit(lambda s, x: nnx.merge(graphdef, s).encoder_tokens((x + 1.0) / 2.0))
        g = model.cfg.grid
        z = in_batches(lambda b: tokens(state, b), x, batch_size).reshape(len(x), g, g, -1).astype(np.float64)
        axes = {"position": (0,), "channel": (0, 1, 2), "global": (0, 1, 2, 3)}[model.cfg.latent_stats]
        return z.mean(axes).astype(np.float32), z.std(axes).astype(np.float32)

    # ---- data and loss ------------------------------------------------------------------------
    def dataset(self, split, *, batch_size, seed, shard, shards):
        from unigen.data.pipeline import make_dataset
        d = self.cfg.data
        return make_dataset(d.name, split, batch_size=batch_size, image_size=d.image_size, seed=seed,
                            process_index=shard, process_count=shards, data_dir=d.data_dir or None)

    def loss(self, model, batch, rng, frozen):
        x = (batch["image"].astype(jnp.float32) + 1.0) / 2.0
        tokens = jax.lax.stop_gradient(model.encoder_tokens(x))
        tau = model.cfg.noise_tau

        def draw(key):
            k_sigma, k_noise = jax.random.split(key)
            return tau * jax.random.uniform(k_sigma, ()) * jax.random.normal(k_noise, tokens.shape[1:])

        if tau > 0:
            tokens = tokens + per_example(rng, x.shape[0], draw)
        rec = model.decode(model.normalize(tokens)).astype(jnp.float32)
        l1 = jnp.mean(jnp.abs(rec - x))
        l2 = jnp.mean(jnp.square(rec - x))
        loss = self.opts.l1_weight * l1 + self.opts.l2_weight * l2
        return loss, dict(l1=l1, l2=l2)

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(self, generate, workdir, model=None):
        if model is None:
            return None
        from unigen.images import save_grid
        from unigen.tasks.autoencoder import format_report, tokenizer_report
        report = tokenizer_report(model, self.cfg, batch_size=self.cfg.eval.get("batch_size", 256))
        save_grid(os.path.join(workdir, "reconstructions.png"), report.pop("_grid"), rows=4)
        print(format_report(report), flush=True)
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump(report, f, indent=2)
        return report
