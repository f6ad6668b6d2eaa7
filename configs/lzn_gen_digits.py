"""Latent Zoning Networks, task 1: generation. A rectified-flow decoder conditioned on LZN latents.

    python train/train.py --config configs/lzn_gen_digits.py --workdir runs/lzn_gen

Each batch's images are encoded to anchors by a small ViT; the latent flow of the batch
carries them to latents z (DPM-Solver++(2M), 20 steps, from N(0, I) start noise); a DiT
decoder conditioned on z (and the timestep) learns the rectified flow to the image, encoder
and decoder trained end to end (the reference's GenerationTrainer, unconditional case).
Sampling draws z ~ N(0, I) and decodes it. Evaluated with the label-free digits protocol
(FD, memorisation) like an unconditional DiT; `bench/lzn_generation.py` trains the same
decoder without the latent (plain RF) for the same steps and compares FD in one script.

What to expect on a 2-core CPU: see docs/lzn.md.
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

    c.data = dict(name="digits", image_size=8, channels=1, num_classes=10, data_dir="")

    c.model = dict(
        kind="lzn",
        encoder=dict(patch_size=2, width=64, depth=2, num_heads=4, mlp_ratio=4.0, latent_dim=8),
        decoder=dict(name="DiT-S/2", depth=4, hidden_size=128, num_heads=4, patch_size=2, mlp_ratio=4.0,
                     class_dropout_prob=0.0),
        num_classes=0,            # no label anchors: unconditional generation
        decoder_label=False,
        attention_backend="auto", scan_layers=False, remat=False,
    )
    c.task = dict(name="lzn_generation")
    c.lzn = dict(encode_steps=20, encode_solver="dpm++2m", noise_scale=1.0)
    c.diffusion = dict(kind="flow", time_sampling="logit_normal", loc=0.0, scale=1.0, shift=1.0,
                       time_scale=1000.0)

    c.train = common.train(
        steps=3000,
        # The encoder learns at 1/10 of the decoder's rate (the reference: 1/40), so the latents the
        # decoder reads drift slowly.
        lr_multipliers=(("^encoder/", 0.1),),
    )
    c.sample = common.sample(clip_denoised=True)
    c.eval = common.eval()
    c.mesh = common.mesh()
    return c
