"""transformers CLIP text folders -> unigen `CLIPTextModel` (unigen/text/clip.py).

Two transformers model types are read:
  * "clip_text_model": a `CLIPTextModel` or `CLIPTextModelWithProjection` folder (diffusers'
    `text_encoder` / `text_encoder_2` of SD, SDXL, SD3, Flux). The projection is built when
    config.json's `architectures` names CLIPTextModelWithProjection; when it names CLIPTextModel,
    a `text_projection.weight` in the file is left unused (transformers drops it too); with no
    `architectures`, the file decides.
  * "clip": a whole `CLIPModel` folder. Only the text tower is read: `text_config` (merged with
    the legacy `text_config_dict` as transformers merges them), the `text_model.*` weights and the
    model's `text_projection` (top-level `projection_dim`), so `text_embeds` are CLIP's text
    features (`get_text_features`). The vision tower, `visual_projection` and `logit_scale` are
    skipped.

State dict names (modeling_clip.py): `embeddings.{token,position}_embedding.weight`, per layer
`encoder.layers.N.` `layer_norm1`, `self_attn.{q,k,v,out}_proj`, `layer_norm2`, `mlp.fc1`,
`mlp.fc2`, then `final_layer_norm` and the bias-free `text_projection.weight`. Hub checkpoints
(and transformers 4) put the text tower under `text_model.`; transformers 5 saves a bare
CLIPTextModel without it; both are read. torch Linears are (out, in); q/k/v fuse into one
(D, 3, H, Dh) kernel. The `position_ids` buffer that old checkpoints persisted is ignored.

config.json is read as released (tests/released_configs/encoders/clip_*.json): the fields the text
model uses map onto CLIPTextConfig; fields it ignores (dropouts, initialisation, token ids other
than `eos_token_id`, PreTrainedConfig's generic and generation fields) are accepted whatever their
values; a value unigen cannot honour (an unknown activation, a list of eos ids, quantized weights)
fails naming the field.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np

from unigen.convert.registry import register_transformers
from unigen.convert.torch_layout import StateDict, fused_qkv, linear
from unigen.convert.unigen_format import build_filled
from unigen.convert.weights import read_folder_weights
from unigen.errors import ConfigError, WeightError
from unigen.files import read_json
from unigen.text.clip import ACTIVATIONS, RUNTIME_FIELDS, CLIPTextConfig, CLIPTextModel

_NUMBER = (int, float)
# config.json field -> (CLIPTextConfig field, accepted types, transformers' CLIPTextConfig default)
_FIELDS = {
    "vocab_size": ("vocab_size", int, 49408),
    "hidden_size": ("hidden_size", int, 512),
    "intermediate_size": ("intermediate_size", int, 2048),
    "num_hidden_layers": ("num_layers", int, 12),
    "num_attention_heads": ("num_heads", int, 8),
    "max_position_embeddings": ("max_position_embeddings", int, 77),
    "hidden_act": ("hidden_act", str, "quick_gelu"),
    "layer_norm_eps": ("layer_norm_eps", _NUMBER, 1e-5),
    "eos_token_id": ("eos_token_id", int, 49407),
}
_PROJECTION_DEFAULT = 512  # transformers' CLIPTextConfig / CLIPConfig projection_dim
# Fields CLIP's text model does not read: dropouts (inference), initialisation, the other token ids,
# PreTrainedConfig's generic fields and the generation / bookkeeping fields transformers 4 wrote into
# every sub-config (CLIPModel's text_config carries them all).
_IGNORED = {
    "attention_dropout", "dropout", "initializer_range", "initializer_factor", "pad_token_id", "bos_token_id",
    "_name_or_path", "architectures", "chunk_size_feed_forward", "dtype", "torch_dtype", "id2label", "label2id",
    "is_encoder_decoder", "model_type", "output_attentions", "output_hidden_states", "problem_type", "return_dict",
    "transformers_version", "add_cross_attention", "bad_words_ids", "begin_suppress_tokens",
    "cross_attention_hidden_size", "decoder_start_token_id", "diversity_penalty", "do_sample", "early_stopping",
    "encoder_no_repeat_ngram_size", "exponential_decay_length_penalty", "finetuning_task", "forced_bos_token_id",
    "forced_eos_token_id", "is_decoder", "length_penalty", "max_length", "min_length", "no_repeat_ngram_size",
    "num_beam_groups", "num_beams", "num_return_sequences", "output_scores", "prefix", "pruned_heads",
    "remove_invalid_values", "repetition_penalty", "return_dict_in_generate", "sep_token_id", "suppress_tokens",
    "task_specific_params", "temperature", "tf_legacy_loss", "tie_encoder_decoder", "tie_word_embeddings",
    "tokenizer_class", "top_k", "top_p", "torchscript", "typical_p", "use_bfloat16", "use_cache",
    "attn_implementation", "projection_dim",
}
# CLIPModel's own fields besides the two towers' configs
_CLIP_MODEL_IGNORED = {"vision_config", "vision_config_dict", "logit_scale_init_value", "text_config",
                       "text_config_dict"}
# CLIPTextConfig field -> the config.json field it comes from (for error messages)
_JSON_NAME = {ours: theirs for theirs, (ours, _, _) in _FIELDS.items()}
MODEL_TYPES = {"clip_text_model": "CLIPTextModel / CLIPTextModelWithProjection", "clip": "CLIPModel"}


def _warn_unknown(config: dict, known: set, where: str) -> None:
    unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
    if unknown:
        warnings.warn(f"{where}: fields {unknown} are not options of transformers' CLIP text model and are ignored, "
                      f"as transformers ignores them", stacklevel=4)


def _refuse_quantized(config: dict, where: str) -> None:
    quantization = config.get("quantization_config")
    if quantization is not None:
        method = quantization.get("quant_method") if isinstance(quantization, dict) else None
        raise WeightError(f"{where}: field 'quantization_config' (quant_method {method!r}) says the weights are "
                          f"quantized; unigen reads unquantized float weights (use the original float16 / float32 "
                          f"folder)")


def _text_fields(config: dict, where: str) -> dict:
    """CLIPTextConfig fields (architecture only) from a clip_text_model config dict."""
    values = {}
    for key, (name, kinds, default) in _FIELDS.items():
        value = config.get(key, default)
        if key == "eos_token_id" and not isinstance(value, int):
            raise WeightError(f"{where}: field 'eos_token_id' = {value!r}: unigen's CLIP pools at one end-of-text id "
                              f"(an integer; 2 = pool at argmax(input_ids), as transformers reads configs written "
                              f"before its PR #24773)")
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise WeightError(f"{where}: field {key!r} = {value!r} has the wrong type (expected "
                              f"{kinds.__name__ if isinstance(kinds, type) else 'a number'})")
        values[name] = float(value) if key == "layer_norm_eps" else value
    if values["hidden_act"] not in ACTIVATIONS:
        raise WeightError(f"{where}: field 'hidden_act' = {values['hidden_act']!r} is not supported; unigen's CLIP "
                          f"has {sorted(ACTIVATIONS)}")
    return values


def _projection_dim(config: dict, where: str, key: str = "projection_dim") -> int:
    value = config.get(key, _PROJECTION_DEFAULT)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise WeightError(f"{where}: field {key!r} = {value!r}: a model with a text projection needs a positive "
                          f"integer projection_dim")
    return value


def _build_config(values: dict, where: str, overrides: dict) -> CLIPTextConfig:
    bad = sorted(set(overrides) - set(RUNTIME_FIELDS))
    if bad:
        raise ConfigError(f"from_pretrained overrides {bad} would change the architecture; allowed: "
                          f"{list(RUNTIME_FIELDS)}")
    try:
        cfg = CLIPTextConfig(**values).validate()
    except ValueError as e:
        message = str(e)
        for ours, theirs in _JSON_NAME.items():  # name the config.json fields, not ours
            message = message.replace(f"CLIPTextConfig.{ours}=", f"field {theirs!r} = ").replace(
                f" {ours}=", f" {theirs}=")
        raise WeightError(f"{where}: {message}") from None
    try:
        return dataclasses.replace(cfg, **overrides).validate()
    except (ValueError, TypeError) as e:
        raise ConfigError(f"from_pretrained overrides {sorted(overrides)}: {e}") from None


def _architectures(config: dict) -> list:
    value = config.get("architectures")
    return list(value) if isinstance(value, (list, tuple)) else []


def clip_text_config(config: dict, where: str, **overrides) -> CLIPTextConfig:
    """A CLIPTextConfig from a transformers config.json dict of model_type "clip_text_model" or "clip"
    (`where` names the file in errors). A clip_text_model config without `architectures` gets no
    projection here; `load_clip_text` adds one when the weights hold `text_projection.weight`."""
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise WeightError(f"{where}: model_type {model_type!r} is not a CLIP text model; unigen's CLIP reads "
                          f"{', '.join(f'{t!r} ({c})' for t, c in MODEL_TYPES.items())}")
    _refuse_quantized(config, where)
    if model_type == "clip":
        text = config.get("text_config") or {}
        if not isinstance(text, dict):
            raise WeightError(f"{where}: field 'text_config' = {text!r} should be an object")
        legacy = config.get("text_config_dict")
        if isinstance(legacy, dict):
            # transformers' CLIPConfig rebuilds text_config from text_config_dict filled with
            # CLIPTextConfig's defaults, which then win over every text_config value.
            text = {**text, **{k: d for k, (_, _, d) in _FIELDS.items()}, **legacy}
        _warn_unknown(config, _IGNORED | _CLIP_MODEL_IGNORED | {"quantization_config"}, where)
        _warn_unknown(text, _IGNORED | set(_FIELDS), f"{where} text_config")
        values = _text_fields(text, f"{where} text_config")
        values["projection_dim"] = _projection_dim(config, where)
        return _build_config(values, where, overrides)
    _warn_unknown(config, _IGNORED | set(_FIELDS) | {"quantization_config"}, where)
    values = _text_fields(config, where)
    arch = _architectures(config)
    if "CLIPTextModelWithProjection" in arch:
        projection = True
    elif "CLIPTextModel" in arch:
        projection = False
    elif arch:
        raise WeightError(f"{where}: field 'architectures' = {arch!r} names no CLIP text model; unigen reads "
                          f"CLIPTextModel and CLIPTextModelWithProjection")
    else:
        projection = False
    values["projection_dim"] = _projection_dim(config, where) if projection else None
    return _build_config(values, where, overrides)


def _text_tower(sd: dict[str, np.ndarray], model_type: str, folder: str) -> tuple[dict[str, np.ndarray], str]:
    """(the text tower's entries without the `text_model.` prefix, plus `text_projection.weight`; the
    name errors give the state dict)."""
    if any(k.startswith("text_model.") for k in sd):
        tower = {k[len("text_model."):]: v for k, v in sd.items() if k.startswith("text_model.")}
        rest = sorted(k for k in sd if not k.startswith("text_model.") and k != "text_projection.weight")
        # a CLIPModel's other keys are its vision tower, visual_projection and logit_scale: not read
        if model_type == "clip_text_model" and rest:
            raise WeightError(f"{folder}: unknown keys {rest[:8]}{' ...' if len(rest) > 8 else ''} beside the "
                              f"text_model.* weights")
        source = f"{folder} (keys under text_model.)"
    elif model_type == "clip":
        raise WeightError(f"{folder}: no text_model.* weights; a CLIPModel folder holds its text tower under "
                          f"text_model.")
    else:  # transformers 5 saves a bare CLIPTextModel without the prefix
        tower = {k: v for k, v in sd.items() if k != "text_projection.weight"}
        source = folder
    if "text_projection.weight" in sd:
        tower["text_projection.weight"] = sd["text_projection.weight"]
    return tower, source


def _norm(src: StateDict, prefix: str, d: int, dst: dict, name: str) -> None:
    dst[f"{name}.scale"] = src.take(f"{prefix}.weight", (d,))
    dst[f"{name}.bias"] = src.take(f"{prefix}.bias", (d,))


def clip_text_to_flat(sd: dict[str, np.ndarray], cfg: CLIPTextConfig, *, source: str = "CLIP state dict",
                      prefix: str = "") -> dict[str, np.ndarray]:
    """A CLIP text tower's state dict (no `text_model.` prefix) -> unigen `CLIPTextModel` parameter
    names (each prefixed by `prefix`). A `text_projection.weight` is read when `cfg.projection_dim`
    is set and ignored otherwise."""
    src, dst = StateDict({k: np.asarray(v, np.float32) for k, v in sd.items()}, source), {}
    d, h, dh, inner = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size
    dst["token_embedding"] = src.take("embeddings.token_embedding.weight", (cfg.vocab_size, d))
    dst["position_embedding"] = src.take("embeddings.position_embedding.weight", (cfg.max_position_embeddings, d))
    for i in range(cfg.num_layers):
        pre, out = f"encoder.layers.{i}.", f"layers.{i}."
        _norm(src, pre + "layer_norm1", d, dst, out + "attn_norm")
        fused_qkv(src, tuple(pre + f"self_attn.{n}_proj" for n in "qkv"), d, h, dh, dst, out + "qkv")
        linear(src, pre + "self_attn.out_proj", d, (d,), dst, out + "proj")
        dst[out + "proj.kernel"] = dst[out + "proj.kernel"].reshape(h, dh, d)
        _norm(src, pre + "layer_norm2", d, dst, out + "mlp_norm")
        linear(src, pre + "mlp.fc1", d, (inner,), dst, out + "fc1")
        linear(src, pre + "mlp.fc2", inner, (d,), dst, out + "fc2")
    _norm(src, "final_layer_norm", d, dst, "final_norm")
    ignore = [r"embeddings\.position_ids"]
    if cfg.projection_dim is not None:
        linear(src, "text_projection", d, (cfg.projection_dim,), dst, "text_projection", bias=False)
    else:
        ignore.append(r"text_projection\.weight")
    src.finish(ignore=tuple(ignore))
    return {prefix + k: v for k, v in dst.items()}


def _read_config(folder: str) -> dict:
    return read_json(os.path.join(folder, "config.json"),
                     missing=f"{folder}: no config.json, so this is not a transformers CLIP folder")


def load_clip_text(folder: str, config: dict | None = None, **overrides) -> CLIPTextModel:
    """A unigen CLIPTextModel from a transformers CLIPTextModel / CLIPTextModelWithProjection /
    CLIPModel folder. `overrides`: the runtime options attention_backend, dtype, scan_layers, remat."""
    config = _read_config(folder) if config is None else config
    where = os.path.join(folder, "config.json")
    cfg = clip_text_config(config, where, **overrides)  # every config.json field checked before weights are read
    model_type = config["model_type"]
    sd = read_folder_weights(folder)
    tower, source = _text_tower(sd, model_type, folder)
    if model_type == "clip_text_model" and not _architectures(config) and "text_projection.weight" in sd:
        cfg = dataclasses.replace(cfg, projection_dim=_projection_dim(config, where)).validate()
    flat = clip_text_to_flat(tower, cfg, source=source)
    return build_filled(CLIPTextModel, cfg, flat, folder)


@register_transformers("clip_text_model")
def load_transformers_clip_text(folder: str, config: dict, **overrides) -> CLIPTextModel:
    return load_clip_text(folder, config, **overrides)


@register_transformers("clip")
def load_transformers_clip(folder: str, config: dict, **overrides) -> CLIPTextModel:
    return load_clip_text(folder, config, **overrides)
