"""U-ViT as UniDiffuser uses it (Bao et al., 2023): one transformer over the tokens of an image
and a text, each with its own timestep (REFERENCES.md "UniDiffuser").

The numbers are those of diffusers' `UniDiffuserModel` (thu-ml/unidiffuser
`libs/uvit_multi_post_ln_v1.py` for UniDiffuser-v1):
  * tokens [t_img, t_text, (data_type), text (num_text_tokens), clip_img (1), image patches];
    each time token is the sinusoidal embedding of t at the model's width ([cos, sin], frequency
    shift 0), optionally through a Linear(D, 4D)-SiLU-Linear(4D, D) (`use_timestep_embedding`);
    the patches are the conv patch embedding read as a Linear over (p, q, c) patches, plus,
    with `use_patch_pos_embed`, diffusers' fixed sin-cos table (base_size 16);
  * a learned position embedding over all tokens but the data-type token, whose own learned
    position is inserted after the two time tokens (UniDiffuser-v1);
  * long skips: num_layers // 2 in-blocks push their outputs, a mid block, then as many
    out-blocks, each joining [h, skip] (the last skip first) with Linear(2D, D) + LayerNorm
    (diffusers' `SkipBlock`) before its block; a final affine LayerNorm; Linear heads per
    modality (the image head unpatchified). An even num_layers therefore has num_layers + 1
    blocks, as in diffusers and the original;
  * blocks, `block_type`:
      "unidiffuser" (default; diffusers' `UniDiffuserBlock`, the original's `Block`) the
                    LayerNorms sit on the residual stream: post-LN h = LN(h + attn(h)),
                    h = LN(h + ff(h)); pre-LN h = LN(h), h = h + attn(h) (the residual is the
                    normalised h), likewise for the feed-forward;
      "standard"    diffusers' `UTransformerBlock`: the LayerNorms sit in the branches, pre-LN
                    h = h + attn(LN(h)), post-LN h = h + LN(attn(h));
    attention without qk-norm, q/k/v biases per `attention_bias`, output bias always; the
    feed-forward of width 4D is GEGLU (x W_a * GELU(x W_g), exact GELU; default), GELU or
    GELU-tanh; every LayerNorm has eps 1e-5 (torch's default), the blocks' ones an affine part
    per `norm_elementwise_affine`.

Inputs: img NHWC (sample_size, sample_size, in_channels) (diffusers takes NCHW), clip_img
(B, 1, clip_img_dim) or (B, clip_img_dim), text (B, num_text_tokens, text_dim); t_img, t_text
scalars or (B,) in diffusers' convention (t = 0 clean, t = 1000 pure noise; the network only
embeds the number); data_type scalar or (B,) in {0, 1} when `use_data_type_embedding`, else
accepted and ignored (as diffusers does).

`scan_layers=True` stacks the in-blocks (`in_blocks`) and the out-blocks with their skip joins
(`out_blocks`) on a leading "layers" axis: the in-blocks run as one `lax.scan` that also
returns the stacked skips, the out-blocks as one `lax.scan` over them in reverse order. Files
interchange with the unscanned layout (`in_blocks.<i>`, `out_blocks.<i>`).

Initialisation as the original U-ViT `_init_weights`: Linear weights truncated normal, std
0.02 (timm's bounds are +-2 absolute, i.e. +-100 std: in effect a plain normal), biases 0,
LayerNorms 1 / 0, the position table truncated normal 0.02; the patch embedding is a Conv2d,
which `_init_weights` skips: torch's default U(+-1/sqrt(fan_in)) for weight and bias; the
data-type table is torch's nn.Embedding default N(0, 1), its position token 0. `init="xavier"`
(not the reference) draws the Linear weights and the position table Glorot-uniform instead:
N(0, 0.02) is Xavier's scale near width 1536, 4-5x too small at width 64, where the blocks then
start as near-identities and learn slowly (bench/RESULTS.md, UniDiffuser).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unigen.config_sections import declare_fields
from unigen.models.dit import make_stack
from unigen.models.registry import InputSpec, ModelKind, register_model
from unigen.nn.attention import attention
from unigen.nn.checks import check_compute_options, check_positive_ints
from unigen.nn.embeddings import timestep_embedding
from unigen.nn.layers import Dense, param, xavier_uniform
from unigen.nn.norms import LayerNorm
from unigen.nn.patch import patchify, unpatchify
from unigen.nn.posemb import scaled_positions, sincos_2d_at
from unigen.parallel.logical import constrain

EPS = 1e-5  # torch nn.LayerNorm's default, everywhere in the reference
TOKENS = ("batch", "length", "embed")
HEADS = ("batch", "length", "heads", "kv")
ACTIVATIONS = ("geglu", "gelu", "gelu-approximate")
BLOCK_TYPES = ("unidiffuser", "standard")
INITS = ("reference", "xavier")
# config.model.init came after the first U-ViT work dirs, which used the reference's initialisation.
declare_fields("model", before={"init": "reference"})
PATCH_POS_BASE_SIZE = 16  # diffusers PatchEmbed's get_2d_sincos_pos_embed default

# timm's trunc_normal_(std=.02) truncates at +-2 absolute: +-100 standard deviations.
TRUNC_NORMAL = jax.nn.initializers.truncated_normal(0.02, lower=-100.0, upper=100.0)


def torch_default_uniform(fan_in: int):
    """torch's default for Conv2d / Linear weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


