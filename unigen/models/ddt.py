"""DiT^DH: a DiT with a wide, shallow DDT head (Zheng et al. 2025, "Diffusion Transformers with
Representation Autoencoders"; bytetriper/RAE `src/stage2/models/DDT.py`, class `DiTwDDTHead`).

The network, for NHWC latents x (the RAE's DINOv2 features: 16x16x768 for 256px images):
  t_emb = GaussianFourier(t)      [sin(2 pi t W), cos(2 pi t W)] -> Linear -> SiLU -> Linear, with
                                  W (fourier_dim,) ~ N(0, fourier_scale^2) drawn once at init and never
                                  trained (the reference's `t_embedder.W`; here the buffer
                                  `t_embedder.freqs`, an nnx.Variable that is not a Param: the trainer
                                  keeps it frozen and it is saved with the model)
  c = silu(t_emb + y_emb)         the trunk blocks' condition; their adaLN starts with its own SiLU, so
                                  SiLU is applied twice, as in the reference
  s = trunk(s_embedder(x) + sincos)   `depth` LightningDiT blocks at width `hidden_size` (the DiT
                                  family's `DiTBlock` with its LightningDiT options), 2-D RoPE over the
                                  trunk's head dim, the fixed sin-cos table added to the tokens
  s = s_projector(silu(t_emb + s))    per-token condition of the head (Linear to `head_hidden_size`;
                                  none when the widths are equal)
  h = head(x_embedder(x), s)      `head_depth` blocks at width `head_hidden_size` whose adaLN is computed
                                  per token from s (the same `DiTBlock`, c of shape (B, T, D)); no
                                  position table, RoPE over the head's head dim
  out = final_layer(h, s)         per-token adaLN (shift, scale) -> Linear to p*p*C; unpatchify
Both stacks share `patch_size`, so s and h have the same tokens and the reference's
DDTModulate/DDTGate repeat (`repeat_interleave` when the trunk has fewer tokens than the head) is
the identity; the reference cannot run with two patch sizes either (its patch embeddings then
expect C*p*p input channels). patch_size > 1 here patchifies x like DiT (p*p*C per token for both
embeddings); rope="none" and pos_embed="none" are unigen options the reference does not run (it
needs its RoPE modules).

Initialisation follows the reference's `initialize_weights()` (called with its default
`xavier_uniform_init=False`): adaLN and the output layer zero, both patch embeddings xavier-uniform
over the flattened (p*p*C, D) view with zero bias, the label table and the t-MLP kernels N(0, 0.02);
every other Linear (attention, MLP, s_projector, the t-MLP biases) keeps torch's nn.Linear default,
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias; RMSNorm scales one.

Time: RAE's transport has t = 0 data, t = 1 noise and feeds t in [0, 1]: unigen's rectified flow
in the "sigma" convention with time_scale=1 (unigen/diffusion/flow.py); its timestep shift
sqrt(H*W*C / 4096) is `config.diffusion.shift_base_dim=4096`.

Presets (`ditdh_config`, `config.model.name`): "DiTDH-S", "DiTDH-B", "DiTDH-L", "DiTDH-XL": the
trunk of DiT's sizes (S 384 wide/12 blocks/6 heads, B 768/12/12, L 1024/24/16, XL 1152/28/16) and the
head of the released configs (configs/stage2/training/ImageNet256/DiTDH-*_DINOv2-B.yaml): 2048 wide,
2 blocks, 16 heads, patch 1, SwiGLU, RMSNorm, RoPE, no qk-norm, adaLN shifts kept, 1000 classes,
16x16x768 inputs.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from unigen.models.dit import (DIT_SIZES, MLP_TYPES, NORM_TYPES, POS_EMBEDS, ROPE_TYPES, DiTBlock, DiTConfig,
                               FinalLayer, make_stack, run_stack)
from unigen.models.registry import Condition, InputSpec, ModelKind, register_model
from unigen.nn.checks import check_compute_options, is_positive_int
from unigen.nn.embeddings import LabelEmbedder
from unigen.nn.layers import Dense
from unigen.nn.patch import check_divisible, patchify, unpatchify
from unigen.nn.posemb import sincos_2d
from unigen.parallel.logical import constrain

# The DDT head of every released DiT^DH: depth, width, heads.
DDT_HEAD = (2, 2048, 16)
# What the released configs set besides the sizes (DiTDH-S/XL_DINOv2-B.yaml), on DINOv2-B latents.
DITDH_OPTIONS = dict(patch_size=1, mlp_ratio=4.0, mlp_type="swiglu", norm_type="rmsnorm", qk_norm=False, rope="2d",
                     pos_embed="sincos", wo_shift=False, class_dropout_prob=0.1, num_classes=1000, in_channels=768,
                     input_size=16)
NORM_EPS = 1e-6  # the reference's RMSNorm and affine-free LayerNorm


@dataclasses.dataclass(frozen=True)
class DiTDHConfig:
    input_size: int = 16            # latent side (square)
    patch_size: int = 1             # trunk and head
    in_channels: int = 768          # = out channels (a velocity)
    hidden_size: int = 1152         # trunk width, depth, heads
    depth: int = 28
    num_heads: int = 16
    head_hidden_size: int = 2048    # DDT head width, depth, heads
    head_depth: int = 2
    head_num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    fourier_dim: int = 256          # Gaussian Fourier time features: W (fourier_dim,) ~ N(0, fourier_scale^2)
    fourier_scale: float = 1.0
    # The LightningDiT block options (unigen/models/dit.py), for trunk and head alike.
    mlp_type: str = "swiglu"
    norm_type: str = "rmsnorm"
    qk_norm: bool = False
    rope: str = "2d"
    rope_theta: float = 10000.0
    pos_embed: str = "sincos"       # the trunk's fixed table ("none" drops it); the head never has one
    wo_shift: bool = False
    attention_backend: str = "auto"
    attention_options: tuple = ()
    scan_layers: bool = False
    remat: bool = False
    dtype: str = "float32"

    @property
    def out_channels(self) -> int:
        return self.in_channels

    @property
    def learn_sigma(self) -> bool:
        return False  # a velocity, as the reference (no variance channels)

    @property
    def grid(self) -> int:
        return self.input_size // self.patch_size

    def trunk_config(self) -> DiTConfig:
        """The trunk's blocks as a DiT family config (what `DiTBlock` reads)."""
        return DiTConfig(
            input_size=self.input_size, patch_size=self.patch_size, in_channels=self.in_channels,
            hidden_size=self.hidden_size, depth=self.depth, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
            num_classes=self.num_classes, class_dropout_prob=self.class_dropout_prob, learn_sigma=False,
            norm_eps=NORM_EPS, mlp_norm_eps=NORM_EPS, attention_backend=self.attention_backend,
            attention_options=self.attention_options, mlp_type=self.mlp_type, norm_type=self.norm_type,
            qk_norm=self.qk_norm, rope=self.rope, rope_theta=self.rope_theta, pos_embed=self.pos_embed,
            wo_shift=self.wo_shift, scan_layers=self.scan_layers, remat=self.remat, dtype=self.dtype)

    def head_config(self) -> DiTConfig:
        """The head's blocks and final layer as a DiT family config (no position table)."""
        return dataclasses.replace(self.trunk_config(), hidden_size=self.head_hidden_size, depth=self.head_depth,
                                   num_heads=self.head_num_heads, pos_embed="none")

    def validate(self) -> "DiTDHConfig":
        def bad(field, why):
            raise ValueError(f"DiTDHConfig.{field}={getattr(self, field)!r}: {why}")
        for f in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads",
                  "head_hidden_size", "head_depth", "head_num_heads", "fourier_dim"):
            if not is_positive_int(getattr(self, f)):
                bad(f, "must be a positive integer")
        if self.input_size % self.patch_size:
            bad("input_size", f"not divisible by patch_size={self.patch_size}; use a multiple of it")
        for width, heads in (("hidden_size", "num_heads"), ("head_hidden_size", "head_num_heads")):
            d, h = getattr(self, width), getattr(self, heads)
            if d % h:
                bad(width, f"not divisible by {heads}={h}; change one of them")
            elif self.rope == "2d" and (d // h) % 4:
                bad(width, f"2-D RoPE needs the head dim {width}/{heads} = {d // h} divisible by 4: change "
                           f"{width} or {heads}, or set rope='none'")
        if self.pos_embed not in POS_EMBEDS:
            bad("pos_embed", f"use one of {POS_EMBEDS} ('sincos': the reference's fixed table on the trunk)")
        if self.pos_embed == "sincos" and self.hidden_size % 4:
            bad("hidden_size", "must be divisible by 4 (the trunk's 2-D sin-cos table); or set pos_embed='none'")
        if self.mlp_type not in MLP_TYPES:
            bad("mlp_type", "use 'swiglu' (the reference) or 'gelu'")
        if self.norm_type not in NORM_TYPES:
            bad("norm_type", "use 'rmsnorm' (the reference) or 'layernorm'")
        for f in ("qk_norm", "wo_shift", "scan_layers", "remat"):
            if not isinstance(getattr(self, f), bool):
                bad(f, "use True or False")
        if self.rope not in ROPE_TYPES:
            bad("rope", "use '2d' (the reference's 2-D RoPE on q, k) or 'none'")
        for f in ("rope_theta", "fourier_scale", "mlp_ratio"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                bad(f, "must be a number > 0")
        if int(self.hidden_size * self.mlp_ratio) < 2:
            bad("mlp_ratio", "gives an empty MLP; use 4.0 as the reference")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            bad("class_dropout_prob", "must be in [0, 1)")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            bad("num_classes", "must be an int >= 0 (0 = unconditional)")
        check_compute_options(bad, self.dtype, self.attention_backend)
        options = dict(self.attention_options)
        if "window" in options and self.attention_backend != "block_sparse":
            bad("attention_options", "a 'window' is a block-sparse option: set attention_backend='block_sparse'")
        if self.attention_backend == "block_sparse" and not ({"window", "block_mask"} & set(options)):
            bad("attention_options", "block_sparse attention needs a 'window' (radius) or a 'block_mask'")
        self.trunk_config().validate()  # what the shared blocks check besides (never fails after the above)
        self.head_config().validate()
        return self


_NAME = r"DiTDH-(S|B|L|XL)"


def ditdh_config(name: str = "DiTDH-XL", **overrides: Any) -> DiTDHConfig:
    """A preset ("DiTDH-S", "DiTDH-B", "DiTDH-L", "DiTDH-XL": the trunk's size, the 2048-wide 2-block head
    and the released options, DITDH_OPTIONS) with overrides (any DiTDHConfig field)."""
    m = re.fullmatch(_NAME, name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"unknown DiT^DH name {name!r}; expected DiTDH-<size> with size in "
                         f"{sorted(DIT_SIZES)}, e.g. 'DiTDH-XL'")
    depth, hidden, heads = DIT_SIZES[m.group(1)]
    head_depth, head_hidden, head_heads = DDT_HEAD
    fields = dict(DITDH_OPTIONS, depth=depth, hidden_size=hidden, num_heads=heads, head_depth=head_depth,
                  head_hidden_size=head_hidden, head_num_heads=head_heads)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(DiTDHConfig)}
    if unknown:
        raise ValueError(f"unknown DiTDHConfig fields {sorted(unknown)}")
    fields.update(overrides)
    return DiTDHConfig(**fields).validate()


# ---- initialisers (module docstring) --------------------------------------------------------------
def _torch_linear_bound(fan_in: int) -> float:
    return 1.0 / math.sqrt(fan_in)


def torch_default_kernel(n_in_axes: int = 1, n_out_axes: int = 1):
    """torch nn.Linear's default weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), over a Dense kernel."""
    return nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=tuple(range(n_in_axes)),
                                             out_axis=tuple(range(n_in_axes, n_in_axes + n_out_axes)))


