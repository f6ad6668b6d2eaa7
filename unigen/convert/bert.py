"""transformers `BertModel` folders and sentence-transformers folders -> unigen TextEncoder.

The state dict is transformers' (modeling_bert.py): `embeddings.{word,position,token_type}_
embeddings.weight`, `embeddings.LayerNorm`, and per layer `encoder.layer.N.`
`attention.self.{query,key,value}`, `attention.output.dense`, `attention.output.LayerNorm`,
`intermediate.dense`, `output.dense`, `output.LayerNorm`. torch Linears are (out, in); q/k/v
fuse into one (D, 3, H, Dh) kernel as in the DiT. Ignored: BERT's own `pooler.dense`
(sentence vectors come from sentence-transformers' pooling) and the `embeddings.position_ids`
/ `token_type_ids` buffers. Checkpoints of task models (`BertForMaskedLM`, ...) prefix the
encoder with `bert.`; only those keys are read and the task heads are left out. TF-converted
checkpoints name LayerNorm parameters gamma/beta.

Registered with `unigen.from_pretrained` for transformers `model_type` "bert" and for
sentence-transformers folders (a `modules.json`, the transformer possibly in a subfolder).
"""

from __future__ import annotations

import os

import numpy as np

from unigen.convert.registry import register_folder, register_transformers
from unigen.convert.torch_layout import StateDict, fused_qkv, linear
from unigen.convert.unigen_format import build_filled
from unigen.convert.weights import read_folder_weights
from unigen.errors import ConfigError, WeightError
from unigen.files import read_json
from unigen.text.bert import ACTIVATIONS, BertConfig
from unigen.text.encoder import TextEncoder, TextEncoderConfig
from unigen.text.folder import read_encoder_folder

RUNTIME_FIELDS = ("attention_backend", "dtype")
# config.json field -> (BertConfig field, type, transformers' BertConfig default)
_FIELDS = {
    "vocab_size": ("vocab_size", int, 30522),
    "hidden_size": ("hidden_size", int, 768),
    "num_hidden_layers": ("num_layers", int, 12),
    "num_attention_heads": ("num_heads", int, 12),
    "intermediate_size": ("intermediate_size", int, 3072),
    "max_position_embeddings": ("max_position_embeddings", int, 512),
    "type_vocab_size": ("type_vocab_size", int, 2),
    "hidden_act": ("hidden_act", str, "gelu"),
    "layer_norm_eps": ("layer_norm_eps", float, 1e-12),
}


