"""MM-DiT: the joint text-image transformer of Stable Diffusion 3 / 3.5 (Esser et al., 2024).

The numbers are those of diffusers' `SD3Transformer2DModel` (REFERENCES.md "MM-DiT"):
  * patch tokens (the conv read as a Linear over (p, q, c) patches) + a fixed sin-cos table
    built on a `pos_embed_max_size` grid with positions i / (max / base_size), base_size =
    sample_size / patch, centre-cropped to the input's token grid (non-square is normal);
    with pos_embed_max_size=None the table is built on the input grid, scaled to base_size;
  * c = TimestepEmbedder(t) ([cos, sin], shift 0) + SiLU-MLP(pooled text);
  * joint blocks: image and context streams each own an adaLN-Zero (6 modulations), q/k/v
    (optional per-head RMS qk-norm, eps 1e-6), output Linear and GELU-tanh MLP; one attention
    over the concatenated tokens, split back. The order is diffusers' [image; context]
    (sd3-ref writes [context; image]; full softmax attention does not care, a block map
    does: with image tokens first, the image-only blocks of a joint map are its top-left
    corner, and that corner is the map the dual attention below uses);
  * the last block's context stream is pre-only: AdaLayerNormContinuous, chunked (scale,
    shift), and no context output;
  * SD3.5 `dual_attention_layers`: the image adaLN gives 9 modulations (shift, scale, gate)
    x (attn, mlp, attn2); attn2 is an image-only attention on the same LayerNorm output,
    modulated by its own (shift, scale), added after the joint attention's residual;
  * norm_out is AdaLayerNormContinuous, (scale, shift) (the reverse of DiT's final layer).

Input x is NHWC, t (B,) in SD3's time convention 1000*sigma (sigma = 1 is noise), context
(B, T, joint_attention_dim), pooled (B, pooled_projection_dim); the output is (B, H, W, C_out).

`scan_layers=True` scans over each maximal run of identical consecutive blocks (a run of dual
blocks, a run of plain ones, the pre-only last block on its own); the runs are the top-level
attributes `blocks_0`, `blocks_1`, ... in both layouts, so files interchange.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unigen.models.registry import Condition, InputSpec, ModelKind, register_model
from unigen.nn.attention import attention
from unigen.nn.checks import check_compute_options, check_positive_ints
from unigen.nn.embeddings import TimestepEmbedder, VectorEmbedder
from unigen.nn.layers import Dense
from unigen.nn.mlp import Mlp
from unigen.nn.modulate import gate, modulate
from unigen.nn.norms import RMSNorm, layer_norm
from unigen.nn.patch import check_divisible, patchify, unpatchify
from unigen.nn.posemb import scaled_positions, sincos_2d_at
from unigen.parallel.logical import constrain

EPS = 1e-6  # every LayerNorm and the qk RMSNorms (diffusers JointTransformerBlock)
TOKENS = ("batch", "length", "embed")
HEADS = ("batch", "length", "heads", "kv")


@dataclasses.dataclass(frozen=True)
class MMDiTConfig:
    sample_size: int = 128              # latent side the model was trained at (sets base_size)
    patch_size: int = 2
    in_channels: int = 16
    out_channels: int = 16
    num_layers: int = 18
    attention_head_dim: int = 64
    num_attention_heads: int = 18
    joint_attention_dim: int = 4096     # width of the text encoder states (context)
    caption_projection_dim: int = 1152  # context width inside the blocks (= hidden size)
    pooled_projection_dim: int = 2048
    pos_embed_max_size: int | None = None  # SD3: 96..384; None = a table on the input grid, no crop
    qk_norm: str | None = None          # None or "rms_norm"
    dual_attention_layers: tuple = ()   # SD3.5: blocks with an extra image-only attention
    text_dropout_prob: float = 0.1
    attention_backend: str = "auto"
    attention_options: tuple = ()       # (key, value) pairs for the backend
    scan_layers: bool = False
    remat: bool = False
    dtype: str = "float32"              # compute dtype; parameters stay float32

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def base_size(self) -> int:
        return self.sample_size // self.patch_size

    def validate(self) -> "MMDiTConfig":
        def bad(field, why):
            raise ValueError(f"MMDiTConfig.{field}={getattr(self, field)!r}: {why}")
        check_positive_ints(bad, self, ("sample_size", "patch_size", "in_channels", "out_channels", "num_layers",
                                        "attention_head_dim", "num_attention_heads", "joint_attention_dim",
                                        "caption_projection_dim", "pooled_projection_dim"))
        if self.sample_size % self.patch_size:
            bad("sample_size", f"not divisible by patch_size={self.patch_size}; use a multiple of it")
        if self.caption_projection_dim != self.hidden_size:
            bad("caption_projection_dim", f"the context stream has the blocks' width: set it to "
                f"num_attention_heads * attention_head_dim = {self.hidden_size}")
        if self.hidden_size % 4:
            bad("attention_head_dim", "heads * head_dim must be divisible by 4 (2-D sin-cos positions)")
        if self.pos_embed_max_size is not None and (not isinstance(self.pos_embed_max_size, int)
                                                    or self.pos_embed_max_size <= 0):
            bad("pos_embed_max_size", "must be a positive integer or None (no crop)")
        if self.qk_norm not in (None, "rms_norm"):
            bad("qk_norm", "use None or 'rms_norm'")
        layers = tuple(self.dual_attention_layers)
        if len(set(layers)) != len(layers) or not all(isinstance(i, int) and 0 <= i < self.num_layers for i in layers):
            bad("dual_attention_layers", f"must be distinct layer indices in [0, {self.num_layers})")
        if not 0.0 <= self.text_dropout_prob < 1.0:
            bad("text_dropout_prob", "must be in [0, 1)")
        check_compute_options(bad, self.dtype, self.attention_backend)
        options = dict(self.attention_options)
        if "window" in options:
            bad("attention_options", "MM-DiT takes a block map over the joint [image; context] sequence "
                "('block_mask', 'block_size'), not a 'window'")
        if self.attention_backend == "block_sparse" and "block_mask" not in options:
            bad("attention_options", "block_sparse attention needs a 'block_mask' over the joint "
                "[image; context] sequence and a 'block_size'")
        return self


def block_runs(cfg: MMDiTConfig) -> list[tuple[int, int, bool, bool]]:
    """Maximal runs of identical consecutive blocks: (first layer, count, dual, pre_only)."""
    runs = []
    for i in range(cfg.num_layers):
        key = (i in cfg.dual_attention_layers, i == cfg.num_layers - 1)
        if runs and runs[-1][2:] == key:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, *key)
        else:
            runs.append((i, 1, *key))
    return runs


def pos_embed(cfg: MMDiTConfig, grid_h: int, grid_w: int) -> np.ndarray:
    """(grid_h * grid_w, D): diffusers PatchEmbed's table for a (grid_h, grid_w) token grid."""
    size = cfg.pos_embed_max_size
    if size is None:  # built on the input grid itself, each axis scaled to base_size
        return sincos_2d_at(cfg.hidden_size, scaled_positions(grid_h, cfg.base_size),
                            scaled_positions(grid_w, cfg.base_size))
    pos = scaled_positions(size, cfg.base_size)
    top, left = (size - grid_h) // 2, (size - grid_w) // 2  # cropped_pos_embed: the centre window
    return sincos_2d_at(cfg.hidden_size, pos[top:top + grid_h], pos[left:left + grid_w])


