"""Flux.1: the double- and single-stream rectified-flow transformer of Black Forest Labs.

The numbers are those of diffusers' `FluxTransformer2DModel` (REFERENCES.md "Text-to-image
pipelines"; FLUX.1-dev and FLUX.1-schnell):
  * inputs are *packed* latents: each 2 x 2 patch of the VAE's 16-channel latent is one token of
    64 channels (`pack_latents`), so the network itself is a plain token model (x_embedder is a
    Linear on (B, N, in_channels); released `patch_size` is 1);
  * c = TimestepEmbedder(1000 sigma) ([cos, sin], shift 0) [+ TimestepEmbedder'(1000 guidance),
    dev only] + SiLU-MLP(pooled CLIP text);
  * RoPE over 3 position axes (`axes_dims_rope` 16 / 56 / 56 channels of each 128-wide head,
    theta 10000) from per-token ids: text ids (zeros in the released pipelines) then image ids
    (0, row, col), concatenated in that order, as the joint sequence is ordered [text; image]
    (the reverse of SD3's [image; context] in unigen.models.mmdit; diffusers' order is kept so a
    block map or token mask reads the same here and there);
  * double-stream blocks: text and image streams each own an adaLN-Zero (6 modulations), q/k/v
    with RMS qk-norm (eps 1e-6) and biases, an output Linear and a GELU-tanh MLP (4x); one
    attention over [text; image]; RoPE after the qk-norm;
  * single-stream blocks on the concatenated [text; image] tokens: adaLN-Zero with 3 modulations
    (shift, scale, gate), attention (q/k/v + RMS qk-norm + RoPE, no output Linear of its own) and a
    GELU-tanh MLP (4x) run in parallel on the same modulated tokens; diffusers' `proj_out` over
    the concatenation [attention; MLP] is kept as its two column blocks (`attn_out` from the
    heads, `mlp_out` from the MLP hidden), whose sum is the same product and whose kernels keep
    the heads / mlp axes for sharding;
  * norm_out is AdaLayerNormContinuous, (scale, shift), then proj_out on the image tokens.

Time convention (rectified flow): `timestep` is sigma in [0, 1], sigma = 1 pure noise, sigma = 0
data, the same number diffusers' FluxPipeline passes (`t / 1000`); the model multiplies it by 1000
before the sinusoidal embedding, as diffusers does. `guidance` (dev only) is the distilled
guidance scale itself (e.g. 3.5), also multiplied by 1000 inside. The output is the flow velocity
dx/dsigma = noise - data for x_sigma = (1 - sigma) data + sigma noise (the pipelines step
x <- x + (sigma_next - sigma) v), on the same packed tokens: (B, N, patch_size^2 * out_channels).

    flux(hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids,
         guidance=None)
      hidden_states          (B, N, in_channels)  packed latents (pack_latents)
      encoder_hidden_states  (B, T, joint_attention_dim)  T5 states
      pooled_projections     (B, pooled_projection_dim)   CLIP pooled vector
      timestep               (B,) or scalar sigma
      img_ids                (N, len(axes_dims_rope))  latent_image_ids(H // 2, W // 2)
      txt_ids                (T, len(axes_dims_rope))  text_ids(T): zeros
      guidance               (B,) or scalar; required iff guidance_embeds

`scan_layers=True` scans over the double-stream run and over the single-stream run; both layouts
name them `double_blocks` and `single_blocks`, so files interchange (unigen's flat layout splits
the stacked runs per layer: `double_blocks.<i>.<...>`).

Flux is not registered as a unigen model kind: the trainer calls networks as `model(x, t, **cond)`
on NHWC inputs, and Flux's inputs are packed tokens with explicit position ids.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from unigen.nn.attention import attention
from unigen.nn.checks import check_compute_options, check_positive_ints
from unigen.nn.embeddings import TimestepEmbedder, VectorEmbedder
from unigen.nn.layers import Dense
from unigen.nn.mlp import Mlp
from unigen.nn.modulate import gate, modulate
from unigen.nn.norms import RMSNorm, layer_norm
from unigen.nn.rope import apply_rope, rope_axes_angles
from unigen.parallel.logical import constrain

EPS = 1e-6            # every LayerNorm and qk RMSNorm (diffusers FluxTransformerBlock / single block)
ROPE_THETA = 10000.0  # diffusers FluxPosEmbed(theta=10000), not a config field
MLP_RATIO = 4         # diffusers FeedForward (mult 4) and FluxSingleTransformerBlock(mlp_ratio=4.0)
TIME_SCALE = 1000.0   # sigma and guidance are multiplied by this before the sinusoidal embedding
TOKENS = ("batch", "length", "embed")
HEADS = ("batch", "length", "heads", "kv")
# Config fields that say how layers execute, not what they compute: a load may override them.
RUNTIME_FIELDS = ("scan_layers", "remat", "attention_backend", "attention_options", "dtype")


@dataclasses.dataclass(frozen=True)
class FluxConfig:
    patch_size: int = 1                  # released: 1 (latents are packed 2 x 2 outside the network)
    in_channels: int = 64                # packed channels: 4 x the VAE's 16
    out_channels: int = 64               # diffusers' None means in_channels (the converter resolves it)
    num_layers: int = 19                 # double-stream blocks
    num_single_layers: int = 38          # single-stream blocks
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 4096      # T5-XXL width
    pooled_projection_dim: int = 768     # CLIP-L pooled width
    guidance_embeds: bool = False        # dev: True (distilled guidance input); schnell: False
    axes_dims_rope: tuple = (16, 56, 56)  # channels of each head per position axis; sum = head dim
    attention_backend: str = "auto"
    attention_options: tuple = ()        # (key, value) pairs for the backend
    scan_layers: bool = False
    remat: bool = False
    dtype: str = "float32"               # compute dtype; parameters stay float32

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def out_features(self) -> int:
        """Width of each output token: patch_size^2 * out_channels (diffusers' proj_out)."""
        return self.patch_size * self.patch_size * self.out_channels

    def validate(self) -> "FluxConfig":
        def bad(field, why):
            raise ValueError(f"FluxConfig.{field}={getattr(self, field)!r}: {why}")
        check_positive_ints(bad, self, ("patch_size", "in_channels", "out_channels", "num_layers",
                                        "num_single_layers", "attention_head_dim", "num_attention_heads",
                                        "joint_attention_dim", "pooled_projection_dim"))
        if not isinstance(self.guidance_embeds, bool):
            bad("guidance_embeds", "must be True (dev: a guidance input) or False (schnell)")
        axes = self.axes_dims_rope
        if (not isinstance(axes, tuple) or not axes
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 and d % 2 == 0 for d in axes)):
            bad("axes_dims_rope", "must be a non-empty tuple of positive even ints (channels per position axis)")
        if sum(axes) != self.attention_head_dim:
            bad("axes_dims_rope", f"must sum to attention_head_dim={self.attention_head_dim} (RoPE turns every "
                f"channel of a head); they sum to {sum(axes)}")
        check_compute_options(bad, self.dtype, self.attention_backend)
        options = dict(self.attention_options)
        if "window" in options:
            bad("attention_options", "Flux takes a block map over the joint [text; image] sequence "
                "('block_mask', 'block_size'), not a 'window'")
        if self.attention_backend == "block_sparse" and "block_mask" not in options:
            bad("attention_options", "block_sparse attention needs a 'block_mask' over the joint [text; image] "
                "sequence and a 'block_size'")
        return self


