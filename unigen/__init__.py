"""unigen: a JAX library for diffusion transformers and the unified generative models
built on them. See README.md."""

__version__ = "0.1.0"


def from_pretrained(path: str, *, subfolder: str | None = None, revision: str | None = None,
                    component: str | None = None, **overrides):
    """Load a model from an official checkpoint, a diffusers/transformers folder (or a pipeline
    folder's `subfolder`), a unigen folder, a unigen training work dir, or a Hugging Face hub id
    "org/name" (`revision`: a branch, tag or commit hash; the local cache first, else a download;
    unigen/hub.py) (unigen/pretrained.py). `component` returns one part of a composite model, e.g.
    an LZN work dir's "encoder" or "classifier"."""
    # Training work dirs are a registered source (unigen/convert/registry.py ABOVE), imported when needed.
    from unigen.pretrained import from_pretrained as _load
    return _load(path, subfolder=subfolder, revision=revision, component=component, **overrides)


def save_pretrained(model, path: str) -> None:
    """Write any registered model kind in unigen's format (a folder `from_pretrained` reads)."""
    from unigen.convert.unigen_format import save_pretrained as _save
    _save(model, path)


__all__ = ["from_pretrained", "save_pretrained", "__version__"]
