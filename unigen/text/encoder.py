"""`TextEncoder`: a BERT encoder plus sentence-transformers' pooling, with its tokenizer.

`encoder(input_ids, attention_mask, token_type_ids=None)` is a pure function of arrays
(jittable, also through `nnx.split` / `nnx.merge`) and returns a `TextEncoding`:
    tokens  (B, T, D)  the last hidden state, compute dtype
    mask    (B, T)     bool, True at real tokens
    pooled  (B, P)     the sentence vector (P = D times the number of pooling modes)
`encoder.encode(["a prompt", ...], pad_to=None)` tokenises (unigen.text.tokenizer) and runs it.

Pooling matches sentence-transformers' `Pooling` and `Normalize` modules: "mean" = sum of the
token states at mask 1 over their count (count clamped at 1e-9), "mean_sqrt_len_tokens" = the
same sum over sqrt(count), "max" = the maximum over masked-in positions, "cls" = the state at
the first masked-in position; several modes concatenate in the folder's order; accumulation
in float32. `normalize` divides by max(||v||_2, 1e-12) like torch's F.normalize. A plain
transformers folder (no modules.json) defines no pooling: there `pooled` is the masked mean,
not normalised (unigen.text.folder).

Only hashable settings live on the module (`cfg`, including the tokenizer.json path); the
`tokenizers` object itself is cached in unigen.text.tokenizer, outside the NNX graph.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from unigen.errors import WeightError
from unigen.text.bert import Bert, BertConfig
from unigen.text.folder import POOLING_MODES
from unigen.text.tokenizer import TokenBatch, Tokenizer


class TextEncoding(NamedTuple):
    tokens: jax.Array   # (B, T, D)
    mask: jax.Array     # (B, T) bool
    pooled: jax.Array   # (B, P)


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
    bert: BertConfig = BertConfig()
    pooling: tuple[str, ...] = ("mean",)
    normalize: bool = False
    tokenizer_file: str | None = None   # a tokenizer.json (None: encode() is unavailable)
    max_length: int = 512               # tokens kept per text, special tokens included
    lowercase: bool = False             # sentence_bert_config.json do_lower_case
    source: str = ""                    # the folder it was read from (for messages)

    def validate(self) -> "TextEncoderConfig":
        self.bert.validate()
        if not self.pooling or any(m not in POOLING_MODES for m in self.pooling):
            raise ValueError(f"TextEncoderConfig.pooling={self.pooling!r}: use modes from {list(POOLING_MODES)}")
        if not 2 <= self.max_length <= self.bert.max_position_embeddings:
            raise ValueError(f"TextEncoderConfig.max_length={self.max_length}: must be in "
                             f"[2, max_position_embeddings={self.bert.max_position_embeddings}]")
        return self


def pool(tokens: jax.Array, mask: jax.Array, modes: tuple[str, ...], normalize: bool) -> jax.Array:
    """Sentence vectors (B, len(modes) * D) from token states (B, T, D) and a (B, T) mask."""
    x = tokens.astype(jnp.float32)
    m = mask.astype(jnp.float32)[..., None]
    count = jnp.maximum(m.sum(axis=1), 1e-9)
    out = []
    for mode in modes:
        if mode == "mean":
            out.append((x * m).sum(axis=1) / count)
        elif mode == "mean_sqrt_len_tokens":
            out.append((x * m).sum(axis=1) / jnp.sqrt(count))
        elif mode == "max":
            out.append(jnp.where(m > 0, x, -jnp.inf).max(axis=1))
        elif mode == "cls":
            # The first real token, wherever padding sits (left or right).
            first = jnp.argmax(mask.astype(jnp.int32), axis=1)
            out.append(jnp.take_along_axis(x, first[:, None, None], axis=1)[:, 0])
        else:
            raise ValueError(f"unknown pooling mode {mode!r}; use one of {list(POOLING_MODES)}")
    v = jnp.concatenate(out, axis=-1)
    if normalize:
        v = v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    return v.astype(tokens.dtype)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, input_ids, attention_mask, token_type_ids):
    return nnx.merge(graphdef, state)(input_ids, attention_mask, token_type_ids)


class TextEncoder(nnx.Module):
    """A frozen text encoder: `encoder(input_ids, attention_mask)` -> TextEncoding; `encode(texts)`.

    Pooling and normalisation come from the folder (`cfg.pooling`, `cfg.normalize`); a plain
    transformers folder without modules.json gives the masked mean, not normalised."""

    def __init__(self, cfg: TextEncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg.validate()
        self.bert = Bert(cfg.bert, rngs=rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids=None) -> TextEncoding:
        mask = jnp.asarray(attention_mask).astype(bool)
        tokens = self.bert(input_ids, mask, token_type_ids)
        return TextEncoding(tokens, mask, pool(tokens, mask, self.cfg.pooling, self.cfg.normalize))

    @property
    def tokenizer(self) -> Tokenizer:
        """The folder's tokenizer (a plain Python object; its `tokenizers` backend is cached)."""
        path = self.cfg.tokenizer_file
        if path is None or not os.path.isfile(path):
            raise WeightError(f"{self.cfg.source or 'this text encoder'}: no tokenizer.json"
                              f"{' at ' + path if path else ''}; encode() needs the tokenizer the model "
                              f"was trained with (call the encoder on token ids instead)")
        return Tokenizer(path, self.cfg.max_length, lowercase=self.cfg.lowercase)

    def tokenize(self, texts, pad_to: int | None = None) -> TokenBatch:
        """numpy int32 (B, T) input_ids / attention_mask / token_type_ids; warns on truncation."""
        if pad_to is not None and pad_to > self.cfg.bert.max_position_embeddings:
            raise ValueError(f"pad_to={pad_to} exceeds this encoder's max_position_embeddings="
                             f"{self.cfg.bert.max_position_embeddings}")
        return self.tokenizer(texts, pad_to=pad_to)

    def encode(self, texts, pad_to: int | None = None) -> TextEncoding:
        """Tokenise `texts` (a list of str) and encode them (compiled once per padded length)."""
        batch = self.tokenize(texts, pad_to=pad_to)
        graphdef, state = nnx.split(self)
        return _forward(graphdef, state, batch.input_ids, batch.attention_mask, batch.token_type_ids)