@dataclasses.dataclass(frozen=True)
class UViTConfig:
    # Sizes default to UniDiffuser-v1's (64x64x4 SD latents, CLIP 512, text 77 x 64, 30 layers
    # of width 1536); the options default to diffusers' `UniDiffuserModel` defaults.
    sample_size: int = 64               # latent side; the position table is built for it
    patch_size: int = 2
    in_channels: int = 4
    out_channels: int = 4
    text_dim: int = 64                  # width of the text tokens (CLIP states reduced to 64 in v1)
    clip_img_dim: int = 512             # width of the CLIP image embedding
    num_text_tokens: int = 77
    num_layers: int = 30                # in-blocks and out-blocks num_layers // 2 each, + 1 mid
    num_attention_heads: int = 24
    attention_head_dim: int = 64
    attention_bias: bool = False        # biases of q, k, v (the output projection always has one)
    activation_fn: str = "geglu"        # "geglu" | "gelu" | "gelu-approximate" (v1: "gelu")
    block_type: str = "unidiffuser"     # LayerNorms on the residual stream; "standard": in the branches
    pre_layer_norm: bool = False        # False: post-LN (UniDiffuser v0/v1)
    norm_elementwise_affine: bool = True  # the blocks' LayerNorms (skip and final ones always affine)
    use_timestep_embedding: bool = False  # time tokens through Linear-SiLU-Linear
    use_patch_pos_embed: bool = False   # add diffusers' fixed sin-cos table to the patch tokens
    use_data_type_embedding: bool = False  # UniDiffuser-v1's data-type token (data_type in {0, 1})
    # "reference": U-ViT's N(0, 0.02) Linear weights and position table; "xavier": Glorot-uniform
    # (flattened fans) for both, which small widths need (0.02 is Xavier's scale at width ~1536).
    init: str = "reference"
    attention_backend: str = "auto"
    attention_options: tuple = ()       # (key, value) pairs for the backend
    scan_layers: bool = False
    remat: bool = False
    dtype: str = "float32"              # compute dtype; parameters stay float32

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def grid(self) -> int:
        return self.sample_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def num_layers_half(self) -> int:
        """In-blocks (and out-blocks) around the mid block."""
        return self.num_layers // 2

    @property
    def num_tokens(self) -> int:
        """The sequence length: time tokens, (data type), text, clip image, patches."""
        return 2 + int(self.use_data_type_embedding) + self.num_text_tokens + 1 + self.num_patches

    def validate(self) -> "UViTConfig":
        def bad(field, why):
            raise ValueError(f"UViTConfig.{field}={getattr(self, field)!r}: {why}")
        check_positive_ints(bad, self, ("sample_size", "patch_size", "in_channels", "out_channels", "text_dim",
                                        "clip_img_dim", "num_text_tokens", "num_layers", "num_attention_heads",
                                        "attention_head_dim"))
        if self.sample_size % self.patch_size:
            bad("sample_size", f"not divisible by patch_size={self.patch_size}; use a multiple of it")
        for field in ("attention_bias", "pre_layer_norm", "norm_elementwise_affine", "use_timestep_embedding",
                      "use_patch_pos_embed", "use_data_type_embedding", "scan_layers", "remat"):
            if not isinstance(getattr(self, field), bool):
                bad(field, "must be True or False")
        if self.init not in INITS:
            bad("init", f"use one of {INITS} (the reference's N(0, 0.02), or Glorot-uniform for small widths)")
        if self.activation_fn not in ACTIVATIONS:
            bad("activation_fn", f"use one of {ACTIVATIONS}")
        if self.block_type not in BLOCK_TYPES:
            bad("block_type", f"use one of {BLOCK_TYPES} ('unidiffuser': LayerNorms on the residual stream, "
                "'standard': in the attention / feed-forward branches)")
        if self.use_patch_pos_embed and self.hidden_size % 4:
            bad("use_patch_pos_embed", f"the 2-D sin-cos table needs heads * head_dim divisible by 4 "
                f"(it is {self.hidden_size}); turn it off or change the width")
        check_compute_options(bad, self.dtype, self.attention_backend)
        options = dict(self.attention_options)
        if "window" in options:
            bad("attention_options", "U-ViT's sequence is not a token grid (time, text and clip tokens come "
                "first): give a block-sparse map as 'block_mask' and 'block_size', not a 'window'")
        if self.attention_backend == "block_sparse" and "block_mask" not in options:
            bad("attention_options", f"block_sparse attention needs a 'block_mask' over the "
                f"{self.num_tokens}-token sequence and a 'block_size'")
        return self