def torch_default_bias(fan_in: int):
    """torch nn.Linear's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = _torch_linear_bound(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_default_linears(stack: nnx.Module, rngs: nnx.Rngs, *, stacked: bool) -> None:
    """Redraw every Dense of a block stack except the adaLN ones (`ada`, zero) with torch's nn.Linear
    default, weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming-uniform, a = sqrt(5)). With
    `stacked` the parameters carry a leading layers axis (each layer gets its own draw)."""
    lead = 1 if stacked else 0
    for path, node in nnx.iter_graph(stack):
        if not isinstance(node, Dense) or "ada" in path:
            continue
        kernel = node.kernel
        bound = _torch_linear_bound(math.prod(kernel.shape[lead:lead + node.n_in]))
        kernel.set_value(jax.random.uniform(rngs.params(), kernel.shape, kernel.dtype, -bound, bound))
        if node.bias is not None:
            node.bias.set_value(jax.random.uniform(rngs.params(), node.bias.shape, node.bias.dtype, -bound, bound))


class GaussianFourierEmbedder(nnx.Module):
    """RAE's `GaussianFourierEmbedding`: t (B,) -> [sin(2 pi t W), cos(2 pi t W)] -> Linear -> SiLU ->
    Linear. W = `freqs` (fourier_dim,) ~ N(0, scale^2) is drawn at init and never trained: a plain
    nnx.Variable (not a Param), so the trainer keeps it frozen and checkpoints save it. The kernels
    start N(0, 0.02), the biases at torch's Linear default."""

    def __init__(self, dim: int, *, freq_dim: int = 256, scale: float = 1.0, rngs: nnx.Rngs, dtype=None):
        normal = nnx.initializers.normal(0.02)
        self.freqs = nnx.Variable(scale * jax.random.normal(rngs.params(), (freq_dim,), jnp.float32),
                                  logical_axes=(None,))
        self.fc1 = Dense(2 * freq_dim, dim, axes=(None, "embed"), kernel_init=normal,
                         bias_init=torch_default_bias(2 * freq_dim), rngs=rngs, dtype=dtype)
        self.fc2 = Dense(dim, dim, axes=("embed", None), kernel_init=normal, bias_init=torch_default_bias(dim),
                         rngs=rngs, dtype=dtype)

    def __call__(self, t):
        w = jax.lax.stop_gradient(self.freqs[...])
        args = jnp.asarray(t, jnp.float32)[:, None] * w[None] * 2 * math.pi
        return self.fc2(jax.nn.silu(self.fc1(jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1))))


