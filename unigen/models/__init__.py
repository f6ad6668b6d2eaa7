"""unigen.models: networks (tensors in, tensors out; objectives live in unigen.diffusion)."""

from unigen.models.dit import DiT, DiTConfig, dit_config

__all__ = ["DiT", "DiTConfig", "dit_config"]
