"""RAE on digits: the frozen LZN image encoder's 4x4x64 token states as the latent, a ViT decoder to 8x8 pixels.

    python train/train.py --config configs/lzn_repr_digits.py --workdir runs/lzn_repr    # the encoder
    python train/train.py --config configs/rae_digits.py --workdir runs/rae \
        --config.rae.encoder=runs/lzn_repr

The encoder is the representation encoder of configs/lzn_repr_digits.py (its architecture is
read from that config, so the two cannot drift), frozen; RAE keeps its patch tokens after the
final LayerNorm without the affine (16 tokens of width 64) and normalises them per position and
channel with statistics of the training split. Only the decoder trains: a ViT-MAE decoder
(width 128, 4 blocks, patch 2) on L1 with the paper's noise augmentation of the tokens,
sigma ~ U(0, 0.5) (the reference's 0.8 reaches only 28.5 dB here; 0.5 gives 30.5 dB),
unigen/tasks/rae.py. No LPIPS or GAN term (no weights offline).

Evaluation (`eval.json`, `reconstructions.png`): test-split PSNR, latent statistics and a linear
probe on the latents next to raw pixels. Expected on a 2-core CPU: see docs/rae.md. The work dir
is a tokenizer: `--config.data.latent_encoder=runs/rae` (configs/ditdh_digits.py).
"""

import importlib.util
import os

import ml_collections

# configs/common.py: the shared train / sample / eval / mesh defaults (loaded by path, as this file is)
_spec = importlib.util.spec_from_file_location(
    "configs_common", os.path.join(os.path.dirname(os.path.realpath(__file__)), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def _lzn_encoder() -> dict:
    """The LZN representation encoder's fields, from configs/lzn_repr_digits.py."""
    lzn = common.config("lzn_repr_digits.py")
    return dict(lzn.model.encoder, image_size=lzn.data.image_size, channels=lzn.data.channels)


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init_from = ""
    c.imports = ()

    c.data = dict(name="digits", image_size=8, channels=1, num_classes=10, data_dir="")

    c.model = dict(
        kind="rae",
        encoder_type="lzn", encoder=_lzn_encoder(),
        encoder_input_size=8, encoder_norm_mean=(0.5,), encoder_norm_std=(0.5,),  # [0, 1] -> the LZN's [-1, 1]
        decoder_hidden_size=128, decoder_num_layers=4, decoder_num_heads=4, decoder_intermediate_size=512,
        patch_size=2,
        noise_tau=0.5,             # the reference's 0.8 costs 2 dB here (28.5 vs 30.5 dB; docs/rae.md)
        scaling_factor=1.0,
        latent_stats="position",   # latents_mean / latents_std per position and channel, as the reference's stat.pt
        attention_backend="auto",
    )
    c.task = dict(name="rae")
    c.rae = dict(encoder="runs/lzn_repr", stats_images=50_000, l1_weight=1.0, l2_weight=0.0)

    c.train = common.train(
        steps=3000, lr=1e-3, warmup_steps=100, b2=0.95,
        frozen=("^encoder/", "^latents_"),   # the encoder and the latent statistics stay fixed
        sample_every=0,
    )
    # No sampler (a tokenizer reconstructs); the section stays for the trainer's common fields.
    c.sample = common.sample(sampler="euler", steps=1, per_class=8)
    c.eval = common.eval(num_samples=0, seeds=1, batch_size=512)  # no samples: PSNR, latents, probes
    c.mesh = common.mesh()
    return c
