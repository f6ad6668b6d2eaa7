"""A class-conditional DiT^DH on the RAE digits tokenizer's 4x4x64 latents.

    python train/train.py --config configs/rae_digits.py --workdir runs/rae \
        --config.rae.encoder=runs/lzn_repr
    python train/train.py --config configs/ditdh_digits.py --workdir runs/ditdh \
        --config.data.latent_encoder=runs/rae

The first run encodes the digits train split once through the RAE (its latents are the frozen LZN
encoder's normalised token states: deterministic, so the store keeps them alone; unigen/data/
latents.py). Model: DiT^DH (unigen/models/ddt.py): a LightningDiT trunk (SwiGLU, RMSNorm, 2-D
RoPE, depth 4, width 128) and the wider, shallow DDT head (2 blocks, width 192, per-token adaLN
from the trunk), patch 1 on the 4x4 latent = 16 tokens of 64 channels. RAE's rule is a width at
least the latent's channels (64 here); its heads are 1.8-5x its trunks, this one 1.5x. Objective: RAE's rectified
flow (t = 0 data, the network gets t in [0, 1]), logit-normal t, with the dimension-dependent shift
sqrt(dim / base): dim = 4*4*64 = 1024, and base 64 = the digits' pixel dimension at which unigen's
pixel-space digits models train unshifted, so shift = 4 (with RAE's ImageNet base 4096 it would be
0.5, a shift towards less noise; `--config.diffusion.shift_base_dim=4096` runs that).
Sampling: DPM-Solver++(2M) 15 steps (RAE: Euler, 50), classifier-free guidance 1.5 over all steps
(the model drops its class 10% of the time; unguided, `--config.sample.cfg_scale=1.0`, it reads as
the prompted digit ~92% of the time against 99% guided), decoded by the RAE to 8x8 digits for
grids, `infer/sample.py` and the evaluation protocol (unigen/eval). The job's evaluation is one
seed of 5000 samples (guidance doubles the sampling cost; `--config.eval.seeds=3` or
`infer/sample.py --protocol` runs the protocol's three). 2000 steps keep the job near 10 minutes;
3000 reach accuracy 0.998 with the same FD but take ~16.
Expected on a 2-core CPU: see docs/rae.md.
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
                  latent_encoder="runs/rae",  # an RAE work dir or a diffusers AutoencoderRAE folder
                  latent_channels=64, latent_downsample=2, latent_norm="vae", latent_dir="")

    c.model = dict(
        kind="ditdh",
        name="DiTDH-S",            # the preset's options; the fields below override its sizes
        depth=4, hidden_size=128, num_heads=4,
        head_depth=2, head_hidden_size=192, head_num_heads=4,
        patch_size=1, mlp_ratio=4.0, class_dropout_prob=0.1,
        attention_backend="auto", scan_layers=False, remat=False,
    )
    c.task = dict(name="diffusion")
    c.diffusion = dict(kind="flow", time_sampling="logit_normal", loc=0.0, scale=1.0, shift=1.0, shift_base_dim=64,
                       time_scale=1.0)

    c.train = common.train(steps=2000, lr=1e-3, b2=0.95)
    # RAE samples with Euler, 50 steps; DPM-Solver++(2M) with 15 steps keeps the guided evaluation samples
    # inside the job's CPU budget (sample.sampler="euler", sample.steps=50 for RAE's sampler; 30 steps
    # measured no better: FD 0.733 against 0.720).
    c.sample = common.sample(cfg_scale=1.5)
    c.eval = common.eval(seeds=1)
    c.mesh = common.mesh()
    return c
