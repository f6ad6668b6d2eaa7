"""BERT-style text encoder (Devlin et al. 2019), the network of sentence-transformers' MiniLM.

Matches transformers' `BertModel` as an encoder (`is_decoder=False`, absolute positions):
word + absolute position + token-type embeddings, a LayerNorm over their sum, then post-LN
layers

    h = LN(h + Proj(Attn(QKV(h))))        attention over the keys the mask keeps
    h = LN(h + FC2(act(FC1(h))))

with the config's `hidden_act` and `layer_norm_eps`. `Bert(...)(input_ids, attention_mask)`
returns the last hidden state (B, T, D) at every position; padded positions hold values too
(they attend to the real tokens, as in the reference) and poolers must mask them out.
BERT's own pooler (tanh over [CLS]) is not part of it: sentence embeddings come from
unigen.text.encoder's pooling.

Parameters are float32; `dtype` is the compute dtype. Attention goes through the one entry
point, unigen.nn.attention.attention, with `attention_backend` ("auto" by default).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from unigen.nn.attention import attention
from unigen.nn.checks import check_compute_options, check_positive_ints
from unigen.nn.layers import Dense, param
from unigen.nn.norms import LayerNorm
from unigen.parallel.logical import constrain

# transformers' ACT2FN names -> JAX. "gelu" is the exact (erf) GELU; "gelu_new" and
# "gelu_pytorch_tanh" are both the tanh approximation.
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    attention_backend: str = "auto"   # runtime option
    dtype: str = "float32"            # runtime option: compute dtype; parameters stay float32

    def validate(self) -> "BertConfig":
        def bad(field, why):
            raise ValueError(f"BertConfig.{field}={getattr(self, field)!r}: {why}")
        check_positive_ints(bad, self, ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                                        "max_position_embeddings", "type_vocab_size"))
        if self.hidden_size % self.num_heads:
            bad("hidden_size", f"not divisible by num_heads={self.num_heads}")
        if self.hidden_act not in ACTIVATIONS:
            bad("hidden_act", f"unsupported activation; use one of {sorted(ACTIVATIONS)}")
        if not (isinstance(self.layer_norm_eps, (int, float)) and self.layer_norm_eps > 0):
            bad("layer_norm_eps", "must be a positive number")
        check_compute_options(bad, self.dtype, self.attention_backend)
        if self.attention_backend in ("block_sparse", "linear"):
            bad("attention_backend", "BERT needs a token (padding) mask: use 'auto', 'xla', 'einsum' or 'cudnn'")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def _embedding(rows: int, dim: int, axes, rngs: nnx.Rngs) -> nnx.Param:
    # BERT initialises its tables N(0, 0.02); real weights replace them on load.
    return param(nnx.initializers.normal(0.02), (rows, dim), axes, rngs)


class BertLayer(nnx.Module):
    """One post-LN encoder layer (self-attention, then the feed-forward block)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        d, h, dtype = cfg.hidden_size, cfg.num_heads, jnp.dtype(cfg.dtype)
        self.cfg = cfg
        self.qkv = Dense(d, (3, h, cfg.head_dim), axes=("embed", None, "heads", "kv"), rngs=rngs, dtype=dtype)
        self.proj = Dense((h, cfg.head_dim), d, axes=("heads", "kv", "embed"), rngs=rngs, dtype=dtype)
        self.attn_norm = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)
        self.fc1 = Dense(d, cfg.intermediate_size, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.fc2 = Dense(cfg.intermediate_size, d, axes=("mlp", "embed"), rngs=rngs, dtype=dtype)
        self.mlp_norm = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)

    def __call__(self, x, key_mask):
        q, k, v = jnp.unstack(self.qkv(x), axis=2)
        q, k, v = (constrain(a, ("batch", "length", "heads", "kv")) for a in (q, k, v))
        o = attention(q, k, v, backend=self.cfg.attention_backend, mask=key_mask)
        x = self.attn_norm(x + self.proj(o))
        x = self.mlp_norm(x + self.fc2(ACTIVATIONS[self.cfg.hidden_act](self.fc1(x))))
        return constrain(x, ("batch", "length", "embed"))


class Bert(nnx.Module):
    """`bert(input_ids, attention_mask, token_type_ids=None)` -> last hidden state (B, T, D).

    input_ids, token_type_ids: (B, T) ints; attention_mask: (B, T), 1/True for real tokens.
    token_type_ids default to 0 (transformers does the same). T may not exceed
    `max_position_embeddings`."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        cfg = cfg.validate()
        self.cfg = cfg
        d = cfg.hidden_size
        self.word_embeddings = _embedding(cfg.vocab_size, d, ("vocab", "embed"), rngs)
        self.position_embeddings = _embedding(cfg.max_position_embeddings, d, (None, "embed"), rngs)
        self.token_type_embeddings = _embedding(cfg.type_vocab_size, d, (None, "embed"), rngs)
        self.embed_norm = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)
        self.layers = nnx.List([BertLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])

    def _check(self, input_ids, attention_mask, token_type_ids):
        cfg = self.cfg
        if input_ids.ndim != 2:
            raise ValueError(f"Bert expects input_ids of shape (B, T); got {input_ids.shape}")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {attention_mask.shape} must have the shape of input_ids {input_ids.shape}")
        if token_type_ids is not None and token_type_ids.shape != input_ids.shape:
            raise ValueError(f"token_type_ids {token_type_ids.shape} must have the shape of input_ids {input_ids.shape}")
        if input_ids.shape[1] > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds this encoder's "
                             f"max_position_embeddings={cfg.max_position_embeddings}; truncate or pad less")

    def embed(self, input_ids, token_type_ids):
        dtype = jnp.dtype(self.cfg.dtype)
        t = input_ids.shape[1]
        h = (jnp.take(self.word_embeddings[...], input_ids, axis=0)
             + jnp.take(self.token_type_embeddings[...], token_type_ids, axis=0)
             + self.position_embeddings[...][:t][None])
        return self.embed_norm(h.astype(dtype))

    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        input_ids, attention_mask = jnp.asarray(input_ids), jnp.asarray(attention_mask)
        token_type_ids = jnp.zeros_like(input_ids) if token_type_ids is None else jnp.asarray(token_type_ids)
        self._check(input_ids, attention_mask, token_type_ids)
        # A key mask (B, 1, 1, Tk): every query, padded ones included, sees only real keys,
        # as transformers' bidirectional mask does.
        key_mask = attention_mask.astype(bool)[:, None, None, :]
        h = constrain(self.embed(input_ids, token_type_ids), ("batch", "length", "embed"))
        for layer in self.layers:
            h = layer(h, key_mask)
        return h
