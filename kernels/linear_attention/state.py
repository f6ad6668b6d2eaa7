"""The constant-size recurrent state of (block-causal) linear attention (SANA-Video).

After any prefix of keys/values the past is summarised by
  kv    = Σ_j φ(k_j) v_jᵀ   (B, H, Dk, Dv)   — the numerator's memory
  k_sum = Σ_j φ(k_j)        (B, H, Dk)       — the denominator's memory
both float32, whatever the prefix length: streaming generation carries this instead of
a KV cache.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LinearState(NamedTuple):
    kv: jax.Array
    k_sum: jax.Array


def init_linear_state(batch: int, heads: int, key_dim: int, value_dim: int | None = None) -> LinearState:
    """The empty state (no past tokens)."""
    value_dim = key_dim if value_dim is None else value_dim
    return LinearState(
        kv=jnp.zeros((batch, heads, key_dim, value_dim), jnp.float32),
        k_sum=jnp.zeros((batch, heads, key_dim), jnp.float32),
    )


def check_state(state, batch: int, heads: int, key_dim: int, value_dim: int) -> LinearState:
    if not (isinstance(state, tuple) and len(state) == 2):
        raise ValueError("state must be a LinearState(kv, k_sum) (see init_linear_state)")
    kv, k_sum = state
    if kv.shape != (batch, heads, key_dim, value_dim) or k_sum.shape != (batch, heads, key_dim):
        raise ValueError(
            f"state shapes kv{kv.shape}, k_sum{k_sum.shape} do not fit the inputs; expected "
            f"kv{(batch, heads, key_dim, value_dim)} and k_sum{(batch, heads, key_dim)}"
        )
    return LinearState(kv.astype(jnp.float32), k_sum.astype(jnp.float32))
