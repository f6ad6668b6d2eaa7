"""transformers T5 folders -> unigen `T5Encoder` (unigen.text.t5).

Read: a `T5EncoderModel` folder (SD3's text_encoder_3, Flux's text_encoder_2), and the encoder of a
`T5Model` / `T5ForConditionalGeneration` folder (its `decoder.*` and `lm_head.weight` are left
unread, as `T5EncoderModel.from_pretrained` leaves them). The state dict is transformers'
(modeling_t5.py): `shared.weight` (transformers ties `encoder.embed_tokens.weight` to it; a file
with only the latter is read from that), and per layer `encoder.block.N.layer.0.` `layer_norm`,
`SelfAttention.{q,k,v,o}` (bias-free; block 0 also holds `SelfAttention.relative_attention_bias`,
the table every layer's bias comes from), `encoder.block.N.layer.1.` `layer_norm`,
`DenseReluDense.{wi_0, wi_1, wo}` (gated) or `DenseReluDense.{wi, wo}`, then
`encoder.final_layer_norm`. torch Linears are (out, in); q/k/v fuse into one (D, 3, H, Dk)
kernel, wi_0 / wi_1 into one (D, 2, F).

Sharded checkpoints: with a `model.safetensors.index.json`, exactly the shards its weight map
names are read (a missing one is an error naming it), and shards holding only decoder weights
are skipped; without an index, every *.safetensors (else *.bin) of the folder.

config.json is read as released. Architecture fields follow transformers' T5Config, defaults
included; `feed_forward_proj` is parsed as there ("gated-gelu" = gated tanh GELU), and an explicit
`dense_act_fn` / `is_gated_act` in the file wins, as it does in transformers. Refused by name:
another model_type, `is_decoder: true` (a causal stack is not this encoder), a
`quantization_config` (quantized weights), an activation unigen lacks. Ignored, as T5EncoderModel
ignores them: the decoder's fields (num_decoder_layers, decoder_start_token_id), dropout and
initialiser scales, token ids, `tie_word_embeddings` (it only rescales the decoder's output),
`is_encoder_decoder`, use_cache, torch_dtype and the like.

Registered with `unigen.from_pretrained` for transformers model_type "t5".
"""

from __future__ import annotations

import os

import numpy as np

from unigen.convert.registry import register_transformers
from unigen.convert.torch_layout import StateDict, fused_qkv, linear
from unigen.convert.unigen_format import build_filled
from unigen.convert.weights import read_folder_weights, read_weights
from unigen.errors import ConfigError, WeightError
from unigen.files import read_json
from unigen.text.t5 import ACTIVATIONS, T5Encoder, T5EncoderConfig, parse_feed_forward_proj

RUNTIME_FIELDS = ("attention_backend", "dtype", "scan_layers", "remat")
# config.json field -> (type, transformers' T5Config default); the T5EncoderConfig field has the same name.
_FIELDS = {
    "vocab_size": (int, 32128),
    "d_model": (int, 512),
    "d_kv": (int, 64),
    "d_ff": (int, 2048),
    "num_layers": (int, 6),
    "num_heads": (int, 8),
    "relative_attention_num_buckets": (int, 32),
    "relative_attention_max_distance": (int, 128),
    "layer_norm_epsilon": (float, 1e-6),
    "feed_forward_proj": (str, "relu"),
}
INDEX_FILE = "model.safetensors.index.json"


def _typed(config: dict, key: str, kind: type, default, where: str):
    value = config.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise WeightError(f"{where}: field {key!r} = {value!r} should be {kind.__name__}")
    return value


def t5_config(config: dict, where: str, **overrides) -> T5EncoderConfig:
    """A T5EncoderConfig from a transformers T5 config.json (`where` names the file in errors)."""
    if config.get("model_type") != "t5":
        raise WeightError(f"{where}: model_type {config.get('model_type')!r} is not a T5 model (unigen's T5 "
                          f"encoder reads model_type 't5')")
    if config.get("is_decoder"):
        raise WeightError(f"{where}: field 'is_decoder' = true: a T5 decoder stack (causal, with cross-attention) "
                          f"is not a text encoder")
    if config.get("quantization_config") is not None:
        method = config["quantization_config"].get("quant_method") if isinstance(
            config["quantization_config"], dict) else None
        raise WeightError(f"{where}: field 'quantization_config' ({method or 'quantized'} weights) is not supported; "
                          f"use the unquantized (float32 / float16 / bfloat16) checkpoint")
    fields = {key: _typed(config, key, kind, default, where) for key, (kind, default) in _FIELDS.items()}
    dense_act_fn = config.get("dense_act_fn")
    if dense_act_fn is not None and not isinstance(dense_act_fn, str):
        raise WeightError(f"{where}: field 'dense_act_fn' = {dense_act_fn!r} should be str")
    parsed = parse_feed_forward_proj(fields["feed_forward_proj"], dense_act_fn)
    if parsed is None:
        raise WeightError(f"{where}: field 'feed_forward_proj' = {fields['feed_forward_proj']!r} is not "
                          f"'{{act}}' or 'gated-{{act}}' (e.g. 'gated-gelu', 'relu'), as transformers requires")
    gated, act = parsed
    is_gated = config.get("is_gated_act", gated)
    if not isinstance(is_gated, bool):
        raise WeightError(f"{where}: field 'is_gated_act' = {is_gated!r} should be true or false")
    if is_gated != gated:  # the file's own is_gated_act wins (transformers sets it after parsing)
        fields["feed_forward_proj"] = f"gated-{act}" if is_gated else act
        dense_act_fn = act
    if act not in ACTIVATIONS:
        field = "dense_act_fn" if config.get("dense_act_fn") is not None else "feed_forward_proj"
        raise WeightError(f"{where}: field {field!r} = {config.get(field)!r} asks for the activation {act!r}, "
                          f"which unigen's T5 lacks; supported: {sorted(ACTIVATIONS)}")
    bad = sorted(set(overrides) - set(RUNTIME_FIELDS))
    if bad:
        raise ConfigError(f"from_pretrained overrides {bad} would change the architecture; allowed: "
                          f"{list(RUNTIME_FIELDS)}")
    try:
        return T5EncoderConfig(**fields, dense_act_fn=dense_act_fn, **overrides).validate()
    except ValueError as e:
        raise WeightError(f"{where}: {e}") from None


