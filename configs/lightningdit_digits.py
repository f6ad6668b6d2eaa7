"""A class-conditional LightningDiT on the VA-VAE digits tokenizer's 4x4x4 latents.

    python train/train.py --config configs/vavae_digits.py --workdir runs/vavae \
        --config.vavae.foundation=runs/lzn_repr
    python train/train.py --config configs/lightningdit_digits.py --workdir runs/lightningdit \
        --config.data.latent_encoder=runs/vavae

The first run encodes the digits train split once through the tokenizer (posterior means and
log-variances, array_record, with per-channel statistics; unigen/data/latents.py) into
`data.latent_dir` ('' = a folder named after the tokenizer's weights under the TFDS data dir);
each step then trains on a fresh posterior sample, normalised per channel (LightningDiT's
latent_norm). Model: LightningDiT's options on a small DiT (SwiGLU, RMSNorm, 2-D RoPE, the
sin-cos table kept; depth 4, width 128, patch 1 on the 4x4 latent = 16 tokens). Objective:
LightningDiT's linear path with t = 1 data (the network gets t in [0, 1]), logit-normal t, the
velocity loss plus the velocity-direction (cosine) loss with weight 1. Sampling: DPM-Solver++(2M)
15 steps with guidance only on t >= 0.11 (LightningDiT's cfg interval), decoded by the tokenizer
to 8x8 digits for grids, `infer/sample.py` and the evaluation protocol (unigen/eval).
Expected on a 2-core CPU: see docs/latent_diffusion.md.
"""

import importlib.util
import os

import ml_collections

# configs/common.py: the shared train / sample / eval / mesh defaults (loaded by path, as this file is)
_spec = importlib.util.spec_from_file_location(
    "configs_common", os.path.join(os.path.dirname(os.path.realpath(__file__)), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init_from = ""
    c.imports = ()

    c.data = dict(name="digits", image_size=8, channels=1, num_classes=10, data_dir="",
                  latent_encoder="runs/vavae",  # a tokenizer path: a VA-VAE work dir, a diffusers VAE folder
                  latent_channels=4, latent_downsample=2, latent_norm="channel", latent_dir="")

    c.model = dict(
        kind="dit",
        name="LightningDiT-B/1",   # the preset's options (SwiGLU, RMSNorm, 2-D RoPE); the fields below override
        depth=4, hidden_size=128, num_heads=4, patch_size=1, mlp_ratio=4.0,
        class_dropout_prob=0.1, learn_sigma=False,
        attention_backend="auto", scan_layers=True, remat=False,
    )
    c.task = dict(name="diffusion")
    c.diffusion = dict(kind="flow", time_sampling="logit_normal", loc=0.0, scale=1.0, shift=1.0,
                       time_convention="data_at_one", time_scale=1.0, direction_weight=1.0)

    c.train = common.train(steps=3000)
    c.sample = common.sample(cfg_scale=1.15)
    # Guidance on t >= 0.11 only (model time, t = 1 data): LightningDiT's cfg_interval_start.
    c.sample.guidance_interval = (0.11, 1.0)
    c.eval = common.eval()
    c.mesh = common.mesh()
    return c
