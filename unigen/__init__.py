"""unigen: a JAX library for diffusion transformers and the unified generative models
built on them. See README.md; the layout is described in DESIGN.md."""

__version__ = "0.1.0"


def from_pretrained(path: str, **overrides):
    """Load a model from an official checkpoint, a diffusers folder or a unigen folder."""
    from unigen.pretrained import from_pretrained as _load
    return _load(path, **overrides)


__all__ = ["from_pretrained", "__version__"]
