"""CLIP's text transformer (Radford et al. 2021), as transformers' `CLIPTextModel` and
`CLIPTextModelWithProjection` compute it: the prompt encoders of Stable Diffusion (CLIP-L),
SDXL / SD3 (CLIP-L and OpenCLIP bigG) and Flux (CLIP-L's pooled vector).

    h = token_embedding[ids] + position_embedding[:T]
    per layer (pre-LN):  h = h + Proj(Attn(QKV(LN(h))))      causal, plus the padding mask if given
                         h = h + FC2(act(FC1(LN(h))))
    last_hidden_state = LN_final(h)
    pooled = last_hidden_state at the end-of-text position of each row
    text_embeds = pooled @ W_proj                               (bias-free; the "WithProjection" models)

The attention mask is what transformers builds for CLIP's text model: query i sees key j when
j <= i and, if an `attention_mask` is passed, the key j is a real token. `attention_mask=None`
is the plain causal mask (diffusers' SD3 / SDXL / Flux pipelines call CLIP that way; CLIP's
tokenizer pads after the end-of-text token, and causality keeps real tokens from seeing it).
A row whose first position is masked (left padding) has queries that see no key; their attention
output is zero, as torch's `scaled_dot_product_attention` (transformers' default "sdpa" for CLIP)
gives (transformers' "eager" attention would average every value instead). CLIP's tokenizer never
pads on the left, so real prompts never meet this.

The end-of-text position follows transformers' rule: configs written before transformers
PR #24773 say `eos_token_id = 2` (not CLIP's id), and then the position is the argmax of the
row's ids (CLIP's end-of-text id 49407 is the largest in its vocabulary); any other
`eos_token_id` picks the first position holding that id (position 0 when a row has none).

`model(input_ids, attention_mask=None, *, hidden_states=False, clip_skip=None)` returns a
`CLIPTextOutput`; `hidden_states=True` adds transformers' `hidden_states` tuple (the embeddings,
then each layer's output; the last entry is before the final LayerNorm), and `clip_skip=k` adds
`layer_state = hidden_states[-(k + 2)]`, the per-token states the SDXL / SD3 pipelines feed their
networks (k = 0: the penultimate layer's output).

Parameters are float32 with logical axis names; `dtype` is the compute dtype. `scan_layers`
stacks the identical layers and runs them with `lax.scan` (same parameters, stored per layer
when saved or loaded); `remat` rematerialises each layer.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from unigen.models.dit import make_stack
from unigen.nn.attention import attention
from unigen.nn.checks import check_compute_options, check_positive_ints, is_positive_int
from unigen.nn.layers import Dense, param
from unigen.nn.norms import LayerNorm
from unigen.parallel.logical import constrain
from unigen.text.bert import ACTIVATIONS as _BERT_ACTIVATIONS

# transformers' ACT2FN names -> JAX: BERT's set plus CLIP's "quick_gelu", x * sigmoid(1.702 x)
# (OpenAI CLIP's activation; OpenCLIP's bigG uses the exact "gelu").
ACTIVATIONS = {**_BERT_ACTIVATIONS, "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x)}
RUNTIME_FIELDS = ("attention_backend", "dtype", "scan_layers", "remat")
# transformers' marker for configs written before its PR #24773: pool at argmax(input_ids).
LEGACY_EOS_TOKEN_ID = 2


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """CLIP text transformer. Defaults are OpenAI's CLIP ViT-L/14 text tower without projection."""
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int | None = None   # None: CLIPTextModel; an int: CLIPTextModelWithProjection
    eos_token_id: int = 49407           # 2 = transformers' legacy marker (pool at argmax(input_ids))
    attention_backend: str = "auto"     # runtime option
    dtype: str = "float32"              # runtime option: compute dtype; parameters stay float32
    scan_layers: bool = False           # runtime option
    remat: bool = False                 # runtime option

    def validate(self) -> "CLIPTextConfig":
        def bad(field, why):
            raise ValueError(f"CLIPTextConfig.{field}={getattr(self, field)!r}: {why}")
        check_positive_ints(bad, self, ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                                        "max_position_embeddings"))
        if self.hidden_size % self.num_heads:
            bad("hidden_size", f"not divisible by num_heads={self.num_heads}")
        if self.hidden_act not in ACTIVATIONS:
            bad("hidden_act", f"unsupported activation; use one of {sorted(ACTIVATIONS)}")
        if not (isinstance(self.layer_norm_eps, (int, float)) and not isinstance(self.layer_norm_eps, bool)
                and self.layer_norm_eps > 0):
            bad("layer_norm_eps", "must be a positive number")
        if self.projection_dim is not None and not is_positive_int(self.projection_dim):
            bad("projection_dim", "must be a positive integer, or None for no text projection")
        if not (isinstance(self.eos_token_id, int) and not isinstance(self.eos_token_id, bool)
                and self.eos_token_id >= 0):
            bad("eos_token_id", "must be a non-negative integer id (2 = pool at argmax(input_ids), "
                                "as transformers does for configs written before its PR #24773)")
        for flag in ("scan_layers", "remat"):
            if not isinstance(getattr(self, flag), bool):
                bad(flag, "must be true or false")
        check_compute_options(bad, self.dtype, self.attention_backend)
        if self.attention_backend in ("block_sparse", "linear"):
            bad("attention_backend", "CLIP needs a causal / padding token mask: use 'auto', 'xla', 'einsum' or "
                                     "'cudnn'")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CLIPTextOutput:
    """What a CLIP text model returns (arrays in the compute dtype; a pytree, so it leaves `jit`).

    last_hidden_state  (B, T, D)  after the final LayerNorm (transformers' `last_hidden_state`)
    pooled             (B, D)     last_hidden_state at the end-of-text position (`pooler_output`)
    text_embeds        (B, P)     pooled @ text projection (None without a projection)
    hidden_states      tuple of num_layers + 1 arrays (B, T, D): the embeddings, then each layer's
                       output (the last one before the final LayerNorm); None unless asked
    layer_state        (B, T, D)  hidden_states[-(clip_skip + 2)]; None unless clip_skip is given
    """
    last_hidden_state: jax.Array
    pooled: jax.Array
    text_embeds: jax.Array | None = None
    hidden_states: tuple[jax.Array, ...] | None = None
    layer_state: jax.Array | None = None


