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

    c.train = common.train(steps=400, batch_size=512, warmup_steps=50, weight_decay=0.05,
                           log_every=25, checkpoint_every=100, sample_every=0)
    c.sample = common.sample(clip_denoised=True)  # unused: the encoder does not sample
    c.eval = common.eval()
    c.mesh = common.mesh()
    return c
