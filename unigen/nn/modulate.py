"""adaLN modulation (DiT, Peebles & Xie 2023, §3.2): the one place it is written."""

import jax


def modulate(x: jax.Array, shift: jax.Array | None, scale: jax.Array) -> jax.Array:
    """x * (1 + scale) + shift, with per-sample (B, D) shift/scale broadcast over tokens.

    Per-token (B, T, D) shift/scale are used as they are (DiT^DH's per-token adaLN).
    shift=None is the shift-free form x * (1 + scale) (LightningDiT's `wo_shift`)."""
    if scale.ndim == x.ndim - 1:
        scale = scale[:, None]
        shift = None if shift is None else shift[:, None]
    return x * (1 + scale) if shift is None else x * (1 + scale) + shift


def gate(x: jax.Array, g: jax.Array) -> jax.Array:
    """adaLN-Zero residual gate: the branch output scaled by g (zero at init)."""
    return x * (g[:, None] if g.ndim == x.ndim - 1 else g)