def bert_config(config: dict, where: str, **overrides) -> BertConfig:
    """A BertConfig from a transformers config.json (`where` names the file in errors)."""
    if config.get("model_type") != "bert":
        raise WeightError(f"{where}: model_type {config.get('model_type')!r} is not a BERT encoder "
                          f"(unigen's text encoder reads model_type 'bert')")
    if config.get("is_decoder") or config.get("add_cross_attention"):
        raise WeightError(f"{where}: a BERT decoder (is_decoder / add_cross_attention) is not a text encoder")
    position = config.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise WeightError(f"{where}: position_embedding_type={position!r} is not supported; unigen's BERT "
                          f"uses absolute position embeddings")
    fields = {}
    for key, (name, kind, default) in _FIELDS.items():
        value = config.get(key, default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise WeightError(f"{where}: field {key!r} = {value!r} should be {kind.__name__}")
        fields[name] = value
    if fields["hidden_act"] not in ACTIVATIONS:
        raise WeightError(f"{where}: field 'hidden_act' = {fields['hidden_act']!r} is not supported; "
                          f"unigen's BERT has {sorted(ACTIVATIONS)}")
    bad = sorted(set(overrides) - set(RUNTIME_FIELDS))
    if bad:
        raise ConfigError(f"from_pretrained overrides {bad} would change the architecture; allowed: "
                          f"{list(RUNTIME_FIELDS)}")
    try:
        return BertConfig(**fields, **overrides).validate()
    except ValueError as e:
        raise WeightError(f"{where}: {e}") from None


def _encoder_keys(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The encoder's entries: `bert.`-prefixed ones when present (task checkpoints), gamma/beta
    renamed to weight/bias."""
    if any(k.startswith("bert.") for k in sd):
        sd = {k[len("bert."):]: v for k, v in sd.items() if k.startswith("bert.")}
    renamed = {}
    for k, v in sd.items():
        if k.endswith(".gamma") or k.endswith(".beta"):
            k = k.rsplit(".", 1)[0] + (".weight" if k.endswith(".gamma") else ".bias")
        renamed[k] = v
    return renamed


def _norm(src: StateDict, prefix: str, d: int, dst: dict, name: str) -> None:
    dst[f"{name}.scale"] = src.take(f"{prefix}.weight", (d,))
    dst[f"{name}.bias"] = src.take(f"{prefix}.bias", (d,))


def bert_to_flat(sd: dict[str, np.ndarray], cfg: BertConfig, *, source: str = "BERT state dict",
                 prefix: str = "") -> dict[str, np.ndarray]:
    """transformers BertModel keys -> unigen `Bert` parameter names (each prefixed by `prefix`)."""
    src, dst = StateDict(_encoder_keys(sd), source), {}
    d, h, dh, inner = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size
    dst["word_embeddings"] = src.take("embeddings.word_embeddings.weight", (cfg.vocab_size, d))
    dst["position_embeddings"] = src.take("embeddings.position_embeddings.weight", (cfg.max_position_embeddings, d))
    dst["token_type_embeddings"] = src.take("embeddings.token_type_embeddings.weight", (cfg.type_vocab_size, d))
    _norm(src, "embeddings.LayerNorm", d, dst, "embed_norm")
    for i in range(cfg.num_layers):
        pre, out = f"encoder.layer.{i}.", f"layers.{i}."
        fused_qkv(src, tuple(pre + f"attention.self.{n}" for n in ("query", "key", "value")), d, h, dh,
                  dst, out + "qkv")
        linear(src, pre + "attention.output.dense", d, (d,), dst, out + "proj")
        dst[out + "proj.kernel"] = dst[out + "proj.kernel"].reshape(h, dh, d)
        _norm(src, pre + "attention.output.LayerNorm", d, dst, out + "attn_norm")
        linear(src, pre + "intermediate.dense", d, (inner,), dst, out + "fc1")
        linear(src, pre + "output.dense", inner, (d,), dst, out + "fc2")
        _norm(src, pre + "output.LayerNorm", d, dst, out + "mlp_norm")
    src.finish(ignore=(r"pooler\.dense\.(weight|bias)", r"embeddings\.position_ids", r"embeddings\.token_type_ids"))
    return {prefix + k: v for k, v in dst.items()}


def _read_config(folder: str) -> dict:
    return read_json(os.path.join(folder, "config.json"),
                     missing=f"{folder}: no config.json, so this is not a transformers BERT folder")


def load_text_encoder(folder: str, **overrides) -> TextEncoder:
    """A TextEncoder from a sentence-transformers or transformers BERT folder. `overrides`:
    the runtime options `attention_backend` and `dtype`."""
    layout = read_encoder_folder(folder)
    bert_cfg = bert_config(_read_config(layout.transformer), os.path.join(layout.transformer, "config.json"),
                           **overrides)
    cfg = TextEncoderConfig(
        bert=bert_cfg, pooling=layout.pooling, normalize=layout.normalize,
        tokenizer_file=layout.tokenizer_file, max_length=layout.token_limit(bert_cfg.max_position_embeddings),
        lowercase=layout.do_lower_case, source=layout.root,
    )
    flat = bert_to_flat(read_folder_weights(layout.transformer), bert_cfg, source=layout.transformer,
                        prefix="bert.")
    return build_filled(TextEncoder, cfg, flat, layout.transformer)


@register_transformers("bert")
def load_transformers_bert(folder: str, config: dict, **overrides) -> TextEncoder:
    return load_text_encoder(folder, **overrides)


@register_folder("sentence-transformers folder (modules.json)",
                 lambda path: os.path.isfile(os.path.join(path, "modules.json")))
def load_sentence_transformers(folder: str, **overrides) -> TextEncoder:
    return load_text_encoder(folder, **overrides)