def attention_options(cfg: UViTConfig) -> dict:
    """The backend's options; a boolean `block_mask` given as nested tuples (hashable config)
    becomes an array."""
    options = dict(cfg.attention_options)
    if "block_mask" in options:
        from unigen.kernels import BlockLayout
        if not isinstance(options["block_mask"], BlockLayout):
            options["block_mask"] = np.asarray(options["block_mask"], bool)
    return options


def patch_pos_embed(cfg: UViTConfig) -> np.ndarray:
    """(num_patches, D): diffusers PatchEmbed's fixed table for the sample_size grid."""
    pos = scaled_positions(cfg.grid, PATCH_POS_BASE_SIZE)
    return sincos_2d_at(cfg.hidden_size, pos, pos)


def _dense(d_in, d_out, axes, rngs, dtype, init="reference", **kw):
    if init == "reference":
        kernel_init = TRUNC_NORMAL
    else:  # Glorot-uniform over the flattened (fan_in, fan_out) of the kernel
        kernel_init = xavier_uniform(len(d_in) if isinstance(d_in, tuple) else 1,
                                     len(d_out) if isinstance(d_out, tuple) else 1)
    return Dense(d_in, d_out, axes=axes, kernel_init=kernel_init, rngs=rngs, dtype=dtype, **kw)


class FeedForward(nnx.Module):
    """diffusers' FeedForward at width 4D: GEGLU (fc1 gives (value, gate) as its own axis; the
    value times exact GELU(gate)), or Linear + GELU (exact or tanh); then Linear(4D, D)."""

    def __init__(self, cfg: UViTConfig, *, rngs: nnx.Rngs):
        d, inner, dtype = cfg.hidden_size, 4 * cfg.hidden_size, jnp.dtype(cfg.dtype)
        self.activation = cfg.activation_fn
        if self.activation == "geglu":
            self.fc1 = _dense(d, (2, inner), ("embed", None, "mlp"), rngs, dtype, init=cfg.init)
        else:
            self.fc1 = _dense(d, inner, ("embed", "mlp"), rngs, dtype, init=cfg.init)
        self.fc2 = _dense(inner, d, ("mlp", "embed"), rngs, dtype, init=cfg.init)

    def __call__(self, x):
        h = self.fc1(x)
        if self.activation == "geglu":
            h = h[..., 0, :] * jax.nn.gelu(h[..., 1, :], approximate=False)
        else:
            h = jax.nn.gelu(h, approximate=self.activation == "gelu-approximate")
        return self.fc2(h)


