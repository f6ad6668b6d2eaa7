"""Pieces every text-to-image pipeline reader shares (SD3 here, Flux next): the pipeline folder's
`model_index.json` and its component subfolders, loading one component with
`unigen.pretrained.from_pretrained`, the CLIP / T5 tokenizers, the initial latents, and the
`output_type` conversion of the decoded images.

    folder = resolve_pipeline("stabilityai/stable-diffusion-3.5-medium")   # a local folder or hub id
    index = read_model_index(folder, "StableDiffusion3Pipeline")
    sub = component_folder(folder, index, "vae", classes=("AutoencoderKL",))
    vae = load_component(sub, "vae", check=lambda m: hasattr(m, "decode"), dtype="bfloat16")

A diffusers `model_index.json` maps each component name to `[library, class]`; diffusers writes
`[null, null]` for a component saved as None (SD3 without its T5: `text_encoder_3`,
`tokenizer_3`). Every failure here is a WeightError that names the folder, the component and
what was expected there.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from unigen.errors import ConfigError, WeightError
from unigen.files import read_json
from unigen.hub import resolve

MODEL_INDEX = "model_index.json"
OUTPUT_TYPES = ("pil", "np", "latent")


def resolve_pipeline(path, revision: str | None = None) -> str:
    """The local folder of a pipeline path or hub repo id (unigen/hub.py: the cache, else a download)."""
    return resolve(path, revision=revision)


def read_model_index(folder: str, pipeline_class: str | tuple[str, ...]) -> dict:
    """`folder`/model_index.json, whose `_class_name` must be `pipeline_class` (one, or a tuple of
    accepted names)."""
    accepted = (pipeline_class,) if isinstance(pipeline_class, str) else tuple(pipeline_class)
    path = os.path.join(folder, MODEL_INDEX)
    index = read_json(path, missing=f"{folder}: no {MODEL_INDEX}; a diffusers pipeline folder (what "
                                    f"`{accepted[0]}.save_pretrained` writes) has one")
    name = index.get("_class_name")
    if name not in accepted:
        raise WeightError(f"{path}: _class_name {name!r}; this reads {' / '.join(map(repr, accepted))} folders")
    return index


def component_class(index: dict, name: str) -> str | None:
    """The class model_index.json names for component `name`, or None when it is absent or
    `[null, null]` (saved as None)."""
    entry = index.get(name)
    if entry is None:
        return None
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
        raise WeightError(f"{MODEL_INDEX}: component {name!r} = {entry!r}; diffusers writes [library, class]")
    return None if entry[1] is None else str(entry[1])


def component_folder(folder: str, index: dict, name: str, *, classes: tuple[str, ...],
                     required: bool = True) -> str | None:
    """The subfolder of component `name`, after checking model_index.json names one of `classes`
    for it. An optional component (`required=False`) that model_index.json leaves out or sets to
    None gives None; a listed component whose subfolder is missing is always an error."""
    cls = component_class(index, name)
    index_path = os.path.join(folder, MODEL_INDEX)
    if cls is None:
        if required:
            raise WeightError(f"{index_path}: no {name!r} component; {index.get('_class_name')} needs a {name}/ "
                              f"({' / '.join(classes)})")
        return None
    if cls not in classes:
        raise WeightError(f"{index_path}: component {name!r} is a {cls}; {index.get('_class_name')} reads "
                          f"{' / '.join(classes)} there")
    sub = os.path.join(folder, name)
    if not os.path.isdir(sub):
        raise WeightError(f"{folder}: model_index.json lists {name!r} ({cls}) but there is no {name}/ folder; "
                          f"the download may be incomplete")
    return sub


def load_component(sub: str, name: str, *, check=None, expected: str = "", **overrides):
    """The module in component folder `sub` through `unigen.pretrained.from_pretrained` (its
    registered diffusers / transformers loader), with runtime `overrides` (dtype, ...).
    `check(module)` -> bool rejects a module of the wrong kind with a WeightError naming
    `name` and `expected`."""
    from unigen.pretrained import from_pretrained  # the front of the loaders; imported late (cycles)

    try:
        model = from_pretrained(sub, **overrides)
    except WeightError as e:
        raise WeightError(f"component {name}/: {e}") from None
    if check is not None and not check(model):
        raise WeightError(f"{sub}: component {name!r} loaded as a {type(model).__name__}; expected {expected}")
    return model


def load_clip_tokenizer(sub: str, name: str = "tokenizer"):
    """The CLIP tokenizer of a pipeline's tokenizer folder (unigen/text/clip_tokenizer.py)."""
    from unigen.text.clip_tokenizer import CLIPTokenizer

    try:
        return CLIPTokenizer.from_folder(sub)
    except WeightError as e:
        raise WeightError(f"component {name}/: {e}") from None


def load_t5_tokenizer(sub: str, name: str = "tokenizer_3"):
    """The T5 tokenizer of a pipeline's tokenizer folder (unigen/text/t5_tokenizer.py)."""
    from unigen.text.t5_tokenizer import T5Tokenizer

    try:
        return T5Tokenizer.from_folder(sub)
    except WeightError as e:
        raise WeightError(f"component {name}/: {e}") from None


def as_prompts(prompt, what: str = "prompt") -> list[str]:
    """A prompt or a list of prompts as a non-empty list of strings."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ConfigError(f"{what}={_short(prompt)}: give a string or a non-empty list of strings")
    return list(prompts)


def initial_latents(shape: tuple[int, ...], seed=None, latents=None) -> np.ndarray:
    """float32 initial latents of `shape` (NHWC): the given `latents` (checked), else standard
    normal noise drawn from `jax.random.PRNGKey(seed)` (seed None: 0, so a call is reproducible)."""
    if latents is not None:
        if seed is not None:
            raise ConfigError("pass seed= or latents=, not both: latents are the initial noise itself")
        x = np.asarray(latents, np.float32)
        if x.shape != tuple(shape):
            raise ConfigError(f"latents of shape {x.shape}: expected {tuple(shape)} (N, h, w, C), channels last "
                              f"(diffusers' NCHW latents: transpose(0, 2, 3, 1))")
        return x
    if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool)):
        raise ConfigError(f"seed={seed!r}: give an integer")
    key = jax.random.PRNGKey(0 if seed is None else int(seed))
    return np.asarray(jax.random.normal(key, tuple(shape), jnp.float32))


def check_output_type(output_type: str) -> str:
    if output_type not in OUTPUT_TYPES:
        raise ConfigError(f"output_type={output_type!r}: use one of {list(OUTPUT_TYPES)}")
    return output_type


def to_output(images, output_type: str):
    """Decoded images (N, H, W, C) in [0, 1] as `output_type` asks: "np" a float32 numpy batch,
    "pil" a list of PIL images (rounded as diffusers' `numpy_to_pil`: round(x * 255))."""
    images = np.asarray(images, np.float32)
    if check_output_type(output_type) != "pil":
        return images
    from PIL import Image

    pixels = np.round(images * 255).astype(np.uint8)
    if pixels.shape[-1] == 1:
        return [Image.fromarray(p[..., 0], mode="L") for p in pixels]
    return [Image.fromarray(p) for p in pixels]


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
