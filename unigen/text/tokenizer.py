"""Text -> padded token-id arrays from a folder's `tokenizer.json`, with the `tokenizers` package
only (no torch, no transformers at run time).

It reproduces what sentence-transformers' `model.tokenize(texts)` gives for a BERT folder
(transformers' fast tokenizer called with padding=True, truncation="longest_first" and
`max_length` = sentence-transformers' `max_seq_length`): the same WordPiece ids with [CLS] and
[SEP], right padding with the pad id to the longest text in the batch (or to `pad_to`), and
truncation that keeps the special tokens. The padding and truncation stored in tokenizer.json
itself (MiniLM's says "pad and cut at 128") are switched off: the encoder's limit rules.
`lowercase=True` (sentence_bert_config.json `do_lower_case`) puts a Lowercase normaliser in
front of the file's own, as sentence-transformers does.

Truncation is never silent: a `warnings.warn` names the prompt (shortened) and the limit.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import warnings

import numpy as np

from unigen.errors import WeightError

# tokenizers.Tokenizer objects are cached here, outside any nnx.Module (they are not arrays
# and not hashable static data, so they must not enter an NNX graph). Keyed by every setting
# that configures the object.
_CACHE: dict[tuple, object] = {}
_LOCK = threading.Lock()


def _backend(path: str, max_length: int, lowercase: bool):
    key = (os.path.abspath(path), max_length, lowercase)
    with _LOCK:
        if key not in _CACHE:
            from tokenizers import Tokenizer as _HFTokenizer
            from tokenizers import normalizers
            if not os.path.isfile(path):
                raise WeightError(f"{os.path.dirname(path) or '.'}: no tokenizer file {os.path.basename(path)!r}; "
                                  f"the folder needs the tokenizer.json its model was trained with")
            try:
                tok = _HFTokenizer.from_file(path)
            except Exception as e:  # tokenizers raises its own Exception type for a bad file
                raise WeightError(f"{path} cannot be read as a tokenizers file ({e})") from None
            # The id padded positions get: the file's own padding id, else [PAD]'s, else 0.
            file_padding = tok.padding or {}
            pad_id = file_padding.get("pad_id")
            if not isinstance(pad_id, int):
                pad_id = tok.token_to_id("[PAD]") or 0
            tok.no_padding()
            tok.enable_truncation(max_length=max_length, strategy="longest_first", direction="right")
            if lowercase:
                current = tok.normalizer
                tok.normalizer = normalizers.Sequence([normalizers.Lowercase()] + ([current] if current else []))
            _CACHE[key] = (tok, pad_id)
        return _CACHE[key]


class ByKey:
    """A dataclass of arrays also readable by key (`batch["input_ids"]`), as a transformers
    tokenizer's output is."""

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.keys():
            raise KeyError(f"{key!r}; a {type(self).__name__} holds {list(self.keys())}")
        return getattr(self, key)

    def keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))


@dataclasses.dataclass(frozen=True)
class IdsAndMask(ByKey):
    """numpy int32 arrays, each (B, T): what CLIP's and T5's tokenizers give."""
    input_ids: np.ndarray
    attention_mask: np.ndarray


@dataclasses.dataclass(frozen=True)
class TokenBatch(ByKey):
    """numpy int32 arrays, each (B, T): what a BERT tokenizer gives."""
    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray


def _shorten(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """`Tokenizer(path, max_length)(texts, pad_to=None) -> TokenBatch`.

    `path` is a tokenizer.json; `max_length` the most tokens per text, special tokens included;
    `pad_id` the id written into padded positions (None: the file's padding id, else "[PAD]"'s,
    else 0)."""
    path: str
    max_length: int
    lowercase: bool = False
    pad_id: int | None = None

    def __post_init__(self):
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"Tokenizer max_length={self.max_length!r}: must be an integer >= 2 "
                             f"(room for [CLS] and [SEP])")

    @property
    def backend(self):
        """The cached `tokenizers.Tokenizer`, configured (no padding; truncation at max_length)."""
        return _backend(self.path, self.max_length, self.lowercase)[0]

    def _pad_id(self) -> int:
        return self.pad_id if self.pad_id is not None else _backend(self.path, self.max_length, self.lowercase)[1]

    def __call__(self, texts, pad_to: int | None = None) -> TokenBatch:
        texts = _check_texts(texts)
        encodings = self.backend.encode_batch(texts)
        for text, enc in zip(texts, encodings):
            if enc.overflowing:
                warnings.warn(f"prompt {_shorten(text)!r} is longer than the text encoder's limit of "
                              f"{self.max_length} tokens and was truncated to it", stacklevel=3)
        longest = max(len(e.ids) for e in encodings)
        if pad_to is not None:
            if not isinstance(pad_to, int) or isinstance(pad_to, bool) or pad_to < longest:
                raise ValueError(f"pad_to={pad_to!r} is shorter than the longest tokenised prompt "
                                 f"({longest} tokens); pass pad_to >= {longest} or None")
            length = pad_to
        else:
            length = longest
        b = len(texts)
        ids = np.full((b, length), self._pad_id(), np.int32)
        mask = np.zeros((b, length), np.int32)
        types = np.zeros((b, length), np.int32)
        for i, e in enumerate(encodings):
            n = len(e.ids)
            ids[i, :n], mask[i, :n], types[i, :n] = e.ids, e.attention_mask, e.type_ids
        return TokenBatch(ids, mask, types)


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("expected a list of strings, got one string; wrap it as [text]")
    try:
        texts = list(texts)
    except TypeError:
        raise ValueError(f"expected a list of strings, got {type(texts).__name__}") from None
    if not texts:
        raise ValueError("expected a non-empty list of strings, got an empty list")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] is a {type(t).__name__} ({_shorten(repr(t))}), not a string")
    return texts