class Block(nnx.Module):
    """One transformer block (see the module docstring for `block_type` and `pre_layer_norm`)."""

    def __init__(self, cfg: UViTConfig, *, rngs: nnx.Rngs):
        d, h, dh, dtype = cfg.hidden_size, cfg.num_attention_heads, cfg.attention_head_dim, jnp.dtype(cfg.dtype)
        self.cfg = cfg
        self.qkv = _dense(d, (3, h, dh), ("embed", None, "heads", "kv"), rngs, dtype, init=cfg.init,
                          use_bias=cfg.attention_bias)
        self.proj = _dense((h, dh), d, ("heads", "kv", "embed"), rngs, dtype, init=cfg.init)
        self.attn_norm = LayerNorm(d, eps=EPS, affine=cfg.norm_elementwise_affine, rngs=rngs)
        self.ff_norm = LayerNorm(d, eps=EPS, affine=cfg.norm_elementwise_affine, rngs=rngs)
        self.ff = FeedForward(cfg, rngs=rngs)

    def attn(self, x):
        q, k, v = (constrain(a, HEADS) for a in jnp.unstack(self.qkv(x), axis=2))
        o = attention(q, k, v, backend=self.cfg.attention_backend, **attention_options(self.cfg))
        return self.proj(constrain(o, HEADS))

    def __call__(self, x):
        if self.cfg.block_type == "unidiffuser":  # the norms on the residual stream
            if self.cfg.pre_layer_norm:
                x = self.attn_norm(x)
                x = self.ff_norm(x + self.attn(x))
                x = x + self.ff(x)
            else:
                x = self.attn_norm(x + self.attn(x))
                x = self.ff_norm(x + self.ff(x))
        elif self.cfg.pre_layer_norm:  # "standard": the norms in the branches
            x = x + self.attn(self.attn_norm(x))
            x = x + self.ff(self.ff_norm(x))
        else:
            x = x + self.attn_norm(self.attn(x))
            x = x + self.ff_norm(self.ff(x))
        return constrain(x, TOKENS)


