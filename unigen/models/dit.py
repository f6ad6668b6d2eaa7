"""DiT: Scalable Diffusion Models with Transformers (Peebles & Xie, 2023).

The official architecture (facebookresearch/DiT `models.py`): patch tokens + fixed 2-D
sin-cos positions; c = t_emb + y_emb; adaLN-Zero blocks; a final adaLN + Linear to
p*p*C_out channels (2C with learned sigma). Input and output are NHWC.

Two numerically distinct conventions are named options, not silent defaults (REFERENCES.md):
  compat="official"   timestep frequencies divide by half, every LayerNorm eps 1e-6, one
                      shared conditioning embedder.
  compat="diffusers"  diffusers' `DiTTransformer2DModel`: frequencies divide by half-1, the
                      MLP LayerNorm uses eps 1e-5, and every block owns its timestep+label
                      embedder (the final layer reads block 0's).

`attention_backend` picks the attention kernel ("auto", "xla", "einsum", "cudnn",
"block_sparse", "linear"); `attention_options` are its options, where a block-sparse
local window is given by its radius (`(("window", 1), ("block_size", 16))`) and built for
the token grid here. `block_type="sana"` swaps every block for SANA's (ReLU linear
attention + Mix-FFN; unigen/models/sana_block.py) with the same adaLN-Zero conditioning.

`vector_dim > 0` adds a vector condition `z` (B, vector_dim), embedded by Linear-SiLU-Linear
and added to c (as SD3 adds its pooled text vector): the latent of an LZN decoder
(unigen/models/lzn.py). 0 (default) adds no parameters, so DiT's numbers do not change.

`scan_layers=True` stacks the blocks on a leading "layers" axis and runs them with
`lax.scan` (compile time independent of depth); `remat=True` rematerialises each block.

LightningDiT (Yao et al. 2025, hustvl/LightningDiT `models/lightningdit.py`) is this family with
options turned on, not a second block stack; every option defaults to DiT's behaviour:
  mlp_type="swiglu"    SwiGLU FFN (w12 -> SiLU(a) * b -> w3) of width int(2/3 * int(D * mlp_ratio))
                       (the reference's `use_swiglu`; 3072 for D = 1152, no rounding to a multiple).
  norm_type="rmsnorm"  the blocks' two norms and the final layer's norm are RMSNorm with a learnable
                       scale (ones at init), eps = norm_eps / mlp_norm_eps (1e-6), statistics in
                       float32 (`use_rmsnorm`; the LLaMA RMSNorm the reference ships).
  qk_norm=True         per-head norm of q and k before RoPE (`use_qknorm`): RMSNorm(Dh, eps 1e-6) with
                       norm_type="rmsnorm", else torch's default LayerNorm(Dh) (affine, eps 1e-5).
  rope="2d"            2-D RoPE on q, k per head after the qk-norm (`use_rope`; EVA-02's
                       VisionRotaryEmbeddingFast with dim = Dh/2, theta `rope_theta`, integer
                       positions; unigen/nn/rope.py). The absolute sin-cos table is still added
                       (pos_embed="sincos"), as the reference does; pos_embed="none" drops it.
  wo_shift=True        the blocks' adaLN has no shifts (4 modulations: scale, gate, scale, gate); the
                       final layer keeps (shift, scale).
The preset names "LightningDiT-B/1", "LightningDiT-XL/1", ... (`lightningdit_config`, also accepted by
`dit_config` and `config.model.name`) give the reference's sizes with the options of its released
config (configs/lightningdit_xl_vavae_f16d32.yaml: SwiGLU, RMSNorm, RoPE, no qk-norm, shifts kept,
learn_sigma False) on VA-VAE f16d32 latents (32 channels, 16x16 for 256px images).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from unigen.nn.attention import attention
from unigen.nn.checks import check_compute_options
from unigen.nn.embeddings import LabelEmbedder, TimestepEmbedder, VectorEmbedder
from unigen.nn.layers import Dense
from unigen.nn.mlp import Mlp, SwiGLU
from unigen.nn.modulate import gate, modulate
from unigen.nn.norms import LayerNorm, RMSNorm, layer_norm
from unigen.nn.patch import check_divisible, patchify, unpatchify
from unigen.nn.posemb import sincos_2d
from unigen.nn.rope import apply_rope, rope_2d_freqs
from unigen.models.registry import Condition, InputSpec, ModelKind, register_model
from unigen.parallel.logical import constrain

# depth, hidden size, heads (DiT Table 1).
DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
# LightningDiT's sizes (models/lightningdit.py: LightningDiT_models), patch 1 or 2.
LIGHTNINGDIT_SIZES = {"B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16),
                      "1p0B": (24, 1536, 24), "1p6B": (28, 1792, 28)}
# What the released LightningDiT config turns on (the reference class defaults every flag to
# False; its configs/*.yaml set these), on VA-VAE f16d32 latents of 256px ImageNet.
LIGHTNINGDIT_OPTIONS = dict(mlp_type="swiglu", norm_type="rmsnorm", qk_norm=False, rope="2d", pos_embed="sincos",
                            wo_shift=False, learn_sigma=False, in_channels=32, input_size=16, num_classes=1000)
QK_LAYERNORM_EPS = 1e-5  # the reference's qk LayerNorm is torch's default nn.LayerNorm(head_dim)
MLP_TYPES, NORM_TYPES, ROPE_TYPES, POS_EMBEDS = ("gelu", "swiglu"), ("layernorm", "rmsnorm"), ("none", "2d"), ("sincos", "none")
COMPAT = {
    "official": dict(time_freq_shift=0.0, norm_eps=1e-6, mlp_norm_eps=1e-6, per_block_conditioning=False),
    "diffusers": dict(time_freq_shift=1.0, norm_eps=1e-6, mlp_norm_eps=1e-5, per_block_conditioning=True),
}


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    input_size: int = 32            # latent/image side (square)
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    vector_dim: int = 0             # a vector condition z (B, vector_dim) added to c; 0 = none
    learn_sigma: bool = True
    time_freq_shift: float = 0.0
    norm_eps: float = 1e-6
    mlp_norm_eps: float = 1e-6
    per_block_conditioning: bool = False
    attention_backend: str = "auto"
    attention_options: tuple = ()   # (key, value) pairs passed to the attention backend
    block_type: str = "dit"         # "dit" (adaLN-Zero + softmax attention) or "sana"
    # LightningDiT options (module docstring); the defaults are DiT's.
    mlp_type: str = "gelu"          # "gelu" (Linear-GELU(tanh)-Linear) or "swiglu"
    norm_type: str = "layernorm"    # "layernorm" (affine-free) or "rmsnorm" (learnable scale)
    qk_norm: bool = False           # per-head norm of q and k (RMSNorm or LayerNorm, by norm_type)
    rope: str = "none"              # "none" or "2d": 2-D rotary embedding of q, k per head
    rope_theta: float = 10000.0
    pos_embed: str = "sincos"       # "sincos": the fixed 2-D table added to the tokens; "none"
    wo_shift: bool = False          # True: the blocks' adaLN has no shifts (4 modulations)
    scan_layers: bool = False
    remat: bool = False
    dtype: str = "float32"          # compute dtype; parameters stay float32

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def grid(self) -> int:
        return self.input_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        """The FFN width: int(D * mlp_ratio); SwiGLU takes 2/3 of it as the reference does."""
        hidden = int(self.hidden_size * self.mlp_ratio)
        return int(2 / 3 * hidden) if self.mlp_type == "swiglu" else hidden

    def validate(self) -> "DiTConfig":
        def bad(field, why):
            raise ValueError(f"DiTConfig.{field}={getattr(self, field)!r}: {why}")
        for f in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads"):
            if int(getattr(self, f)) <= 0:
                bad(f, "must be a positive integer")
        if self.input_size % self.patch_size:
            bad("input_size", f"not divisible by patch_size={self.patch_size}; use a multiple of it")
        if self.hidden_size % self.num_heads:
            bad("hidden_size", f"not divisible by num_heads={self.num_heads}")
        if self.pos_embed not in POS_EMBEDS:
            bad("pos_embed", f"use one of {POS_EMBEDS} ('sincos': DiT's and LightningDiT's fixed table)")
        if self.pos_embed == "sincos" and self.hidden_size % 4:
            bad("hidden_size", "must be divisible by 4 (2-D sin-cos position embedding); or set pos_embed='none'")
        if self.mlp_type not in MLP_TYPES:
            bad("mlp_type", "use 'gelu' (DiT) or 'swiglu' (LightningDiT)")
        if self.norm_type not in NORM_TYPES:
            bad("norm_type", "use 'layernorm' (DiT) or 'rmsnorm' (LightningDiT)")
        for f in ("qk_norm", "wo_shift"):
            if not isinstance(getattr(self, f), bool):
                bad(f, "use True or False")
        if self.rope not in ROPE_TYPES:
            bad("rope", "use 'none' or '2d' (LightningDiT's 2-D RoPE on q, k)")
        if self.rope == "2d" and self.head_dim % 4:
            bad("rope", f"2-D RoPE needs head_dim = hidden_size/num_heads divisible by 4, got {self.head_dim}: "
                        "change hidden_size or num_heads, or set rope='none'")
        if isinstance(self.rope_theta, bool) or not isinstance(self.rope_theta, (int, float)) or not self.rope_theta > 0:
            bad("rope_theta", "must be a number > 0 (10000.0 as LightningDiT)")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            bad("class_dropout_prob", "must be in [0, 1)")
        if self.num_classes < 0:
            bad("num_classes", "must be >= 0 (0 = unconditional)")
        if isinstance(self.vector_dim, bool) or int(self.vector_dim) != self.vector_dim or self.vector_dim < 0:
            bad("vector_dim", "must be an int >= 0 (0 = no vector condition)")
        if self.vector_dim and self.per_block_conditioning:
            bad("vector_dim", "a vector condition needs the shared conditioning (compat='official')")
        check_compute_options(bad, self.dtype, self.attention_backend)
        if self.block_type not in ("dit", "sana"):
            bad("block_type", "use 'dit' or 'sana'")
        if self.block_type == "sana" and self.per_block_conditioning:
            bad("block_type", "SANA blocks take the shared conditioning (compat='official')")
        if self.block_type == "sana":
            defaults = dict(mlp_type="gelu", norm_type="layernorm", qk_norm=False, rope="none", wo_shift=False)
            changed = sorted(k for k, v in defaults.items() if getattr(self, k) != v)
            if changed:
                bad("block_type", f"SANA blocks do not take the LightningDiT options {changed}: use block_type='dit' "
                                  "or leave them at their defaults")
        options = dict(self.attention_options)
        if "window" in options and self.attention_backend != "block_sparse":
            bad("attention_options", "a 'window' is a block-sparse option: set attention_backend='block_sparse'")
        if self.attention_backend == "block_sparse" and not ({"window", "block_mask"} & set(options)):
            bad("attention_options", "block_sparse attention needs a 'window' (radius) or a 'block_mask'")
        return self


_LIGHTNING_NAME = r"LightningDiT-(B|L|XL|1p0B|1p6B)/(1|2)"


def dit_config(name: str = "DiT-XL/2", *, compat: str = "official", **overrides: Any) -> DiTConfig:
    """Config for a named size ("DiT-S/2", "DiT-B/4", "DiT-XL/2", ... or a LightningDiT preset
    "LightningDiT-B/1", "LightningDiT-XL/1", ...) with overrides (any DiTConfig field)."""
    m = re.fullmatch(r"DiT-(S|B|L|XL)/(2|4|8)", name)
    lightning = re.fullmatch(_LIGHTNING_NAME, name) if m is None else None
    if m is None and lightning is None:
        raise ValueError(
            f"unknown model name {name!r}; expected DiT-<size>/<patch> with size in "
            f"{sorted(DIT_SIZES)} and patch in (2, 4, 8), e.g. 'DiT-XL/2', or LightningDiT-<size>/<patch> "
            f"with size in {sorted(LIGHTNINGDIT_SIZES)} and patch in (1, 2), e.g. 'LightningDiT-XL/1'"
        )
    if compat not in COMPAT:
        raise ValueError(f"compat={compat!r}; choose one of {sorted(COMPAT)}")
    if lightning is not None and compat != "official":
        raise ValueError(f"compat={compat!r}: LightningDiT presets use the official DiT conventions; "
                         "set compat='official'")
    match = m or lightning
    depth, hidden, heads = (DIT_SIZES if m else LIGHTNINGDIT_SIZES)[match.group(1)]
    fields = dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=int(match.group(2)))
    fields.update(COMPAT[compat])
    if lightning is not None:
        fields.update(LIGHTNINGDIT_OPTIONS)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(DiTConfig)}
    if unknown:
        raise ValueError(f"unknown DiTConfig fields {sorted(unknown)}")
    fields.update(overrides)
    return DiTConfig(**fields).validate()


def lightningdit_config(name: str = "LightningDiT-XL/1", **overrides: Any) -> DiTConfig:
    """A LightningDiT preset ("LightningDiT-B/1", "LightningDiT-XL/1", "LightningDiT-1p6B/2", ...):
    the reference's size with its released options on (LIGHTNINGDIT_OPTIONS); fields override."""
    if not re.fullmatch(_LIGHTNING_NAME, name):
        raise ValueError(f"unknown LightningDiT name {name!r}; expected LightningDiT-<size>/<patch> with size in "
                         f"{sorted(LIGHTNINGDIT_SIZES)} and patch in (1, 2), e.g. 'LightningDiT-XL/1'")
    return dit_config(name, **overrides)


