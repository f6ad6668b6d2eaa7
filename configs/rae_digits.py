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


def _lzn_encoder() -> dict:
    """The LZN representation encoder's fields, from configs/lzn_repr_digits.py."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lzn_repr_digits.py")
    spec = importlib.util.spec_from_file_location("lzn_repr_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lzn = module.get_config()
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

    c.train = dict(
        steps=3000, batch_size=64, grad_accum=1,
        lr=1e-3, warmup_steps=100, lr_schedule="cosine", weight_decay=0.0,
        b1=0.9, b2=0.95, grad_clip=1.0,
        ema_decay=0.999, compute_dtype="float32",
        frozen=("^encoder/", "^latents_"),   # the encoder and the latent statistics stay fixed
        lr_multipliers=(),
        cpu_custom_vjps=True, async_checkpointing=True,
        log_every=50, checkpoint_every=500, keep_checkpoints=2, sample_every=0,
    )
    # No sampler (a tokenizer reconstructs); the section stays for the trainer's common fields.
    c.sample = dict(sampler="euler", steps=1, cfg_scale=1.0, guided_channels=-1, eta=0.0, clip_denoised=False,
                    per_class=8)
    c.eval = dict(at_end=True, num_samples=0, seeds=1, batch_size=512, rerun=False)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, context=1, rules="dp")
    return c
