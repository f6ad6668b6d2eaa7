"""Triton kernels for block-sparse attention (imported only by `triton.py`, on a GPU).

This module imports `triton` at the top, so nothing on a CPU-only install may import it.
Same algorithm as `pallas.py` (FA2 forward with online softmax over the listed key
blocks; backward split into a dQ kernel over the kv lists and a dK/dV kernel over the
transposed lists). Tensors are the padded (B, T, H, D) arrays, contiguous, so a token
row is `H·D` elements apart; list arrays are (B, H, n, K) contiguous.
"""

import triton
import triton.language as tl

# A constexpr: a @triton.jit function may read a module global only if it is one (a plain
# float is a NameError at compile time, seen on triton 3.6).
MASK_VALUE = tl.constexpr(-1.0e30)
INF = tl.constexpr(float("inf"))  # log-sum-exp of a row that selects no block


@triton.jit
def bs_fwd_kernel(
    q_ptr, k_ptr, v_ptr, idx_ptr, cnt_ptr, part_ptr,  # inputs
    o_ptr, lse_ptr,  # outputs
    scale: tl.constexpr, heads: tl.constexpr, seq_q_pad: tl.constexpr,
    seq_k_pad: tl.constexpr, seq_k: tl.constexpr, n_q: tl.constexpr, k_max: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, DIM: tl.constexpr,
):
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    row = heads * DIM
    offs_q = i * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, DIM)
    q_base = q_ptr + b * seq_q_pad * row + h * DIM
    k_base = k_ptr + b * seq_k_pad * row + h * DIM
    v_base = v_ptr + b * seq_k_pad * row + h * DIM
    q = tl.load(q_base + offs_q[:, None] * row + offs_d[None, :])
    list_base = (bh * n_q + i) * k_max
    count = tl.load(cnt_ptr + bh * n_q + i)

    acc = tl.zeros([BLOCK_Q, DIM], dtype=tl.float32)
    m = tl.zeros([BLOCK_Q], dtype=tl.float32) + MASK_VALUE
    l = tl.zeros([BLOCK_Q], dtype=tl.float32)
    for j in range(0, count):
        blk = tl.load(idx_ptr + list_base + j)
        partial = tl.load(part_ptr + list_base + j)
        cols = blk * BLOCK_K + offs_k
        kt = tl.load(k_base + cols[None, :] * row + offs_d[:, None])  # (DIM, BLOCK_K)
        s = tl.dot(q, kt) * scale
        keep = (partial == 0) | (cols < seq_k)
        s = tl.where(keep[None, :], s, MASK_VALUE)
        m_new = tl.maximum(m, tl.max(s, 1))
        correction = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        l = correction * l + tl.sum(p, 1)
        v = tl.load(v_base + cols[:, None] * row + offs_d[None, :])
        acc = acc * correction[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    empty = l == 0.0
    l_safe = tl.where(empty, 1.0, l)
    o = acc / l_safe[:, None]
    tl.store(o_ptr + b * seq_q_pad * row + h * DIM + offs_q[:, None] * row + offs_d[None, :],
             o.to(o_ptr.dtype.element_ty))
    lse = tl.where(empty, INF, m + tl.log(l_safe))
    tl.store(lse_ptr + bh * seq_q_pad + offs_q, lse)


@triton.jit
def bs_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, idx_ptr, cnt_ptr, part_ptr,  # inputs
    dq_ptr,  # output
    scale: tl.constexpr, heads: tl.constexpr, seq_q_pad: tl.constexpr,
    seq_k_pad: tl.constexpr, seq_k: tl.constexpr, n_q: tl.constexpr, k_max: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, DIM: tl.constexpr,
):
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    row = heads * DIM
    offs_q = i * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, DIM)
    q_off = b * seq_q_pad * row + h * DIM + offs_q[:, None] * row + offs_d[None, :]
    k_base = k_ptr + b * seq_k_pad * row + h * DIM
    v_base = v_ptr + b * seq_k_pad * row + h * DIM
    q = tl.load(q_ptr + q_off)
    do = tl.load(do_ptr + q_off)
    lse = tl.load(lse_ptr + bh * seq_q_pad + offs_q)
    delta = tl.load(delta_ptr + bh * seq_q_pad + offs_q)
    list_base = (bh * n_q + i) * k_max
    count = tl.load(cnt_ptr + bh * n_q + i)
    dq = tl.zeros([BLOCK_Q, DIM], dtype=tl.float32)
    for j in range(0, count):
        blk = tl.load(idx_ptr + list_base + j)
        partial = tl.load(part_ptr + list_base + j)
        cols = blk * BLOCK_K + offs_k
        kt = tl.load(k_base + cols[None, :] * row + offs_d[:, None])  # (DIM, BLOCK_K)
        vt = tl.load(v_base + cols[None, :] * row + offs_d[:, None])
        s = tl.dot(q, kt) * scale
        keep = (partial == 0) | (cols < seq_k)
        p = tl.where(keep[None, :], tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, vt)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt))
    tl.store(dq_ptr + q_off, (dq * scale).to(dq_ptr.dtype.element_ty))


@triton.jit
def bs_dkv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, idx_ptr, cnt_ptr,  # inputs
    dk_ptr, dv_ptr,  # outputs
    scale: tl.constexpr, heads: tl.constexpr, seq_q_pad: tl.constexpr,
    seq_k_pad: tl.constexpr, n_k: tl.constexpr, q_max: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, DIM: tl.constexpr,
):
    jb = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    row = heads * DIM
    offs_k = jb * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, DIM)
    k_off = b * seq_k_pad * row + h * DIM + offs_k[:, None] * row + offs_d[None, :]
    k = tl.load(k_ptr + k_off)
    v = tl.load(v_ptr + k_off)
    q_base = b * seq_q_pad * row + h * DIM
    list_base = (bh * n_k + jb) * q_max
    count = tl.load(cnt_ptr + bh * n_k + jb)
    dk = tl.zeros([BLOCK_K, DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_K, DIM], dtype=tl.float32)
    for j in range(0, count):
        blk = tl.load(idx_ptr + list_base + j)
        rows = blk * BLOCK_Q + offs_q
        q = tl.load(q_ptr + q_base + rows[:, None] * row + offs_d[None, :])
        do = tl.load(do_ptr + q_base + rows[:, None] * row + offs_d[None, :])
        lse = tl.load(lse_ptr + bh * seq_q_pad + rows)
        delta = tl.load(delta_ptr + bh * seq_q_pad + rows)
        s = tl.dot(q, tl.trans(k)) * scale  # (BLOCK_Q, BLOCK_K)
        p = tl.exp(s - lse[:, None])
        dv += tl.dot(tl.trans(p.to(do.dtype)), do)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    tl.store(dk_ptr + k_off, (dk * scale).to(dk_ptr.dtype.element_ty))
    tl.store(dv_ptr + k_off, dv.to(dv_ptr.dtype.element_ty))
