"""CLIP's tokenizer (byte-level BPE with end-of-word suffixes) from a transformers tokenizer folder,
with the `tokenizers` package only (no torch, no transformers at run time).

    tok = CLIPTokenizer.from_folder("…/stable-diffusion-3-medium-diffusers/tokenizer_2")
    batch = tok(["a photo of a cat"])             # padding="max_length", max_length=77, truncation
    batch.input_ids, batch.attention_mask         # numpy int32 (B, 77)

What it reproduces is transformers' `CLIPTokenizer` (in transformers 5 the one class; `CLIPTokenizerFast`
names it too), called as diffusers' SD / SDXL / SD3 / Flux pipelines call it:
  * the vocabulary and merges come from `tokenizer.json` when the folder has one (transformers 5
    takes only those two from it and builds CLIP's pipeline itself), else from `vocab.json` +
    `merges.txt` (what diffusers' `tokenizer/`, `tokenizer_2/` folders ship);
  * text is NFC-normalised, every whitespace run becomes one space, and it is lowercased;
  * it is split with CLIP's pattern (OpenAI's simple_tokenizer: the two special tokens,
    the English contractions, runs of letters, single digits, runs of other non-space
    characters; whitespace dropped), each piece is mapped to byte-level characters, and BPE
    runs on it with "</w>" ending the last symbol of each word;
  * the folder's added tokens (`added_tokens_decoder` in tokenizer_config.json; in older folders
    the special tokens of tokenizer_config.json / special_tokens_map.json and tokenizer.json's
    `added_tokens`) are matched in the raw text before the steps above, as transformers does.
    So SD3's `tokenizer_2`, whose pad token "!" is such a token, gives "!" in a prompt the id 0
    where BPE alone would give "!</w>";
  * every text becomes <|startoftext|> ids <|endoftext|>; `truncation=True` keeps both special
    tokens and cuts the text's ids to fit `max_length` (a warning names each truncated prompt);
    padding (right) uses the pad token: "<|endoftext|>" for CLIP-L / Flux, "!" for the bigG
    tokenizer of SDXL / SD3.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np

from unigen.errors import WeightError
from unigen.files import read_json
from unigen.text.tokenizer import IdsAndMask, _check_texts, _shorten

# OpenAI CLIP's pre-tokenisation pattern (simple_tokenizer.py), as transformers 5's CLIPTokenizer
# writes it; text is lowercased before, so its IGNORECASE flag changes nothing.
CLIP_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
END_OF_WORD = "</w>"
# transformers' CLIPTokenizer defaults for the special tokens
DEFAULT_SPECIAL = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                   "pad_token": "<|endoftext|>"}
# CLIP's context length (the position table of every released CLIP text model)
DEFAULT_MAX_LENGTH = 77
_TOKEN_FLAGS = ("single_word", "lstrip", "rstrip", "normalized", "special")
PADDINGS = ("max_length", "longest", "do_not_pad")


CLIPTokenBatch = IdsAndMask  # ids and mask, also readable by key (unigen/text/tokenizer.py)


def _token_spec(value, where: str) -> dict | None:
    """A special / added token from a config value: a string, or an AddedToken dict (`__type` form
    of older files included) -> {"content": ..., flags...}; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return {"content": value}
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return {"content": value["content"], **{k: bool(value[k]) for k in _TOKEN_FLAGS if k in value}}
    raise WeightError(f"{where}: token {value!r} is neither a string nor an AddedToken object with a 'content'")


