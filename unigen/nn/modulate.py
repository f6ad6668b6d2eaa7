"""adaLN modulation (DiT, Peebles & Xie 2023, §3.2): the one place it is written."""

import jax


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """x * (1 + scale) + shift, with per-sample (B, D) shift/scale broadcast over tokens.

    Per-token (B, T, D) shift/scale are used as they are (DiT^DH's per-token adaLN)."""
    if shift.ndim == x.ndim - 1:
        shift, scale = shift[:, None], scale[:, None]
    return x * (1 + scale) + shift


def gate(x: jax.Array, g: jax.Array) -> jax.Array:
    """adaLN-Zero residual gate: the branch output scaled by g (zero at init)."""
    return x * (g[:, None] if g.ndim == x.ndim - 1 else g)