def _embedding(rows: int, dim: int, axes, rngs: nnx.Rngs) -> nnx.Param:
    # transformers initialises both tables N(0, 0.02); real weights replace them on load.
    return param(nnx.initializers.normal(0.02), (rows, dim), axes, rngs)


class CLIPLayer(nnx.Module):
    """One pre-LN layer: causal self-attention, then the MLP, each added to the residual."""

    def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs):
        d, h, dtype = cfg.hidden_size, cfg.num_heads, jnp.dtype(cfg.dtype)
        self.cfg = cfg
        self.attn_norm = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)
        self.qkv = Dense(d, (3, h, cfg.head_dim), axes=("embed", None, "heads", "kv"), rngs=rngs, dtype=dtype)
        self.proj = Dense((h, cfg.head_dim), d, axes=("heads", "kv", "embed"), rngs=rngs, dtype=dtype)
        self.mlp_norm = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)
        self.fc1 = Dense(d, cfg.intermediate_size, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.fc2 = Dense(cfg.intermediate_size, d, axes=("mlp", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x, mask, seeing=None):
        q, k, v = jnp.unstack(self.qkv(self.attn_norm(x)), axis=2)
        q, k, v = (constrain(a, ("batch", "length", "heads", "kv")) for a in (q, k, v))
        o = attention(q, k, v, backend=self.cfg.attention_backend, mask=mask)
        if seeing is not None:  # (B, T, 1, 1): False at a query that sees no key (see CLIPTextModel)
            o = jnp.where(seeing, o, jnp.zeros((), o.dtype))
        x = x + self.proj(o)
        hidden = constrain(ACTIVATIONS[self.cfg.hidden_act](self.fc1(self.mlp_norm(x))), ("batch", "length", "mlp"))
        x = x + self.fc2(hidden)
        return constrain(x, ("batch", "length", "embed"))


class CLIPTextModel(nnx.Module):
    """`model(input_ids, attention_mask=None, *, hidden_states=False, clip_skip=None)` -> CLIPTextOutput.

    input_ids: (B, T) ints, T <= max_position_embeddings; attention_mask: (B, T), 1/True at real
    tokens, or None (causal mask only). With `cfg.projection_dim` set this is
    `CLIPTextModelWithProjection` (`text_embeds`), else `CLIPTextModel`."""

    def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs):
        cfg = cfg.validate()
        self.cfg = cfg
        d = cfg.hidden_size
        self.token_embedding = _embedding(cfg.vocab_size, d, ("vocab", "embed"), rngs)
        self.position_embedding = _embedding(cfg.max_position_embeddings, d, (None, "embed"), rngs)
        self.layers = make_stack(lambda r: CLIPLayer(cfg, rngs=r), cfg.num_layers, rngs, scan=cfg.scan_layers)
        self.final_norm = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)
        self.text_projection = (None if cfg.projection_dim is None else
                                Dense(d, cfg.projection_dim, axes=("embed", None), use_bias=False, rngs=rngs,
                                      dtype=jnp.dtype(cfg.dtype)))

    def _check(self, input_ids, attention_mask, clip_skip):
        cfg = self.cfg
        if input_ids.ndim != 2:
            raise ValueError(f"CLIP's text model expects input_ids of shape (B, T); got {input_ids.shape}")
        if not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"input_ids must be integer token ids; got dtype {input_ids.dtype}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {attention_mask.shape} must have the shape of input_ids "
                             f"{input_ids.shape}")
        if input_ids.shape[1] > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds this CLIP's max_position_embeddings="
                             f"{cfg.max_position_embeddings}; tokenize with max_length <= "
                             f"{cfg.max_position_embeddings}")
        if clip_skip is not None and not (isinstance(clip_skip, int) and not isinstance(clip_skip, bool)
                                          and 0 <= clip_skip < cfg.num_layers):
            raise ValueError(f"clip_skip={clip_skip!r}: must be an integer in [0, {cfg.num_layers - 1}] "
                             f"(hidden_states[-(clip_skip + 2)] of {cfg.num_layers + 1} states)")

    def embed(self, input_ids):
        t = input_ids.shape[1]
        h = jnp.take(self.token_embedding[...], input_ids, axis=0) + self.position_embedding[...][:t][None]
        return constrain(h.astype(jnp.dtype(self.cfg.dtype)), ("batch", "length", "embed"))

    def _layers(self, h, mask, seeing, collect: bool):
        """h through every layer; also each layer's output when `collect`."""
        cfg = self.cfg

        def step(layer, h):
            return layer(h, mask, seeing)
        if cfg.remat:
            step = nnx.remat(step)
        if not cfg.scan_layers:
            outputs = []
            for layer in self.layers:
                h = step(layer, h)
                outputs.append(h)
            return h, (tuple(outputs) if collect else ())
        graphdef, state = nnx.split(self.layers)

        def body(h, layer_state):
            h = step(nnx.merge(graphdef, layer_state), h)
            return h, (h if collect else None)
        h, stacked = jax.lax.scan(body, h, state)
        return h, (tuple(stacked[i] for i in range(cfg.num_layers)) if collect else ())

    def eos_positions(self, input_ids):
        """(B,) the position pooled in each row (transformers' rule; see the module docstring)."""
        ids = input_ids.astype(jnp.int32)
        if self.cfg.eos_token_id == LEGACY_EOS_TOKEN_ID:
            return jnp.argmax(ids, axis=-1)
        return jnp.argmax((ids == self.cfg.eos_token_id).astype(jnp.int32), axis=-1)

    def __call__(self, input_ids, attention_mask=None, *, hidden_states: bool = False,
                 clip_skip: int | None = None) -> CLIPTextOutput:
        input_ids = jnp.asarray(input_ids)
        attention_mask = None if attention_mask is None else jnp.asarray(attention_mask)
        self._check(input_ids, attention_mask, clip_skip)
        t = input_ids.shape[1]
        # (1 | B, 1, T, T): query i sees key j <= i, and only real keys when a padding mask is given
        mask = jnp.tril(jnp.ones((t, t), bool))[None, None]
        seeing = None
        if attention_mask is not None:
            mask = mask & attention_mask.astype(bool)[:, None, None, :]
            # A query whose every key is masked (only with left padding) gets a zero attention
            # output, as torch's scaled_dot_product_attention (transformers' default for CLIP) gives.
            seeing = mask.any(axis=-1)[:, 0, :, None, None]
        h0 = self.embed(input_ids)
        h, outputs = self._layers(h0, mask, seeing, hidden_states or clip_skip is not None)
        states = (h0,) + outputs
        last = constrain(self.final_norm(h), ("batch", "length", "embed"))
        pos = self.eos_positions(input_ids)
        pooled = constrain(jnp.take_along_axis(last, pos[:, None, None], axis=1)[:, 0], ("batch", "embed"))
        text_embeds = None if self.text_projection is None else self.text_projection(pooled)
        return CLIPTextOutput(
            last_hidden_state=last, pooled=pooled, text_embeds=text_embeds,
            hidden_states=states if hidden_states else None,
            layer_state=None if clip_skip is None else states[-(clip_skip + 2)])