def _needed(key: str) -> bool:
    return not (key.startswith("decoder.") or key == "lm_head.weight")


def read_t5_weights(folder: str) -> dict[str, np.ndarray]:
    """The folder's weights: the shards its safetensors index names (those holding encoder or
    shared weights only), else every weight file (unigen.convert.weights.read_folder_weights)."""
    index_path = os.path.join(folder, INDEX_FILE)
    if not os.path.isfile(index_path):
        return read_folder_weights(folder)
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise WeightError(f"{index_path}: no 'weight_map' of key -> shard file names")
    shards = sorted({shard for key, shard in weight_map.items() if _needed(key)})
    if not shards:
        raise WeightError(f"{index_path}: its weight map names no encoder weights")
    for shard in shards:
        if not os.path.isfile(os.path.join(folder, shard)):
            raise WeightError(f"{folder}: shard {shard!r} named in {INDEX_FILE} is missing (an incomplete "
                              f"download?); fetch it again")
    sd = {}
    for shard in shards:
        sd.update(read_weights(os.path.join(folder, shard)))
    return sd


def t5_to_flat(sd: dict[str, np.ndarray], cfg: T5EncoderConfig, *,
               source: str = "T5 state dict") -> dict[str, np.ndarray]:
    """transformers T5 keys -> unigen `T5Encoder` parameter names (layers unstacked)."""
    src, dst = StateDict(sd, source), {}
    d, h, dk, ff = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff
    embed_key = "encoder.embed_tokens.weight" if not src.has("shared.weight") and src.has(
        "encoder.embed_tokens.weight") else "shared.weight"
    dst["embed"] = src.take(embed_key, (cfg.vocab_size, d))
    dst["relative_attention_bias"] = src.take("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                                              (cfg.relative_attention_num_buckets, h))
    for i in range(cfg.num_layers):
        attn, mlp, out = f"encoder.block.{i}.layer.0.", f"encoder.block.{i}.layer.1.", f"layers.{i}."
        dst[out + "attn_norm.scale"] = src.take(attn + "layer_norm.weight", (d,))
        fused_qkv(src, tuple(attn + f"SelfAttention.{n}" for n in "qkv"), d, h, dk, dst, out + "qkv", bias=False)
        linear(src, attn + "SelfAttention.o", h * dk, (d,), dst, out + "o", bias=False)
        dst[out + "o.kernel"] = dst[out + "o.kernel"].reshape(h, dk, d)
        dst[out + "mlp_norm.scale"] = src.take(mlp + "layer_norm.weight", (d,))
        if cfg.gated:
            parts = {}
            for n in ("wi_0", "wi_1"):
                linear(src, mlp + f"DenseReluDense.{n}", d, (ff,), parts, n, bias=False)
            dst[out + "wi.kernel"] = np.stack([parts["wi_0.kernel"], parts["wi_1.kernel"]], axis=1)
        else:
            linear(src, mlp + "DenseReluDense.wi", d, (ff,), dst, out + "wi", bias=False)
        linear(src, mlp + "DenseReluDense.wo", ff, (d,), dst, out + "wo", bias=False)
    dst["final_norm.scale"] = src.take("encoder.final_layer_norm.weight", (d,))
    src.finish(ignore=(r"decoder\..*", r"lm_head\.weight", r"encoder\.embed_tokens\.weight"))
    return dst


def load_t5_encoder(folder: str, **overrides) -> T5Encoder:
    """A T5Encoder from a transformers T5 folder. `overrides`: the runtime options
    attention_backend, dtype, scan_layers, remat."""
    config_path = os.path.join(folder, "config.json")
    config = read_json(config_path, missing=f"{folder}: no config.json, so this is not a transformers T5 folder")
    cfg = t5_config(config, config_path, **overrides)
    return build_filled(T5Encoder, cfg, t5_to_flat(read_t5_weights(folder), cfg, source=folder), folder)


@register_transformers("t5")
def load_transformers_t5(folder: str, config: dict, **overrides) -> T5Encoder:
    return load_t5_encoder(folder, **overrides)
