"""A model from a local file or folder, by the registered sources (unigen/convert/registry.py): the
dispatch behind `unigen.pretrained.from_pretrained` (which adds hub ids and `component=`), kept in this
package so that `python -m unigen.convert` reads every source without importing a layer above it.

Order: a file by the registered file loaders; a folder in unigen's own format (`unigen_config.json`)
by its model kind; a diffusers / transformers folder (`config.json` with `_class_name` / `model_type`)
by the registered class or type; other registered folders (a training work dir); a diffusers
pipeline folder by the one component folder a registered loader reads.
"""

from __future__ import annotations

import os

from unigen.convert import registry
from unigen.convert.unigen_format import CONFIG_FILE, load_pretrained
from unigen.errors import WeightError
from unigen.files import read_json

PIPELINE_COMPONENTS = ("transformer", "unet", "vae", "text_encoder", "text_encoder_2", "image_encoder")


def _config_loader(folder: str):
    """(description, load) for a diffusers/transformers folder's config.json, or None."""
    config_path = os.path.join(folder, "config.json")
    if not os.path.exists(config_path):
        return None
    config = read_json(config_path)
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


def load(path: str, **overrides):
    """A model from an existing local file or folder (`overrides`: runtime options of the module)."""
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
        return load(os.path.join(path, readable[0]), **overrides)
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
