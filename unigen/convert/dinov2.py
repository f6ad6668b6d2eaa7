"""transformers `Dinov2Model` ("dinov2") and `Dinov2WithRegistersModel` ("dinov2_with_registers")
folders -> unigen Dinov2 (unigen/tokenizers/dinov2.py).

Two key namings are read, layer by layer:
  * the hub checkpoints' (facebook/dinov2-*), which transformers 5 still writes on
    `save_pretrained` (its conversion mapping renames on load and back on save):
    `attention.attention.{query,key,value}`, `attention.output.dense`, and for SwiGLU
    `mlp.weights_in` (gate rows first, then up rows) / `mlp.weights_out`;
  * transformers 5's module names, as `model.state_dict()` gives them:
    `attention.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`.
Common to both: `embeddings.{cls_token, register_tokens, mask_token, position_embeddings}`,
`embeddings.patch_embeddings.projection`, per layer `norm1`, `layer_scale1.lambda1`, `norm2`,
`mlp.fc1/fc2`, `layer_scale2.lambda1`, and the final `layernorm`. Task models
(`Dinov2ForImageClassification`, ...) prefix these with `dinov2.` (`dinov2_with_registers.`); only
those keys are read and the heads are left out. The mask token (masked pretraining only) is
accepted and skipped. Every other key is read exactly once, each shape is checked against what
config.json implies (the message names the tensor, both shapes and the config.json fields to
fix), and leftover keys are an error naming them.

config.json is read as released (tests/released_configs/encoders/): the fields transformers' model ignores
(training, backbone outputs, bookkeeping `_*` keys) are accepted whatever their values; the fields it uses map
onto Dinov2Config, and a value unigen cannot honour fails naming the field.

For other converters (RAE's frozen encoder): `dinov2_config(config_dict, **fields)` and
`build_dinov2(state_dict, cfg, prefix="encoder.")`; with `layernorm_affine=False` the final
LayerNorm must have no weight/bias in the state dict (RAE strips them).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from unigen.convert.registry import register_transformers
from unigen.convert.torch_layout import StateDict
from unigen.convert.unigen_format import CONFIG_FILE, build_filled, load_pretrained
from unigen.convert.weights import read_folder_weights, warn_unknown_fields
from unigen.errors import ConfigError, WeightError
from unigen.files import read_json
from unigen.tokenizers.dinov2 import RUNTIME_FIELDS, Dinov2, Dinov2Config

MODEL_TYPES = {"dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel"}
_NUMBER = (int, float)
# config.json field -> (Dinov2Config field, accepted types, transformers' default per model type)
_FIELDS = {
    "hidden_size": ("hidden_size", int, 768),
    "num_hidden_layers": ("num_layers", int, 12),
    "num_attention_heads": ("num_heads", int, 12),
    "mlp_ratio": ("mlp_ratio", _NUMBER, 4),
    "patch_size": ("patch_size", (int, list), {"dinov2": 14, "dinov2_with_registers": 16}),
    "image_size": ("image_size", (int, list), 224),
    "num_channels": ("num_channels", int, 3),
    "layer_norm_eps": ("layer_norm_eps", _NUMBER, 1e-6),
    "layerscale_value": ("layerscale_value", _NUMBER, 1.0),
    "use_swiglu_ffn": ("use_swiglu_ffn", bool, False),
    "qkv_bias": ("qkv_bias", bool, True),
    "hidden_act": ("hidden_act", str, "gelu"),
    "num_register_tokens": ("num_register_tokens", int, {"dinov2": None, "dinov2_with_registers": 4}),
}
# Fields with no effect on inference: PreTrainedConfig's generic ones, training-only ones (dropout,
# drop path, init), the backbone-output options, and the mask token switch (the token is skipped).
_IGNORED = {
    "_name_or_path", "architectures", "chunk_size_feed_forward", "dtype", "torch_dtype", "id2label", "label2id",
    "is_encoder_decoder", "model_type", "output_attentions", "output_hidden_states", "problem_type", "return_dict",
    "transformers_version", "num_labels", "attention_probs_dropout_prob", "hidden_dropout_prob", "drop_path_rate",
    "initializer_range", "apply_layernorm", "out_features", "out_indices", "reshape_hidden_states", "stage_names",
    "use_mask_token",
}
# How the position table is resized at another grid. Only drafts of transformers' registers model read these
# (released transformers hard-codes antialias by model type and has no offset); a file that carries them is read
# when they say what unigen does, and refused by name otherwise.
_INTERPOLATION = {"interpolate_antialias": {"dinov2": False, "dinov2_with_registers": True},
                  "interpolate_offset": {"dinov2": 0.0, "dinov2_with_registers": 0.0}}
# Dinov2Config field -> the config.json field it comes from (for error messages)
_JSON_NAME = {ours: theirs for theirs, (ours, _, _) in _FIELDS.items()}


def _square(key: str, value) -> int:
    """An int, or a [n, n] list, as an int; DINOv2's position table and patches are square."""
    if isinstance(value, list):
        if len(value) == 2 and value[0] == value[1] and isinstance(value[0], int):
            return value[0]
        raise WeightError(f"config.json field {key!r} = {value!r}: unigen's DINOv2 supports square "
                          f"{'patches' if key == 'patch_size' else 'position tables'} only (one integer, or [n, n])")
    return value


