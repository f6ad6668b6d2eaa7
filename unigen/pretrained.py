"""`unigen.from_pretrained(path)`: a ready module from a weight file or folder (docs/design.md §6).

Dispatch, in order:
  * a file: the registered file loaders (official DiT `.pt`/`.pth`/`.safetensors`: a raw state
    dict, or the `{"model", "ema", ...}` dict its train.py writes, whose EMA weights are used);
  * unigen's own format (`unigen_config.json`, from `save_pretrained` / `python -m unigen.convert`):
    by its model kind;
  * a diffusers folder (`config.json` with `_class_name`) or a transformers folder (`model_type`):
    by the registered class or type;
  * other registered folders (a unigen training work dir: its latest EMA parameters);
  * a diffusers pipeline folder: `subfolder=` names the component (`transformer`, `unet`, `vae`,
    `text_encoder`); without it, the one component folder a registered loader reads.
A hub repo id `"org/name"` (any string that is no existing path and has that shape) is read
from the local Hugging Face hub cache, else downloaded when the network allows (unigen/hub.py):
`revision=` picks a branch, tag or commit hash; `subfolder=` is then a folder (or file) of the repo.
`component=` returns one part of a composite model (an LZN work dir: "encoder" or
"classifier", unigen/models/lzn.py). `overrides` change runtime options of the returned
module (`scan_layers`, `remat`, `attention_backend`, `dtype`, ...), never the architecture
read from the source. The one exception is `num_heads` for an official checkpoint of
non-standard width: a state dict's shapes cannot tell the head count (standard widths
384/768/1024/1152 are known).
"""

from __future__ import annotations

import json
import os

from unigen.convert import registry
from unigen.convert.unigen_format import CONFIG_FILE, load_pretrained, save_pretrained
from unigen.convert.weights import WeightError
from unigen.hub import resolve

PIPELINE_COMPONENTS = ("transformer", "unet", "vae", "text_encoder", "text_encoder_2", "image_encoder")

__all__ = ["from_pretrained", "save_pretrained"]


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise WeightError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise WeightError(f"{path} holds a {type(config).__name__}, not a JSON object of config fields")
    return config


def _config_loader(folder: str):
    """(description, load) for a diffusers/transformers folder's config.json, or None."""
    config_path = os.path.join(folder, "config.json")
    if not os.path.exists(config_path):
        return None
    config = _read_json(config_path)
    if "_class_name" in config:
        load = registry.diffusers_loader(config["_class_name"])
        what = f"diffusers {config['_class_name']}"
    elif "model_type" in config:
        load = registry.transformers_loader(config["model_type"])
        what = f"transformers model_type {config['model_type']!r}"
    else:
        return None
    if load is None:
        raise WeightError(f"{folder}: {what} has no unigen loader; known: {registry.known_sources()}")
    return what, lambda **overrides: load(folder, config, **overrides)


def from_pretrained(path: str, *, subfolder: str | None = None, revision: str | None = None,
                    component: str | None = None, **overrides):
    """Load a model from `path`, a local path or a hub repo id (see the module docstring). Returns
    an `nnx.Module`. `component` picks a part of a composite model (an LZN: "encoder", "classifier", ...)."""
    source = resolve(path, subfolder=subfolder, revision=revision)  # the local file or folder
    model = _load(source, **overrides)
    if component is None:
        return model
    pick = getattr(model, "component", None)
    if pick is None:
        raise WeightError(f"{path}: a {type(model).__name__} has no components; drop component={component!r}")
    try:  # the task-side arrays (e.g. a classifier's reference images), read only if asked for
        return pick(component, task_frozen=lambda: registry.task_frozen(source))
    except ValueError as e:
        raise WeightError(f"{path}: {e}") from None


def _load(path: str, **overrides):
    """A model from an existing local file or folder."""
    if os.path.isfile(path):
        found = registry.file_loader(path)
        if found is None:
            raise WeightError(f"{path}: unknown weight file type; known: {registry.known_sources()}")
        return found[1](path, **overrides)
    if not os.path.isdir(path):
        raise WeightError(f"no file or folder at {path}")
    if os.path.exists(os.path.join(path, CONFIG_FILE)):
        return load_pretrained(path, **overrides)
    found = _config_loader(path)
    if found is not None:
        return found[1](**overrides)
    found = registry.folder_loader(path)
    if found is not None:
        return found[1](path, **overrides)
    components = [c for c in PIPELINE_COMPONENTS if os.path.isdir(os.path.join(path, c))]
    readable = [c for c in components if _readable(os.path.join(path, c))]
    if len(readable) == 1:
        return _load(os.path.join(path, readable[0]), **overrides)
    if len(readable) > 1:
        raise WeightError(f"{path} is a pipeline folder with several components {readable}: "
                          f"pass subfolder= one of them")
    raise WeightError(f"{path}: not a recognised model folder (no {CONFIG_FILE}, no config.json naming a "
                      f"registered class, not a training work dir{', components ' + str(components) if components else ''}); "
                      f"known: {registry.known_sources()}")


def _readable(folder: str) -> bool:
    try:
        return os.path.exists(os.path.join(folder, CONFIG_FILE)) or _config_loader(folder) is not None
    except WeightError:
        return False
