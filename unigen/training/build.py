"""Config -> objects, validating the whole config first (DESIGN.md §11).

Every error names the config field (`config.train.batch_size=...`) and says the fix,
before anything is compiled or any data is read.
"""

from __future__ import annotations

import dataclasses

from unigen.diffusion import GaussianDiffusion, RectifiedFlow
from unigen.models.dit import DiTConfig, dit_config

SAMPLERS = {"gaussian": ("ddpm", "ddim", "dpm_solver_2m"), "flow": ("euler", "heun", "dpm_solver_2m")}
_MODEL_META = {"name", "compat"}


class ConfigError(ValueError):
    pass


def _need(cond: bool, field: str, value, fix: str) -> None:
    if not cond:
        raise ConfigError(f"config.{field}={value!r}: {fix}")


def model_config(cfg) -> DiTConfig:
    m, d, t = cfg.model, cfg.data, cfg.train
    fields = {k: v for k, v in m.items() if k not in _MODEL_META and v is not None}
    known = {f.name for f in dataclasses.fields(DiTConfig)}
    for k in fields:
        _need(k in known, f"model.{k}", fields[k], f"not a DiT field; known: {sorted(known)}")
    if "attention_options" in fields:
        fields["attention_options"] = tuple(sorted(dict(fields["attention_options"]).items()))
    fields.update(input_size=d.image_size, in_channels=d.channels, num_classes=d.num_classes,
                  dtype=t.compute_dtype)
    try:
        return dit_config(m.name, compat=m.get("compat", "official"), **fields)
    except ValueError as e:
        raise ConfigError(f"config.model: {e}") from e


def diffusion_process(cfg, learn_sigma: bool):
    dcfg = cfg.diffusion
    _need(dcfg.kind in SAMPLERS, "diffusion.kind", dcfg.kind, f"use one of {sorted(SAMPLERS)}")
    try:
        if dcfg.kind == "gaussian":
            return GaussianDiffusion.create(dcfg.num_timesteps, dcfg.beta_schedule, learn_sigma=learn_sigma,
                                            loss=dcfg.loss)
        _need(not learn_sigma, "model.learn_sigma", learn_sigma, "a rectified flow predicts a velocity: set False")
        return RectifiedFlow.create(dcfg.get("time_sampling", "logit_normal"), dcfg.get("loc", 0.0),
                                    dcfg.get("scale", 1.0), dcfg.get("shift", 1.0), dcfg.get("time_scale", 1000.0))
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"config.diffusion: {e}") from e


def validate(cfg, num_devices: int | None = None):
    """Check every field; returns (DiTConfig, diffusion process)."""
    _need(isinstance(cfg.seed, int) and cfg.seed >= 0, "seed", cfg.seed, "use a non-negative int")
    d, t, s = cfg.data, cfg.train, cfg.sample
    _need(not d.get("latent_encoder"), "data.latent_encoder", d.get("latent_encoder"),
          "latent (VAE) training arrives with the tokenizers work; set '' to train in pixel space")
    _need(d.image_size in (8, 16, 32, 64, 128, 256, 512), "data.image_size", d.image_size,
          "use a power of two between 8 and 512")
    _need(d.channels in (1, 3, 4), "data.channels", d.channels, "use 1 (grey), 3 (RGB) or 4 (latents)")
    _need(d.num_classes >= 1, "data.num_classes", d.num_classes, "must be >= 1")
    for f in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints"):
        _need(isinstance(t[f], int) and t[f] > 0, f"train.{f}", t[f], "must be a positive int")
    _need(t.sample_every >= 0, "train.sample_every", t.sample_every, "must be >= 0 (0 = never)")
    _need(t.lr > 0, "train.lr", t.lr, "must be > 0")
    _need(0 <= t.warmup_steps, "train.warmup_steps", t.warmup_steps, "must be >= 0")
    _need(t.lr_schedule in ("cosine", "constant"), "train.lr_schedule", t.lr_schedule, "use 'cosine' or 'constant'")
    _need(0.0 <= t.ema_decay < 1.0, "train.ema_decay", t.ema_decay, "must be in [0, 1)")
    _need(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, "must be >= 0 (0 = off)")
    _need(t.compute_dtype in ("float32", "bfloat16"), "train.compute_dtype", t.compute_dtype,
          "use 'float32' or 'bfloat16'")
    _need(t.batch_size % t.grad_accum == 0, "train.batch_size", t.batch_size,
          f"must be divisible by train.grad_accum={t.grad_accum}")
    if num_devices is not None:
        micro = t.batch_size // t.grad_accum
        _need(micro % num_devices == 0 or num_devices == 1, "train.batch_size", t.batch_size,
              f"each micro-batch ({micro}) must split evenly over the {num_devices} devices")
    model_cfg = model_config(cfg)
    process = diffusion_process(cfg, model_cfg.learn_sigma)
    _need(s.sampler in SAMPLERS[cfg.diffusion.kind], "sample.sampler", s.sampler,
          f"use one of {SAMPLERS[cfg.diffusion.kind]} for diffusion.kind={cfg.diffusion.kind!r}")
    _need(s.steps >= 1, "sample.steps", s.steps, "must be >= 1")
    _need(s.cfg_scale >= 0, "sample.cfg_scale", s.cfg_scale, "must be >= 0 (1 = no guidance)")
    if s.cfg_scale != 1.0:
        _need(model_cfg.class_dropout_prob > 0, "sample.cfg_scale", s.cfg_scale,
              "guidance needs a model trained with label dropout (model.class_dropout_prob > 0)")
    for f in ("data", "fsdp", "tensor", "context"):
        _need(isinstance(cfg.mesh[f], int) and (cfg.mesh[f] >= 1 or cfg.mesh[f] == -1), f"mesh.{f}",
              cfg.mesh[f], "use a positive int, or -1 to fill the remaining devices")
    return model_cfg, process