def dinov2_config(config: dict, **fields) -> Dinov2Config:
    """A Dinov2Config from a transformers DINOv2 config.json dict. `fields` set Dinov2Config fields
    directly (runtime options, or e.g. layernorm_affine=False for RAE's encoder)."""
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise WeightError(f"config.json model_type {model_type!r} is not DINOv2; unigen's Dinov2 reads "
                          f"{', '.join(f'{t!r} ({c})' for t, c in MODEL_TYPES.items())}")
    allowed = {k for k, (_, _, d) in _FIELDS.items() if not (isinstance(d, dict) and d[model_type] is None)}
    # `_`-prefixed keys are bookkeeping (`_name_or_path`, `_commit_hash`, ...), never architecture
    warn_unknown_fields(config, allowed | set(_IGNORED) | set(_INTERPOLATION) | {"head_dim"},
                        f"transformers' {MODEL_TYPES[model_type]}")
    values = {}
    for key in allowed:
        name, kinds, default = _FIELDS[key]
        value = config.get(key, default[model_type] if isinstance(default, dict) else default)
        if not isinstance(value, kinds) or isinstance(value, bool) != (kinds is bool):
            raise WeightError(f"config.json field {key!r} = {value!r} has the wrong type")
        values[name] = _square(key, value) if key in ("patch_size", "image_size") else value
    for key, wanted in _INTERPOLATION.items():
        value = config.get(key, wanted[model_type])
        if value != wanted[model_type] or isinstance(value, bool) != isinstance(wanted[model_type], bool):
            raise WeightError(f"config.json field {key!r} = {value!r}: unigen's DINOv2 resizes the position table as "
                              f"transformers' {MODEL_TYPES[model_type]} does ({key} = {wanted[model_type]!r}); "
                              f"another value is not supported")
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim * values["num_heads"] != values["hidden_size"]:
        raise WeightError(f"config.json field 'head_dim' = {head_dim!r}: unigen's DINOv2 needs head_dim = "
                          f"hidden_size / num_attention_heads = {values['hidden_size'] / values['num_heads']:g}")
    values.setdefault("num_register_tokens", 0)
    # transformers interpolates the position table with antialias only in the registers variant
    values["pos_antialias"] = model_type == "dinov2_with_registers"
    try:
        cfg = Dinov2Config(**values).validate()
    except ValueError as e:
        raise WeightError(f"config.json does not describe a valid DINOv2: {e}") from None
    try:
        return dataclasses.replace(cfg, **fields).validate()
    except (ValueError, TypeError) as e:
        raise ConfigError(f"Dinov2Config overrides {sorted(fields)}: {e}") from None


class _Reader:
    """Takes tensors out of the state dict (under `prefix`), checking each shape against the config."""

    def __init__(self, sd: dict[str, np.ndarray], cfg: Dinov2Config, prefix: str, source: str, config_name: str):
        self.src = StateDict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, source)
        self.cfg, self.prefix, self.source, self.config_name = cfg, prefix, source, config_name

    def has(self, key: str) -> bool:
        return self.src.has(key)

    def take(self, key: str, shape: tuple[int, ...], fields: tuple[str, ...]) -> np.ndarray:
        said = ", ".join(f"{_JSON_NAME.get(f, f)}={getattr(self.cfg, f)!r}" for f in fields)
        fix = (f"correct {', '.join(_JSON_NAME.get(f, f) for f in fields)} in {self.config_name} to the values "
               f"the weights were saved with")
        if not self.src.has(key):
            raise WeightError(f"{self.source}: tensor {self.prefix + key!r} is missing ({self.config_name} "
                              f"({said}) implies one of shape {tuple(shape)}); {fix}")
        found = tuple(np.shape(self.src.sd[key]))
        if found != tuple(shape):
            raise WeightError(f"{self.source}: tensor {self.prefix + key!r} has shape {found}, but "
                              f"{self.config_name} ({said}) implies {tuple(shape)}; {fix}")
        return np.asarray(self.src.take(key, shape), np.float32)

    def linear(self, key: str, d_in: int, d_out: int, dst: dict, name: str, fields: tuple[str, ...],
               bias: bool = True) -> None:
        """torch Linear (out, in) -> Dense kernel (in, out) and bias."""
        dst[f"{name}.kernel"] = self.take(f"{key}.weight", (d_out, d_in), fields).T
        if bias:
            dst[f"{name}.bias"] = self.take(f"{key}.bias", (d_out,), fields)

    def norm(self, key: str, dst: dict, name: str, fields: tuple[str, ...] = ("hidden_size",)) -> None:
        d = self.cfg.hidden_size
        dst[f"{name}.scale"] = self.take(f"{key}.weight", (d,), fields)
        dst[f"{name}.bias"] = self.take(f"{key}.bias", (d,), fields)


