"""unigen.tokenizers: image autoencoders whose latents diffusion models work in (frozen parts that
travel beside the trainable state). Importing it registers the "autoencoder_kl", "vavae",
"rae" and "dinov2" model kinds (DINOv2 is RAE's frozen representation encoder)."""

from unigen.tokenizers.autoencoder_kl import (AutoencoderKL, AutoencoderKLConfig, denormalize_latents,
                                              normalize_latents)

__all__ = ["AutoencoderKL", "AutoencoderKLConfig", "normalize_latents", "denormalize_latents"]
from unigen.tokenizers.vavae import VAVAE, VAVAEConfig  # noqa: E402  (registers "vavae")

__all__ += ["VAVAE", "VAVAEConfig"]
from unigen.tokenizers.rae import RAE, RAEConfig  # noqa: E402  (registers "rae")

__all__ += ["RAE", "RAEConfig"]
from unigen.tokenizers.dinov2 import Dinov2, Dinov2Config  # noqa: E402  (registers "dinov2")

__all__ += ["Dinov2", "Dinov2Config"]
