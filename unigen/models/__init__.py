"""unigen.models: networks (tensors in, tensors out; objectives live in unigen.diffusion),
registered by kind (`unigen.models.registry`)."""

from unigen.models.registry import Condition, InputSpec, ModelKind, get_model_kind, kind_of, model_kinds, register_model
from unigen.models.dit import DiT, DiTConfig, dit_config, lightningdit_config  # registers "dit"
from unigen.models.ddt import DiTDH, DiTDHConfig, ditdh_config  # registers "ditdh"
from unigen.models.mmdit import MMDiT, MMDiTConfig  # registers "mmdit"
from unigen.models.lzn import LZN, LZNConfig  # registers "lzn"
from unigen.models.uvit import UViT, UViTConfig  # registers "uvit"
from unigen.models.flux import Flux, FluxConfig, latent_image_ids, pack_latents, unpack_latents  # (not a kind yet)

__all__ = ["Condition", "InputSpec", "ModelKind", "get_model_kind", "kind_of", "model_kinds", "register_model",
           "DiT", "DiTConfig", "dit_config", "lightningdit_config", "DiTDH", "DiTDHConfig",
           "ditdh_config", "MMDiT", "MMDiTConfig", "LZN", "LZNConfig", "UViT", "UViTConfig",
           "Flux", "FluxConfig", "latent_image_ids", "pack_latents", "unpack_latents"]
