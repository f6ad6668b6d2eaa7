"""Block-sparse attention through jax-triton (GPU only).

`jax_triton` and `triton` are imported lazily: they do not import on a CPU-only jax, and
the `gpu` extra is optional. Gradients through `custom_vjp` with Triton dQ and dK/dV
kernels (see `triton_kernels.py`); δ = rowsum(dO∘O) is one XLA reduction.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from .._triton import require_triton
from .layout import BlockLayout, broadcast_layout


def _import_triton():
    return require_triton(__package__ + ".triton_kernels")


def _warps(dim: int) -> int:
    return 4 if dim <= 64 else 8


def _meta(lay: BlockLayout, q, k, scale):
    batch, tq, heads, dim = q.shape
    return dict(scale=scale, heads=heads, seq_q_pad=tq, seq_k_pad=k.shape[1],
                BLOCK_Q=lay.block_q, BLOCK_K=lay.block_k, DIM=dim)


def _forward(q, k, v, lay: BlockLayout, scale):
    jt, tk = _import_triton()
    batch, tq, heads, dim = q.shape
    o, lse = jt.triton_call(
        q, k, v, lay.kv_indices, lay.kv_counts, lay.kv_partial.astype(jnp.int32),
        kernel=tk.bs_fwd_kernel,
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((batch, heads, tq), jnp.float32)],
        grid=(lay.num_q_blocks, batch * heads),
        num_warps=_warps(dim), num_stages=2,
        seq_k=lay.seq_k, n_q=lay.num_q_blocks, k_max=lay.max_kv_blocks,
        **_meta(lay, q, k, scale),
    )
    return o, lse


def _backward(q, k, v, o, lse, do, lay: BlockLayout, scale):
    jt, tk = _import_triton()
    batch, tq, heads, dim = q.shape
    delta = jnp.einsum("bqhd,bqhd->bhq", do.astype(jnp.float32), o.astype(jnp.float32))
    meta = _meta(lay, q, k, scale)
    dq = jt.triton_call(
        q, k, v, do, lse, delta, lay.kv_indices, lay.kv_counts,
        lay.kv_partial.astype(jnp.int32),
        kernel=tk.bs_dq_kernel,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        grid=(lay.num_q_blocks, batch * heads),
        num_warps=_warps(dim), num_stages=2,
        seq_k=lay.seq_k, n_q=lay.num_q_blocks, k_max=lay.max_kv_blocks, **meta,
    )
    dk, dv = jt.triton_call(
        q, k, v, do, lse, delta, lay.q_indices, lay.q_counts,
        kernel=tk.bs_dkv_kernel,
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        grid=(lay.num_kv_blocks, batch * heads),
        num_warps=_warps(dim), num_stages=2,
        n_k=lay.num_kv_blocks, q_max=lay.max_q_blocks, **meta,
    )
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q, k, v, lay, scale):
    return _forward(q, k, v, lay, scale)[0]


def _attention_fwd(q, k, v, lay, scale):
    o, lse = _forward(q, k, v, lay, scale)
    return o, (q, k, v, o, lse, lay)


def _attention_bwd(scale, res, do):
    q, k, v, o, lse, lay = res
    dq, dk, dv = _backward(q, k, v, o, lse, do, lay, scale)
    return dq, dk, dv, jax.tree.map(lambda x: jnp.zeros(x.shape, jax.dtypes.float0), lay)


_attention.defvjp(_attention_fwd, _attention_bwd)


def block_sparse_attention_triton(q, k, v, layout: BlockLayout, *, scale: float) -> jax.Array:
    _import_triton()  # fail early with a clear message
    batch, seq_q, heads, dim = q.shape
    if dim & (dim - 1) or dim < 16:
        raise ValueError(f"impl='triton' needs a power-of-two head dim >= 16; got {dim}")
    if min(layout.block_q, layout.block_k) < 16:
        raise ValueError("impl='triton' needs blocks >= 16 (tl.dot tile minimum)")
    lay = broadcast_layout(layout, batch, heads)
    # Contiguous int32 lists, (B, H, n, K) row-major, as the kernels index them.
    lay = jax.tree.map(lambda x: jnp.asarray(x, jnp.int32) if x.dtype != bool else x, lay)
    pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0)))
    qp = pad(q, layout.num_q_blocks * layout.block_q)
    kp = pad(k, layout.num_kv_blocks * layout.block_k)
    vp = pad(v, layout.num_kv_blocks * layout.block_k)
    return _attention(qp, kp, vp, lay, float(scale))[:, :seq_q]
