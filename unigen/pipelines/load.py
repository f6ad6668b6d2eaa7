"""`unigen.pipelines.from_pretrained(folder_or_hub_id)`: the pipeline a diffusers folder's
`model_index.json` names, by its `_class_name`, as `diffusers.DiffusionPipeline.from_pretrained` picks it.

    pipe = unigen.pipelines.from_pretrained("black-forest-labs/FLUX.1-schnell", dtype="bfloat16")
    images = pipe("a red bicycle", num_inference_steps=4, seed=0)

Pipelines register by the diffusers class name they read (`register_pipeline`), so a new family is
a file and one registration; keyword arguments go to that class's own `from_pretrained`.
"""

from __future__ import annotations

from unigen.errors import WeightError
from unigen.files import read_json
from unigen.hub import resolve
from unigen.pipelines.components import MODEL_INDEX
from unigen.pipelines.dit import DiTPipeline
from unigen.pipelines.flux import FluxPipeline
from unigen.pipelines.sd3 import StableDiffusion3Pipeline
from unigen.registry import Registry

_PIPELINES: Registry[type] = Registry("pipeline")


def register_pipeline(class_name: str, cls: type) -> type:
    """Read folders whose model_index.json says `_class_name: class_name` with `cls.from_pretrained`."""
    if not callable(getattr(cls, "from_pretrained", None)):
        raise TypeError(f"register_pipeline({class_name!r}): {cls!r} has no from_pretrained")
    return _PIPELINES.add(class_name, cls)


def pipeline_names() -> list[str]:
    return _PIPELINES.names()


def from_pretrained(path, *, revision: str | None = None, **kwargs):
    """The registered pipeline for the folder (or hub id) `path`, loaded with `kwargs`."""
    import os

    folder = resolve(path, revision=revision)
    index_path = os.path.join(folder, MODEL_INDEX)
    index = read_json(index_path, missing=f"{folder}: no {MODEL_INDEX}; a diffusers pipeline folder "
                                          f"(what `SomePipeline.save_pretrained` writes) has one")
    name = index.get("_class_name")
    cls = _PIPELINES.find(name) if isinstance(name, str) else None
    if cls is None:
        raise WeightError(f"{index_path}: _class_name {name!r} has no unigen pipeline; unigen reads "
                          f"{pipeline_names()} (unigen.pipelines.register_pipeline adds one)")
    return cls.from_pretrained(folder, **kwargs)


register_pipeline("DiTPipeline", DiTPipeline)
register_pipeline("StableDiffusion3Pipeline", StableDiffusion3Pipeline)
register_pipeline("FluxPipeline", FluxPipeline)
