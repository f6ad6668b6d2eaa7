"""T5 encoder (Raffel et al. 2020) in its v1.1 form, the long-prompt text encoder of SD3 and Flux
(T5-v1.1-XXL, 4.7 B parameters).

Matches transformers' `T5EncoderModel`: a token embedding (no position embedding), then pre-norm
layers

    h = h + O(Attn(QKV(RMS(h)), bias))      no 1/sqrt(d) scaling; padded keys masked
    h = h + Wo(FFN(Wi(RMS(h))))             gated: act(x Wi_0) * (x Wi_1); else act(x Wi)

and a final RMS norm. The RMS norm is T5's: no mean subtraction, no bias, statistics in float32.
The relative position bias is one (buckets, heads) table that transformers keeps in the first
layer; the (1, H, T, T) bias it gives is computed once and added in every layer, as
transformers shares layer 0's bias with the others. Buckets are bidirectional: half of them for
keys after the query, within each half `max_exact` exact distances and logarithmic bins up to
`relative_attention_max_distance`.

`T5Encoder(cfg)(input_ids, attention_mask=None, hidden_states=False)` returns a
`T5EncoderOutput`: `last_hidden_state` (B, T, D), and with hidden_states=True the tuple
transformers' `output_hidden_states=True` gives: the embeddings, the outputs of layers
0..L-2, and last the final-norm output (transformers replaces the last layer's raw output by
`last_hidden_state`), L + 1 arrays in all.

Precision: parameters are float32, `dtype` is the compute dtype of the matmuls and attention.
The residual stream, the norms and every returned state stay float32: T5's activations outgrow
float16 (transformers clamps them at the float16 limit in every layer), and this costs only
B x T x D. transformers keeps `wo` in float32 when a model is loaded in float16
(`_keep_in_fp32_modules = ["wo"]`, for float16 only); here too `wo` runs in float32 when
`dtype="float16"`; with bfloat16 (float32's range) it runs in bfloat16.

Sharding: parameters carry the logical axes vocab / embed / heads / kv / mlp; activations are
constrained to (batch, length, embed), (batch, length, heads, kv) and (batch, length, mlp).
`scan_layers=True` stacks the layers on a leading axis (unigen.models.dit.make_stack) and runs
them with `lax.scan`; both layouts hold the same weights (`layers.{i}.*` when unstacked).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unigen.models.dit import make_stack
from unigen.nn.checks import check_compute_options, check_positive_ints
from unigen.nn.layers import Dense, param
from unigen.nn.norms import RMSNorm
from unigen.parallel.logical import constrain
from unigen.text.bert import ACTIVATIONS as BERT_ACTIVATIONS

# transformers' ACT2FN names -> JAX: BERT's table (exact "gelu", tanh "gelu_new" /
# "gelu_pytorch_tanh", "relu") and the SiLU that "gated-silu" configs name.
ACTIVATIONS = {**BERT_ACTIVATIONS, "silu": jax.nn.silu, "swish": jax.nn.silu}

# T5's bias is an additive (1, H, T, T) term, which unigen.nn.attention.attention has no way to
# take (its backends take a boolean mask only), so attention is computed in this module:
# "xla" (and "auto", on every platform) writes softmax(q k^T + bias) v out for XLA with the
# logits, bias and softmax in float32, as jax.nn.dot_product_attention's "xla" path does (that
# path itself asks for an F16_F16_F32 dot that XLA:CPU refuses under jit); "cudnn" is JAX's
# cuDNN fused attention, which takes the bias (GPU only).
BACKENDS = ("auto", "xla", "cudnn")


def parse_feed_forward_proj(feed_forward_proj: str, dense_act_fn: str | None = None) -> tuple[bool, str] | None:
    """(gated, activation name) as transformers' T5Config reads `feed_forward_proj` ("{act}" or
    "gated-{act}", where "gated-gelu" means the tanh GELU "gelu_new"); an explicit
    `dense_act_fn` wins, as a config.json's own field does there. None: not of that form."""
    if not isinstance(feed_forward_proj, str):
        return None
    parts = feed_forward_proj.split("-")
    if not all(parts) or len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        return None
    gated = len(parts) == 2
    act = dense_act_fn or ("gelu_new" if feed_forward_proj == "gated-gelu" else parts[-1])
    return gated, act


