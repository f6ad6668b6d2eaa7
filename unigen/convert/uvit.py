"""diffusers `UniDiffuserModel` folders (a model folder, or a UniDiffuser pipeline's `unet/`)
-> unigen UViT.

config.json maps field by field onto UViTConfig, each by what diffusers does with it: options
that change the network and unigen's U-ViT does not have (cross-attention, AdaLayerNorm) are
refused by name; dropout settings, attention upcasting and fields diffusers takes but does not
read (num_vector_embeds, num_embeds_ada_norm unless norm_type is "ada_norm", ...) are ignored.
Every weight key is read exactly once (`StateDict.finish`). diffusers' in-block i is
`in_blocks.<i>`, its out-block i (skip join + block) `out_blocks.<i>`, in both the loop and the
scanned layout.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from unigen.convert.registry import register_diffusers
from unigen.convert.torch_layout import StateDict, fused_qkv, linear
from unigen.convert.unigen_format import build_filled
from unigen.convert.weights import read_config_fields, read_folder_weights
from unigen.errors import ConfigError, WeightError
from unigen.models.uvit import ACTIVATIONS, UVIT_KIND, UViT, UViTConfig, patch_pos_embed

_NONE_INT = (int, type(None))
# config.json field -> (accepted types, diffusers' default)
_FIELDS = {
    "text_dim": (int, 768), "clip_img_dim": (int, 512), "num_text_tokens": (int, 77),
    "num_attention_heads": (int, 16), "attention_head_dim": (int, 88), "in_channels": (_NONE_INT, None),
    "out_channels": (_NONE_INT, None), "num_layers": (int, 1), "sample_size": (_NONE_INT, None),
    "patch_size": (_NONE_INT, None), "attention_bias": (bool, False), "activation_fn": (str, "geglu"),
    "block_type": (str, "unidiffuser"), "pre_layer_norm": (bool, False), "use_timestep_embedding": (bool, False),
    "norm_elementwise_affine": (bool, True), "use_patch_pos_embed": (bool, False),
    "use_data_type_embedding": (bool, False),
    # read below by what diffusers does with them (modeling_uvit.py)
    "cross_attention_dim": (_NONE_INT, None), "norm_type": (str, "layer_norm"),
    "num_embeds_ada_norm": (_NONE_INT, None),
    # ignored: training-time dropout, attention upcasting (float32 here), and fields diffusers' U-ViT
    # takes but never reads (num_vector_embeds, use_linear_projection, norm_num_groups) or reads only
    # with cross-attention (only_cross_attention: attn1 attends to encoder states only when there are
    # any, and a UniDiffuserModel has none without cross_attention_dim)
    "dropout": ((float, int), 0.0), "upcast_attention": (bool, False), "use_linear_projection": (bool, False),
    "norm_num_groups": (int, 32), "ff_final_dropout": (bool, True), "num_vector_embeds": (_NONE_INT, None),
    "only_cross_attention": (bool, False),
}
_IGNORED = ("dropout", "upcast_attention", "use_linear_projection", "norm_num_groups", "ff_final_dropout",
            "num_vector_embeds", "only_cross_attention")


def _check_norms(fields: dict):
    """diffusers' blocks use AdaLayerNorm exactly when norm_type == "ada_norm" and num_embeds_ada_norm is
    set; "ada_norm" or "ada_norm_zero" without it raise in diffusers; every other pair means plain
    LayerNorms (UniDiffuser-v1's released config has norm_type "layer_norm" with num_embeds_ada_norm 1000)."""
    norm_type, embeds = fields.pop("norm_type"), fields.pop("num_embeds_ada_norm")
    if norm_type == "ada_norm" and embeds is not None:
        raise WeightError(f"config.json field 'norm_type' = 'ada_norm' (with num_embeds_ada_norm = {embeds}): "
                          f"unigen's U-ViT has no AdaLayerNorm blocks; only LayerNorm ones")
    if norm_type in ("ada_norm", "ada_norm_zero") and embeds is None:
        raise WeightError(f"config.json field 'norm_type' = {norm_type!r} needs num_embeds_ada_norm, which is "
                          f"null (diffusers refuses this config too)")


def diffusers_config(config: dict, **overrides: Any) -> UViTConfig:
    """Map a diffusers `UniDiffuserModel` config.json onto UViTConfig."""
    fields = read_config_fields(config, _FIELDS, "U-ViT")
    if fields.pop("cross_attention_dim") is not None:  # diffusers adds attn2 + norm2 to every block
        raise WeightError(f"config.json field 'cross_attention_dim' = {config['cross_attention_dim']!r}: unigen's "
                          f"U-ViT has no cross-attention blocks; only null is supported")
    _check_norms(fields)
    for key in _IGNORED:
        fields.pop(key)
    for key in ("sample_size", "patch_size", "in_channels"):
        if fields[key] is None:
            raise WeightError(f"config.json field {key!r} is missing or null; a UniDiffuserModel needs it")
    if fields["out_channels"] is None:  # diffusers: out_channels defaults to in_channels
        fields["out_channels"] = fields["in_channels"]
    if fields["activation_fn"] not in ACTIVATIONS:
        raise WeightError(f"config.json field 'activation_fn' = {fields['activation_fn']!r}: unigen's U-ViT "
                          f"supports {ACTIVATIONS}")
    # diffusers builds UniDiffuserBlock for "unidiffuser" and UTransformerBlock for any other value
    fields["block_type"] = "unidiffuser" if fields["block_type"] == "unidiffuser" else "standard"
    try:
        cfg = UViTConfig(**fields).validate()
    except (ValueError, TypeError) as e:
        raise WeightError(f"config.json does not describe a valid U-ViT: {e}") from None
    try:  # runtime options (scan_layers, attention_backend, ...) are the caller's
        return dataclasses.replace(cfg, **overrides).validate()
    except (ValueError, TypeError) as e:
        raise ConfigError(f"from_pretrained overrides: {e}") from None


def _norm(src: StateDict, prefix: str, d: int, dst: dict, out: str, affine: bool = True):
    if affine:
        dst[f"{out}.scale"] = src.take(f"{prefix}.weight", (d,))
        dst[f"{out}.bias"] = src.take(f"{prefix}.bias", (d,))


def _block(src: StateDict, pre: str, cfg: UViTConfig, dst: dict, out: str):
    """A UniDiffuserBlock / UTransformerBlock (same parameters; norm2 exists only with
    cross-attention, which is refused)."""
    d, h, dh, inner = cfg.hidden_size, cfg.num_attention_heads, cfg.attention_head_dim, 4 * cfg.hidden_size
    fused_qkv(src, tuple(f"{pre}attn1.to_{w}" for w in "qkv"), d, h, dh, dst, f"{out}.qkv", bias=cfg.attention_bias)
    linear(src, f"{pre}attn1.to_out.0", d, (d,), dst, f"{out}.proj")
    dst[f"{out}.proj.kernel"] = dst[f"{out}.proj.kernel"].reshape(h, dh, d)
    _norm(src, f"{pre}norm1", d, dst, f"{out}.attn_norm", cfg.norm_elementwise_affine)
    _norm(src, f"{pre}norm3", d, dst, f"{out}.ff_norm", cfg.norm_elementwise_affine)
    # GEGLU's proj gives [value; gate] halves: read as a (2, inner) output axis
    fc1_out = (2, inner) if cfg.activation_fn == "geglu" else (inner,)
    linear(src, f"{pre}ff.net.0.proj", d, fc1_out, dst, f"{out}.ff.fc1")
    linear(src, f"{pre}ff.net.2", inner, (d,), dst, f"{out}.ff.fc2")


def diffusers_to_flat(sd: dict[str, np.ndarray], cfg: UViTConfig) -> dict[str, np.ndarray]:
    src, dst = StateDict(sd, "diffusers UniDiffuserModel"), {}
    d, p, c = cfg.hidden_size, cfg.patch_size, cfg.in_channels
    # Conv weight (D, C, p, p) read as a Linear over patches flattened in (p, q, c) order.
    dst["img_in.kernel"] = src.take("vae_img_in.proj.weight", (d, c, p, p)).transpose(2, 3, 1, 0).reshape(-1, d)
    dst["img_in.bias"] = src.take("vae_img_in.proj.bias", (d,))
    if src.has("vae_img_in.pos_embed"):  # a non-persistent buffer; a folder that has it must agree
        table = src.take("vae_img_in.pos_embed", (1, cfg.num_patches, d))[0]
        if not cfg.use_patch_pos_embed or not np.allclose(table, patch_pos_embed(cfg), atol=1e-4):
            raise WeightError("diffusers UniDiffuserModel: 'vae_img_in.pos_embed' is not the sin-cos table "
                              "unigen computes (or use_patch_pos_embed is off)")
    linear(src, "clip_img_in", cfg.clip_img_dim, (d,), dst, "clip_img_in")
    linear(src, "text_in", cfg.text_dim, (d,), dst, "text_in")
    if cfg.use_timestep_embedding:
        for which in ("img", "text"):
            linear(src, f"timestep_{which}_embed.linear_1", d, (4 * d,), dst, f"t_{which}_embed.fc1")
            linear(src, f"timestep_{which}_embed.linear_2", 4 * d, (d,), dst, f"t_{which}_embed.fc2")
    n_pos = 2 + cfg.num_text_tokens + 1 + cfg.num_patches
    dst["pos_embed"] = src.take("pos_embed", (1, n_pos, d))[0]
    if cfg.use_data_type_embedding:
        dst["data_type_embed"] = src.take("data_type_token_embedding.weight", (2, d))
        dst["data_type_pos"] = src.take("data_type_pos_embed_token", (1, 1, d)).reshape(d)
    # UTransformer2DModel builds its own PatchEmbed (`transformer.pos_embed`), but UniDiffuserModel
    # feeds it embedded tokens (hidden_states_is_embedding=True), so it never runs: read and drop.
    src.take("transformer.pos_embed.proj.weight", (d, c, p, p))
    src.take("transformer.pos_embed.proj.bias", (d,))
    if src.has("transformer.pos_embed.pos_embed"):
        src.take("transformer.pos_embed.pos_embed", (1, cfg.num_patches, d))
    tr = "transformer."
    for i in range(cfg.num_layers_half):
        _block(src, f"{tr}transformer_in_blocks.{i}.", cfg, dst, f"in_blocks.{i}")
        out, pre = f"out_blocks.{i}", f"{tr}transformer_out_blocks.{i}."
        dst[f"{out}.skip_linear.kernel"] = src.take(f"{pre}skip.skip_linear.weight", (d, 2 * d)).T.reshape(2, d, d)
        dst[f"{out}.skip_linear.bias"] = src.take(f"{pre}skip.skip_linear.bias", (d,))
        _norm(src, f"{pre}skip.norm", d, dst, f"{out}.skip_norm")
        _block(src, f"{pre}block.", cfg, dst, f"{out}.block")
    _block(src, f"{tr}transformer_mid_block.", cfg, dst, "mid_block")
    _norm(src, f"{tr}norm_out", d, dst, "norm_out")
    linear(src, "vae_img_out", d, (p * p * cfg.out_channels,), dst, "img_out")
    linear(src, "clip_img_out", d, (cfg.clip_img_dim,), dst, "clip_img_out")
    linear(src, "text_out", d, (cfg.text_dim,), dst, "text_out")
    src.finish()
    return dst


@register_diffusers("UniDiffuserModel")
def load_diffusers(folder: str, config: dict, **overrides):
    bad = sorted(set(overrides) - set(UVIT_KIND.runtime_fields))
    if bad:
        raise ConfigError(f"from_pretrained overrides {bad} would change the architecture; "
                          f"allowed: {sorted(UVIT_KIND.runtime_fields)}")
    try:
        cfg = diffusers_config(config, **overrides)
    except WeightError as e:
        raise WeightError(f"{folder}: {e}") from None
    return build_filled(UViT, cfg, diffusers_to_flat(read_folder_weights(folder), cfg), folder)
