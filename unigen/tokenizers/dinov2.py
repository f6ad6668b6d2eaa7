"""DINOv2 (Oquab et al. 2023), with or without registers (Darcet et al. 2024): the frozen
representation encoder of RAE and the alignment target of VA-VAE / REPA.

Matches transformers' `Dinov2Model` (num_register_tokens = 0) and `Dinov2WithRegistersModel`
(num_register_tokens > 0), inference only (no dropout, drop-path or mask token):

    tokens = [CLS + pos[0]; registers; patch_embed(patches) + pos[1:]]   (registers get no position)
    x = x + ls1 * Proj(Attn(QKV(LN1(x))))      ls = LayerScale, a learned per-channel vector
    x = x + ls2 * MLP(LN2(x))                  GELU MLP, or SwiGLU (use_swiglu_ffn)
    out = LN(x)                                (without scale/bias when layernorm_affine=False, as RAE)

`Dinov2(cfg)(pixels)` takes NHWC pixels already normalised by the caller (ImageNet mean/std for
the released checkpoints) and returns the last hidden state (B, 1 + R + h*w, D), CLS first, then
the R registers, then the patches in row-major order; `tokens(pixels)` keeps the patches only.
Height and width must be multiples of `patch_size` (transformers silently drops the remainder).

Any input size: the position table was trained on a square grid of image_size // patch_size
patches. At another grid transformers 5 (`interpolate_pos_encoding`) resizes the patch part
with torch bicubic, `size=(h, w)` (not a scale factor), in float32, antialias=False for
Dinov2Model and antialias=True for Dinov2WithRegistersModel (`pos_antialias`). It skips the
resize only when the grid is the trained one (a non-square grid with as many patches is still
resized); both variants use the same test. The resize is unigen.nn.resize.resize_bicubic (torch's
kernels: a = -0.75 plain, Pillow's a = -0.5 with antialias). The original facebookresearch code and
older transformers releases pass a scale_factor with a 0.1 offset instead of a size, a slightly
different sampling grid; unigen matches transformers 5.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from unigen.models.registry import InputSpec, ModelKind, register_model
from unigen.nn.attention import attention
from unigen.nn.checks import check_compute_options, check_positive_ints
from unigen.nn.layers import Dense, param
from unigen.nn.norms import LayerNorm
from unigen.nn.patch import patchify
from unigen.nn.resize import resize_bicubic
from unigen.parallel.logical import constrain

# transformers' ACT2FN names -> JAX ("gelu" is the exact erf GELU)
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
RUNTIME_FIELDS = ("dtype", "attention_backend")


@dataclasses.dataclass(frozen=True)
class Dinov2Config:
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4              # MLP width = int(hidden_size * mlp_ratio) (SwiGLU: see mlp_width)
    patch_size: int = 14
    image_size: int = 518             # the size the position table was trained at (grid image_size // patch)
    num_channels: int = 3
    num_register_tokens: int = 0      # 0 = Dinov2Model; > 0 = Dinov2WithRegistersModel
    layer_norm_eps: float = 1e-6
    layerscale_value: float = 1.0     # LayerScale's initial value (loaded weights replace it)
    use_swiglu_ffn: bool = False      # the giant model's SwiGLU feed-forward
    qkv_bias: bool = True
    hidden_act: str = "gelu"          # the GELU MLP's activation (SwiGLU always uses SiLU)
    pos_antialias: bool = False       # transformers: False in Dinov2Model, True with registers
    layernorm_affine: bool = True     # False: the final LayerNorm has no scale/bias (RAE)
    attention_backend: str = "auto"   # runtime option
    dtype: str = "float32"            # runtime option: compute dtype; parameters stay float32

    def validate(self) -> "Dinov2Config":
        def bad(field, why):
            raise ValueError(f"Dinov2Config.{field}={getattr(self, field)!r}: {why}")
        check_positive_ints(bad, self, ("hidden_size", "num_layers", "num_heads", "patch_size", "image_size",
                                        "num_channels"))
        if self.hidden_size % self.num_heads:
            bad("hidden_size", f"not divisible by num_heads={self.num_heads}")
        if self.image_size < self.patch_size:
            bad("image_size", f"smaller than patch_size={self.patch_size}: the position table would be empty")
        if not (isinstance(self.num_register_tokens, int) and not isinstance(self.num_register_tokens, bool)
                and self.num_register_tokens >= 0):
            bad("num_register_tokens", "must be an integer >= 0 (0 = no registers)")
        for field in ("mlp_ratio", "layer_norm_eps"):
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                    and value > 0):
                bad(field, "must be a positive number")
        if int(self.hidden_size * self.mlp_ratio) < 1:
            bad("mlp_ratio", f"gives an empty MLP at hidden_size={self.hidden_size}")
        if not (isinstance(self.layerscale_value, (int, float)) and not isinstance(self.layerscale_value, bool)):
            bad("layerscale_value", "must be a number")
        for field in ("use_swiglu_ffn", "qkv_bias", "pos_antialias", "layernorm_affine"):
            if not isinstance(getattr(self, field), bool):
                bad(field, "must be True or False")
        if self.hidden_act not in ACTIVATIONS:
            bad("hidden_act", f"unsupported activation; use one of {sorted(ACTIVATIONS)}")
        check_compute_options(bad, self.dtype, self.attention_backend)
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid_size(self) -> int:
        """Patches per side of the trained position table."""
        return self.image_size // self.patch_size

    @property
    def mlp_width(self) -> int:
        """The hidden width: int(D * mlp_ratio); SwiGLU keeps 2/3 of it rounded up to a multiple
        of 8 (transformers' Dinov2SwiGLUFFN)."""
        width = int(self.hidden_size * self.mlp_ratio)
        return (int(width * 2 / 3) + 7) // 8 * 8 if self.use_swiglu_ffn else width

    @property
    def num_prefix_tokens(self) -> int:
        """CLS + registers, the tokens before the patches."""
        return 1 + self.num_register_tokens


def _nearest_multiples(n: int, p: int) -> list[int]:
    return sorted({max(p, n // p * p), (n // p + 1) * p})


def check_input_size(height: int, width: int, patch: int) -> tuple[int, int]:
    """(h, w) patches of a height x width image; ValueError naming the nearest valid sizes."""
    if height % patch or width % patch:
        hs = " or ".join(map(str, _nearest_multiples(height, patch)))
        ws = " or ".join(map(str, _nearest_multiples(width, patch)))
        raise ValueError(f"DINOv2 input size {height}x{width} is not divisible by its patch size {patch}; "
                         f"resize or crop to a multiple of {patch}: height {hs}, width {ws}")
    return height // patch, width // patch


class Dinov2Layer(nnx.Module):
    """One pre-LN ViT block with LayerScale (transformers' Dinov2Layer)."""

    def __init__(self, cfg: Dinov2Config, *, rngs: nnx.Rngs):
        d, h, dh, dtype = cfg.hidden_size, cfg.num_heads, cfg.head_dim, jnp.dtype(cfg.dtype)
        self.cfg = cfg
        self.norm1 = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)
        self.qkv = Dense(d, (3, h, dh), axes=("embed", None, "heads", "kv"), use_bias=cfg.qkv_bias, rngs=rngs,
                         dtype=dtype)
        self.proj = Dense((h, dh), d, axes=("heads", "kv", "embed"), rngs=rngs, dtype=dtype)
        self.ls1 = param(nnx.initializers.constant(cfg.layerscale_value), (d,), ("norm",), rngs)
        self.norm2 = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)
        m = cfg.mlp_width
        if cfg.use_swiglu_ffn:
            self.gate = Dense(d, m, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)
            self.up = Dense(d, m, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)
            self.down = Dense(m, d, axes=("mlp", "embed"), rngs=rngs, dtype=dtype)
        else:
            self.fc1 = Dense(d, m, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)
            self.fc2 = Dense(m, d, axes=("mlp", "embed"), rngs=rngs, dtype=dtype)
        self.ls2 = param(nnx.initializers.constant(cfg.layerscale_value), (d,), ("norm",), rngs)

    def mlp(self, x):
        if self.cfg.use_swiglu_ffn:  # down(silu(gate(x)) * up(x))
            return self.down(jax.nn.silu(self.gate(x)) * self.up(x))
        return self.fc2(ACTIVATIONS[self.cfg.hidden_act](self.fc1(x)))

    def __call__(self, x):
        q, k, v = jnp.unstack(self.qkv(self.norm1(x)), axis=2)
        q, k, v = (constrain(a, ("batch", "length", "heads", "kv")) for a in (q, k, v))
        o = attention(q, k, v, backend=self.cfg.attention_backend)
        x = x + self.proj(o) * self.ls1[...].astype(x.dtype)
        x = x + self.mlp(self.norm2(x)) * self.ls2[...].astype(x.dtype)
        return constrain(x, ("batch", "length", "embed"))


class Dinov2(nnx.Module):
    """See the module docstring. `model(pixels)` -> (B, 1 + R + h*w, D); `model.tokens(pixels)`
    -> (B, h*w, D)."""

    def __init__(self, cfg: Dinov2Config, *, rngs: nnx.Rngs):
        self.cfg = cfg = cfg.validate()
        d, p, dtype = cfg.hidden_size, cfg.patch_size, jnp.dtype(cfg.dtype)
        # the conv patch embedding read as a Linear over (p, q, c) patches
        self.patch_embed = Dense(p * p * cfg.num_channels, d, axes=("patch", "embed"), rngs=rngs, dtype=dtype)
        init = nnx.initializers.truncated_normal(0.02)  # transformers' init; loaded weights replace it
        self.cls_token = param(init, (1, d), (None, "embed"), rngs)
        self.register_tokens = (param(nnx.initializers.zeros_init(), (cfg.num_register_tokens, d), (None, "embed"),
                                      rngs) if cfg.num_register_tokens else None)
        self.position_embeddings = param(init, (1 + cfg.grid_size ** 2, d), (None, "embed"), rngs)
        self.blocks = nnx.List([Dinov2Layer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = LayerNorm(d, eps=cfg.layer_norm_eps, affine=cfg.layernorm_affine, rngs=rngs)

    def position_table(self, h: int, w: int) -> jax.Array:
        """(1 + h*w, D) float32: the CLS position, then the patch positions resized to h x w."""
        table, n = self.position_embeddings[...].astype(jnp.float32), self.cfg.grid_size
        if (h, w) == (n, n):  # transformers: num_patches == num_positions and height == width
            return table
        grid = table[1:].reshape(1, n, n, -1)
        grid = resize_bicubic(grid, (h, w), antialias=self.cfg.pos_antialias)
        return jnp.concatenate([table[:1], grid.reshape(h * w, -1)], axis=0)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        cfg = self.cfg
        if pixels.ndim != 4 or pixels.shape[-1] != cfg.num_channels:
            raise ValueError(f"Dinov2 expects NHWC pixels with C={cfg.num_channels}; got shape {pixels.shape}")
        h, w = check_input_size(pixels.shape[1], pixels.shape[2], cfg.patch_size)
        dtype, b = jnp.dtype(cfg.dtype), pixels.shape[0]
        patches = self.patch_embed(patchify(pixels.astype(dtype), cfg.patch_size))     # (B, h*w, D)
        pos = self.position_table(h, w).astype(dtype)
        cls = (self.cls_token[...].astype(dtype) + pos[:1])[None]
        parts = [jnp.broadcast_to(cls, (b, 1, cfg.hidden_size))]
        if self.register_tokens is not None:
            reg = self.register_tokens[...].astype(dtype)[None]
            parts.append(jnp.broadcast_to(reg, (b, *reg.shape[1:])))
        parts.append(patches + pos[1:][None])
        x = constrain(jnp.concatenate(parts, axis=1), ("batch", "length", "embed"))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def tokens(self, pixels: jax.Array) -> jax.Array:
        """The patch tokens only (CLS and registers dropped): (B, h*w, D), row-major patches."""
        return self(pixels)[:, self.cfg.num_prefix_tokens:]


# ---- the "dinov2" model kind ------------------------------------------------------------------
def from_section(m, spec: InputSpec) -> Dinov2Config:
    """`config.model`: Dinov2Config fields (None = default); dtype defaults to the train compute dtype."""
    fields = {k: v for k, v in m.items() if k != "kind" and v is not None}
    known = {f.name for f in dataclasses.fields(Dinov2Config)}
    for k, v in fields.items():
        if k not in known:
            raise ValueError(f"config.model.{k}={v!r}: not a Dinov2 field; known: {sorted(known)}")
    fields.setdefault("dtype", spec.dtype)
    try:
        return Dinov2Config(**fields).validate()
    except ValueError as e:
        raise ValueError(f"config.model: {e}") from None


DINOV2_KIND = register_model(ModelKind("dinov2", Dinov2, Dinov2Config, from_section=from_section,
                                       runtime_fields=RUNTIME_FIELDS))
