"""unigen.nn: the building blocks models compose (one place per concept, docs/design.md §3)."""

from unigen.nn.ad_mode import cpu_custom_vjps, jvp_compatible
from unigen.nn.checks import check_compute_options, check_positive_ints
from unigen.nn.attention import attention, available_backends, register_backend
from unigen.nn.conv import Conv2d, GroupNorm, group_norm
from unigen.nn.embeddings import LabelEmbedder, TimestepEmbedder, timestep_embedding
from unigen.nn.layers import Dense, dense_general, param, xavier_uniform
from unigen.nn.mlp import Mlp, SwiGLU
from unigen.nn.modulate import gate, modulate
from unigen.nn.norms import LayerNorm, RMSNorm, layer_norm, rms_norm
from unigen.nn.patch import patchify, unpatchify
from unigen.nn.posemb import sincos_2d
from unigen.nn.rope import apply_rope, rope_2d_freqs

__all__ = [
    "cpu_custom_vjps", "jvp_compatible", "check_compute_options", "check_positive_ints", "attention", "available_backends", "register_backend", "Conv2d", "GroupNorm", "group_norm", "LabelEmbedder",
    "TimestepEmbedder", "timestep_embedding", "Dense", "dense_general", "param", "xavier_uniform",
    "Mlp", "SwiGLU", "gate", "modulate", "LayerNorm", "RMSNorm", "layer_norm", "rms_norm",
    "patchify", "unpatchify", "sincos_2d", "apply_rope", "rope_2d_freqs",
]
