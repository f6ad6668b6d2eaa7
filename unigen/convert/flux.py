"""diffusers `FluxTransformer2DModel` (FLUX.1-dev / FLUX.1-schnell) folders -> unigen Flux.

config.json maps field by field onto FluxConfig (`out_channels: null` means in_channels, as in
diffusers; a missing `axes_dims_rope`, as in the first FLUX.1 releases, is diffusers' default
16 / 56 / 56); every weight key is read exactly once (`StateDict.finish`), so a missing or an
unknown key is a WeightError naming it. Layer i of `transformer_blocks` becomes
`double_blocks.<i>`, of `single_transformer_blocks` `single_blocks.<i>`; a single block's
`proj_out` (d, d + 4d) is split by input columns into `attn_out` (the attention's d, with the
bias) and `mlp_out` (the MLP's 4d) (unigen.models.flux.SingleBlock).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from unigen.convert.registry import register_diffusers
from unigen.convert.torch_layout import StateDict, fused_qkv, linear
from unigen.convert.unigen_format import build_filled
from unigen.convert.weights import read_config_fields, read_folder_weights
from unigen.errors import ConfigError, WeightError
from unigen.models.flux import MLP_RATIO, RUNTIME_FIELDS, Flux, FluxConfig

# config.json field -> (accepted types, diffusers' default)
_FIELDS = {
    "patch_size": (int, 1), "in_channels": (int, 64), "out_channels": ((int, type(None)), None),
    "num_layers": (int, 19), "num_single_layers": (int, 38), "attention_head_dim": (int, 128),
    "num_attention_heads": (int, 24), "joint_attention_dim": (int, 4096), "pooled_projection_dim": (int, 768),
    "guidance_embeds": (bool, False), "axes_dims_rope": ((list, tuple), (16, 56, 56)),
}


def diffusers_config(config: dict, **overrides: Any) -> FluxConfig:
    """Map a diffusers `FluxTransformer2DModel` config.json onto FluxConfig."""
    fields = read_config_fields(config, _FIELDS, "Flux")
    if not fields["out_channels"]:  # diffusers: `out_channels or in_channels`
        fields["out_channels"] = fields["in_channels"]
    fields["axes_dims_rope"] = tuple(fields["axes_dims_rope"])
    try:
        cfg = FluxConfig(**fields).validate()
    except (ValueError, TypeError) as e:
        field = str(e).split("=", 1)[0].removeprefix("FluxConfig.")
        what = f"field {field!r} cannot be honoured" if field in _FIELDS else "does not describe a valid Flux"
        raise WeightError(f"config.json {what}: {e}") from None
    try:  # runtime options (scan_layers, attention_backend, ...) are the caller's
        return dataclasses.replace(cfg, **overrides).validate()
    except (ValueError, TypeError) as e:
        raise ConfigError(f"from_pretrained overrides: {e}") from None


def _qkv(src: StateDict, pre: str, names: tuple[str, ...], norms: tuple[str, str], cfg: FluxConfig,
         dst: dict, out: str):
    d, h, dh = cfg.hidden_size, cfg.num_attention_heads, cfg.attention_head_dim
    fused_qkv(src, tuple(pre + n for n in names), d, h, dh, dst, f"{out}.qkv")
    dst[f"{out}.q_norm.scale"] = src.take(f"{pre}{norms[0]}.weight", (dh,))
    dst[f"{out}.k_norm.scale"] = src.take(f"{pre}{norms[1]}.weight", (dh,))


def _out_proj(src: StateDict, key: str, cfg: FluxConfig, dst: dict, out: str):
    d, h, dh = cfg.hidden_size, cfg.num_attention_heads, cfg.attention_head_dim
    linear(src, key, d, (d,), dst, out)
    dst[f"{out}.kernel"] = dst[f"{out}.kernel"].reshape(h, dh, d)


def _double(src: StateDict, i: int, cfg: FluxConfig, dst: dict):
    d, pre, out = cfg.hidden_size, f"transformer_blocks.{i}.", f"double_blocks.{i}"
    linear(src, pre + "norm1.linear", d, (6, d), dst, f"{out}.x_ada")
    linear(src, pre + "norm1_context.linear", d, (6, d), dst, f"{out}.ctx_ada")
    _qkv(src, pre + "attn.", ("to_q", "to_k", "to_v"), ("norm_q", "norm_k"), cfg, dst, f"{out}.x_attn")
    _out_proj(src, pre + "attn.to_out.0", cfg, dst, f"{out}.x_attn.proj")
    _qkv(src, pre + "attn.", ("add_q_proj", "add_k_proj", "add_v_proj"), ("norm_added_q", "norm_added_k"), cfg,
         dst, f"{out}.ctx_attn")
    _out_proj(src, pre + "attn.to_add_out", cfg, dst, f"{out}.ctx_attn.proj")
    for theirs, ours in (("ff", "x_mlp"), ("ff_context", "ctx_mlp")):
        linear(src, f"{pre}{theirs}.net.0.proj", d, (MLP_RATIO * d,), dst, f"{out}.{ours}.fc1")
        linear(src, f"{pre}{theirs}.net.2", MLP_RATIO * d, (d,), dst, f"{out}.{ours}.fc2")


def _single(src: StateDict, i: int, cfg: FluxConfig, dst: dict):
    d, h, dh = cfg.hidden_size, cfg.num_attention_heads, cfg.attention_head_dim
    pre, out, hidden = f"single_transformer_blocks.{i}.", f"single_blocks.{i}", MLP_RATIO * d
    linear(src, pre + "norm.linear", d, (3, d), dst, f"{out}.ada")
    _qkv(src, pre + "attn.", ("to_q", "to_k", "to_v"), ("norm_q", "norm_k"), cfg, dst, f"{out}.attn")
    linear(src, pre + "proj_mlp", d, (hidden,), dst, f"{out}.mlp_in")
    # proj_out reads cat([attention (d), MLP (4d)]): its input columns split the same way
    weight = src.take(pre + "proj_out.weight", (d, d + hidden))
    dst[f"{out}.attn_out.kernel"] = weight[:, :d].T.reshape(h, dh, d)
    dst[f"{out}.attn_out.bias"] = src.take(pre + "proj_out.bias", (d,))
    dst[f"{out}.mlp_out.kernel"] = weight[:, d:].T.copy()


def diffusers_to_flat(sd: dict, cfg: FluxConfig) -> dict:
    src, dst = StateDict(sd, "diffusers FluxTransformer2DModel"), {}
    d = cfg.hidden_size
    linear(src, "x_embedder", cfg.in_channels, (d,), dst, "x_embedder")
    linear(src, "context_embedder", cfg.joint_attention_dim, (d,), dst, "context_embedder")
    emb = "time_text_embed."
    linear(src, emb + "timestep_embedder.linear_1", 256, (d,), dst, "t_embedder.fc1")
    linear(src, emb + "timestep_embedder.linear_2", d, (d,), dst, "t_embedder.fc2")
    if cfg.guidance_embeds:
        linear(src, emb + "guidance_embedder.linear_1", 256, (d,), dst, "guidance_embedder.fc1")
        linear(src, emb + "guidance_embedder.linear_2", d, (d,), dst, "guidance_embedder.fc2")
    linear(src, emb + "text_embedder.linear_1", cfg.pooled_projection_dim, (d,), dst, "pooled_embedder.fc1")
    linear(src, emb + "text_embedder.linear_2", d, (d,), dst, "pooled_embedder.fc2")
    for i in range(cfg.num_layers):
        _double(src, i, cfg, dst)
    for i in range(cfg.num_single_layers):
        _single(src, i, cfg, dst)
    linear(src, "norm_out.linear", d, (2, d), dst, "final_ada")  # chunks (scale, shift), read as such
    linear(src, "proj_out", d, (cfg.out_features,), dst, "proj_out")
    src.finish()
    return dst


@register_diffusers("FluxTransformer2DModel")
def load_diffusers(folder: str, config: dict, **overrides):
    bad = sorted(set(overrides) - set(RUNTIME_FIELDS))
    if bad:
        raise ConfigError(f"from_pretrained overrides {bad} would change the architecture; "
                          f"allowed: {sorted(RUNTIME_FIELDS)}")
    try:
        cfg = diffusers_config(config, **overrides)
    except WeightError as e:
        raise WeightError(f"{folder}: {e}") from None
    return build_filled(Flux, cfg, diffusers_to_flat(read_folder_weights(folder), cfg), folder)