@functools.lru_cache(maxsize=32)
def attention_kwargs(cfg: DiTConfig) -> dict:
    """The backend's keyword options; a block-sparse `window` becomes the static block map
    of a local window over the (grid x grid) token raster (Scale-DiT / sliding-tile style)."""
    options = dict(cfg.attention_options)
    if "window" in options:
        from unigen.kernels import local_window_block_mask
        block = options.setdefault("block_size", 64)
        options["block_mask"] = local_window_block_mask((cfg.grid, cfg.grid), options.pop("window"), block)
    return options


@functools.lru_cache(maxsize=32)
def rope_angles(cfg: DiTConfig):
    """(grid*grid, head_dim/2) RoPE angles of the token grid (numpy, a compile-time constant)."""
    return rope_2d_freqs(cfg.head_dim, cfg.grid, cfg.grid, theta=float(cfg.rope_theta))


def _qk_norm(cfg: DiTConfig, rngs: nnx.Rngs) -> nnx.Module:
    if cfg.norm_type == "rmsnorm":
        return RMSNorm(cfg.head_dim, eps=cfg.norm_eps, rngs=rngs)
    return LayerNorm(cfg.head_dim, eps=QK_LAYERNORM_EPS, rngs=rngs)


def _norm(module, x, eps):
    """The block norm: affine-free LayerNorm (module None) or the RMSNorm module."""
    return layer_norm(x, eps) if module is None else module(x)


