"""Latent Zoning Networks, task 2: unsupervised representation learning.

    python train/train.py --config configs/lzn_repr_digits.py --workdir runs/lzn_repr

The image encoder alone, trained without labels (the reference's ContrastiveTrainer): each
image gives two augmented views (random shifts, small rotations, scalings, shears and ink
gain, drawn in the grain pipeline: unigen/data/augment.py); view A's anchors are carried by
their latent flow (start noise 0.45 N(0, I)) to latents, which are reversed through view B's
anchors and must land in the zone of the same image's view B (-log max_t p after the first
20% of steps).

Evaluation: linear probes (softmax regression, the penalty chosen on held-out training
images) on the encoder's anchors, its pooled pre-head features and its flattened token
states, each next to the same probe on the untrained encoder (the control: what training
added), and the probe on raw pixels, all measured in the same run. The encoder loads as
`unigen.from_pretrained(WORKDIR, component="encoder")`. What to expect on a 2-core CPU: see
docs/lzn.md.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init_from = ""
    c.imports = ()

    c.data = dict(name="digits", image_size=8, channels=1, num_classes=10, data_dir="")

    c.model = dict(
        kind="lzn",
        encoder=dict(patch_size=2, width=64, depth=2, num_heads=4, mlp_ratio=4.0, latent_dim=64),
        decoder=None,             # no decoder: the encoder is the model
        num_classes=0,
        attention_backend="auto", scan_layers=False, remat=False,
    )
    c.task = dict(name="lzn_representation")
    c.lzn = dict(encode_steps=20, encode_solver="dpm++2m", noise_scale=0.45, cut=0.2, contrastive_kind="log",
                 symmetric=True,
                 # twice unigen.data.augment's default ranges (shift 1 px): stronger views kept the
                 # probe improving for longer in a sweep (bench/RESULTS.md)
                 augment=dict(max_shift=1, rotation_deg=20.0, scale_min=0.8, scale_max=1.2, shear_deg=10.0,
                              intensity=0.2))

    c.train = dict(
        steps=400, batch_size=512, grad_accum=1,
        lr=2e-3, warmup_steps=50, lr_schedule="cosine", weight_decay=0.05,
        b1=0.9, b2=0.99, grad_clip=1.0,
        ema_decay=0.999, compute_dtype="float32", frozen=(),
        lr_multipliers=(),        # ((regex over parameter paths, factor), ...): per-part learning rates
        cpu_custom_vjps=True, async_checkpointing=True,
        log_every=25, checkpoint_every=100, keep_checkpoints=2, sample_every=0,
    )
    c.sample = dict(sampler="dpm_solver_2m", steps=15, cfg_scale=1.0, guided_channels=-1,
                    eta=0.0, clip_denoised=True, per_class=10)
    c.eval = dict(at_end=True, num_samples=5000, seeds=3, batch_size=1000, rerun=False)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, context=1, rules="dp")
    return c