@dataclasses.dataclass(frozen=True)
class T5EncoderConfig:
    """Defaults: T5-v1.1-XXL (SD3's text_encoder_3, Flux's text_encoder_2)."""
    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    dense_act_fn: str | None = None   # None: from feed_forward_proj (see parse_feed_forward_proj)
    attention_backend: str = "auto"   # runtime option: "auto" / "xla" / "cudnn"
    dtype: str = "float32"            # runtime option: compute dtype; parameters stay float32
    scan_layers: bool = False         # runtime option: lax.scan over stacked layers
    remat: bool = False               # runtime option: rematerialise each layer

    def validate(self) -> "T5EncoderConfig":
        def bad(field, why):
            raise ValueError(f"T5EncoderConfig.{field}={getattr(self, field)!r}: {why}")
        check_positive_ints(bad, self, ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                                        "relative_attention_num_buckets", "relative_attention_max_distance"))
        if self.relative_attention_num_buckets < 4:
            bad("relative_attention_num_buckets", "must be >= 4 (two directions, each with exact and "
                                                  "logarithmic buckets)")
        if self.relative_attention_max_distance <= self._max_exact:
            bad("relative_attention_max_distance", f"must exceed the {self._max_exact} exact distances "
                                                   f"(relative_attention_num_buckets // 4)")
        if (isinstance(self.layer_norm_epsilon, bool) or not isinstance(self.layer_norm_epsilon, (int, float))
                or not self.layer_norm_epsilon > 0):
            bad("layer_norm_epsilon", "must be a positive number")
        parsed = parse_feed_forward_proj(self.feed_forward_proj)
        if parsed is None:
            bad("feed_forward_proj", "must be '{act}' or 'gated-{act}', e.g. 'gated-gelu' or 'relu'")
        if self.activation not in ACTIVATIONS:
            field = "dense_act_fn" if self.dense_act_fn else "feed_forward_proj"
            bad(field, f"activation {self.activation!r} is not supported; use one of {sorted(ACTIVATIONS)}")
        check_compute_options(bad, self.dtype, self.attention_backend)
        if self.attention_backend not in BACKENDS:
            bad("attention_backend", f"T5 adds a relative position bias to the attention logits; use one of "
                                     f"{list(BACKENDS)}")
        for field in ("scan_layers", "remat"):
            if not isinstance(getattr(self, field), bool):
                bad(field, "must be True or False")
        return self

    @property
    def _max_exact(self) -> int:
        return self.relative_attention_num_buckets // 4

    @property
    def gated(self) -> bool:
        return parse_feed_forward_proj(self.feed_forward_proj, self.dense_act_fn)[0]

    @property
    def activation(self) -> str:
        return parse_feed_forward_proj(self.feed_forward_proj, self.dense_act_fn)[1]

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """(length, length) int32 bucket of key j for query i (distance j - i), bidirectional, as
    transformers' `T5Attention._relative_position_bucket` computes it for an encoder.

    Sequence lengths are static, so this is numpy at trace time (a constant of the program).
    The logarithmic bins follow the reference's float32 arithmetic step by step (divide, log,
    divide by log(max_distance / max_exact), scale, truncate), so the same distances fall in the
    same bins."""
    pos = np.arange(length, dtype=np.int64)
    rel = pos[None, :] - pos[:, None]
    half = num_buckets // 2
    buckets = np.where(rel > 0, half, 0)
    dist = np.abs(rel)
    max_exact = half // 2
    ratio = np.maximum(dist, 1).astype(np.float32) / np.float32(max_exact)
    scaled = (np.log(ratio) / np.float32(math.log(max_distance / max_exact))) * np.float32(half - max_exact)
    large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
    return (buckets + np.where(dist < max_exact, dist, large)).astype(np.int32)


class T5EncoderOutput(NamedTuple):
    last_hidden_state: jax.Array                       # (B, T, D) float32, after the final norm
    hidden_states: tuple[jax.Array, ...] | None = None  # L + 1 states (see the module docstring)


class T5Layer(nnx.Module):
    """One pre-norm layer: self-attention with the shared position bias, then the feed-forward block."""

    def __init__(self, cfg: T5EncoderConfig, *, rngs: nnx.Rngs):
        d, h, dk, ff = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff
        dtype = jnp.dtype(cfg.dtype)
        self.cfg = cfg
        self.attn_norm = RMSNorm(d, eps=cfg.layer_norm_epsilon, rngs=rngs)
        self.qkv = Dense(d, (3, h, dk), axes=("embed", None, "heads", "kv"), use_bias=False, rngs=rngs, dtype=dtype)
        self.o = Dense((h, dk), d, axes=("heads", "kv", "embed"), use_bias=False, rngs=rngs, dtype=dtype)
        self.mlp_norm = RMSNorm(d, eps=cfg.layer_norm_epsilon, rngs=rngs)
        # Gated: wi_0 (through the activation) and wi_1 (linear) as one (D, 2, F) kernel.
        wi_out, wi_axes = ((2, ff), ("embed", None, "mlp")) if cfg.gated else (ff, ("embed", "mlp"))
        self.wi = Dense(d, wi_out, axes=wi_axes, use_bias=False, rngs=rngs, dtype=dtype)
        # float16: wo in float32, as transformers keeps it (see the module docstring).
        wo_dtype = jnp.float32 if dtype == jnp.float16 else dtype
        self.wo = Dense(ff, d, axes=("mlp", "embed"), use_bias=False, rngs=rngs, dtype=wo_dtype)

    def __call__(self, h, bias, key_mask):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        q, k, v = jnp.unstack(self.qkv(self.attn_norm(h).astype(dtype)), axis=2)
        q, k, v = (constrain(a, ("batch", "length", "heads", "kv")) for a in (q, k, v))
        o = _attention(q, k, v, bias, key_mask, cfg.attention_backend)
        h = constrain(h + self.o(o).astype(h.dtype), ("batch", "length", "embed"))
        y = self.wi(self.mlp_norm(h).astype(dtype))
        act = ACTIVATIONS[cfg.activation]
        y = act(y[..., 0, :]) * y[..., 1, :] if cfg.gated else act(y)
        y = constrain(y, ("batch", "length", "mlp"))
        return constrain(h + self.wo(y).astype(h.dtype), ("batch", "length", "embed"))