class Conditioning(nnx.Module):
    """c = TimestepEmbedder(t) + LabelEmbedder(y) (DiT §3.2) [+ VectorEmbedder(z)]."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        self.t_embedder = TimestepEmbedder(cfg.hidden_size, freq_shift=cfg.time_freq_shift, rngs=rngs, dtype=dtype)
        self.y_embedder = (
            LabelEmbedder(cfg.num_classes, cfg.hidden_size, dropout=cfg.class_dropout_prob, rngs=rngs)
            if cfg.num_classes > 0 else None
        )
        self.z_embedder = VectorEmbedder(cfg.vector_dim, cfg.hidden_size, rngs=rngs, dtype=dtype) if cfg.vector_dim else None

    def __call__(self, t, y, drop_key=None, z=None):
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            c = c + self.y_embedder(y, drop_key).astype(c.dtype)
        if self.z_embedder is not None:
            c = c + self.z_embedder(z.astype(c.dtype))
        return c


class DiTBlock(nnx.Module):
    """adaLN-Zero block: x += g1 * Attn(mod(N(x))); x += g2 * MLP(mod(N(x))), with the
    LightningDiT options (module docstring): N LayerNorm or RMSNorm, qk-norm, 2-D RoPE,
    GELU or SwiGLU MLP, adaLN with or without shifts. The condition c is one vector per
    sample (B, D), or one per token (B, T, D): DiT^DH's head (unigen/models/ddt.py)."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        d, h, dh = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        dtype = jnp.dtype(cfg.dtype)
        self.cfg = cfg
        self.cond = Conditioning(cfg, rngs=rngs) if cfg.per_block_conditioning else None
        self.qkv = Dense(d, (3, h, dh), axes=("embed", None, "heads", "kv"), rngs=rngs, dtype=dtype)
        self.proj = Dense((h, dh), d, axes=("heads", "kv", "embed"), rngs=rngs, dtype=dtype)
        mlp = SwiGLU if cfg.mlp_type == "swiglu" else Mlp
        self.mlp = mlp(d, cfg.mlp_hidden, rngs=rngs, dtype=dtype)
        # adaLN-Zero: the modulation Linear starts at zero so every block is the identity.
        self.ada = Dense(d, (4 if cfg.wo_shift else 6, d), axes=("embed", None, None), rngs=rngs, dtype=dtype,
                         kernel_init=nnx.initializers.zeros_init())
        rms = cfg.norm_type == "rmsnorm"
        self.norm1 = RMSNorm(d, eps=cfg.norm_eps, rngs=rngs) if rms else None
        self.norm2 = RMSNorm(d, eps=cfg.mlp_norm_eps, rngs=rngs) if rms else None
        self.q_norm = _qk_norm(cfg, rngs) if cfg.qk_norm else None
        self.k_norm = _qk_norm(cfg, rngs) if cfg.qk_norm else None

    def __call__(self, x, c, t=None, y=None, drop_key=None):
        cfg = self.cfg
        if self.cond is not None:
            c = self.cond(t, y, drop_key)
        mods = jnp.unstack(self.ada(jax.nn.silu(c)), axis=-2)  # c (B, D) or per token (B, T, D)
        if cfg.wo_shift:
            (scale1, gate1, scale2, gate2), shift1, shift2 = mods, None, None
        else:
            shift1, scale1, gate1, shift2, scale2, gate2 = mods
        q, k, v = jnp.unstack(self.qkv(modulate(_norm(self.norm1, x, cfg.norm_eps), shift1, scale1)), axis=2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if cfg.rope == "2d":
            angles = jnp.asarray(rope_angles(cfg))
            q, k = apply_rope(q, angles), apply_rope(k, angles)
        q, k, v = (constrain(a, ("batch", "length", "heads", "kv")) for a in (q, k, v))
        o = attention(q, k, v, backend=cfg.attention_backend, **attention_kwargs(cfg))
        x = x + gate(self.proj(o), gate1)
        x = x + gate(self.mlp(modulate(_norm(self.norm2, x, cfg.mlp_norm_eps), shift2, scale2)), gate2)
        return constrain(x, ("batch", "length", "embed"))


def _make_block(cfg: DiTConfig, rngs: nnx.Rngs) -> nnx.Module:
    if cfg.block_type == "sana":
        from unigen.models.sana_block import SanaBlock
        return SanaBlock(cfg.hidden_size, cfg.num_heads, rngs=rngs, mlp_ratio=cfg.mlp_ratio, norm_eps=cfg.norm_eps,
                         dtype=jnp.dtype(cfg.dtype), **dict(cfg.attention_options))
    return DiTBlock(cfg, rngs=rngs)


def make_stack(make, depth: int, rngs: nnx.Rngs, *, scan: bool) -> nnx.Module:
    """`depth` blocks `make(rngs)`: an nnx.List, or (scan=True) one block whose parameters are
    stacked on a leading "layers" axis (built with nnx.vmap), for `run_stack`."""
    if scan:
        @nnx.split_rngs(splits=depth)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(rngs):
            return make(rngs)
        return make_blocks(rngs)
    return nnx.List([make(rngs) for _ in range(depth)])


def run_stack(blocks: nnx.Module, h, fn, *, scan: bool, remat: bool):
    """h through a `make_stack` stack: h = fn(block, h) per block, in a Python loop or (scan=True)
    with `lax.scan` over the stacked parameters; remat=True rematerialises each block."""
    if remat:
        fn = nnx.remat(fn)
    if not scan:
        for block in blocks:
            h = fn(block, h)
        return h
    graphdef, state = nnx.split(blocks)

    def body(h, block_state):
        return fn(nnx.merge(graphdef, block_state), h), None

    h, _ = jax.lax.scan(body, h, state)
    return h


class FinalLayer(nnx.Module):
    """adaLN (shift, scale) + Linear to p*p*C_out, both zero-initialised; the norm is
    affine-free LayerNorm or (norm_type="rmsnorm") RMSNorm with a learnable scale; c is
    (B, D) or per token (B, T, D)."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        d, dtype = cfg.hidden_size, jnp.dtype(cfg.dtype)
        zeros = nnx.initializers.zeros_init()
        self.eps = cfg.norm_eps
        self.ada = Dense(d, (2, d), axes=("embed", None, None), kernel_init=zeros, rngs=rngs, dtype=dtype)
        self.linear = Dense(d, cfg.patch_size ** 2 * cfg.out_channels, axes=("embed", "patch"),
                            kernel_init=zeros, rngs=rngs, dtype=dtype)
        self.norm = RMSNorm(d, eps=cfg.norm_eps, rngs=rngs) if cfg.norm_type == "rmsnorm" else None

    def __call__(self, x, c):
        shift, scale = jnp.unstack(self.ada(jax.nn.silu(c)), axis=-2)
        return self.linear(modulate(_norm(self.norm, x, self.eps), shift, scale))


class DiT(nnx.Module):
    """Class-conditional DiT. `model(x, t, y)`: x (B, H, W, C), t (B,) timesteps in the
    objective's model time (DiT: 0..999, 0 = data; LightningDiT: t in [0, 1], 1 = data, see
    unigen/diffusion/flow.py), y (B,) int labels (num_classes = null) -> (B, H, W, C_out);
    with vector_dim > 0 also `z` (B, vector_dim), `model(x, t, y, z=z)`.

    `label_drop_key` turns on training-time label dropout (prob cfg.class_dropout_prob)."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        cfg = cfg.validate()
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        patch_dim = cfg.patch_size ** 2 * cfg.in_channels
        # The conv patch embedding read as a Linear over (p, q, c) patches; xavier over the
        # flattened (C*p*p, D) view as the reference initialises it.
        self.x_embedder = Dense(patch_dim, cfg.hidden_size, axes=("patch", "embed"), rngs=rngs, dtype=dtype)
        self.cond = None if cfg.per_block_conditioning else Conditioning(cfg, rngs=rngs)
        self.blocks = make_stack(lambda r: _make_block(cfg, r), cfg.depth, rngs, scan=cfg.scan_layers)
        self.final_layer = FinalLayer(cfg, rngs=rngs)

    def pos_embed(self) -> jax.Array:
        return jnp.asarray(sincos_2d(self.cfg.hidden_size, self.cfg.grid, self.cfg.grid))

    def _check_inputs(self, x, t, y, z):
        cfg = self.cfg
        if x.ndim != 4 or x.shape[3] != cfg.in_channels:
            raise ValueError(f"DiT expects NHWC input with C={cfg.in_channels}; got shape {x.shape}")
        check_divisible(x.shape[1], x.shape[2], cfg.patch_size)
        if x.shape[1:3] != (cfg.input_size, cfg.input_size):
            raise ValueError(f"DiT built for {cfg.input_size}x{cfg.input_size} inputs; got {x.shape[1]}x{x.shape[2]}")
        if t.shape != (x.shape[0],) or (y is not None and y.shape != (x.shape[0],)):
            raise ValueError(f"t and y must have shape ({x.shape[0]},); got t{t.shape} y{None if y is None else y.shape}")
        if cfg.vector_dim and (z is None or z.shape != (x.shape[0], cfg.vector_dim)):
            raise ValueError(f"this DiT takes a vector condition z of shape ({x.shape[0]}, {cfg.vector_dim}); "
                             f"got {None if z is None else z.shape}")
        if not cfg.vector_dim and z is not None:
            raise ValueError("this DiT has no vector condition (DiTConfig.vector_dim=0); do not pass z")

    def __call__(self, x, t, y=None, z=None, *, label_drop_key=None):
        cfg = self.cfg
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (x.shape[0],))
        y = None if y is None else jnp.asarray(y)
        if cfg.num_classes > 0 and y is None:
            raise ValueError("this DiT is class-conditional: pass labels y (use num_classes for the null label)")
        z = None if z is None else jnp.asarray(z)
        self._check_inputs(x, t, y, z)
        dtype = jnp.dtype(cfg.dtype)
        h = self.x_embedder(patchify(x.astype(dtype), cfg.patch_size))
        if cfg.pos_embed == "sincos":
            h = h + self.pos_embed().astype(dtype)
        h = constrain(h, ("batch", "length", "embed"))
        c = None if self.cond is None else self.cond(t, y, label_drop_key, z)
        h = self._run_blocks(h, c, t, y, label_drop_key)
        if c is None:  # diffusers layout: the final layer reads block 0's embedder
            c = self._block0_conditioning(t, y, label_drop_key)
        out = self.final_layer(h, c)
        return unpatchify(out, cfg.patch_size, x.shape[1], x.shape[2]).astype(x.dtype)

    def _block0_conditioning(self, t, y, drop_key):
        if self.cfg.scan_layers:
            graphdef, state = nnx.split(self.blocks)
            first = nnx.merge(graphdef, jax.tree.map(lambda a: a[0], state))
            return first.cond(t, y, drop_key)
        return self.blocks[0].cond(t, y, drop_key)

    def _run_blocks(self, h, c, t, y, drop_key):
        grid = (self.cfg.grid, self.cfg.grid)

        def run(block, h):
            if self.cfg.block_type == "sana":
                return block(h, c, grid)
            return block(h, c, t, y, drop_key)
        return run_stack(self.blocks, h, run, scan=self.cfg.scan_layers, remat=self.cfg.remat)

    def forward_with_cfg(self, x, t, y, cfg_scale: float, *, guided_channels: int | None = None):
        """Official DiT `forward_with_cfg`: the batch is [cond; uncond] halves with the same
        x; guidance eps_u + s (eps_c - eps_u) is applied to the first `guided_channels`
        output channels (official: 3, "for exact reproducibility"; None = all of the
        eps channels) and the remaining channels pass through from each half."""
        half = x[: x.shape[0] // 2]
        out = self(jnp.concatenate([half, half]), t, y)
        n_eps = self.cfg.in_channels
        k = n_eps if guided_channels is None else guided_channels
        guided, rest = out[..., :k], out[..., k:]
        cond, uncond = jnp.split(guided, 2)
        mixed = uncond + cfg_scale * (cond - uncond)
        return jnp.concatenate([jnp.concatenate([mixed, mixed]), rest], axis=-1)


# ---- the "dit" model kind ----------------------------------------------------------------------
_RUN_META = {"kind", "name", "compat"}  # config.model entries that are not DiTConfig fields


def from_section(m, spec: InputSpec) -> DiTConfig:
    """`config.model` (a size preset `name`: "DiT-S/2", ... or "LightningDiT-B/1", ... which also
    turns LightningDiT's options on; `compat`; and DiTConfig fields, which override the preset;
    None = the preset's value) with the data set's size, channels and classes and the train
    compute dtype (`spec`)."""
    fields = {k: v for k, v in m.items() if k not in _RUN_META and v is not None}
    known = {f.name for f in dataclasses.fields(DiTConfig)}
    for k in fields:
        if k not in known:
            raise ValueError(f"config.model.{k}={fields[k]!r}: not a DiT field; known: {sorted(known)}")
    if "attention_options" in fields:
        fields["attention_options"] = tuple(sorted(dict(fields["attention_options"]).items()))
    fields.update(input_size=spec.side, in_channels=spec.channels, num_classes=spec.num_classes, dtype=spec.dtype)
    return dit_config(m.get("name", "DiT-S/2"), compat=m.get("compat", "official"), **fields)


def conditions(cfg: DiTConfig) -> dict[str, Condition]:
    """Labels `y`; the null label is id num_classes (a row that exists when trained with dropout).
    A vector condition `z` has no null (it is never dropped)."""
    out = {}
    if cfg.num_classes:
        out["y"] = Condition(null=cfg.num_classes if cfg.class_dropout_prob > 0 else None,
                             dropout=cfg.class_dropout_prob)
    if cfg.vector_dim:
        out["z"] = Condition(null=None)
    return out


DIT_KIND = register_model(ModelKind(
    "dit", DiT, DiTConfig, from_section=from_section, conditions=conditions,
    runtime_fields=("scan_layers", "remat", "attention_backend", "attention_options", "dtype", "class_dropout_prob"),
    stacked=lambda cfg: ("blocks",) if cfg.scan_layers else ()))
