"""T5's tokenizer: text -> padded token-id arrays from a folder's `tokenizer.json`, with the
`tokenizers` package only (no transformers, no sentencepiece at run time).

It reproduces transformers' `T5TokenizerFast` as diffusers' SD3 and Flux pipelines call it
(`padding="max_length", max_length=max_sequence_length, truncation=True,
add_special_tokens=True`): the file's normaliser, pre-tokeniser and Unigram vocabulary, `</s>`
appended to every text, right padding with `<pad>`'s id (0 in T5's vocabulary), and truncation
that keeps the `</s>` (the text is cut to max_length - 1 pieces). The end token is appended by a
post-processor set here, as transformers' T5 tokenizer sets it whatever the file holds; the
file's own padding and truncation settings are switched off. The special tokens' names come from
the folder's tokenizer_config.json when it names them (`eos_token`, `pad_token`), else T5's.

SD3's tokenizer_3 and Flux's tokenizer_2 ship tokenizer.json beside spiece.model; a folder with
only spiece.model is an error that says how to write the tokenizer.json once. (transformers 5
rebuilds the pipeline around the file's vocabulary: only a SentencePiece `Precompiled` normaliser
kept, WhitespaceSplit + Metaspace as pre-tokeniser. The released T5 files hold exactly those, the
older Metaspace form `add_prefix_space: true` included, which `tokenizers` reads the same way;
a file with other stages is read here as written.)

Truncation is never silent: a `warnings.warn` names each truncated prompt (shortened) and the
limit.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import warnings

import numpy as np

from unigen.errors import WeightError
from unigen.files import read_json
from unigen.text.tokenizer import IdsAndMask, _check_texts, _shorten

TOKENIZER_FILE = "tokenizer.json"
PADDINGS = ("max_length", "longest")

# tokenizers.Tokenizer objects, kept outside any nnx.Module (see unigen.text.tokenizer), keyed by
# every setting that configures one.
_CACHE: dict[tuple, tuple] = {}
_LOCK = threading.Lock()


def _token_name(value, default: str) -> str:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else default


T5TokenBatch = IdsAndMask  # ids and mask, also readable by key (unigen/text/tokenizer.py)


@dataclasses.dataclass(frozen=True)
class T5Tokenizer:
    """`T5Tokenizer.from_folder(folder)(texts, max_length=256) -> T5TokenBatch`.

    `path` is a tokenizer.json; `eos_token` is appended to every text, `pad_token`'s id fills
    padded positions."""
    path: str
    eos_token: str = "</s>"
    pad_token: str = "<pad>"

    @classmethod
    def from_folder(cls, folder: str) -> "T5Tokenizer":
        """The tokenizer of a transformers T5 tokenizer folder (tokenizer.json, and
        tokenizer_config.json when present)."""
        if not os.path.isdir(folder):
            raise WeightError(f"no tokenizer folder at {folder}")
        path = os.path.join(folder, TOKENIZER_FILE)
        if not os.path.isfile(path):
            if os.path.isfile(os.path.join(folder, "spiece.model")):
                raise WeightError(
                    f"{folder} has spiece.model but no {TOKENIZER_FILE}: unigen reads T5's tokenizer from "
                    f"{TOKENIZER_FILE} (what SD3's tokenizer_3 and Flux's tokenizer_2 ship) with the `tokenizers` "
                    f"package, without sentencepiece. Write it once where transformers and sentencepiece are "
                    f"installed: T5TokenizerFast.from_pretrained(folder).save_pretrained(folder)")
            raise WeightError(f"{folder}: no {TOKENIZER_FILE}, so this is not a T5 tokenizer folder")
        config = read_json(os.path.join(folder, "tokenizer_config.json"), optional=True)
        return cls(path, eos_token=_token_name(config.get("eos_token"), "</s>"),
                   pad_token=_token_name(config.get("pad_token"), "<pad>"))

    def _backend(self, max_length: int | None):
        """(tokenizers.Tokenizer with the </s> post-processor, no padding, truncation at
        `max_length` or none; pad id)."""
        key = (os.path.abspath(self.path), self.eos_token, self.pad_token, max_length)
        with _LOCK:
            if key not in _CACHE:
                from tokenizers import Tokenizer, processors
                try:
                    tok = Tokenizer.from_file(self.path)
                except Exception as e:  # tokenizers raises its own Exception type for a bad file
                    raise WeightError(f"{self.path} cannot be read as a tokenizers file ({e})") from None
                ids = {name: tok.token_to_id(name) for name in (self.eos_token, self.pad_token)}
                for name, token_id in ids.items():
                    if token_id is None:
                        raise WeightError(f"{self.path}: the special token {name!r} is not in its vocabulary")
                tok.post_processor = processors.TemplateProcessing(
                    single=["$A", self.eos_token], pair=["$A", self.eos_token, "$B", self.eos_token],
                    special_tokens=[(self.eos_token, ids[self.eos_token])])
                tok.no_padding()
                if max_length is None:
                    tok.no_truncation()
                else:
                    tok.enable_truncation(max_length=max_length, strategy="longest_first", direction="right")
                _CACHE[key] = (tok, ids[self.pad_token])
            return _CACHE[key]

    def __call__(self, texts, max_length: int, padding: str = "max_length", truncation: bool = True) -> T5TokenBatch:
        """Token ids and attention masks (B, T) int32. padding="max_length": T = max_length;
        "longest": T = the longest tokenised text. truncation=True cuts longer texts to
        max_length (their `</s>` kept), with a warning per truncated text; False: a text longer
        than max_length is an error with padding="max_length", and is kept whole with "longest"."""
        texts = _check_texts(texts)
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ValueError(f"max_length={max_length!r}: must be a positive integer (tokens per text, </s> included)")
        if padding not in PADDINGS:
            raise ValueError(f"padding={padding!r}: use one of {PADDINGS}")
        if not isinstance(truncation, bool):
            raise ValueError(f"truncation={truncation!r}: must be True or False")
        tok, pad_id = self._backend(max_length if truncation else None)
        encodings = tok.encode_batch(texts)
        for text, enc in zip(texts, encodings):
            if enc.overflowing:
                warnings.warn(f"prompt {_shorten(text)!r} is longer than the T5 limit of {max_length} tokens "
                              f"and was truncated to it", stacklevel=2)
        longest = max(len(e.ids) for e in encodings)
        if padding == "max_length" and longest > max_length:
            i = next(i for i, e in enumerate(encodings) if len(e.ids) == longest)
            raise ValueError(f"prompt {_shorten(texts[i])!r} has {longest} tokens, more than max_length={max_length}, "
                             f"and truncation=False; truncate, or pad to the longest text")
        length = max_length if padding == "max_length" else longest
        ids = np.full((len(texts), length), pad_id, np.int32)
        mask = np.zeros((len(texts), length), np.int32)
        for i, e in enumerate(encodings):
            n = len(e.ids)
            ids[i, :n], mask[i, :n] = e.ids, e.attention_mask
        return T5TokenBatch(ids, mask)