_WIDTH = ("hidden_size",)
_MLP = ("hidden_size", "mlp_ratio", "use_swiglu_ffn")


def _layer(r: _Reader, pre: str, dst: dict, out: str) -> None:
    cfg = r.cfg
    d, h, dh, m = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.mlp_width
    r.norm(pre + "norm1", dst, out + "norm1", ("num_layers", "hidden_size"))  # a layer's first key
    legacy = r.has(pre + "attention.attention.query.weight")
    names = (("attention.attention.query", "attention.attention.key", "attention.attention.value",
              "attention.output.dense") if legacy else
             ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"))
    qkv = {}
    for which, key in zip("qkv", names):
        r.linear(pre + key, d, d, qkv, which, _WIDTH + ("qkv_bias",), bias=cfg.qkv_bias)
    dst[out + "qkv.kernel"] = np.stack([qkv[f"{w}.kernel"].reshape(d, h, dh) for w in "qkv"], axis=1)
    if cfg.qkv_bias:
        dst[out + "qkv.bias"] = np.stack([qkv[f"{w}.bias"].reshape(h, dh) for w in "qkv"], axis=0)
    r.linear(pre + names[3], d, d, dst, out + "proj", _WIDTH)
    dst[out + "proj.kernel"] = dst[out + "proj.kernel"].reshape(h, dh, d)
    dst[out + "ls1"] = r.take(pre + "layer_scale1.lambda1", (d,), _WIDTH)
    r.norm(pre + "norm2", dst, out + "norm2")
    if not cfg.use_swiglu_ffn:
        r.linear(pre + "mlp.fc1", d, m, dst, out + "fc1", _MLP)
        r.linear(pre + "mlp.fc2", m, d, dst, out + "fc2", _MLP)
    elif r.has(pre + "mlp.weights_in.weight"):  # fused [gate; up] rows, as transformers' Chunk(dim=0)
        fused = {}
        r.linear(pre + "mlp.weights_in", d, 2 * m, fused, "in", _MLP)
        dst[out + "gate.kernel"], dst[out + "up.kernel"] = np.split(fused["in.kernel"], 2, axis=1)
        dst[out + "gate.bias"], dst[out + "up.bias"] = np.split(fused["in.bias"], 2)
        r.linear(pre + "mlp.weights_out", m, d, dst, out + "down", _MLP)
    else:
        for ours, theirs, (a, b) in (("gate", "gate_proj", (d, m)), ("up", "up_proj", (d, m)),
                                     ("down", "down_proj", (m, d))):
            r.linear(pre + "mlp." + theirs, a, b, dst, out + ours, _MLP)
    dst[out + "ls2"] = r.take(pre + "layer_scale2.lambda1", (d,), _WIDTH)


def dinov2_to_flat(sd: dict[str, np.ndarray], cfg: Dinov2Config, *, prefix: str = "",
                   source: str = "DINOv2 state dict", config_name: str = "config.json") -> dict[str, np.ndarray]:
    """transformers DINOv2 keys under `prefix` -> unigen Dinov2 parameter names. Keys outside
    `prefix` are not looked at; every key under it must be used."""
    r, dst = _Reader(sd, cfg, prefix, source, config_name), {}
    d, p, c, n, reg = cfg.hidden_size, cfg.patch_size, cfg.num_channels, cfg.grid_size, cfg.num_register_tokens
    w = r.take("embeddings.patch_embeddings.projection.weight", (d, c, p, p),
               ("hidden_size", "num_channels", "patch_size"))
    dst["patch_embed.kernel"] = w.transpose(2, 3, 1, 0).reshape(p * p * c, d)   # (p, q, c) patch order
    dst["patch_embed.bias"] = r.take("embeddings.patch_embeddings.projection.bias", (d,), _WIDTH)
    dst["cls_token"] = r.take("embeddings.cls_token", (1, 1, d), _WIDTH)[0]
    dst["position_embeddings"] = r.take("embeddings.position_embeddings", (1, 1 + n * n, d),
                                        ("image_size", "patch_size", "hidden_size"))[0]
    if reg or r.has("embeddings.register_tokens"):
        tokens = r.take("embeddings.register_tokens", (1, reg, d), ("num_register_tokens", "hidden_size"))[0]
        if reg:
            dst["register_tokens"] = tokens
    if r.has("embeddings.mask_token"):  # masked pretraining only
        r.take("embeddings.mask_token", (1, d), _WIDTH)
    for i in range(cfg.num_layers):
        _layer(r, f"encoder.layer.{i}.", dst, f"blocks.{i}.")
    if cfg.layernorm_affine:
        r.norm("layernorm", dst, "norm")
    elif r.has("layernorm.weight") or r.has("layernorm.bias"):
        raise WeightError(f"{source}: the final LayerNorm has a scale/bias ({prefix}layernorm.weight) but the "
                          f"config says layernorm_affine=False; build it with layernorm_affine=True")
    left = sorted(prefix + k for k in r.src.sd)
    if left:
        raise WeightError(f"{source}: weights no DINOv2 layer reads: {left[:8]}{' ...' if len(left) > 8 else ''}; "
                          f"check num_hidden_layers={cfg.num_layers}, num_register_tokens={reg} and "
                          f"use_swiglu_ffn={cfg.use_swiglu_ffn} in {config_name}")
    return dst


def build_dinov2(sd: dict[str, np.ndarray], cfg: Dinov2Config, *, prefix: str = "",
                 source: str = "DINOv2 state dict", config_name: str = "config.json") -> Dinov2:
    """A Dinov2 filled from a transformers-layout numpy state dict (keys under `prefix`)."""
    return build_filled(Dinov2, cfg, dinov2_to_flat(sd, cfg, prefix=prefix, source=source,
                                                    config_name=config_name), source)


def _task_prefix(sd: dict[str, np.ndarray], model_type: str) -> str:
    """The encoder's key prefix: `dinov2.` / `dinov2_with_registers.` in task checkpoints, else ''."""
    for prefix in (model_type + ".", "dinov2."):
        if any(k.startswith(prefix + "embeddings.") for k in sd):
            return prefix
    return ""


def _load(folder: str, config: dict, overrides: dict) -> Dinov2:
    bad = sorted(set(overrides) - set(RUNTIME_FIELDS))
    if bad:
        raise ConfigError(f"from_pretrained overrides {bad} would change the architecture; "
                          f"allowed: {sorted(RUNTIME_FIELDS)}")
    try:
        cfg = dinov2_config(config, **overrides)
    except WeightError as e:
        raise WeightError(f"{folder}: {e}") from None
    sd = read_folder_weights(folder)
    return build_dinov2(sd, cfg, prefix=_task_prefix(sd, config["model_type"]), source=folder,
                        config_name=os.path.join(folder, "config.json"))


def load_dinov2(path: str, **overrides) -> Dinov2:
    """A Dinov2 from a transformers DINOv2 folder (or unigen's own format holding one).
    `overrides`: the runtime options `dtype` and `attention_backend`."""
    path = os.path.expanduser(os.fspath(path))
    if os.path.exists(os.path.join(path, CONFIG_FILE)):
        model = load_pretrained(path, **overrides)
        if not isinstance(model, Dinov2):
            raise WeightError(f"{path} holds a unigen {type(model).__name__}, not a Dinov2")
        return model
    config = read_json(os.path.join(path, "config.json"),
                       missing=f"{path}: no config.json, so this is not a transformers DINOv2 folder "
                               f"(expected model_type 'dinov2' or 'dinov2_with_registers')")
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        if model_type:
            archs = ", ".join(config.get("architectures") or [])
            what = f"a transformers model_type {model_type!r}" + (f" ({archs})" if archs else "")
        elif "_class_name" in config:
            what = f"a diffusers {config['_class_name']!r}"
        else:
            what = "no model_type"
        raise WeightError(f"{path}: config.json describes {what}, not DINOv2; load_dinov2 reads transformers "
                          f"{' / '.join(f'{c} ({t!r})' for t, c in MODEL_TYPES.items())} folders")
    return _load(path, config, overrides)


@register_transformers("dinov2")
def load_transformers_dinov2(folder: str, config: dict, **overrides) -> Dinov2:
    return _load(folder, config, overrides)


@register_transformers("dinov2_with_registers")
def load_transformers_dinov2_with_registers(folder: str, config: dict, **overrides) -> Dinov2:
    return _load(folder, config, overrides)