class DiTDH(nnx.Module):
    """DiT^DH (module docstring). `model(x, t, y)`: x (B, H, W, C) NHWC, t (B,) in [0, 1] (RAE: t = 0
    data, 1 noise; unigen's flow with time_convention="sigma", time_scale=1), y (B,) int labels
    (num_classes = the null label) -> the velocity (B, H, W, C). `label_drop_key` turns on
    training-time label dropout (prob cfg.class_dropout_prob), as DiT."""

    def __init__(self, cfg: DiTDHConfig, *, rngs: nnx.Rngs):
        cfg = cfg.validate()
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        trunk_cfg, head_cfg = cfg.trunk_config(), cfg.head_config()
        d, dh = cfg.hidden_size, cfg.head_hidden_size
        patch_dim = cfg.patch_size ** 2 * cfg.in_channels
        # Conv patch embeddings read as Linears over (p, q, c) patches; xavier over (C*p*p, D), zero bias.
        self.s_embedder = Dense(patch_dim, d, axes=("patch", "embed"), rngs=rngs, dtype=dtype)
        self.x_embedder = Dense(patch_dim, dh, axes=("patch", "embed"), rngs=rngs, dtype=dtype)
        self.t_embedder = GaussianFourierEmbedder(d, freq_dim=cfg.fourier_dim, scale=cfg.fourier_scale, rngs=rngs,
                                                  dtype=dtype)
        self.y_embedder = (LabelEmbedder(cfg.num_classes, d, dropout=cfg.class_dropout_prob, rngs=rngs)
                           if cfg.num_classes > 0 else None)
        self.trunk = make_stack(lambda r: DiTBlock(trunk_cfg, rngs=r), cfg.depth, rngs, scan=cfg.scan_layers)
        torch_default_linears(self.trunk, rngs, stacked=cfg.scan_layers)
        self.s_projector = (Dense(d, dh, axes=("embed", None), kernel_init=torch_default_kernel(),
                                  bias_init=torch_default_bias(d), rngs=rngs, dtype=dtype) if d != dh else None)
        self.head = make_stack(lambda r: DiTBlock(head_cfg, rngs=r), cfg.head_depth, rngs, scan=cfg.scan_layers)
        torch_default_linears(self.head, rngs, stacked=cfg.scan_layers)
        self.final_layer = FinalLayer(head_cfg, rngs=rngs)

    def pos_embed(self) -> jax.Array:
        return jnp.asarray(sincos_2d(self.cfg.hidden_size, self.cfg.grid, self.cfg.grid))

    def _check_inputs(self, x, t, y):
        cfg = self.cfg
        if x.ndim != 4 or x.shape[3] != cfg.in_channels:
            raise ValueError(f"DiTDH expects NHWC input with C={cfg.in_channels}; got shape {x.shape}")
        check_divisible(x.shape[1], x.shape[2], cfg.patch_size)
        if x.shape[1:3] != (cfg.input_size, cfg.input_size):
            raise ValueError(f"DiTDH built for {cfg.input_size}x{cfg.input_size} inputs; got {x.shape[1]}x{x.shape[2]}")
        if t.shape != (x.shape[0],) or (y is not None and y.shape != (x.shape[0],)):
            raise ValueError(f"t and y must have shape ({x.shape[0]},); got t{t.shape} y{None if y is None else y.shape}")

    def __call__(self, x, t, y=None, *, label_drop_key=None):
        cfg = self.cfg
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (x.shape[0],))
        y = None if y is None else jnp.asarray(y)
        if cfg.num_classes > 0 and y is None:
            raise ValueError("this DiTDH is class-conditional: pass labels y (use num_classes for the null label)")
        if cfg.num_classes == 0 and y is not None:
            raise ValueError("this DiTDH is unconditional (num_classes=0): do not pass y")
        self._check_inputs(x, t, y)
        dtype = jnp.dtype(cfg.dtype)
        patches = patchify(x.astype(dtype), cfg.patch_size)
        t_emb = self.t_embedder(t)
        c = t_emb if self.y_embedder is None else t_emb + self.y_embedder(y, label_drop_key).astype(t_emb.dtype)
        c = jax.nn.silu(c)  # the blocks' adaLN applies SiLU again (the reference's double SiLU)
        s = self.s_embedder(patches)
        if cfg.pos_embed == "sincos":
            s = s + self.pos_embed().astype(dtype)
        s = constrain(s, ("batch", "length", "embed"))
        s = run_stack(self.trunk, s, lambda block, h: block(h, c), scan=cfg.scan_layers, remat=cfg.remat)
        s = jax.nn.silu(t_emb[:, None].astype(s.dtype) + s)
        if self.s_projector is not None:
            s = self.s_projector(s)
        s = constrain(s, ("batch", "length", "embed"))
        h = constrain(self.x_embedder(patches), ("batch", "length", "embed"))
        h = run_stack(self.head, h, lambda block, h: block(h, s), scan=cfg.scan_layers, remat=cfg.remat)
        out = self.final_layer(h, s)
        return unpatchify(out, cfg.patch_size, x.shape[1], x.shape[2]).astype(x.dtype)


