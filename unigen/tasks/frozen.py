"""A task's frozen parts read from a path in its config: a foundation or representation encoder, a
latent tokenizer. They load through `unigen.pretrained.from_pretrained` (every source it reads,
training work dirs included: unigen/convert/registry.py), never through the package front `unigen`,
which is for users (DESIGN.md principle 12); a source that cannot be read is a ConfigError naming
the config field that gave it.
"""

from __future__ import annotations

import functools
import os

from unigen.errors import ConfigError, WeightError


def load_frozen(path: str, field: str):
    """The module at `path`, which `config.<field>` names."""
    from unigen.pretrained import from_pretrained
    try:
        return from_pretrained(path)
    except WeightError as e:
        raise ConfigError(f"config.{field}={path!r}: {e}") from None


@functools.lru_cache(maxsize=4)
def text_encoder(name: str):
    """The prompt encoder `config.text.encoder` names (a folder, or a known name such as
    'all-MiniLM-L6-v2'); one per name and process. Whatever the family (a BERT / sentence-
    transformers TextEncoder, a CLIP text model, a T5 encoder: unigen/text/prompt_encoders.py
    registers them), it has `tokenize(texts, pad_to=None)` and `encode(texts, pad_to=None) ->
    TextEncoding`, so a task never asks which one it holds."""
    from unigen.text.prompt_encoders import as_prompt_encoder
    from unigen.text.resolve import resolve_text_encoder
    try:
        folder = resolve_text_encoder(name)
    except WeightError as e:
        raise ConfigError(f"config.text.encoder={name!r}: {e}") from None
    module = load_frozen(folder, "text.encoder")
    try:
        return as_prompt_encoder(module, folder)
    except WeightError as e:
        raise ConfigError(f"config.text.encoder={name!r}: {e}") from None


def representation_encoder(path: str, field: str):
    """The image encoder at `path` (`config.<field>`): DINOv2, or an LZN work dir's image encoder."""
    model = load_frozen(path, field)
    if hasattr(model, "component") and not hasattr(model, "tokens"):  # a work dir holding several networks
        try:
            model = model.component("encoder")
        except ValueError:
            pass
    return model


def latent_codec(path: str):
    """The `LatentCodec` (unigen/tokenizers/codec.py) of the tokenizer at `path`, for
    `config.data.latent_encoder`; one per path and process."""
    return _codec(os.path.abspath(os.path.expanduser(os.fspath(path))))


@functools.lru_cache(maxsize=4)
def _codec(path: str):
    # Loaded once per process: validation, the data pipeline and the sample decoder share it.
    from unigen.tokenizers.codec import LatentCodec
    if not os.path.exists(path):
        raise ConfigError(f"config.data.latent_encoder={path!r}: no such file or folder; give a tokenizer path "
                          f"unigen.from_pretrained reads (a diffusers AutoencoderKL folder such as sd-vae-ft-ema, "
                          f"a pipeline folder with vae/, or a VA-VAE training work dir)")
    return LatentCodec(load_frozen(path, "data.latent_encoder"), source=path)
