"""`unigen.from_pretrained(path)`: a ready module from a weight file or folder (docs/design.md §6).

Dispatch, in order (unigen/convert/load.py):
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

Modules inside unigen that load a frozen part call this module, never the package front `unigen`
(the front is for users; DESIGN.md principle 12).
"""

from __future__ import annotations

from unigen.convert import registry
from unigen.convert.load import load
from unigen.convert.unigen_format import save_pretrained
from unigen.convert.weights import WeightError
from unigen.hub import resolve

__all__ = ["from_pretrained", "save_pretrained"]


def from_pretrained(path: str, *, subfolder: str | None = None, revision: str | None = None,
                    component: str | None = None, **overrides):
    """Load a model from `path`, a local path or a hub repo id (see the module docstring). Returns
    an `nnx.Module`. `component` picks a part of a composite model (an LZN: "encoder", "classifier", ...)."""
    source = resolve(path, subfolder=subfolder, revision=revision)  # the local file or folder
    model = load(source, **overrides)  # the dispatch above: unigen/convert/load.py
    if component is None:
        return model
    pick = getattr(model, "component", None)
    if pick is None:
        raise WeightError(f"{path}: a {type(model).__name__} has no components; drop component={component!r}")
    try:  # the task-side arrays (e.g. a classifier's reference images), read only if asked for
        return pick(component, task_frozen=lambda: registry.task_frozen(source))
    except ValueError as e:
        raise WeightError(f"{path}: {e}") from None
