"""Prompt encoders: a text model and its tokenizer behind one surface, the one `TextEncoder`
(unigen/text/encoder.py) has, so a task or a pipeline takes any registered family alike:

    enc.tokenize(texts, pad_to=None)        -> the tokenizer's batch (numpy input_ids, attention_mask)
    enc.encode(texts, pad_to=None)          -> TextEncoding(tokens (B, T, D), mask (B, T) bool, pooled (B, P))
    enc(input_ids, attention_mask)          -> TextEncoding, for ids tokenised elsewhere

Families (each one registration, `register_prompt_encoder`):

  * CLIP's text model (`CLIPPromptEncoder`, unigen/text/clip.py). Tokens: `hidden_states[layer]`,
    by default layer=-2, the penultimate layer's output, what SD3's and SDXL's pipelines feed their
    networks (diffusers' clip_skip=None there); layer="last" is `last_hidden_state` (after the final
    LayerNorm, what SD 1.x feeds its UNet); any other integer indexes transformers' `hidden_states`
    tuple (the embeddings, then each layer). Pooled: `text_embeds` (the projected end-of-text state)
    when the model has a text projection (CLIPTextModelWithProjection: SD3, SDXL), else the
    end-of-text state itself (`pooler_output`: Flux's CLIP-L). The model is called without an
    attention mask, as diffusers' SD3 / SDXL / Flux pipelines call it: CLIP is causal and its
    tokenizer pads on the right, so a real token's state never depends on the padding.
    Padding: to the longest prompt of the batch (or to `pad_to`), not SD3's fixed 77. Because of
    that causality the states at the real positions are exactly the first T rows of what SD3's
    77-token padding gives, and `encode(texts, pad_to=77)` is SD3's layout itself; a short table
    of captions stays short. The mask is the tokenizer's (True up to and including <|endoftext|>).
  * T5's encoder (`T5PromptEncoder`, unigen/text/t5.py). Tokens: `last_hidden_state`, computed
    with the tokenizer's attention mask (transformers' T5EncoderModel with `attention_mask`), so
    the real tokens' states do not depend on the padding either; diffusers' SD3 / Flux pipelines
    instead pad to max_sequence_length and pass no mask, which lets the real tokens attend to the
    padding (`T5PromptEncoder(..., padding_mask=False)`, with `pad_to=max_sequence_length`, is that
    convention). T5 has no pooled vector of its own (no [CLS], no end-of-text pooling, no
    projection): `pooled` is the masked mean of the token states, a documented stand-in that a
    network conditioned on a pooled vector can use. Texts are truncated at `max_length` tokens
    (default 256, diffusers' SD3 max_sequence_length), </s> included.

Tokenizer files are looked for in the encoder's folder itself (a transformers CLIP or T5 folder
from the hub holds them), else, for a diffusers pipeline component folder `text_encoder`,
`text_encoder_2` or `text_encoder_3`, in its sibling `tokenizer`, `tokenizer_2`, `tokenizer_3`.

`as_prompt_encoder(module, folder)` turns a module `unigen.pretrained.from_pretrained` returned
into a prompt encoder: a module that already has `tokenize` and `encode` (the BERT TextEncoder)
is returned as it is; otherwise the newest registration that matches wraps it. A new family is
one call: `register_prompt_encoder(ModelClass, lambda module, folder: MyEncoder(...))`.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unigen.errors import WeightError
from unigen.text.clip import CLIPTextModel
from unigen.text.encoder import TextEncoding
from unigen.text.t5 import T5Encoder
from unigen.text.tokenizer import _check_texts

# Files whose presence marks a tokenizer folder (CLIP: tokenizer.json or vocab.json + merges.txt;
# T5: tokenizer.json, or spiece.model, which T5Tokenizer.from_folder refuses with its own advice).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer_config.json")
# a diffusers pipeline's text encoder component -> its tokenizer component (text_encoder_2 -> tokenizer_2)
_COMPONENT = re.compile(r"^text_encoder(_\d+)?$")
T5_MAX_LENGTH = 256  # diffusers' StableDiffusion3Pipeline max_sequence_length default


def tokenizer_folder(folder: str) -> str:
    """Where the tokenizer of the encoder in `folder` lives (see the module docstring)."""
    folder = os.path.abspath(os.fspath(folder))
    looked = [folder]
    if any(os.path.isfile(os.path.join(folder, f)) for f in TOKENIZER_FILES):
        return folder
    base = os.path.basename(folder)
    match = _COMPONENT.match(base)
    if match:
        sibling = os.path.join(os.path.dirname(folder), "tokenizer" + (match.group(1) or ""))
        looked.append(sibling)
        if os.path.isdir(sibling):
            return sibling
    raise WeightError(f"{folder}: no tokenizer files ({' / '.join(TOKENIZER_FILES)}) in "
                      f"{' nor in '.join(looked)}; a prompt encoder needs the tokenizer its model was trained "
                      f"with (put its files beside config.json, or use a pipeline's text_encoder*/ folder "
                      f"whose tokenizer*/ sibling holds them)")


def _pad_checked(pad_to, longest: int, limit: int, what: str) -> int:
    if not isinstance(pad_to, (int, np.integer)) or isinstance(pad_to, bool) or pad_to < longest:
        raise ValueError(f"pad_to={pad_to!r} is shorter than the longest tokenised prompt ({longest} tokens); "
                         f"pass pad_to >= {longest} or None")
    if pad_to > limit:
        raise ValueError(f"pad_to={pad_to} exceeds this {what}'s limit of {limit} tokens")
    return int(pad_to)


# ---- CLIP -----------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=(0, 3))
def _clip_forward(graphdef, state, input_ids, layer):
    # No attention mask: the pipelines' call (see the module docstring). Inside jit the hidden
    # states that `layer` does not pick are dead code.
    out = nnx.merge(graphdef, state)(input_ids, hidden_states=layer != "last")
    tokens = out.last_hidden_state if layer == "last" else out.hidden_states[layer]
    return tokens, (out.pooled if out.text_embeds is None else out.text_embeds)


class CLIPPromptEncoder:
    """A `CLIPTextModel` with its `CLIPTokenizer` as a prompt encoder (see the module docstring).

    layer: -2 (default, SD3), "last", or an index into the (num_layers + 1) hidden states;
    max_length: tokens per prompt, special tokens included (None: the tokenizer's
    model_max_length, at most the model's max_position_embeddings)."""

    def __init__(self, model: CLIPTextModel, tokenizer, *, layer: int | str = -2, max_length: int | None = None,
                 source: str = ""):
        self.model, self.tokenizer, self.source = model, tokenizer, source
        n = model.cfg.num_layers + 1
        if layer != "last" and not (isinstance(layer, int) and not isinstance(layer, bool) and -n <= layer < n):
            raise ValueError(f"layer={layer!r}: use 'last' (last_hidden_state) or an index into the {n} hidden "
                             f"states, in [{-n}, {n - 1}] (-2: the penultimate layer, as SD3)")
        self.layer = layer if layer == "last" else layer % n - n  # one negative index per layer: one compilation
        limit = model.cfg.max_position_embeddings
        max_length = min(tokenizer.model_max_length, limit) if max_length is None else max_length
        if not (isinstance(max_length, int) and not isinstance(max_length, bool) and 2 <= max_length <= limit):
            raise ValueError(f"max_length={max_length!r}: must be an integer in [2, max_position_embeddings={limit}]")
        self.max_length = max_length
        if tokenizer.vocab_size > model.cfg.vocab_size:
            raise WeightError(f"{source or 'CLIP prompt encoder'}: the tokenizer has {tokenizer.vocab_size} ids but "
                              f"the model's vocab_size is {model.cfg.vocab_size}; they are not a pair")

    @classmethod
    def from_module(cls, model: CLIPTextModel, folder: str, **options) -> "CLIPPromptEncoder":
        from unigen.text.clip_tokenizer import CLIPTokenizer
        return cls(model, CLIPTokenizer.from_folder(tokenizer_folder(folder)), source=folder, **options)

    @property
    def pooled_dim(self) -> int:
        return self.model.cfg.projection_dim or self.model.cfg.hidden_size

    def tokenize(self, texts, pad_to: int | None = None):
        """CLIPTokenBatch (numpy int32 (B, T)): T = the longest prompt, or `pad_to`; warns on truncation."""
        texts = _check_texts(texts)
        if pad_to is None:
            return self.tokenizer(texts, max_length=self.max_length, padding="longest")
        with warnings.catch_warnings():  # only measures; the call below warns about truncation once
            warnings.simplefilter("ignore")
            longest = self.tokenizer(texts, max_length=self.max_length, padding="longest").input_ids.shape[1]
        length = _pad_checked(pad_to, longest, self.model.cfg.max_position_embeddings, "CLIP")
        return self.tokenizer(texts, max_length=length, padding="max_length")

    def __call__(self, input_ids, attention_mask) -> TextEncoding:
        graphdef, state = nnx.split(self.model)
        tokens, pooled = _clip_forward(graphdef, state, jnp.asarray(input_ids, jnp.int32), self.layer)
        return TextEncoding(tokens, jnp.asarray(attention_mask).astype(bool), pooled)

    def encode(self, texts, pad_to: int | None = None) -> TextEncoding:
        batch = self.tokenize(texts, pad_to=pad_to)
        return self(batch.input_ids, batch.attention_mask)

    def __repr__(self) -> str:
        return f"CLIPPromptEncoder({self.source!r}, layer={self.layer!r}, max_length={self.max_length})"


# ---- T5 -------------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=(0,))
def _t5_forward(graphdef, state, input_ids, run_mask, mask):
    # run_mask: what the encoder sees; mask: the real tokens, over which `pooled` is always the mean
    tokens = nnx.merge(graphdef, state)(input_ids, run_mask).last_hidden_state
    m = mask.astype(jnp.float32)[..., None]
    pooled = (tokens.astype(jnp.float32) * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)
    return tokens, pooled.astype(tokens.dtype)


class T5PromptEncoder:
    """A `T5Encoder` with its `T5Tokenizer` as a prompt encoder (see the module docstring).

    max_length: tokens per prompt, </s> included (longer prompts are truncated with a warning);
    padding_mask: pass the tokenizer's mask to the encoder (default; False: no mask, as diffusers'
    SD3 / Flux pipelines call T5 — then the padding changes the states)."""

    def __init__(self, model: T5Encoder, tokenizer, *, max_length: int = T5_MAX_LENGTH, padding_mask: bool = True,
                 source: str = ""):
        if not (isinstance(max_length, int) and not isinstance(max_length, bool) and max_length >= 1):
            raise ValueError(f"max_length={max_length!r}: must be a positive integer")
        if not isinstance(padding_mask, bool):
            raise ValueError(f"padding_mask={padding_mask!r}: must be True or False")
        self.model, self.tokenizer, self.source = model, tokenizer, source
        self.max_length, self.padding_mask = max_length, padding_mask

    @classmethod
    def from_module(cls, model: T5Encoder, folder: str, **options) -> "T5PromptEncoder":
        from unigen.text.t5_tokenizer import T5Tokenizer
        return cls(model, T5Tokenizer.from_folder(tokenizer_folder(folder)), source=folder, **options)

    @property
    def pooled_dim(self) -> int:
        return self.model.cfg.d_model

    def tokenize(self, texts, pad_to: int | None = None):
        """T5TokenBatch (numpy int32 (B, T)): T = the longest prompt, or `pad_to`; warns on truncation."""
        texts = _check_texts(texts)
        if pad_to is None:
            return self.tokenizer(texts, max_length=self.max_length, padding="longest")
        with warnings.catch_warnings():  # only measures; the call below warns about truncation once
            warnings.simplefilter("ignore")
            longest = self.tokenizer(texts, max_length=self.max_length, padding="longest").input_ids.shape[1]
        # pad_to <= max_length and >= every (truncated) prompt: truncating at pad_to cuts nothing more
        length = _pad_checked(pad_to, longest, self.max_length, "T5 prompt encoder (max_length)")
        return self.tokenizer(texts, max_length=length, padding="max_length")

    def __call__(self, input_ids, attention_mask) -> TextEncoding:
        mask = jnp.asarray(attention_mask).astype(bool)
        graphdef, state = nnx.split(self.model)
        run_mask = mask if self.padding_mask else jnp.ones_like(mask)
        tokens, pooled = _t5_forward(graphdef, state, jnp.asarray(input_ids, jnp.int32), run_mask, mask)
        return TextEncoding(tokens, mask, pooled)

    def encode(self, texts, pad_to: int | None = None) -> TextEncoding:
        batch = self.tokenize(texts, pad_to=pad_to)
        return self(batch.input_ids, batch.attention_mask)

    def __repr__(self) -> str:
        return f"T5PromptEncoder({self.source!r}, max_length={self.max_length}, padding_mask={self.padding_mask})"


# ---- the registry ---------------------------------------------------------------------------------------
# (name, matches(module) -> bool, wrap(module, folder) -> prompt encoder); the newest match wins.
_FAMILIES: list[tuple[str, Callable[[Any], bool], Callable[[Any, str], Any]]] = []


def register_prompt_encoder(match, wrap: Callable[[Any, str], Any], *, name: str | None = None):
    """Make modules that `match` (a class: isinstance; or a predicate module -> bool) prompt
    encoders through `wrap(module, folder)`. A later registration with the same name replaces
    the earlier one; among different names, the newest match wins. Returns `wrap`."""
    if isinstance(match, type):
        cls = match
        test, default = (lambda m: isinstance(m, cls)), cls.__name__
    elif callable(match):
        test, default = match, getattr(match, "__name__", repr(match))
    else:
        raise TypeError(f"register_prompt_encoder: match={match!r} must be a class or a predicate")
    if not callable(wrap):
        raise TypeError(f"register_prompt_encoder: wrap={wrap!r} must be callable as wrap(module, folder)")
    key = name or default
    _FAMILIES[:] = [f for f in _FAMILIES if f[0] != key] + [(key, test, wrap)]
    return wrap


def is_prompt_encoder(obj) -> bool:
    """Whether `obj` already has the prompt-encoder surface (tokenize and encode)."""
    return callable(getattr(obj, "tokenize", None)) and callable(getattr(obj, "encode", None))


def prompt_encoder_families() -> list[str]:
    return [name for name, _, _ in _FAMILIES]


def as_prompt_encoder(module, folder: str):
    """`module` (loaded from `folder`) as a prompt encoder (see the module docstring)."""
    if is_prompt_encoder(module):
        return module
    for name, test, wrap in reversed(_FAMILIES):
        if test(module):
            return wrap(module, os.fspath(folder))
    raise WeightError(f"{folder} loaded as a {type(module).__name__}, which is no prompt encoder: none of the "
                      f"registered families {prompt_encoder_families()} matches it "
                      f"(unigen.text.prompt_encoders.register_prompt_encoder adds one)")


register_prompt_encoder(CLIPTextModel, CLIPPromptEncoder.from_module, name="clip")
register_prompt_encoder(T5Encoder, T5PromptEncoder.from_module, name="t5")
