"""VA-VAE tokenizer on digits: 8x8 grey images -> 4x4x4 latents, aligned with a frozen encoder.

    python train/train.py --config configs/lzn_repr_digits.py --workdir runs/lzn_repr    # the foundation
    python train/train.py --config configs/vavae_digits.py --workdir runs/vavae \
        --config.vavae.foundation=runs/lzn_repr

The network is the SD-style KL autoencoder (unigen/tokenizers/autoencoder_kl.py) at digit size:
two levels (32, 64 channels; one 2x downsample), one ResNet block per level, mid-block
attention, 4 latent channels. The loss is VA-VAE's (unigen/tasks/autoencoder.py): L1 NLL with
a learned log-variance, KL weight 1e-6, and the vision-foundation alignment to the frozen LZN
image encoder's 4x4 token states (width 64, so `model.vf_dim=64`) with margins 0.25 / 0.1 (the
paper's 0.5 / 0.25 left the alignment inactive here, see below), weight 0.1 times the adaptive
gradient-norm ratio. `--config.vavae.foundation=''` (with
`--config.model.vf_dim=0`) trains the same autoencoder without alignment; `bench/vavae_alignment.py`
runs both and compares the latents' linear probes.
No LPIPS or GAN term: their weights (VGG LPIPS, a discriminator) do not exist offline here.

Evaluation (`eval.json`, `reconstructions.png`): test-split PSNR, latent statistics and a
linear probe on the latents next to the raw-pixel probe. Expected on a 2-core CPU: see
docs/latent_diffusion.md. Use the work dir as a tokenizer with
`--config.data.latent_encoder=runs/vavae` (configs/lightningdit_digits.py).
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
        kind="vavae",
        autoencoder=dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=16,
                         scaling_factor=1.0, shift_factor=0.0, use_quant_conv=True, use_post_quant_conv=True,
                         mid_block_add_attention=True),
        vf_dim=64,                # the foundation tokens' width (the LZN encoder's 64); 0 without alignment
        remat=False,
    )
    c.task = dict(name="autoencoder")
    # Margins 0.25 / 0.1, not the paper's 0.5 / 0.25 (tuned for DINOv2 on 16x16x32 latents): at those
    # the 4-channel digit latents met both margins within 200 steps, the alignment loss fell to
    # ~1e-5 and stopped shaping them (same probe as without it; bench/RESULTS.md).
    c.vavae = dict(foundation="runs/lzn_repr", vf_weight=0.1, adaptive=True, cos_margin=0.25, distmat_margin=0.1,
                   kl_weight=1e-6)

    c.train = common.train(steps=3000, lr=1e-3, warmup_steps=100, sample_every=0)
    # No sampler (a tokenizer reconstructs); the section stays for the trainer's common fields.
    c.sample = common.sample(sampler="euler", steps=1, per_class=8)
    c.eval = common.eval(num_samples=0, seeds=1, batch_size=512)  # no samples: PSNR, latents, probes
    c.mesh = common.mesh()
    return c