# ---- the "ditdh" model kind ----------------------------------------------------------------------
_RUN_META = {"kind", "name"}  # config.model entries that are not DiTDHConfig fields


def from_section(m, spec: InputSpec) -> DiTDHConfig:
    """`config.model` (a preset `name`: "DiTDH-S", ..., "DiTDH-XL"; DiTDHConfig fields override it, None =
    the preset's value) with the data set's input side and channels (pixels or the tokenizer's latents,
    unigen/data/shapes.py), its classes and the train compute dtype (`spec`)."""
    fields = {k: v for k, v in m.items() if k not in _RUN_META and v is not None}
    known = {f.name for f in dataclasses.fields(DiTDHConfig)}
    for k in fields:
        if k not in known:
            raise ValueError(f"config.model.{k}={fields[k]!r}: not a DiTDH field; known: {sorted(known)}")
    for k in ("input_size", "in_channels", "num_classes", "dtype"):
        if k in fields:
            raise ValueError(f"config.model.{k}={fields[k]!r}: set by the data and train configs "
                             f"(config.data / config.train.compute_dtype); remove it")
    if "attention_options" in fields:
        fields["attention_options"] = tuple(sorted(dict(fields["attention_options"]).items()))
    fields.update(input_size=spec.side, in_channels=spec.channels, num_classes=spec.num_classes, dtype=spec.dtype)
    return ditdh_config(m.get("name", "DiTDH-S"), **fields)


def conditions(cfg: DiTDHConfig) -> dict[str, Condition]:
    """Labels `y`, as DiT: the null label is id num_classes (a row that exists when trained with dropout)."""
    if not cfg.num_classes:
        return {}
    return {"y": Condition(null=cfg.num_classes if cfg.class_dropout_prob > 0 else None,
                           dropout=cfg.class_dropout_prob)}


DITDH_KIND = register_model(ModelKind(
    "ditdh", DiTDH, DiTDHConfig, from_section=from_section, conditions=conditions,
    runtime_fields=("scan_layers", "remat", "attention_backend", "attention_options", "dtype", "class_dropout_prob"),
    stacked=lambda cfg: ("trunk", "head") if cfg.scan_layers else ()))
