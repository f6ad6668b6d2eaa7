"""diffusers `SD3Transformer2DModel` (SD3 / SD3.5) folders -> unigen MMDiT.

config.json maps field by field onto MMDiTConfig; every weight key is read exactly once
(`StateDict.finish`), and the `pos_embed.pos_embed` buffer, when the folder has one, must be
the table unigen computes. Layer i of diffusers' `transformer_blocks` lands in the run of
identical blocks that holds it (`blocks_<run>.<index in run>`, unigen.models.mmdit.block_runs).
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
from unigen.models.mmdit import MMDIT_KIND, MMDiT, MMDiTConfig, block_runs
from unigen.nn.posemb import scaled_positions, sincos_2d_at

# config.json field -> (accepted types, diffusers' default)
_FIELDS = {
    "sample_size": (int, 128), "patch_size": (int, 2), "in_channels": (int, 16), "num_layers": (int, 18),
    "attention_head_dim": (int, 64), "num_attention_heads": (int, 18), "joint_attention_dim": (int, 4096),
    "caption_projection_dim": (int, 1152), "pooled_projection_dim": (int, 2048),
    "out_channels": ((int, type(None)), 16), "pos_embed_max_size": ((int, type(None)), 96),
    "dual_attention_layers": ((list, tuple), ()), "qk_norm": ((str, type(None)), None),
}


def diffusers_config(config: dict, **overrides: Any) -> MMDiTConfig:
    """Map a diffusers `SD3Transformer2DModel` config.json onto MMDiTConfig."""
    fields = read_config_fields(config, _FIELDS, "MM-DiT")
    if fields["qk_norm"] not in (None, "rms_norm"):
        raise WeightError(f"config.json field 'qk_norm' = {fields['qk_norm']!r}: only None and 'rms_norm' "
                          f"(SD3.5) are supported")
    if fields["out_channels"] is None:  # diffusers: out_channels defaults to in_channels
        fields["out_channels"] = fields["in_channels"]
    fields["dual_attention_layers"] = tuple(fields["dual_attention_layers"])
    try:
        cfg = MMDiTConfig(**fields).validate()
    except (ValueError, TypeError) as e:
        raise WeightError(f"config.json does not describe a valid MM-DiT: {e}") from None
    try:  # runtime options (scan_layers, attention_backend, ...) are the caller's
        return dataclasses.replace(cfg, **overrides).validate()
    except (ValueError, TypeError) as e:
        raise ConfigError(f"from_pretrained overrides: {e}") from None


def _check_pos_embed(src: StateDict, cfg: MMDiTConfig, rows_per_check: int = 16):
    key, size, d = "pos_embed.pos_embed", cfg.pos_embed_max_size, cfg.hidden_size
    if size is None or not src.has(key):
        return
    table = src.take(key, (1, size * size, d))[0].reshape(size, size, d)
    pos = scaled_positions(size, cfg.base_size)
    for r in range(0, size, rows_per_check):  # in row bands: SD3's table is 192 x 192 x 1536
        band = sincos_2d_at(d, pos[r:r + rows_per_check], pos).reshape(-1, size, d)
        if not np.allclose(table[r:r + rows_per_check], band, atol=1e-4):
            raise WeightError(f"{src.name}: {key!r} is not the sin-cos table unigen computes "
                              f"(pos_embed_max_size={size}, base_size={cfg.base_size})")


def _attention(src: StateDict, pre: str, names: dict[str, str], cfg: MMDiTConfig, dst: dict, out: str):
    """One stream's q/k/v (+ qk-norm weights) and output projection."""
    d, h, dh = cfg.hidden_size, cfg.num_attention_heads, cfg.attention_head_dim
    fused_qkv(src, tuple(pre + names[n] for n in "qkv"), d, h, dh, dst, f"{out}.qkv")
    if cfg.qk_norm == "rms_norm":
        dst[f"{out}.q_norm.scale"] = src.take(pre + names["q_norm"], (dh,))
        dst[f"{out}.k_norm.scale"] = src.take(pre + names["k_norm"], (dh,))
    if "proj" in names:
        linear(src, pre + names["proj"], d, (d,), dst, f"{out}.proj")
        dst[f"{out}.proj.kernel"] = dst[f"{out}.proj.kernel"].reshape(h, dh, d)