class Projections(nnx.Module):
    """One stream's attention projections: q/k/v (with per-head RMS qk-norm) and the output."""

    def __init__(self, cfg: MMDiTConfig, *, rngs: nnx.Rngs, out: bool = True):
        d, h, dh, dtype = cfg.hidden_size, cfg.num_attention_heads, cfg.attention_head_dim, jnp.dtype(cfg.dtype)
        self.qkv = Dense(d, (3, h, dh), axes=("embed", None, "heads", "kv"), rngs=rngs, dtype=dtype)
        norm = cfg.qk_norm == "rms_norm"
        self.q_norm = RMSNorm(dh, eps=EPS, rngs=rngs) if norm else None
        self.k_norm = RMSNorm(dh, eps=EPS, rngs=rngs) if norm else None
        self.proj = Dense((h, dh), d, axes=("heads", "kv", "embed"), rngs=rngs, dtype=dtype) if out else None

    def __call__(self, x):
        q, k, v = jnp.unstack(self.qkv(x), axis=2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return tuple(constrain(a, HEADS) for a in (q, k, v))


class JointBlock(nnx.Module):
    """SD3's JointTransformerBlock; `dual` adds SD3.5's image-only attention, `pre_only` makes
    the context stream input-only (the last block)."""

    def __init__(self, cfg: MMDiTConfig, *, dual: bool, pre_only: bool, rngs: nnx.Rngs):
        d, dtype = cfg.hidden_size, jnp.dtype(cfg.dtype)
        self.cfg, self.dual, self.pre_only = cfg, dual, pre_only
        zeros = nnx.initializers.zeros_init()  # adaLN-Zero: every block starts as the identity
        self.x_ada = Dense(d, (9 if dual else 6, d), axes=("embed", None, None), kernel_init=zeros,
                           rngs=rngs, dtype=dtype)
        self.x_attn = Projections(cfg, rngs=rngs)
        self.x_mlp = Mlp(d, 4 * d, rngs=rngs, dtype=dtype)
        self.x_attn2 = Projections(cfg, rngs=rngs) if dual else None
        self.ctx_ada = Dense(d, (2 if pre_only else 6, d), axes=("embed", None, None), kernel_init=zeros,
                             rngs=rngs, dtype=dtype)
        self.ctx_attn = Projections(cfg, rngs=rngs, out=not pre_only)
        self.ctx_mlp = None if pre_only else Mlp(d, 4 * d, rngs=rngs, dtype=dtype)

    def __call__(self, x, ctx, c):
        n = x.shape[1]
        silu_c = jax.nn.silu(c)
        mods = jnp.unstack(self.x_ada(silu_c), axis=1)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods[:6]
        xn = layer_norm(x, EPS)
        if self.pre_only:  # AdaLayerNormContinuous chunks (scale, shift)
            c_scale1, c_shift1 = jnp.unstack(self.ctx_ada(silu_c), axis=1)
        else:
            c_shift1, c_scale1, c_gate1, c_shift2, c_scale2, c_gate2 = jnp.unstack(self.ctx_ada(silu_c), axis=1)
        img = self.x_attn(modulate(xn, shift1, scale1))
        txt = self.ctx_attn(modulate(layer_norm(ctx, EPS), c_shift1, c_scale1))
        q, k, v = (jnp.concatenate([a, b], axis=1) for a, b in zip(img, txt))  # [image; context]
        o = attention(q, k, v, backend=self.cfg.attention_backend, **attention_options(self.cfg))
        x = x + gate(self.x_attn.proj(o[:, :n]), gate1)
        if self.dual:  # SD35AdaLayerNormZeroX: attn2 reads the same LayerNorm, its own modulation
            shift3, scale3, gate3 = mods[6:]
            q2, k2, v2 = self.x_attn2(modulate(xn, shift3, scale3))
            o2 = attention(q2, k2, v2, backend=self.cfg.attention_backend, **attention_options(self.cfg, n))
            x = x + gate(self.x_attn2.proj(o2), gate3)
        x = x + gate(self.x_mlp(modulate(layer_norm(x, EPS), shift2, scale2)), gate2)
        if not self.pre_only:
            ctx = ctx + gate(self.ctx_attn.proj(o[:, n:]), c_gate1)
            ctx = ctx + gate(self.ctx_mlp(modulate(layer_norm(ctx, EPS), c_shift2, c_scale2)), c_gate2)
        return constrain(x, TOKENS), constrain(ctx, TOKENS)  # a pre-only block returns ctx unused


def attention_options(cfg: MMDiTConfig, n_image: int | None = None) -> dict:
    """The backend's options. A block-sparse `block_mask` covers the joint [image; context]
    sequence; the image-only attention (`n_image` tokens) takes its image x image corner: image
    tokens come first, so they fall in the same blocks in both sequences. Give the map as nested
    tuples to keep the config hashable."""
    options = dict(cfg.attention_options)
    if "block_mask" not in options:
        return options
    from unigen.kernels import BlockLayout
    if isinstance(options["block_mask"], BlockLayout):
        if n_image is not None:
            raise ValueError("MM-DiT dual attention needs attention_options block_mask as a boolean map "
                             "(it takes the image x image corner), not a prebuilt BlockLayout")
        return options
    options["block_mask"] = np.asarray(options["block_mask"], bool)
    if n_image is not None:
        if options.get("block_size") is None:
            raise ValueError("block_sparse attention with a boolean block_mask needs attention_options block_size")
        bq, bk = np.broadcast_to(options["block_size"], (2,))
        options["block_mask"] = options["block_mask"][..., :-(-n_image // bq), :-(-n_image // bk)]
    return options


class MMDiT(nnx.Module):
    """`model(x, t, context, pooled)` -> (B, H, W, out_channels); see the module docstring."""

    def __init__(self, cfg: MMDiTConfig, *, rngs: nnx.Rngs):
        cfg = cfg.validate()
        self.cfg = cfg
        d, dtype, p = cfg.hidden_size, jnp.dtype(cfg.dtype), cfg.patch_size
        zeros = nnx.initializers.zeros_init()
        self.x_embedder = Dense(p * p * cfg.in_channels, d, axes=("patch", "embed"), rngs=rngs, dtype=dtype)
        self.t_embedder = TimestepEmbedder(d, rngs=rngs, dtype=dtype)
        self.pooled_embedder = VectorEmbedder(cfg.pooled_projection_dim, d, rngs=rngs, dtype=dtype)
        self.context_embedder = Dense(cfg.joint_attention_dim, d, axes=(None, "embed"), rngs=rngs, dtype=dtype)
        for j, (_, count, dual, pre_only) in enumerate(block_runs(cfg)):
            setattr(self, f"blocks_{j}", self._make_run(count, dual, pre_only, rngs))
        self.final_ada = Dense(d, (2, d), axes=("embed", None, None), kernel_init=zeros, rngs=rngs, dtype=dtype)
        self.proj_out = Dense(d, p * p * cfg.out_channels, axes=("embed", "patch"), kernel_init=zeros,
                              rngs=rngs, dtype=dtype)

    def _make_run(self, count, dual, pre_only, rngs):
        cfg = self.cfg
        if not cfg.scan_layers:
            return nnx.List([JointBlock(cfg, dual=dual, pre_only=pre_only, rngs=rngs) for _ in range(count)])

        @nnx.split_rngs(splits=count)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return JointBlock(cfg, dual=dual, pre_only=pre_only, rngs=rngs)
        return make(rngs)

    def _check_inputs(self, x, t, context, pooled):
        cfg = self.cfg
        if x.ndim != 4 or x.shape[3] != cfg.in_channels:
            raise ValueError(f"MMDiT expects NHWC input x with C={cfg.in_channels}; got shape {x.shape}")
        check_divisible(x.shape[1], x.shape[2], cfg.patch_size)
        gh, gw, size = x.shape[1] // cfg.patch_size, x.shape[2] // cfg.patch_size, cfg.pos_embed_max_size
        if size is not None and max(gh, gw) > size:
            raise ValueError(f"input {x.shape[1]}x{x.shape[2]} is a {gh}x{gw} token grid, larger than "
                             f"pos_embed_max_size={size}; use inputs of at most {size * cfg.patch_size} pixels a side")
        b = x.shape[0]
        if t.shape != (b,):
            raise ValueError(f"t must have shape ({b},) (1000*sigma per example); got {t.shape}")
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.joint_attention_dim:
            raise ValueError(f"context must be (B={b}, T, joint_attention_dim={cfg.joint_attention_dim}); "
                             f"got {context.shape}")
        if pooled.shape != (b, cfg.pooled_projection_dim):
            raise ValueError(f"pooled must be (B={b}, pooled_projection_dim={cfg.pooled_projection_dim}); "
                             f"got {pooled.shape}")

    def __call__(self, x, t, context, pooled):
        cfg = self.cfg
        t, context, pooled = jnp.asarray(t), jnp.asarray(context), jnp.asarray(pooled)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (x.shape[0],))
        self._check_inputs(x, t, context, pooled)
        dtype = jnp.dtype(cfg.dtype)
        gh, gw = x.shape[1] // cfg.patch_size, x.shape[2] // cfg.patch_size
        h = self.x_embedder(patchify(x.astype(dtype), cfg.patch_size))
        h = constrain(h + jnp.asarray(pos_embed(cfg, gh, gw), dtype), TOKENS)
        c = self.t_embedder(t) + self.pooled_embedder(pooled.astype(dtype))
        ctx = constrain(self.context_embedder(context.astype(dtype)), TOKENS)
        for j in range(len(block_runs(cfg))):
            h, ctx = self._run(getattr(self, f"blocks_{j}"), h, ctx, c)
        scale, shift = jnp.unstack(self.final_ada(jax.nn.silu(c)), axis=1)  # (scale, shift): norm_out
        out = self.proj_out(modulate(layer_norm(h, EPS), shift, scale))
        return unpatchify(out, cfg.patch_size, x.shape[1], x.shape[2]).astype(x.dtype)

    def _run(self, blocks, h, ctx, c):
        def step(block, carry):
            return block(*carry, c)
        if self.cfg.remat:
            step = nnx.remat(step)
        if not self.cfg.scan_layers:
            for block in blocks:
                h, ctx = step(block, (h, ctx))
            return h, ctx
        graphdef, state = nnx.split(blocks)
        carry, _ = jax.lax.scan(lambda carry, s: (step(nnx.merge(graphdef, s), carry), None), (h, ctx), state)
        return carry


# ---- the "mmdit" model kind ----------------------------------------------------------------------
def from_section(m, spec: InputSpec) -> MMDiTConfig:
    """`config.model` (MMDiTConfig fields; None = default) with the input's side and channels and the
    train compute dtype (`spec`)."""
    fields = {k: v for k, v in m.items() if k != "kind" and v is not None}
    known = {f.name for f in dataclasses.fields(MMDiTConfig)}
    for k in fields:
        if k not in known:
            raise ValueError(f"config.model.{k}={fields[k]!r}: not an MM-DiT field; known: {sorted(known)}")
    if "attention_options" in fields:
        fields["attention_options"] = tuple(sorted(dict(fields["attention_options"]).items()))
    if "dual_attention_layers" in fields:
        fields["dual_attention_layers"] = tuple(fields["dual_attention_layers"])
    fields.update(sample_size=spec.side, in_channels=spec.channels, out_channels=spec.channels, dtype=spec.dtype)
    return MMDiTConfig(**fields).validate()


def conditions(cfg: MMDiTConfig) -> dict[str, Condition]:
    """The prompt's token states and pooled vector, dropped together (group "text"); a text task
    replaces the zero nulls by the empty prompt's encoding."""
    text = Condition(null=0.0, dropout=cfg.text_dropout_prob, group="text")
    return {"context": text, "pooled": text}


def stacked(cfg: MMDiTConfig) -> tuple[str, ...]:
    return tuple(f"blocks_{j}" for j in range(len(block_runs(cfg)))) if cfg.scan_layers else ()


MMDIT_KIND = register_model(ModelKind(
    "mmdit", MMDiT, MMDiTConfig, from_section=from_section, conditions=conditions,
    runtime_fields=("scan_layers", "remat", "attention_backend", "attention_options", "dtype", "text_dropout_prob"),
    stacked=stacked))