class OutBlock(nnx.Module):
    """diffusers' SkipBlock (Linear([h, skip]) then an affine LayerNorm) and a block."""

    def __init__(self, cfg: UViTConfig, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        # Linear(2D, D) over [h, skip], kept as a (2, D, D) kernel so each half is an "embed" axis
        self.skip_linear = _dense((2, d), d, (None, "embed", None), rngs, jnp.dtype(cfg.dtype), init=cfg.init)
        self.skip_norm = LayerNorm(d, eps=EPS, rngs=rngs)
        self.block = Block(cfg, rngs=rngs)

    def __call__(self, x, skip):
        x = self.skip_norm(self.skip_linear(jnp.stack([x, skip], axis=-2)))
        return self.block(constrain(x, TOKENS))


class TimeMlp(nnx.Module):
    """diffusers' TimestepEmbedding(D, 4D, out_dim=D): Linear -> SiLU -> Linear."""

    def __init__(self, d: int, *, rngs: nnx.Rngs, dtype=None, init: str = "reference"):
        self.fc1 = _dense(d, 4 * d, ("embed", "mlp"), rngs, dtype, init=init)
        self.fc2 = _dense(4 * d, d, ("mlp", "embed"), rngs, dtype, init=init)

    def __call__(self, x):
        return self.fc2(jax.nn.silu(self.fc1(x)))


class UViT(nnx.Module):
    """`model(img, clip_img, text, t_img, t_text, data_type=None)` -> (img_out, clip_img_out,
    text_out), each shaped as its input; see the module docstring."""

    def __init__(self, cfg: UViTConfig, *, rngs: nnx.Rngs):
        cfg = cfg.validate()
        self.cfg = cfg
        d, p, dtype = cfg.hidden_size, cfg.patch_size, jnp.dtype(cfg.dtype)
        patch_dim = p * p * cfg.in_channels
        conv_init = torch_default_uniform(patch_dim)  # a Conv2d in the reference: _init_weights skips it
        self.img_in = Dense(patch_dim, d, axes=("patch", "embed"), kernel_init=conv_init, bias_init=conv_init,
                            rngs=rngs, dtype=dtype)
        self.clip_img_in = _dense(cfg.clip_img_dim, d, (None, "embed"), rngs, dtype, init=cfg.init)
        self.text_in = _dense(cfg.text_dim, d, (None, "embed"), rngs, dtype, init=cfg.init)
        self.t_img_embed = TimeMlp(d, rngs=rngs, dtype=dtype, init=cfg.init) if cfg.use_timestep_embedding else None
        self.t_text_embed = TimeMlp(d, rngs=rngs, dtype=dtype, init=cfg.init) if cfg.use_timestep_embedding else None
        n_pos = 2 + cfg.num_text_tokens + 1 + cfg.num_patches  # every token but the data-type one
        pos_init = TRUNC_NORMAL if cfg.init == "reference" else xavier_uniform(1, 1)
        self.pos_embed = param(pos_init, (n_pos, d), (None, "embed"), rngs)
        if cfg.use_data_type_embedding:  # torch nn.Embedding's N(0, 1); its position starts at 0
            self.data_type_embed = param(nnx.initializers.normal(1.0), (2, d), ("classes", "embed"), rngs)
            self.data_type_pos = param(nnx.initializers.zeros_init(), (d,), ("embed",), rngs)
        else:
            self.data_type_embed = self.data_type_pos = None
        half = cfg.num_layers_half
        self.in_blocks = make_stack(lambda r: Block(cfg, rngs=r), half, rngs, scan=cfg.scan_layers) if half else None
        self.mid_block = Block(cfg, rngs=rngs)
        self.out_blocks = make_stack(lambda r: OutBlock(cfg, rngs=r), half, rngs, scan=cfg.scan_layers) if half else None
        self.norm_out = LayerNorm(d, eps=EPS, rngs=rngs)
        self.img_out = _dense(d, p * p * cfg.out_channels, ("embed", "patch"), rngs, dtype, init=cfg.init)
        self.clip_img_out = _dense(d, cfg.clip_img_dim, ("embed", None), rngs, dtype, init=cfg.init)
        self.text_out = _dense(d, cfg.text_dim, ("embed", None), rngs, dtype, init=cfg.init)

    # ---- inputs -------------------------------------------------------------------------------
    def _check_inputs(self, img, clip_img, text, t_img, t_text, data_type):
        """Shapes at trace time, before any compute; each error names the argument."""
        cfg = self.cfg
        s, c = cfg.sample_size, cfg.in_channels
        if img.ndim != 4 or img.shape[1:] != (s, s, c):
            raise ValueError(f"img must be NHWC (B, {s}, {s}, {c}) (sample_size={s}, in_channels={c}: the "
                             f"position table is built for that size); got {img.shape}")
        b = img.shape[0]
        if clip_img.ndim not in (2, 3) or clip_img.shape[-1] != cfg.clip_img_dim or \
                (clip_img.ndim == 3 and clip_img.shape[1] != 1):
            raise ValueError(f"clip_img must be (B, 1, clip_img_dim={cfg.clip_img_dim}) or (B, "
                             f"{cfg.clip_img_dim}); got {clip_img.shape}")
        if text.ndim != 3 or text.shape[1:] != (cfg.num_text_tokens, cfg.text_dim):
            raise ValueError(f"text must be (B, num_text_tokens={cfg.num_text_tokens}, text_dim={cfg.text_dim}); "
                             f"got {text.shape}")
        for name, a in (("clip_img", clip_img), ("text", text)):
            if a.shape[0] != b:
                raise ValueError(f"{name} has batch size {a.shape[0]} but img has {b}: every modality needs "
                                 f"the same batch size")
        # data_type is read only with a data-type embedding; without one it is ignored, as diffusers'
        # UniDiffuserModel.forward ignores it (its pipeline passes it to v0 and v1 alike)
        used = (("data_type", data_type),) if cfg.use_data_type_embedding else ()
        for name, a in (("t_img", t_img), ("t_text", t_text)) + used:
            if a is not None and a.shape not in ((), (b,)):
                raise ValueError(f"{name} must be a scalar or shaped ({b},) (one per example); got {a.shape}")
        if cfg.use_data_type_embedding and data_type is None:
            raise ValueError("this U-ViT has a data-type embedding (use_data_type_embedding=True, UniDiffuser-v1): "
                             "pass data_type, 1 for the weights trained on non-public data, else 0")

    def _time_token(self, t, embed, b, dtype):
        f = timestep_embedding(jnp.broadcast_to(t, (b,)), self.cfg.hidden_size).astype(dtype)  # [cos, sin]
        return f if embed is None else embed(f)

    # ---- the network --------------------------------------------------------------------------
    def __call__(self, img, clip_img, text, t_img, t_text, data_type=None):
        cfg = self.cfg
        img, clip_img, text, t_img, t_text = (jnp.asarray(a) for a in (img, clip_img, text, t_img, t_text))
        data_type = None if data_type is None else jnp.asarray(data_type)
        self._check_inputs(img, clip_img, text, t_img, t_text, data_type)
        b, dtype = img.shape[0], jnp.dtype(cfg.dtype)

        img_h = self.img_in(patchify(img.astype(dtype), cfg.patch_size))
        if cfg.use_patch_pos_embed:
            img_h = img_h + jnp.asarray(patch_pos_embed(cfg), dtype)
        clip_h = self.clip_img_in(clip_img.reshape(b, 1, cfg.clip_img_dim).astype(dtype))
        text_h = self.text_in(text.astype(dtype))
        times = [self._time_token(t_img, self.t_img_embed, b, dtype),
                 self._time_token(t_text, self.t_text_embed, b, dtype)]
        pos = self.pos_embed[...]
        if cfg.use_data_type_embedding:
            ids = jnp.broadcast_to(data_type, (b,)).astype(jnp.int32)
            times.append(jnp.take(self.data_type_embed[...], ids, axis=0).astype(dtype))
            pos = jnp.concatenate([pos[:2], self.data_type_pos[...][None], pos[2:]])
        h = jnp.concatenate([jnp.stack(times, axis=1), text_h, clip_h, img_h], axis=1)
        h = constrain(h + pos.astype(dtype), TOKENS)

        h = self.norm_out(self._blocks(h))

        n_text, first = cfg.num_text_tokens, len(times)
        text_out = self.text_out(h[:, first:first + n_text])
        clip_out = self.clip_img_out(h[:, first + n_text:first + n_text + 1])
        img_out = self.img_out(h[:, first + n_text + 1:])
        img_out = unpatchify(img_out, cfg.patch_size, cfg.sample_size, cfg.sample_size)
        return (img_out.astype(img.dtype), clip_out.reshape(clip_img.shape[:-1] + (-1,)).astype(clip_img.dtype),
                text_out.astype(text.dtype))

    def _blocks(self, h):
        """In-blocks (their outputs are the skips), the mid block, out-blocks joining the skips
        last-in first-out; a loop or, with scan_layers, one `lax.scan` per stack."""
        cfg = self.cfg

        def in_step(block, h):
            return block(h)

        def out_step(block, h, skip):
            return block(h, skip)
        if cfg.remat:
            in_step, out_step = nnx.remat(in_step), nnx.remat(out_step)
        if self.in_blocks is None:  # num_layers == 1: the mid block alone
            return in_step(self.mid_block, h)
        if not cfg.scan_layers:
            skips = []
            for block in self.in_blocks:
                h = in_step(block, h)
                skips.append(h)
            h = in_step(self.mid_block, h)
            for block in self.out_blocks:
                h = out_step(block, h, skips.pop())
            return h
        graphdef, state = nnx.split(self.in_blocks)

        def in_body(h, block_state):
            h = in_step(nnx.merge(graphdef, block_state), h)
            return h, h
        h, skips = jax.lax.scan(in_body, h, state)  # skips: (num_layers // 2, B, T, D)
        h = in_step(self.mid_block, h)
        graphdef, state = nnx.split(self.out_blocks)

        def out_body(h, xs):
            block_state, skip = xs
            return out_step(nnx.merge(graphdef, block_state), h, skip), None
        h, _ = jax.lax.scan(out_body, h, (state, jnp.flip(skips, axis=0)))  # the last skip first
        return h


# ---- the "uvit" model kind -----------------------------------------------------------------------
RUNTIME_FIELDS = ("scan_layers", "remat", "attention_backend", "attention_options", "dtype")


def from_section(m, spec: InputSpec) -> UViTConfig:
    """`config.model` (UViTConfig fields; None = default) with the input's side and channels (pixels,
    or the tokenizer's latents) and the train compute dtype (`spec`)."""
    fields = {k: v for k, v in m.items() if k != "kind" and v is not None}
    known = {f.name for f in dataclasses.fields(UViTConfig)}
    for k in fields:
        if k not in known:
            raise ValueError(f"config.model.{k}={fields[k]!r}: not a U-ViT field; known: {sorted(known)}")
    if "attention_options" in fields:
        fields["attention_options"] = tuple(sorted(dict(fields["attention_options"]).items()))
    fields.update(sample_size=spec.side, in_channels=spec.channels, out_channels=spec.channels, dtype=spec.dtype)
    return UViTConfig(**fields).validate()


def stacked(cfg: UViTConfig) -> tuple[str, ...]:
    return ("in_blocks", "out_blocks") if cfg.scan_layers and cfg.num_layers_half else ()


# No named conditions: the network's inputs are its modalities (image, CLIP image, text) and
# their timesteps, which the UniDiffuser task supplies.
UVIT_KIND = register_model(ModelKind(
    "uvit", UViT, UViTConfig, from_section=from_section, conditions=lambda cfg: {},
    runtime_fields=RUNTIME_FIELDS, stacked=stacked))
