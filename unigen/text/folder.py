"""What a text-encoder folder says besides its weights: where the transformer sits, how token
states are pooled, whether the result is L2-normalised, and where text is cut.

Two layouts are read:
  * a sentence-transformers folder (sentence-transformers' `SentenceTransformer.save`):
    `modules.json` lists the modules in order, each with a `path` relative to the folder;
    the first is `...Transformer` (config.json, weights, tokenizer.json and
    sentence_bert_config.json in its path: "" for the folder itself, or e.g. "0_Transformer"),
    then `...Pooling` (its `config.json`: `pooling_mode` as a name or list, or the older
    `pooling_mode_*_tokens` booleans, concatenated in sentence-transformers' order cls, max,
    mean, mean_sqrt_len_tokens; none set means mean) and optionally `...Normalize` (L2).
  * a plain transformers folder (config.json + weights, no modules.json): the folder defines
    no pooling, so the pooled vector is the masked mean, not normalised (what
    sentence-transformers builds for such a folder too). A transformer subfolder of a
    sentence-transformers folder is read as that whole folder, so its pooling is not lost.

The token limit is sentence_bert_config.json's `max_seq_length` when present (as
sentence-transformers truncates), else tokenizer_config.json's `model_max_length`, and never
more than the model's `max_position_embeddings`.
"""

from __future__ import annotations

import dataclasses
import os

from unigen.errors import WeightError
from unigen.files import read_json

# Pooling modes in sentence-transformers' legacy concatenation order, with their config keys.
_LEGACY_POOLING_KEYS = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "lasttoken"),
)
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")


@dataclasses.dataclass(frozen=True)
class EncoderFolder:
    root: str                      # the folder named by the user (modules.json's folder, if any)
    transformer: str               # config.json, weights and tokenizer.json live here
    pooling: tuple[str, ...]       # modes, concatenated in this order
    normalize: bool                # L2-normalise the pooled vector
    max_seq_length: int | None     # sentence-transformers' limit (None: not given)
    do_lower_case: bool            # sentence-transformers lowercases the text first
    sentence_transformers: bool    # modules.json found

    @property
    def tokenizer_file(self) -> str:
        return os.path.join(self.transformer, "tokenizer.json")

    def token_limit(self, max_position_embeddings: int) -> int:
        """Most tokens per text (special tokens included) the tokenizer keeps."""
        limit = self.max_seq_length
        if limit is None:
            limit = read_json(os.path.join(self.transformer, "tokenizer_config.json"), optional=True).get(
                "model_max_length")
            limit = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None
        return min(limit or max_position_embeddings, max_position_embeddings)


def _module_kind(entry) -> str:
    """'Transformer', 'Pooling', ... from a modules.json entry's class path."""
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        raise WeightError(f"modules.json entry {entry!r} has no 'type'")
    return entry["type"].rsplit(".", 1)[-1]


def pooling_modes(config: dict, where: str) -> tuple[str, ...]:
    """The pooling modes a sentence-transformers Pooling config.json asks for."""
    mode = config.get("pooling_mode")
    if mode is not None:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        modes = tuple(name for key, name in _LEGACY_POOLING_KEYS if config.get(key)) or ("mean",)
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad or not modes:
        raise WeightError(f"{where}: pooling mode(s) {bad or modes} not supported; unigen pools with "
                          f"{list(POOLING_MODES)}")
    return modes


def _sentence_transformers_root(folder: str) -> str | None:
    """The sentence-transformers folder `folder` belongs to: itself, or its parent when the
    parent's modules.json names `folder` as its Transformer module's path."""
    if os.path.exists(os.path.join(folder, "modules.json")):
        return folder
    parent = os.path.dirname(os.path.abspath(folder))
    path = os.path.join(parent, "modules.json")
    if os.path.exists(path):
        modules = read_json(path, expect=list)
        if isinstance(modules, list) and modules and _module_kind(modules[0]) == "Transformer" and \
                os.path.normpath(modules[0].get("path") or ".") == os.path.basename(os.path.abspath(folder)):
            return parent
    return None


def read_encoder_folder(folder: str) -> EncoderFolder:
    """The layout of a sentence-transformers or plain transformers encoder folder."""
    folder = os.path.abspath(os.path.expanduser(folder))
    if not os.path.isdir(folder):
        raise WeightError(f"no folder at {folder}")
    root = _sentence_transformers_root(folder)
    if root is None:
        return EncoderFolder(folder, folder, ("mean",), False, None, False, False)
    modules = read_json(os.path.join(root, "modules.json"), expect=list)
    if not isinstance(modules, list) or not modules:
        raise WeightError(f"{root}/modules.json should list the folder's modules")
    kinds = [_module_kind(m) for m in modules]
    if kinds[0] != "Transformer":
        raise WeightError(f"{root}: the first module in modules.json is {modules[0]['type']!r}; unigen reads "
                          f"sentence-transformers folders that start with a Transformer module")
    unsupported = [m["type"] for m, k in zip(modules[1:], kinds[1:]) if k not in ("Pooling", "Normalize")]
    if unsupported:
        raise WeightError(f"{root}: modules {unsupported} are not supported (unigen reads Transformer, "
                          f"Pooling and Normalize)")
    transformer = os.path.normpath(os.path.join(root, modules[0].get("path") or ""))
    pooling = ("mean",)  # no Pooling module listed: the masked mean, as for a plain folder
    for m, kind in zip(modules, kinds):
        if kind == "Pooling":
            where = os.path.join(root, m.get("path") or "", "config.json")
            pooling = pooling_modes(read_json(where), where)
    st_config = read_json(os.path.join(transformer, "sentence_bert_config.json"), optional=True)
    limit = st_config.get("max_seq_length")
    return EncoderFolder(
        root=root, transformer=transformer, pooling=pooling, normalize="Normalize" in kinds,
        max_seq_length=limit if isinstance(limit, int) and limit > 0 else None,
        do_lower_case=bool(st_config.get("do_lower_case", False)), sentence_transformers=True,
    )