def _attention(q, k, v, bias, key_mask, backend: str):
    """softmax(q k^T + bias) v over the keys `key_mask` keeps, for (B, T, H, Dk) q, k, v: no
    1/sqrt(d) scaling (T5 folds it into its initialisation). See BACKENDS."""
    if backend == "cudnn":
        # cuDNN takes the bias in the inputs' dtype.
        return jax.nn.dot_product_attention(q, k, v, bias=bias.astype(q.dtype), mask=key_mask, scale=1.0,
                                            implementation="cudnn")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) + bias
    logits = jnp.where(key_mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


class T5Encoder(nnx.Module):
    """`encoder(input_ids, attention_mask=None, hidden_states=False)` -> T5EncoderOutput.

    input_ids: (B, T) ints; attention_mask: (B, T), 1/True at real tokens (None: all real, as in
    transformers). Every query, padded ones included, attends only to real keys; padded
    positions still get states (as in the reference), which a consumer masks or ignores."""

    def __init__(self, cfg: T5EncoderConfig, *, rngs: nnx.Rngs):
        cfg = cfg.validate()
        self.cfg = cfg
        # transformers initialises the shared embedding N(0, 1) and the bias table
        # N(0, d_model^-1/2); real weights replace both on load.
        self.embed = param(nnx.initializers.normal(1.0), (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), rngs)
        self.relative_attention_bias = param(nnx.initializers.normal(cfg.d_model ** -0.5),
                                             (cfg.relative_attention_num_buckets, cfg.num_heads), (None, "heads"),
                                             rngs)
        self.layers = make_stack(lambda r: T5Layer(cfg, rngs=r), cfg.num_layers, rngs, scan=cfg.scan_layers)
        self.final_norm = RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon, rngs=rngs)

    def position_bias(self, length: int) -> jax.Array:
        """(1, H, T, T) float32: the bias every layer adds to its attention logits."""
        cfg = self.cfg
        buckets = relative_position_buckets(length, cfg.relative_attention_num_buckets,
                                            cfg.relative_attention_max_distance)
        values = jnp.take(self.relative_attention_bias[...], jnp.asarray(buckets), axis=0)  # (T, T, H)
        return constrain(jnp.transpose(values, (2, 0, 1))[None], (None, "heads", None, None))

    def _check(self, input_ids, attention_mask):
        if input_ids.ndim != 2:
            raise ValueError(f"T5Encoder expects input_ids of shape (B, T); got {input_ids.shape}")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {attention_mask.shape} must have the shape of input_ids {input_ids.shape}")
        if not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"input_ids must be integer token ids; got dtype {input_ids.dtype}")

    def __call__(self, input_ids, attention_mask=None, hidden_states: bool = False) -> T5EncoderOutput:
        input_ids = jnp.asarray(input_ids)
        attention_mask = jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask)
        self._check(input_ids, attention_mask)
        # A key mask (B, 1, 1, Tk), as transformers' bidirectional mask.
        key_mask = attention_mask.astype(bool)[:, None, None, :]
        bias = self.position_bias(input_ids.shape[1])
        h = constrain(jnp.take(self.embed[...], input_ids, axis=0), ("batch", "length", "embed"))
        h, inputs = self._run_layers(h, bias, key_mask, keep=hidden_states)
        out = self.final_norm(h)
        return T5EncoderOutput(out, tuple(inputs) + (out,) if hidden_states else None)

    def _run_layers(self, h, bias, key_mask, *, keep: bool):
        """h through the layers; with keep=True also each layer's input (the embeddings, then the
        outputs of layers 0..L-2). unigen.models.dit.run_stack returns only the last state, so
        the stack is run here, the scanned form collecting the inputs as scan outputs."""
        cfg = self.cfg

        def step(layer, h):
            return layer(h, bias, key_mask)
        if cfg.remat:
            step = nnx.remat(step)
        if not cfg.scan_layers:
            inputs = []
            for layer in self.layers:
                inputs.append(h)
                h = step(layer, h)
            return h, inputs if keep else []
        graphdef, state = nnx.split(self.layers)

        def body(h, layer_state):
            return step(nnx.merge(graphdef, layer_state), h), (h if keep else None)
        h, stacked = jax.lax.scan(body, h, state)
        return h, ([stacked[i] for i in range(cfg.num_layers)] if keep else [])
