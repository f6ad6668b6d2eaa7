"""DiT-XL/2 on ImageNet 256x256, the paper's setup (Peebles & Xie 2023, §4-5).

    python train/train.py --config configs/dit_xl2_imagenet256.py --workdir runs/dit_xl2 \
        --config.mesh.fsdp=8            # one node of 8 GPUs; see docs/multi_gpu.md

Paper setup: class-conditional on ImageNet-1k, Stable Diffusion VAE latents (256 -> 32x32x4,
scaled by 0.18215), AdamW lr 1e-4 constant, no weight decay, no warmup, no clipping, batch
256, EMA 0.9999, 1000-step linear-beta diffusion with learned sigma (hybrid loss), label
dropout 0.1. Reported: FID-50K 2.27 at 7M steps with cfg 1.5 and 250 DDPM steps (guidance on
the first 3 channels, as the official sampler).

Needs: `imagenet2012` prepared for TFDS as array_record (see docs/multi_gpu.md) and the SD VAE as a
diffusers folder (`stabilityai/sd-vae-ft-ema` downloaded to `data.latent_encoder`, a path;
a pipeline folder with `vae/` works too). The first run encodes the train split once into
`data.latent_dir` ('' = `<TFDS data dir>/unigen_latents/imagenet2012-256px-<VAE fingerprint>`:
1.28M posterior means and log-variances, 32x32x4 float32 each, ~42 GB, every process encoding
its share), then trains on a fresh posterior sample per image and step; sample grids and
`infer/sample.py` decode to 256x256 pixels. The test suite runs this config end to end (encode,
2 steps, sample, decode) on a tiny generated imagenet2012 and a random-weight VAE folder.
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
    c.imports = ()  # modules or .py files to import first (model kinds / tasks registered outside unigen)
    c.data = dict(name="imagenet2012", image_size=256, channels=3, num_classes=1000, data_dir="",
                  latent_encoder="sd-vae-ft-ema", latent_channels=4, latent_downsample=8, latent_scale=0.18215,
                  latent_norm="vae", latent_dir="")
    # The DiT-XL/2 preset's values, spelled out so the command line can override them.
    c.model = dict(kind="dit", name="DiT-XL/2", compat="official", depth=28, hidden_size=1152, num_heads=16,
                   patch_size=2, class_dropout_prob=0.1, learn_sigma=True,
                   attention_backend="auto", scan_layers=True, remat=True)
    c.task = dict(name="diffusion")  # a registered task (unigen.tasks): batch, loss, grids, evaluation
    c.diffusion = dict(kind="gaussian", num_timesteps=1000, beta_schedule="linear", loss="hybrid")
    c.train = common.train(
        steps=400_000, batch_size=256,
        lr=1e-4, warmup_steps=0, lr_schedule="constant", b2=0.999, grad_clip=0.0,
        ema_decay=0.9999, compute_dtype="bfloat16",
        log_every=100, checkpoint_every=5000, keep_checkpoints=3, sample_every=10_000,
    )
    c.sample = common.sample(sampler="ddpm", steps=250, cfg_scale=1.5, guided_channels=3, per_class=4)
    c.eval = common.eval(at_end=False, batch_size=64)
    c.mesh = common.mesh(fsdp=8, rules="fsdp")
    return c