def _read_merges(path: str) -> list[tuple[str, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as e:
        raise WeightError(f"{path} cannot be read ({e.strerror or e})") from None
    merges = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or (n == 1 and line.startswith("#version")):
            continue  # the "#version: 0.2" header, and the trailing newline
        parts = line.split(" ")
        if len(parts) != 2:
            raise WeightError(f"{path}, line {n}: {line[:60]!r} is not a merge (two symbols separated by a space)")
        merges.append((parts[0], parts[1]))
    return merges


def _tokenizer_json_model(path: str) -> tuple[dict, list[tuple[str, str]], list[dict]]:
    """(vocab, merges, added tokens) of a tokenizer.json holding a BPE model."""
    data = read_json(path)
    model = data.get("model") or {}
    if model.get("type", "BPE") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise WeightError(f"{path}: model type {model.get('type')!r} is not CLIP's byte-level BPE (a 'BPE' model "
                          f"with a vocab object)")
    merges = []
    for m in model.get("merges") or []:
        pair = tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
        if len(pair) != 2:
            raise WeightError(f"{path}: merge {m!r} is not a pair of symbols")
        merges.append(pair)
    added = [_token_spec(t, path) for t in data.get("added_tokens") or []]
    return model["vocab"], merges, added


class CLIPTokenizer:
    """`CLIPTokenizer(vocab, merges, ...)(texts, max_length=None, padding="max_length",
    truncation=True) -> CLIPTokenBatch`; usually made by `CLIPTokenizer.from_folder(folder)`.

    `vocab` maps tokens to ids, `merges` lists BPE merges in rank order; the special tokens are
    strings or AddedToken dicts; `added_tokens` are further AddedToken dicts matched in raw text
    (see the module docstring); `model_max_length` is the default `max_length`."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], *,
                 bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                 pad_token="<|endoftext|>", added_tokens=(), model_max_length: int = DEFAULT_MAX_LENGTH,
                 source: str = "CLIP tokenizer"):
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
        from tokenizers.models import BPE

        self.source = source
        if not isinstance(model_max_length, int) or isinstance(model_max_length, bool) or model_max_length < 2:
            raise WeightError(f"{source}: model_max_length={model_max_length!r} must be an integer >= 2 (room for "
                              f"<|startoftext|> and <|endoftext|>)")
        self.model_max_length = model_max_length
        specials = {name: _token_spec(value, source) for name, value in
                    (("bos_token", bos_token), ("eos_token", eos_token), ("unk_token", unk_token),
                     ("pad_token", pad_token))}
        for name in ("bos_token", "eos_token", "pad_token"):
            if specials[name] is None:
                raise WeightError(f"{source}: no {name}; CLIP's tokenizer needs bos, eos and pad tokens")
        unk = specials["unk_token"]["content"] if specials["unk_token"] else None
        if unk is not None and unk not in vocab:
            raise WeightError(f"{source}: unk_token {unk!r} is not in the vocabulary")
        try:
            model = BPE(vocab=dict(vocab), merges=list(merges), continuing_subword_prefix="",
                        end_of_word_suffix=END_OF_WORD, fuse_unk=False, unk_token=unk, dropout=None)
        except Exception as e:  # tokenizers raises its own Exception for merges naming unknown symbols
            raise WeightError(f"{source}: the vocabulary and merges do not form a BPE model ({e})") from None
        tok = Tokenizer(model)
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
        tok.decoder = decoders.ByteLevel()

        def added(spec, special):
            flags = {k: spec[k] for k in _TOKEN_FLAGS if k in spec and k != "special"}
            # a special token given as a plain string is matched in raw text (transformers: normalized=False)
            flags.setdefault("normalized", not special)
            return AddedToken(spec["content"], special=spec.get("special", special), **flags)
        listed = [s for s in added_tokens if s is not None]
        if listed:
            tok.add_tokens([added(s, s.get("special", False)) for s in listed])
        names = {s["content"] for s in listed}
        tok.add_special_tokens([added(s, True) for s in specials.values() if s is not None and
                                s["content"] not in names])
        self._backend = tok
        self.bos_token, self.eos_token, self.pad_token = (specials[n]["content"] for n in
                                                          ("bos_token", "eos_token", "pad_token"))
        self.unk_token = unk
        ids = {}
        for name, token in (("bos_token", self.bos_token), ("eos_token", self.eos_token),
                            ("pad_token", self.pad_token)):
            ids[name] = tok.token_to_id(token)
            if ids[name] is None:
                raise WeightError(f"{source}: {name} {token!r} has no id")
        self.bos_token_id, self.eos_token_id, self.pad_token_id = (ids["bos_token"], ids["eos_token"],
                                                                   ids["pad_token"])

    @classmethod
    def from_folder(cls, folder: str) -> "CLIPTokenizer":
        """The tokenizer of a transformers CLIP tokenizer folder (see the module docstring)."""
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise WeightError(f"no tokenizer folder at {folder}")
        config_path = os.path.join(folder, "tokenizer_config.json")
        config = read_json(config_path) if os.path.isfile(config_path) else {}
        kind = config.get("tokenizer_class")
        if kind is not None and kind not in ("CLIPTokenizer", "CLIPTokenizerFast"):
            raise WeightError(f"{config_path}: field 'tokenizer_class' = {kind!r}: this is not a CLIP tokenizer "
                              f"(CLIPTokenizer / CLIPTokenizerFast)")
        json_path = os.path.join(folder, "tokenizer.json")
        vocab_path, merges_path = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
        json_added = []
        if os.path.isfile(json_path):
            vocab, merges, json_added = _tokenizer_json_model(json_path)
        elif os.path.isfile(vocab_path) and os.path.isfile(merges_path):
            vocab = read_json(vocab_path)
            merges = _read_merges(merges_path)
        else:
            raise WeightError(f"{folder}: no CLIP tokenizer files (tokenizer.json, or vocab.json with merges.txt)")
        if not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in vocab.items()):
            raise WeightError(f"{folder}: the vocabulary must map token strings to integer ids")
        specials = {name: config.get(name, default) for name, default in DEFAULT_SPECIAL.items()}
        decoder = config.get("added_tokens_decoder")
        if isinstance(decoder, dict):
            # transformers 5 reads the added tokens from here and nothing else
            added = [_token_spec(t, config_path) for _, t in sorted(decoder.items(), key=lambda kv: int(kv[0]))]
        else:
            # older folders: special_tokens_map.json overrides tokenizer_config.json's special tokens,
            # and tokenizer.json's added_tokens are the added tokens
            map_path = os.path.join(folder, "special_tokens_map.json")
            if os.path.isfile(map_path):
                specials.update({k: v for k, v in read_json(map_path).items() if k in DEFAULT_SPECIAL})
            added = json_added
        max_length = config.get("model_max_length", DEFAULT_MAX_LENGTH)
        if isinstance(max_length, (int, float)) and not isinstance(max_length, bool) and max_length > 1e12:
            max_length = DEFAULT_MAX_LENGTH  # transformers' "no limit" placeholder: CLIP's context length rules
        return cls(vocab, merges, **specials, added_tokens=added, model_max_length=max_length, source=folder)

    @property
    def vocab_size(self) -> int:
        """The number of ids, added tokens included."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def token_ids(self, text: str) -> list[int]:
        """The ids of `text` without <|startoftext|> / <|endoftext|> and without truncation."""
        return self._backend.encode(text, add_special_tokens=False).ids

    def __call__(self, texts, max_length: int | None = None, padding="max_length",
                 truncation: bool = True) -> CLIPTokenBatch:
        """Token ids and mask for a list of strings: each row is <|startoftext|> ids <|endoftext|>,
        padded on the right with the pad token.

        max_length: the row length (None: model_max_length, 77 for CLIP); padding: "max_length"
        (every row that long), "longest" (or True: to the longest row) or "do_not_pad" (or False:
        every row must already have the same length); truncation: cut each text's ids to fit
        max_length, keeping both special tokens, with a warning per truncated prompt."""
        texts = _check_texts(texts)
        length = self.model_max_length if max_length is None else max_length
        if not isinstance(length, int) or isinstance(length, bool) or length < 2:
            raise ValueError(f"max_length={max_length!r}: must be an integer >= 2 (room for <|startoftext|> and "
                             f"<|endoftext|>)")
        padding = {True: "longest", False: "do_not_pad"}.get(padding, padding) if isinstance(padding, bool) \
            else padding
        if padding not in PADDINGS:
            raise ValueError(f"padding={padding!r}: use one of {list(PADDINGS)} (or True / False)")
        if not isinstance(truncation, bool):
            raise ValueError(f"truncation={truncation!r}: must be True or False")
        rows = []
        for text, enc in zip(texts, self._backend.encode_batch(texts, add_special_tokens=False)):
            ids = enc.ids
            if truncation and len(ids) > length - 2:
                warnings.warn(f"prompt {_shorten(text)!r} is {len(ids) + 2} CLIP tokens long, over the limit of "
                              f"{length}; its last {len(ids) + 2 - length} tokens were cut", stacklevel=2)
                ids = ids[:length - 2]
            rows.append([self.bos_token_id, *ids, self.eos_token_id])
        longest = max(len(r) for r in rows)
        if padding == "max_length":
            if longest > length:
                raise ValueError(f"a prompt is {longest} tokens long, over max_length={length}, and truncation is "
                                 f"off; pass truncation=True or padding='longest'")
            width = length
        elif padding == "longest":
            width = longest
        else:
            if len({len(r) for r in rows}) > 1:
                raise ValueError("padding='do_not_pad' needs every prompt to have the same number of tokens; "
                                 "pad with 'max_length' or 'longest'")
            width = longest
        ids = np.full((len(rows), width), self.pad_token_id, np.int32)
        mask = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        return CLIPTokenBatch(ids, mask)

    def __repr__(self) -> str:
        return (f"CLIPTokenizer({self.source!r}, vocab_size={self.vocab_size}, model_max_length="
                f"{self.model_max_length}, pad_token={self.pad_token!r})")