# ---- packing latents to tokens (the pipeline's side of the network) ----------------------------------
def pack_latents(latents: jax.Array) -> jax.Array:
    """NHWC latents (B, H, W, C) -> tokens (B, (H/2)(W/2), 4C), row-major over the 2 x 2 patches.

    Within a token the channels are ordered (c, p, q): channel-major, then the row and column inside
    the patch. That is diffusers' `FluxPipeline._pack_latents` on NCHW latents, so released x_embedder
    / proj_out weights read the same; note it differs from unigen.nn.patch.patchify's (p, q, c)."""
    if latents.ndim != 4:
        raise ValueError(f"pack_latents takes NHWC latents (B, H, W, C); got shape {latents.shape}")
    _, h, w, _ = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"Flux packs 2 x 2 latent patches: latent size {h}x{w} must be even on both sides "
                         f"(images a multiple of 16 pixels with the 8x VAE)")
    return rearrange(latents, "b (h p) (w q) c -> b (h w) (c p q)", p=2, q=2)


def unpack_latents(tokens: jax.Array, height: int, width: int) -> jax.Array:
    """Tokens (B, (H/2)(W/2), 4C) -> NHWC latents (B, H, W, C); the inverse of `pack_latents`.
    `height`, `width` are the latent's sides (diffusers' `_unpack_latents` takes pixel sides and
    the VAE factor instead)."""
    if height % 2 or width % 2:
        raise ValueError(f"unpack_latents: latent size {height}x{width} must be even on both sides")
    if tokens.ndim != 3 or tokens.shape[1] != (height // 2) * (width // 2) or tokens.shape[2] % 4:
        raise ValueError(f"unpack_latents: tokens must be (B, {(height // 2) * (width // 2)}, 4C) for a "
                         f"{height}x{width} latent; got shape {tokens.shape}")
    return rearrange(tokens, "b (h w) (c p q) -> b (h p) (w q) c", h=height // 2, p=2, q=2)


def latent_image_ids(grid_h: int, grid_w: int) -> np.ndarray:
    """(grid_h * grid_w, 3) float32 ids (0, row, col) of the packed token grid, row-major, as
    diffusers' `_prepare_latent_image_ids(batch, grid_h, grid_w, ...)`. For an H x W latent the
    grid is (H // 2, W // 2)."""
    ids = np.zeros((grid_h, grid_w, 3), np.float32)
    ids[..., 1] = np.arange(grid_h, dtype=np.float32)[:, None]
    ids[..., 2] = np.arange(grid_w, dtype=np.float32)[None, :]
    return ids.reshape(grid_h * grid_w, 3)


def text_ids(length: int, n_axes: int = 3) -> np.ndarray:
    """(length, n_axes) zeros: the released pipelines' text position ids."""
    return np.zeros((length, n_axes), np.float32)


# ---- blocks ------------------------------------------------------------------------------------------
class QKV(nnx.Module):
    """One stream's q/k/v (biased) with per-head RMS qk-norm, and optionally its output Linear."""

    def __init__(self, cfg: FluxConfig, *, rngs: nnx.Rngs, out: bool = True):
        d, h, dh, dtype = cfg.hidden_size, cfg.num_attention_heads, cfg.attention_head_dim, jnp.dtype(cfg.dtype)
        self.qkv = Dense(d, (3, h, dh), axes=("embed", None, "heads", "kv"), rngs=rngs, dtype=dtype)
        self.q_norm = RMSNorm(dh, eps=EPS, rngs=rngs)
        self.k_norm = RMSNorm(dh, eps=EPS, rngs=rngs)
        self.proj = Dense((h, dh), d, axes=("heads", "kv", "embed"), rngs=rngs, dtype=dtype) if out else None

    def __call__(self, x):
        q, k, v = jnp.unstack(self.qkv(x), axis=2)
        return tuple(constrain(a, HEADS) for a in (self.q_norm(q), self.k_norm(k), v))


def _joint_attention(cfg: FluxConfig, q, k, v, angles):
    """RoPE on q and k of the joint sequence (after the qk-norm, as diffusers), then attention."""
    q, k = apply_rope(q, angles), apply_rope(k, angles)
    o = attention(q, k, v, backend=cfg.attention_backend, **attention_options(cfg))
    return constrain(o, HEADS)


class DoubleBlock(nnx.Module):
    """diffusers' FluxTransformerBlock: two streams, one joint attention over [text; image]."""

    def __init__(self, cfg: FluxConfig, *, rngs: nnx.Rngs):
        d, dtype = cfg.hidden_size, jnp.dtype(cfg.dtype)
        self.cfg = cfg
        zeros = nnx.initializers.zeros_init()  # adaLN-Zero: every block starts as the identity
        self.x_ada = Dense(d, (6, d), axes=("embed", None, None), kernel_init=zeros, rngs=rngs, dtype=dtype)
        self.x_attn = QKV(cfg, rngs=rngs)
        self.x_mlp = Mlp(d, MLP_RATIO * d, rngs=rngs, dtype=dtype)
        self.ctx_ada = Dense(d, (6, d), axes=("embed", None, None), kernel_init=zeros, rngs=rngs, dtype=dtype)
        self.ctx_attn = QKV(cfg, rngs=rngs)
        self.ctx_mlp = Mlp(d, MLP_RATIO * d, rngs=rngs, dtype=dtype)

    def __call__(self, x, ctx, c, angles):
        t = ctx.shape[1]
        silu_c = jax.nn.silu(c)
        # AdaLayerNormZero chunks: (shift, scale, gate) for the attention, then for the MLP
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.unstack(self.x_ada(silu_c), axis=1)
        c_shift1, c_scale1, c_gate1, c_shift2, c_scale2, c_gate2 = jnp.unstack(self.ctx_ada(silu_c), axis=1)
        img = self.x_attn(modulate(layer_norm(x, EPS), shift1, scale1))
        txt = self.ctx_attn(modulate(layer_norm(ctx, EPS), c_shift1, c_scale1))
        q, k, v = (jnp.concatenate([a, b], axis=1) for a, b in zip(txt, img))  # [text; image]
        o = _joint_attention(self.cfg, q, k, v, angles)
        x = x + gate(self.x_attn.proj(o[:, t:]), gate1)
        x = x + gate(self.x_mlp(modulate(layer_norm(x, EPS), shift2, scale2)), gate2)
        ctx = ctx + gate(self.ctx_attn.proj(o[:, :t]), c_gate1)
        ctx = ctx + gate(self.ctx_mlp(modulate(layer_norm(ctx, EPS), c_shift2, c_scale2)), c_gate2)
        return constrain(x, TOKENS), constrain(ctx, TOKENS)


class SingleBlock(nnx.Module):
    """diffusers' FluxSingleTransformerBlock on the joint [text; image] tokens: attention and MLP in
    parallel from one adaLN-Zero, their outputs projected together and gated."""

    def __init__(self, cfg: FluxConfig, *, rngs: nnx.Rngs):
        d, h, dh, dtype = cfg.hidden_size, cfg.num_attention_heads, cfg.attention_head_dim, jnp.dtype(cfg.dtype)
        self.cfg = cfg
        zeros = nnx.initializers.zeros_init()
        self.ada = Dense(d, (3, d), axes=("embed", None, None), kernel_init=zeros, rngs=rngs, dtype=dtype)
        self.attn = QKV(cfg, rngs=rngs, out=False)
        self.mlp_in = Dense(d, MLP_RATIO * d, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)
        # diffusers' proj_out (d, d + 4d) split by input columns: attention part (with the bias), MLP part
        self.attn_out = Dense((h, dh), d, axes=("heads", "kv", "embed"), rngs=rngs, dtype=dtype)
        self.mlp_out = Dense(MLP_RATIO * d, d, axes=("mlp", "embed"), use_bias=False, rngs=rngs, dtype=dtype)

    def __call__(self, tokens, c, angles):
        shift, scale, g = jnp.unstack(self.ada(jax.nn.silu(c)), axis=1)  # AdaLayerNormZeroSingle
        xn = modulate(layer_norm(tokens, EPS), shift, scale)
        q, k, v = self.attn(xn)
        o = _joint_attention(self.cfg, q, k, v, angles)
        hidden = jax.nn.gelu(self.mlp_in(xn), approximate=True)
        return constrain(tokens + gate(self.attn_out(o) + self.mlp_out(hidden), g), TOKENS)


def attention_options(cfg: FluxConfig) -> dict:
    """The backend's options; a block-sparse `block_mask` covers the joint [text; image] sequence
    (give it as nested tuples to keep the config hashable)."""
    options = dict(cfg.attention_options)
    if "block_mask" in options:
        from unigen.kernels import BlockLayout
        if not isinstance(options["block_mask"], BlockLayout):
            options["block_mask"] = np.asarray(options["block_mask"], bool)
    return options


# ---- the network -------------------------------------------------------------------------------------
class Flux(nnx.Module):
    """`flux(hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids,
    guidance=None)` -> (B, N, patch_size^2 * out_channels); see the module docstring."""

    def __init__(self, cfg: FluxConfig, *, rngs: nnx.Rngs):
        cfg = cfg.validate()
        self.cfg = cfg
        d, dtype = cfg.hidden_size, jnp.dtype(cfg.dtype)
        zeros = nnx.initializers.zeros_init()
        self.x_embedder = Dense(cfg.in_channels, d, axes=("patch", "embed"), rngs=rngs, dtype=dtype)
        self.context_embedder = Dense(cfg.joint_attention_dim, d, axes=(None, "embed"), rngs=rngs, dtype=dtype)
        self.t_embedder = TimestepEmbedder(d, rngs=rngs, dtype=dtype)  # diffusers Timesteps(256, True, 0)
        self.guidance_embedder = TimestepEmbedder(d, rngs=rngs, dtype=dtype) if cfg.guidance_embeds else None
        self.pooled_embedder = VectorEmbedder(cfg.pooled_projection_dim, d, rngs=rngs, dtype=dtype)
        self.double_blocks = self._make_run(DoubleBlock, cfg.num_layers, rngs)
        self.single_blocks = self._make_run(SingleBlock, cfg.num_single_layers, rngs)
        self.final_ada = Dense(d, (2, d), axes=("embed", None, None), kernel_init=zeros, rngs=rngs, dtype=dtype)
        self.proj_out = Dense(d, cfg.out_features, axes=("embed", "patch"), kernel_init=zeros, rngs=rngs,
                              dtype=dtype)

    def _make_run(self, block_cls, count, rngs):
        cfg = self.cfg
        if not cfg.scan_layers:
            return nnx.List([block_cls(cfg, rngs=rngs) for _ in range(count)])

        @nnx.split_rngs(splits=count)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return block_cls(cfg, rngs=rngs)
        return make(rngs)

    def _check_inputs(self, x, ctx, pooled, timestep, img_ids, txt_ids, guidance):
        cfg = self.cfg
        n_axes = len(cfg.axes_dims_rope)
        if x.ndim != 3 or x.shape[2] != cfg.in_channels:
            hint = (f"; pack NHWC latents (B, H, W, {cfg.in_channels // 4}) with unigen.models.flux.pack_latents"
                    if cfg.in_channels % 4 == 0 else "")
            raise ValueError(f"Flux takes packed latent tokens (B, N, in_channels={cfg.in_channels}); got shape "
                             f"{x.shape}{hint}")
        b, n = x.shape[:2]
        if ctx.ndim != 3 or ctx.shape[0] != b or ctx.shape[2] != cfg.joint_attention_dim:
            raise ValueError(f"encoder_hidden_states must be (B={b}, T, joint_attention_dim="
                             f"{cfg.joint_attention_dim}); got {ctx.shape}")
        if pooled.shape != (b, cfg.pooled_projection_dim):
            raise ValueError(f"pooled_projections must be (B={b}, pooled_projection_dim="
                             f"{cfg.pooled_projection_dim}); got {pooled.shape}")
        if timestep.shape != (b,):
            raise ValueError(f"timestep must be a scalar or ({b},) sigma in [0, 1]; got shape {timestep.shape}")
        for name, ids, length in (("img_ids", img_ids, n), ("txt_ids", txt_ids, ctx.shape[1])):
            if ids.shape != (length, n_axes):
                hint = (" (one set of ids shared by the batch: pass ids[0]; diffusers' deprecated 3-D form read "
                        "only ids[0] too)" if ids.ndim == 3 else "")
                raise ValueError(f"{name} must be ({length}, {n_axes}): one id per token and RoPE axis "
                                 f"(axes_dims_rope={cfg.axes_dims_rope}); got {ids.shape}{hint}")
        if cfg.guidance_embeds and guidance is None:
            raise ValueError("this Flux has guidance_embeds=True (FLUX.1-dev): pass guidance, the distilled "
                             "guidance scale (e.g. 3.5), per example or as a scalar")
        if not cfg.guidance_embeds and guidance is not None:
            raise ValueError("this Flux has guidance_embeds=False (FLUX.1-schnell): it takes no guidance input; "
                             "pass guidance=None")
        if guidance is not None and guidance.shape != (b,):
            raise ValueError(f"guidance must be a scalar or ({b},); got shape {guidance.shape}")

    def __call__(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids,
                 guidance=None):
        cfg = self.cfg
        x, ctx = jnp.asarray(hidden_states), jnp.asarray(encoder_hidden_states)
        pooled, img_ids, txt_ids = jnp.asarray(pooled_projections), jnp.asarray(img_ids), jnp.asarray(txt_ids)
        b = x.shape[0] if x.ndim else 0
        timestep = jnp.asarray(timestep)
        timestep = jnp.broadcast_to(timestep, (b,)) if timestep.ndim == 0 else timestep
        if guidance is not None:
            guidance = jnp.asarray(guidance)
            guidance = jnp.broadcast_to(guidance, (b,)) if guidance.ndim == 0 else guidance
        self._check_inputs(x, ctx, pooled, timestep, img_ids, txt_ids, guidance)
        dtype = jnp.dtype(cfg.dtype)
        c = self.t_embedder(timestep.astype(jnp.float32) * TIME_SCALE)
        if self.guidance_embedder is not None:
            c = c + self.guidance_embedder(guidance.astype(jnp.float32) * TIME_SCALE)
        c = c + self.pooled_embedder(pooled.astype(dtype))
        h = constrain(self.x_embedder(x.astype(dtype)), TOKENS)
        ctx = constrain(self.context_embedder(ctx.astype(dtype)), TOKENS)
        t = ctx.shape[1]
        angles = rope_axes_angles(jnp.concatenate([txt_ids, img_ids], axis=0), cfg.axes_dims_rope, theta=ROPE_THETA)
        h, ctx = self._run(self.double_blocks, lambda blk, carry: blk(*carry, c, angles), (h, ctx))
        joint = constrain(jnp.concatenate([ctx, h], axis=1), TOKENS)  # [text; image], as diffusers
        joint = self._run(self.single_blocks, lambda blk, carry: blk(carry, c, angles), joint)
        h = joint[:, t:]
        scale, shift = jnp.unstack(self.final_ada(jax.nn.silu(c)), axis=1)  # AdaLayerNormContinuous
        out = self.proj_out(modulate(layer_norm(h, EPS), shift, scale))
        return out.astype(x.dtype)

    def _run(self, blocks, step, carry):
        if self.cfg.remat:
            step = nnx.remat(step)
        if not self.cfg.scan_layers:
            for block in blocks:
                carry = step(block, carry)
            return carry
        graphdef, state = nnx.split(blocks)
        carry, _ = jax.lax.scan(lambda carry, s: (step(nnx.merge(graphdef, s), carry), None), carry, state)
        return carry


def stacked(cfg: FluxConfig) -> tuple[str, ...]:
    """The subtrees stacked over layers when scanned (unigen's flat layout splits them per layer)."""
    return ("double_blocks", "single_blocks") if cfg.scan_layers else ()
