"""Where `unigen.from_pretrained` looks: loaders registered by source format (docs/design.md §6).

  register_diffusers("SD3Transformer2DModel")(load)    # a diffusers folder's config `_class_name`
  register_transformers("bert")(load)                  # a transformers folder's config `model_type`
  register_file("official DiT checkpoint", detect)(load)   # a single weight file
  register_folder("unigen training work dir", detect)(load)
  register_task_frozen("unigen training work dir", detect)(read)  # a source's task-side arrays

Folder loaders are called `load(folder, config_dict, **overrides)`, file and other folder
loaders `load(path, **overrides)`; each returns an `nnx.Module`. unigen's own format
(`unigen_config.json`) dispatches on the model kind through `unigen.models.registry`.
"""

from __future__ import annotations

from typing import Callable

_DIFFUSERS: dict[str, Callable] = {}
_TRANSFORMERS: dict[str, Callable] = {}
_FILES: list[tuple[str, Callable[[str], bool], Callable]] = []
_FOLDERS: list[tuple[str, Callable[[str], bool], Callable]] = []
_TASK_FROZEN: list[tuple[str, Callable[[str], bool], Callable]] = []


def register_diffusers(class_name: str):
    def add(load):
        _DIFFUSERS[class_name] = load
        return load
    return add


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


def task_frozen(path: str) -> dict:
    """The task-side arrays stored with `path` ({} when its source keeps none)."""
    return next((read(path) for _, detect, read in _TASK_FROZEN if detect(path)), {})


def diffusers_loader(class_name: str):
    return _DIFFUSERS.get(class_name)


def transformers_loader(model_type: str):
    return _TRANSFORMERS.get(model_type)


def file_loader(path: str):
    return next(((name, load) for name, detect, load in _FILES if detect(path)), None)


def folder_loader(path: str):
    return next(((name, load) for name, detect, load in _FOLDERS if detect(path)), None)


def known_sources() -> str:
    return (f"diffusers classes {sorted(_DIFFUSERS)}, transformers model types {sorted(_TRANSFORMERS)}, "
            f"files: {[n for n, _, _ in _FILES]}, folders: {[n for n, _, _ in _FOLDERS]} or unigen's own format")