_IMAGE = dict(q="attn.to_q", k="attn.to_k", v="attn.to_v", q_norm="attn.norm_q.weight",
              k_norm="attn.norm_k.weight", proj="attn.to_out.0")
_CONTEXT = dict(q="attn.add_q_proj", k="attn.add_k_proj", v="attn.add_v_proj", q_norm="attn.norm_added_q.weight",
                k_norm="attn.norm_added_k.weight", proj="attn.to_add_out")
_IMAGE2 = {k: v.replace("attn.", "attn2.") for k, v in _IMAGE.items()}


def _block(src: StateDict, i: int, out: str, dual: bool, pre_only: bool, cfg: MMDiTConfig, dst: dict):
    d, pre = cfg.hidden_size, f"transformer_blocks.{i}."
    linear(src, pre + "norm1.linear", d, (9 if dual else 6, d), dst, f"{out}.x_ada")
    linear(src, pre + "norm1_context.linear", d, (2 if pre_only else 6, d), dst, f"{out}.ctx_ada")
    _attention(src, pre, _IMAGE, cfg, dst, f"{out}.x_attn")
    context = {k: v for k, v in _CONTEXT.items() if not (pre_only and k == "proj")}
    _attention(src, pre, context, cfg, dst, f"{out}.ctx_attn")
    if dual:
        _attention(src, pre, _IMAGE2, cfg, dst, f"{out}.x_attn2")
    streams = (("ff", "x_mlp"),) if pre_only else (("ff", "x_mlp"), ("ff_context", "ctx_mlp"))
    for theirs, ours in streams:
        linear(src, f"{pre}{theirs}.net.0.proj", d, (4 * d,), dst, f"{out}.{ours}.fc1")
        linear(src, f"{pre}{theirs}.net.2", 4 * d, (d,), dst, f"{out}.{ours}.fc2")


def diffusers_to_flat(sd: dict[str, np.ndarray], cfg: MMDiTConfig) -> dict[str, np.ndarray]:
    src, dst = StateDict(sd, "diffusers SD3Transformer2DModel"), {}
    d, p, c = cfg.hidden_size, cfg.patch_size, cfg.in_channels
    # Conv weight (D, C, p, p) read as a Linear over patches flattened in (p, q, c) order.
    dst["x_embedder.kernel"] = src.take("pos_embed.proj.weight", (d, c, p, p)).transpose(2, 3, 1, 0).reshape(-1, d)
    dst["x_embedder.bias"] = src.take("pos_embed.proj.bias", (d,))
    _check_pos_embed(src, cfg)
    emb = "time_text_embed."
    linear(src, emb + "timestep_embedder.linear_1", 256, (d,), dst, "t_embedder.fc1")
    linear(src, emb + "timestep_embedder.linear_2", d, (d,), dst, "t_embedder.fc2")
    linear(src, emb + "text_embedder.linear_1", cfg.pooled_projection_dim, (d,), dst, "pooled_embedder.fc1")
    linear(src, emb + "text_embedder.linear_2", d, (d,), dst, "pooled_embedder.fc2")
    linear(src, "context_embedder", cfg.joint_attention_dim, (d,), dst, "context_embedder")
    for j, (first, count, dual, pre_only) in enumerate(block_runs(cfg)):
        for r in range(count):
            _block(src, first + r, f"blocks_{j}.{r}", dual, pre_only, cfg, dst)
    linear(src, "norm_out.linear", d, (2, d), dst, "final_ada")  # chunks (scale, shift), read as such
    linear(src, "proj_out", d, (p * p * cfg.out_channels,), dst, "proj_out")
    src.finish()
    return dst


@register_diffusers("SD3Transformer2DModel")
def load_diffusers(folder: str, config: dict, **overrides):
    bad = sorted(set(overrides) - set(MMDIT_KIND.runtime_fields))
    if bad:
        raise ConfigError(f"from_pretrained overrides {bad} would change the architecture; "
                          f"allowed: {sorted(MMDIT_KIND.runtime_fields)}")
    try:
        cfg = diffusers_config(config, **overrides)
    except WeightError as e:
        raise WeightError(f"{folder}: {e}") from None
    return build_filled(MMDiT, cfg, diffusers_to_flat(read_folder_weights(folder), cfg), folder)
