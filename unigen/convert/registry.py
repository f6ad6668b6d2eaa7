"""Where `unigen.from_pretrained` looks: loaders registered by source format (docs/design.md §6).

  register_diffusers("SD3Transformer2DModel")(load)    # a diffusers folder's config `_class_name`
  register_diffusers_remap("Transformer2DModel", "norm_type", "layer_norm",   # a legacy class name
                           {"ada_norm_zero": "DiTTransformer2DModel"})      # resolved by a field
  register_transformers("bert")(load)                  # a transformers folder's config `model_type`
  register_file("official DiT checkpoint", detect)(load)   # a single weight file
  register_folder("unigen training work dir", detect)(load)
  register_task_frozen("unigen training work dir", detect)(read)  # a source's task-side arrays

Folder loaders are called `load(folder, config_dict, **overrides)`, file and other folder
loaders `load(path, **overrides)`; each returns an `nnx.Module`. unigen's own format
(`unigen_config.json`) dispatches on the model kind through `unigen.models.registry`.

A source whose loader lives in a layer above this package registers itself when its module is
imported, and is named in `ABOVE` so that every reader of this registry knows it without importing
that layer by statement (a training work dir: its loader builds the run the work dir's config
names, so `unigen.training` imports this package, never the other way).
"""

from __future__ import annotations

import importlib
from typing import Callable

from unigen.errors import WeightError

_DIFFUSERS: dict[str, Callable] = {}
_TRANSFORMERS: dict[str, Callable] = {}
_FILES: list[tuple[str, Callable[[str], bool], Callable]] = []
_FOLDERS: list[tuple[str, Callable[[str], bool], Callable]] = []
_TASK_FROZEN: list[tuple[str, Callable[[str], bool], Callable]] = []

# Modules that register sources on import and sit above this package. A lookup that finds no loader
# imports them (once) and looks again, so `unigen.pretrained.from_pretrained`, `python -m
# unigen.convert` and a task loading a frozen encoder read work dirs whatever else they imported.
ABOVE = ("unigen.training.checkpoint",)
_above_imported = False


def _import_above() -> bool:
    """Import the `ABOVE` modules unless done; True when this call imported them (a lookup may retry)."""
    global _above_imported
    if _above_imported:
        return False
    _above_imported = True
    for name in ABOVE:
        importlib.import_module(name)
    return True


def register_diffusers(class_name: str):
    def add(load):
        _DIFFUSERS[class_name] = load
        return load
    return add


def register_diffusers_remap(class_name: str, field: str, default, classes: dict[str, str]):
    """A legacy diffusers class name that diffusers itself resolves by a config field: folders saved
    before a family had its own class still name the old one, and diffusers' loader picks the class
    from `config[field]` (`_CLASS_REMAPPING_DICT` in diffusers/models/model_loading_utils.py; e.g.
    `Transformer2DModel` with norm_type "ada_norm_zero" is a DiT). The picked class's loader then
    reads the config as released; a value diffusers does not remap, or a class unigen has no loader
    for, is an error naming the field, its value and the class."""
    def load(folder: str, config: dict, **overrides):
        value = config.get(field, default)
        target = classes.get(value) if isinstance(value, str) else None
        if target is None:
            raise WeightError(f"{folder}: diffusers {class_name} with {field}={value!r} has no unigen loader "
                              f"(diffusers reads a {class_name} as another class only for {field} in {classes})")
        loader = _DIFFUSERS.get(target)
        if loader is None:
            raise WeightError(f"{folder}: diffusers loads a {class_name} with {field}={value!r} as {target}, "
                              f"which has no unigen loader; known: {known_sources()}")
        return loader(folder, config, **overrides)
    _DIFFUSERS[class_name] = load


def register_transformers(model_type: str):
    def add(load):
        _TRANSFORMERS[model_type] = load
        return load
    return add


def _add(table, name, detect):
    def add(load):
        table[:] = [entry for entry in table if entry[0] != name] + [(name, detect, load)]
        return load
    return add


def register_file(name: str, detect: Callable[[str], bool]):
    return _add(_FILES, name, detect)


def register_folder(name: str, detect: Callable[[str], bool]):
    return _add(_FOLDERS, name, detect)


def register_task_frozen(name: str, detect: Callable[[str], bool]):
    """`read(path) -> dict` of the arrays a source keeps beside its model for its task (a
    training work dir's frozen task parts, e.g. an LZN classifier's reference images)."""
    return _add(_TASK_FROZEN, name, detect)


def _find(table, path: str):
    found = next(((name, load) for name, detect, load in table if detect(path)), None)
    if found is None and _import_above():
        return _find(table, path)
    return found


def task_frozen(path: str) -> dict:
    """The task-side arrays stored with `path` ({} when its source keeps none)."""
    found = _find(_TASK_FROZEN, path)
    return {} if found is None else found[1](path)


def diffusers_loader(class_name: str):
    return _DIFFUSERS.get(class_name)


def transformers_loader(model_type: str):
    return _TRANSFORMERS.get(model_type)


def file_loader(path: str):
    return _find(_FILES, path)


def folder_loader(path: str):
    return _find(_FOLDERS, path)


def known_sources() -> str:
    _import_above()
    return (f"diffusers classes {sorted(_DIFFUSERS)}, transformers model types {sorted(_TRANSFORMERS)}, "
            f"files: {[n for n, _, _ in _FILES]}, folders: {[n for n, _, _ in _FOLDERS]} or unigen's own format")
