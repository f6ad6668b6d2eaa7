"""Pallas block-sparse attention: FlashAttention-2 style, visiting only listed blocks.

Forward: one program per (batch, head, query block). The query tile stays resident; the
program walks its `kv_indices` list (`kv_counts` entries) with an online softmax (running
max m, running sum l, unnormalised accumulator; FA2 Alg. 1), and also writes the row
log-sum-exp for the backward pass.

Backward (FA2 Alg. 2, split in two kernels so neither needs atomics):
  dQ  — one program per query block, walking the same kv list:
        P = exp(S − lse), dS = P ∘ (dO·Vᵀ − δ), dQ += scale · dS·K, with δ = rowsum(dO∘O).
  dKV — one program per key block, walking the *transposed* list (query blocks that read
        it): dV += Pᵀ·dO, dK += scale · dSᵀ·Q.

Rows whose block selects nothing get O = 0 and lse = +inf, so their P is 0 everywhere.
Padded keys of the tail block are masked only where `kv_partial` says so; padded query
rows are zero and get zero cotangents, so they contribute nothing to dK/dV.

On CPU the kernels run with `interpret=True`; on GPU they lower through Pallas' Triton
backend (`plgpu.CompilerParams`), like jax's reference `ops/gpu/attention.py`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .layout import BlockLayout, broadcast_layout

# A finite "minus infinity": exp(MASK - m) underflows to 0 without inf - inf NaNs.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def _compiler_params(dim: int):
    return plgpu.CompilerParams(num_warps=4 if dim <= 64 else 8, num_stages=2)


def _fwd_kernel(idx_ref, cnt_ref, part_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *,
                scale, block_k, seq_k):
    q = q_ref[...]
    block_q, dim = q.shape

    def body(j, carry):
        acc, m, l = carry
        start = pl.multiple_of(idx_ref[j] * block_k, block_k)
        k = k_ref[pl.ds(start, block_k), :]
        v = v_ref[pl.ds(start, block_k), :]
        s = plgpu.dot(q, k, trans_b=True).astype(jnp.float32) * scale
        keep = (part_ref[j] == 0) | (start + jnp.arange(block_k) < seq_k)
        s = jnp.where(keep[None, :], s, MASK_VALUE)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        correction = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new[:, None])
        l = correction * l + jnp.sum(p, axis=1)
        acc = correction[:, None] * acc + plgpu.dot(p.astype(v.dtype), v).astype(jnp.float32)
        return acc, m_new, l

    init = (
        jnp.zeros((block_q, dim), jnp.float32),
        jnp.full((block_q,), MASK_VALUE, jnp.float32),
        jnp.zeros((block_q,), jnp.float32),
    )
    acc, m, l = jax.lax.fori_loop(0, cnt_ref[0], body, init)
    empty = l == 0.0
    o_ref[...] = (acc / jnp.where(empty, 1.0, l)[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))


def _dq_kernel(idx_ref, cnt_ref, part_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref,
               dq_ref, *, scale, block_k, seq_k):
    q = q_ref[...]
    do = do_ref[...]
    lse = lse_ref[...]
    delta = delta_ref[...]

    def body(j, dq):
        start = pl.multiple_of(idx_ref[j] * block_k, block_k)
        k = k_ref[pl.ds(start, block_k), :]
        v = v_ref[pl.ds(start, block_k), :]
        s = plgpu.dot(q, k, trans_b=True).astype(jnp.float32) * scale
        keep = (part_ref[j] == 0) | (start + jnp.arange(block_k) < seq_k)
        p = jnp.where(keep[None, :], jnp.exp(s - lse[:, None]), 0.0)
        dp = plgpu.dot(do, v, trans_b=True).astype(jnp.float32)
        ds = p * (dp - delta[:, None])
        return dq + plgpu.dot(ds.astype(k.dtype), k).astype(jnp.float32)

    dq = jax.lax.fori_loop(0, cnt_ref[0], body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(idx_ref, cnt_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref,
                dk_ref, dv_ref, *, scale, block_q):
    k = k_ref[...]
    v = v_ref[...]

    def body(j, carry):
        dk, dv = carry
        start = pl.multiple_of(idx_ref[j] * block_q, block_q)
        q = q_ref[pl.ds(start, block_q), :]
        do = do_ref[pl.ds(start, block_q), :]
        lse = lse_ref[pl.ds(start, block_q)]
        delta = delta_ref[pl.ds(start, block_q)]
        s = plgpu.dot(q, k, trans_b=True).astype(jnp.float32) * scale
        p = jnp.exp(s - lse[:, None])  # (bq, bk); padded keys only touch discarded rows
        dv = dv + plgpu.dot(p.astype(do.dtype), do, trans_a=True).astype(jnp.float32)
        dp = plgpu.dot(do, v, trans_b=True).astype(jnp.float32)
        ds = p * (dp - delta[:, None])
        dk = dk + plgpu.dot(ds.astype(q.dtype), q, trans_a=True).astype(jnp.float32)
        return dk, dv

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = jax.lax.fori_loop(0, cnt_ref[0], body, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _pad_seq(x, length):
    return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))


def _forward(q, k, v, lay: BlockLayout, scale, interpret):
    """Padded inputs (B, nq·bq | nk·bk, H, D); lay broadcast to (B, H)."""
    batch, tq, heads, dim = q.shape
    tk = k.shape[1]
    bq, bk, nq, kmax = lay.block_q, lay.block_k, lay.num_q_blocks, lay.max_kv_blocks
    list_spec = pl.BlockSpec((None, None, None, kmax), lambda b, h, i: (b, h, i, 0))
    cnt_spec = pl.BlockSpec((None, None, None, 1), lambda b, h, i: (b, h, i, 0))
    q_spec = pl.BlockSpec((None, bq, None, dim), lambda b, h, i: (b, i, h, 0))
    kv_spec = pl.BlockSpec((None, tk, None, dim), lambda b, h, i: (b, 0, h, 0))
    lse_spec = pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))
    kernel = functools.partial(_fwd_kernel, scale=scale, block_k=bk, seq_k=lay.seq_k)
    return pl.pallas_call(
        kernel,
        grid=(batch, heads, nq),
        in_specs=[list_spec, cnt_spec, list_spec, q_spec, kv_spec, kv_spec],
        out_specs=[q_spec, lse_spec],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((batch, heads, tq), jnp.float32),
        ],
        compiler_params=_compiler_params(dim),
        interpret=interpret,
        name="block_sparse_attention_fwd",
    )(lay.kv_indices, lay.kv_counts[..., None], lay.kv_partial.astype(jnp.int32), q, k, v)


def _backward(q, k, v, o, lse, do, lay: BlockLayout, scale, interpret):
    batch, tq, heads, dim = q.shape
    tk = k.shape[1]
    bq, bk = lay.block_q, lay.block_k
    nq, nk = lay.num_q_blocks, lay.num_kv_blocks
    # δ_i = Σ_d dO_id O_id (FA2 Alg. 2 line "D_i = rowsum(dO_i ∘ O_i)").
    delta = jnp.einsum("bqhd,bqhd->bhq", do.astype(jnp.float32), o.astype(jnp.float32))

    kv_list = pl.BlockSpec((None, None, None, lay.max_kv_blocks), lambda b, h, i: (b, h, i, 0))
    q_list = pl.BlockSpec((None, None, None, lay.max_q_blocks), lambda b, h, i: (b, h, i, 0))
    cnt = pl.BlockSpec((None, None, None, 1), lambda b, h, i: (b, h, i, 0))
    q_tile = pl.BlockSpec((None, bq, None, dim), lambda b, h, i: (b, i, h, 0))
    k_tile = pl.BlockSpec((None, bk, None, dim), lambda b, h, i: (b, i, h, 0))
    q_all = pl.BlockSpec((None, tq, None, dim), lambda b, h, i: (b, 0, h, 0))
    k_all = pl.BlockSpec((None, tk, None, dim), lambda b, h, i: (b, 0, h, 0))
    row_tile = pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))
    row_all = pl.BlockSpec((None, None, tq), lambda b, h, i: (b, h, 0))

    dq = pl.pallas_call(
        functools.partial(_dq_kernel, scale=scale, block_k=bk, seq_k=lay.seq_k),
        grid=(batch, heads, nq),
        in_specs=[kv_list, cnt, kv_list, q_tile, k_all, k_all, q_tile, row_tile, row_tile],
        out_specs=q_tile,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_compiler_params(dim),
        interpret=interpret,
        name="block_sparse_attention_dq",
    )(lay.kv_indices, lay.kv_counts[..., None], lay.kv_partial.astype(jnp.int32),
      q, k, v, do, lse, delta)

    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, scale=scale, block_q=bq),
        grid=(batch, heads, nk),
        in_specs=[q_list, cnt, q_all, k_tile, k_tile, q_all, row_all, row_all],
        out_specs=[k_tile, k_tile],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=_compiler_params(dim),
        interpret=interpret,
        name="block_sparse_attention_dkv",
    )(lay.q_indices, lay.q_counts[..., None], q, k, v, do, lse, delta)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention(q, k, v, lay, scale, interpret):
    return _forward(q, k, v, lay, scale, interpret)[0]


def _attention_fwd(q, k, v, lay, scale, interpret):
    o, lse = _forward(q, k, v, lay, scale, interpret)
    return o, (q, k, v, o, lse, lay)


def _attention_bwd(scale, interpret, res, do):
    q, k, v, o, lse, lay = res
    dq, dk, dv = _backward(q, k, v, o, lse, do, lay, scale, interpret)
    no_grad = jax.tree.map(lambda x: jnp.zeros(x.shape, jax.dtypes.float0), lay)
    return dq, dk, dv, no_grad


_attention.defvjp(_attention_fwd, _attention_bwd)


def block_sparse_attention_pallas(q, k, v, layout: BlockLayout, *, scale: float,
                                  interpret: bool | None = None) -> jax.Array:
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    batch, seq_q, heads, dim = q.shape
    bq, bk = layout.block_q, layout.block_k
    lay = broadcast_layout(layout, batch, heads)
    qp = _pad_seq(q, layout.num_q_blocks * bq)
    kp = _pad_seq(k, layout.num_kv_blocks * bk)
    vp = _pad_seq(v, layout.num_kv_blocks * bk)
    out = _attention(qp, kp, vp, lay, float(scale), bool(interpret))
    return out[:, :seq_q]
