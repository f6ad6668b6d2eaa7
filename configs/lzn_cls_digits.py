"""Latent Zoning Networks, task 3: classification and class-conditional generation, one model.

    python train/train.py --config configs/lzn_cls_digits.py --workdir runs/lzn_cls

One LZN with an image encoder, ten learnable label anchors and a DiT decoder (the reference's
GenerationTrainer with `conditional=True`, case study 3): each batch's anchors E(x) are
carried by the batch's latent flow to latents z; the decoder learns the rectified flow to
the image given z and the label; and z, reversed through the label anchors (Euler, 100
steps, the batch's class frequencies as prior), must end in its label's zone (the latent
alignment loss, -max_t p(label) after the first 20% of steps). Classification: an image's
latent, reversed through the label anchors, lands at its class's anchor
(`unigen.from_pretrained(WORKDIR, component="classifier")`). Generation of class c: a latent
drawn in c's zone (c's label anchor carried by the label flow from N(0, I) noise), decoded.

Evaluation: test accuracy of the classifier (per image, with the training batch's worth of
reference images as the anchor set; and each test batch as its own anchor set, the
reference's protocol), then the digits protocol on class-conditional samples (the digit
read by the protocol's classifier, FD). What to expect on a 2-core CPU: see
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
        encoder=dict(patch_size=2, width=64, depth=2, num_heads=4, mlp_ratio=4.0, latent_dim=32),
        decoder=dict(name="DiT-S/2", depth=4, hidden_size=128, num_heads=4, patch_size=2, mlp_ratio=4.0,
                     class_dropout_prob=0.0),
        num_classes=-1,           # label anchors for the data set's classes
        decoder_label=True,       # the decoder also sees the label (the reference's conditional decoder)
        attention_backend="auto", scan_layers=False, remat=False,
    )
    c.task = dict(name="lzn_classification")
    c.lzn = dict(encode_steps=20, encode_solver="dpm++2m", noise_scale=1.0, label_steps=100,
                 label_solver="euler", cut=0.2, recon_weight=1.0, label_weight=1.0,
                 label_loss_kind="log",   # -log max p (the reference: -max p; "log" learns faster here)
                 reference_size=0)
    c.diffusion = dict(kind="flow", time_sampling="logit_normal", loc=0.0, scale=1.0, shift=1.0,
                       time_scale=1000.0)

    c.train = common.train(
        steps=2000, batch_size=128,
        # The label anchors learn at 1.5x the networks' rate (the reference gives each part its own rate too).
        lr_multipliers=(("^labels/", 1.5),),
    )
    c.sample = common.sample(clip_denoised=True)
    c.eval = common.eval()
    c.mesh = common.mesh()
    return c
