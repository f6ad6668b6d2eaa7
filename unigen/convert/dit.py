"""Official DiT and diffusers `DiTTransformer2DModel` state dicts -> unigen DiT.

A diffusers folder whose config.json names the legacy `Transformer2DModel` (facebook/DiT-XL-2-256,
-512) is read as diffusers reads it: by norm_type, "ada_norm_zero" being a DiT (the remap below).

Both sources store torch Linear weights as (out, in); unigen kernels are (in, ...out)
with heads kept as their own axes (see unigen.nn.layers.Dense). The official fused qkv
is (3*D, D) with q/k/v outermost, then heads, then head dim (REFERENCES.md).
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from unigen.convert.registry import register_diffusers, register_diffusers_remap, register_file
from unigen.convert.torch_layout import StateDict as _Source, fused_qkv, linear as _linear
from unigen.convert.weights import WeightError, read_folder_weights, read_weights, warn_unknown_fields
from unigen.errors import ConfigError
from unigen.convert.unigen_format import build_filled
from unigen.models.dit import DIT_KIND, DIT_SIZES, DiT, DiTConfig, dit_config
from unigen.nn.posemb import sincos_2d

_HEADS_BY_WIDTH = {hidden: heads for _, hidden, heads in DIT_SIZES.values()}


def _patch_embed(src: _Source, prefix: str, cfg: DiTConfig, dst: dict):
    # Conv weight (D, C, p, p) read as a Linear over patches flattened in (p, q, c) order.
    p, c, d = cfg.patch_size, cfg.in_channels, cfg.hidden_size
    w = src.take(f"{prefix}.weight", (d, c, p, p))
    dst["x_embedder.kernel"] = w.transpose(2, 3, 1, 0).reshape(p * p * c, d)
    dst["x_embedder.bias"] = src.take(f"{prefix}.bias", (d,))


def _check_pos_embed(src: _Source, key: str, cfg: DiTConfig):
    if key in src.sd:
        table = src.take(key, (1, cfg.grid ** 2, cfg.hidden_size))[0]
        expected = sincos_2d(cfg.hidden_size, cfg.grid, cfg.grid)
        if not np.allclose(table, expected, atol=1e-4):
            raise WeightError(f"{src.name}: {key!r} is not the fixed 2-D sin-cos table unigen computes")


def _block_common(src: _Source, pre: str, cfg: DiTConfig, dst: dict, i: int, keys: dict[str, str]):
    d, h = cfg.hidden_size, cfg.num_heads
    hidden = int(d * cfg.mlp_ratio)
    _linear(src, pre + keys["ada"], d, (6, d), dst, f"blocks.{i}.ada")
    _linear(src, pre + keys["proj"], d, (d,), dst, f"blocks.{i}.proj")
    dst[f"blocks.{i}.proj.kernel"] = dst[f"blocks.{i}.proj.kernel"].reshape(h, d // h, d)
    _linear(src, pre + keys["fc1"], d, (hidden,), dst, f"blocks.{i}.mlp.fc1")
    _linear(src, pre + keys["fc2"], hidden, (d,), dst, f"blocks.{i}.mlp.fc2")


def infer_official_config(sd: dict[str, np.ndarray], **overrides: Any) -> DiTConfig:
    """Read a DiT config off an official state dict's shapes (heads from the width)."""
    if "x_embedder.proj.weight" not in sd:
        raise WeightError("not an official DiT state dict: no 'x_embedder.proj.weight' key")
    d, c, p, _ = sd["x_embedder.proj.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    tokens = sd["pos_embed"].shape[1] if "pos_embed" in sd else None
    rows = sd["y_embedder.embedding_table.weight"].shape[0]
    c_out = sd["final_layer.linear.weight"].shape[0] // (p * p)
    if "num_heads" not in overrides and d not in _HEADS_BY_WIDTH:
        raise WeightError(f"cannot infer the head count for width {d}: pass num_heads=...")
    fields = dict(
        hidden_size=d, in_channels=c, patch_size=p, depth=depth,
        num_heads=_HEADS_BY_WIDTH.get(d), learn_sigma=(c_out == 2 * c),
        num_classes=rows - 1, class_dropout_prob=0.1,
        input_size=int(round(math.sqrt(tokens))) * p if tokens else 32,
    )
    fields.update(overrides)
    return dit_config("DiT-XL/2", compat="official", **fields)


def official_to_flat(sd: dict[str, np.ndarray], cfg: DiTConfig) -> dict[str, np.ndarray]:
    src, dst = _Source(sd, "official DiT checkpoint"), {}
    d, h = cfg.hidden_size, cfg.num_heads
    _patch_embed(src, "x_embedder.proj", cfg, dst)
    _check_pos_embed(src, "pos_embed", cfg)
    _linear(src, "t_embedder.mlp.0", 256, (d,), dst, "cond.t_embedder.fc1")
    _linear(src, "t_embedder.mlp.2", d, (d,), dst, "cond.t_embedder.fc2")
    rows = cfg.num_classes + int(cfg.class_dropout_prob > 0)
    dst["cond.y_embedder.table"] = src.take("y_embedder.embedding_table.weight", (rows, d))
    keys = dict(ada="adaLN_modulation.1", proj="attn.proj", fc1="mlp.fc1", fc2="mlp.fc2")
    for i in range(cfg.depth):
        pre = f"blocks.{i}."
        _linear(src, pre + "attn.qkv", d, (3, h, d // h), dst, f"blocks.{i}.qkv")
        _block_common(src, pre, cfg, dst, i, keys)
    _linear(src, "final_layer.adaLN_modulation.1", d, (2, d), dst, "final_layer.ada")
    _linear(src, "final_layer.linear", d, (cfg.patch_size ** 2 * cfg.out_channels,), dst, "final_layer.linear")
    src.finish()
    return dst


def _field(config: dict, key: str, kind: type, default):
    """config[key] (or the default) checked to be a `kind`; a WeightError names the field."""
    value = config.get(key, default)
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise WeightError(f"config.json field {key!r} = {value!r} should be {kind.__name__}")
    return value


# DiTTransformer2DModel's config.json fields by what diffusers does with them (dit_transformer_2d.py):
# these shape the network and are read below ...
_USED = ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers", "sample_size",
         "patch_size", "activation_fn", "num_embeds_ada_norm", "attention_bias", "norm_type",
         "norm_elementwise_affine", "norm_eps")
# ... these do not change a forward pass: dropout (inference), attention upcasting (float32 here),
# norm_num_groups (taken, never read) ...
_IGNORED = ("dropout", "upcast_attention", "norm_num_groups")
# ... and these are the legacy `Transformer2DModel`'s (facebook/DiT-XL-2-256's transformer/config.json
# names that class): diffusers loads such a folder as a DiTTransformer2DModel and drops the old class's
# fields the new one does not take (ConfigMixin.extract_init_dict), whatever their values.
_LEGACY_IGNORED = ("cross_attention_dim", "num_vector_embeds", "use_linear_projection", "only_cross_attention",
                   "double_self_attention", "attention_type", "caption_channels", "interpolation_scale",
                   "use_additional_conditions")


def _refuse(key: str, value, fix: str):
    raise WeightError(f"config.json field {key!r} = {value!r}: {fix}")


def diffusers_config(config: dict, **overrides: Any) -> DiTConfig:
    """Map a diffusers `DiTTransformer2DModel` config.json (or a legacy `Transformer2DModel` one with
    norm_type "ada_norm_zero") onto DiTConfig: a field diffusers uses and unigen cannot honour is
    refused by name, a field diffusers ignores is ignored."""
    warn_unknown_fields(config, _USED + _IGNORED + _LEGACY_IGNORED, "diffusers' DiTTransformer2DModel")
    norm_type = _field(config, "norm_type", str, "ada_norm_zero")
    if norm_type != "ada_norm_zero":  # diffusers raises NotImplementedError for any other
        _refuse("norm_type", norm_type, "a DiT has adaLN-Zero blocks; only 'ada_norm_zero' is supported")
    activation = _field(config, "activation_fn", str, "gelu-approximate")
    if activation != "gelu-approximate":
        _refuse("activation_fn", activation, "only 'gelu-approximate' (DiT's tanh GELU) is supported")
    if not _field(config, "attention_bias", bool, True):  # diffusers: q/k/v Linears without bias
        _refuse("attention_bias", False, "unigen's DiT has q/k/v biases; only true is supported")
    if _field(config, "norm_elementwise_affine", bool, False):  # diffusers: an affine LayerNorm before the MLP
        _refuse("norm_elementwise_affine", True, "unigen's DiT LayerNorms are affine-free; only false is supported")
    heads, head_dim = _field(config, "num_attention_heads", int, 16), _field(config, "attention_head_dim", int, 72)
    in_ch = _field(config, "in_channels", int, 4)
    out_ch = config.get("out_channels") or in_ch
    if not isinstance(out_ch, int) or out_ch not in (in_ch, 2 * in_ch):
        raise WeightError(f"config.json field 'out_channels' = {out_ch!r} must equal in_channels or twice it "
                          f"(learned sigma)")
    fields = dict(
        hidden_size=heads * head_dim, num_heads=heads, depth=_field(config, "num_layers", int, 28),
        in_channels=in_ch, learn_sigma=(out_ch == 2 * in_ch), patch_size=_field(config, "patch_size", int, 2),
        input_size=_field(config, "sample_size", int, 32), num_classes=_field(config, "num_embeds_ada_norm", int, 1000),
        class_dropout_prob=0.1, mlp_norm_eps=_field(config, "norm_eps", float, 1e-5),
    )
    fields.update(overrides)
    try:
        return dit_config("DiT-XL/2", compat="diffusers", **fields)
    except ValueError as e:
        raise WeightError(f"config.json does not describe a valid DiT: {e}") from None


def diffusers_to_flat(sd: dict[str, np.ndarray], cfg: DiTConfig) -> dict[str, np.ndarray]:
    src, dst = _Source(sd, "diffusers DiTTransformer2DModel"), {}
    d, h = cfg.hidden_size, cfg.num_heads
    _patch_embed(src, "pos_embed.proj", cfg, dst)
    _check_pos_embed(src, "pos_embed.pos_embed", cfg)
    keys = dict(ada="norm1.linear", proj="attn1.to_out.0", fc1="ff.net.0.proj", fc2="ff.net.2")
    rows = cfg.num_classes + int(cfg.class_dropout_prob > 0)
    for i in range(cfg.depth):
        pre = f"transformer_blocks.{i}."
        emb = pre + "norm1.emb."
        _linear(src, emb + "timestep_embedder.linear_1", 256, (d,), dst, f"blocks.{i}.cond.t_embedder.fc1")
        _linear(src, emb + "timestep_embedder.linear_2", d, (d,), dst, f"blocks.{i}.cond.t_embedder.fc2")
        dst[f"blocks.{i}.cond.y_embedder.table"] = src.take(emb + "class_embedder.embedding_table.weight", (rows, d))
        fused_qkv(src, tuple(pre + f"attn1.to_{n}" for n in "qkv"), d, h, d // h, dst, f"blocks.{i}.qkv")
        _block_common(src, pre, cfg, dst, i, keys)
    _linear(src, "proj_out_1", d, (2, d), dst, "final_layer.ada")
    _linear(src, "proj_out_2", d, (cfg.patch_size ** 2 * cfg.out_channels,), dst, "final_layer.linear")
    src.finish()
    return dst


# ---- registration with unigen.from_pretrained ----------------------------------------------------
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@register_file("official DiT checkpoint (.pt/.pth/.bin/.safetensors)", lambda p: p.endswith(_WEIGHT_SUFFIXES))
def load_official(path: str, **overrides):
    """An official DiT state dict (or its train.py checkpoint: the EMA weights)."""
    sd = read_weights(path)
    cfg = infer_official_config(sd, **_runtime(overrides, "num_heads"))
    return build_filled(DiT, cfg, official_to_flat(sd, cfg), path)


@register_diffusers("DiTTransformer2DModel")
def load_diffusers(folder: str, config: dict, **overrides):
    try:
        cfg = diffusers_config(config, **_runtime(overrides))
    except WeightError as e:
        raise WeightError(f"{folder}: {e}") from None
    return build_filled(DiT, cfg, diffusers_to_flat(read_folder_weights(folder), cfg), folder)


# diffusers' own legacy-name remapping (`_CLASS_REMAPPING_DICT`): a `Transformer2DModel` folder is a DiT for
# norm_type "ada_norm_zero" and a PixArt-alpha for "ada_norm_single" (no unigen loader: a clear error).
register_diffusers_remap("Transformer2DModel", "norm_type", "layer_norm",
                         {"ada_norm_zero": "DiTTransformer2DModel", "ada_norm_single": "PixArtTransformer2DModel"})


def _runtime(overrides: dict, *extra: str) -> dict:
    allowed = {*extra, *DIT_KIND.runtime_fields}
    bad = set(overrides) - allowed
    if bad:
        raise ConfigError(f"from_pretrained overrides {sorted(bad)} would change the architecture; "
                         f"allowed: {sorted(allowed)}")
    return overrides
