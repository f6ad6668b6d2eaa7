"""Triton tile kernels for ReLU linear attention (imported only by `triton.py`, on a GPU).

Same four kernels as `pallas.py` (see `chunked.py` for the algebra). Token tensors are
padded, contiguous (B, T, H, D): rows are `H·D` apart. States are contiguous
(B, H, n_state, D, E) float32; `PER_TILE` says whether tile i reads state i or state 0.
"""

import triton
import triton.language as tl


@triton.jit
def la_state_kernel(k_ptr, v_ptr, s_ptr, z_ptr,
                    heads: tl.constexpr, seq: tl.constexpr, n: tl.constexpr,
                    TILE: tl.constexpr, DIM: tl.constexpr, VDIM: tl.constexpr):
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    rows = i * TILE + tl.arange(0, TILE)
    offs_d = tl.arange(0, DIM)
    offs_e = tl.arange(0, VDIM)
    fk = tl.maximum(tl.load(k_ptr + b * seq * heads * DIM + h * DIM
                            + rows[:, None] * heads * DIM + offs_d[None, :]).to(tl.float32), 0.0)
    v = tl.load(v_ptr + b * seq * heads * VDIM + h * VDIM
                + rows[:, None] * heads * VDIM + offs_e[None, :]).to(tl.float32)
    s = tl.dot(tl.trans(fk), v)
    base = bh * n + i
    tl.store(s_ptr + base * DIM * VDIM + offs_d[:, None] * VDIM + offs_e[None, :], s)
    tl.store(z_ptr + base * DIM + offs_d, tl.sum(fk, 0))


@triton.jit
def la_output_kernel(q_ptr, s_ptr, z_ptr, o_ptr, den_ptr,
                     eps: tl.constexpr, heads: tl.constexpr, seq: tl.constexpr,
                     n_state: tl.constexpr, PER_TILE: tl.constexpr,
                     TILE: tl.constexpr, DIM: tl.constexpr, VDIM: tl.constexpr):
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    rows = i * TILE + tl.arange(0, TILE)
    offs_d = tl.arange(0, DIM)
    offs_e = tl.arange(0, VDIM)
    fq = tl.maximum(tl.load(q_ptr + b * seq * heads * DIM + h * DIM
                            + rows[:, None] * heads * DIM + offs_d[None, :]).to(tl.float32), 0.0)
    sidx = bh * n_state + (i if PER_TILE else 0)
    s = tl.load(s_ptr + sidx * DIM * VDIM + offs_d[:, None] * VDIM + offs_e[None, :])
    z = tl.load(z_ptr + sidx * DIM + offs_d)
    num = tl.dot(fq, s)
    den = tl.sum(fq * z[None, :], 1) + eps
    o = num / den[:, None]
    tl.store(o_ptr + b * seq * heads * VDIM + h * VDIM + rows[:, None] * heads * VDIM
             + offs_e[None, :], o.to(o_ptr.dtype.element_ty))
    tl.store(den_ptr + bh * seq + rows, den)


@triton.jit
def la_q_grad_kernel(q_ptr, o_ptr, den_ptr, do_ptr, s_ptr, z_ptr,  # inputs
                     dq_ptr, g_ptr, gs_ptr,  # outputs
                     heads: tl.constexpr, seq: tl.constexpr, n: tl.constexpr,
                     n_state: tl.constexpr, PER_TILE: tl.constexpr,
                     TILE: tl.constexpr, DIM: tl.constexpr, VDIM: tl.constexpr):
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    rows = i * TILE + tl.arange(0, TILE)
    offs_d = tl.arange(0, DIM)
    offs_e = tl.arange(0, VDIM)
    q_off = b * seq * heads * DIM + h * DIM + rows[:, None] * heads * DIM + offs_d[None, :]
    o_off = b * seq * heads * VDIM + h * VDIM + rows[:, None] * heads * VDIM + offs_e[None, :]
    q = tl.load(q_ptr + q_off).to(tl.float32)
    fq = tl.maximum(q, 0.0)
    do = tl.load(do_ptr + o_off).to(tl.float32)
    o = tl.load(o_ptr + o_off).to(tl.float32)
    den = tl.load(den_ptr + bh * seq + rows)
    dn = do / den[:, None]
    dd = -tl.sum(do * o, 1) / den
    sidx = bh * n_state + (i if PER_TILE else 0)
    s = tl.load(s_ptr + sidx * DIM * VDIM + offs_d[:, None] * VDIM + offs_e[None, :])
    z = tl.load(z_ptr + sidx * DIM + offs_d)
    dfq = tl.dot(dn, tl.trans(s)) + dd[:, None] * z[None, :]
    tl.store(dq_ptr + q_off, tl.where(q > 0, dfq, 0.0).to(dq_ptr.dtype.element_ty))
    base = bh * n + i
    tl.store(g_ptr + base * DIM * VDIM + offs_d[:, None] * VDIM + offs_e[None, :],
             tl.dot(tl.trans(fq), dn))
    tl.store(gs_ptr + base * DIM + offs_d, tl.sum(fq * dd[:, None], 0))


@triton.jit
def la_kv_grad_kernel(k_ptr, v_ptr, g_ptr, gs_ptr,  # inputs
                      dk_ptr, dv_ptr,  # outputs
                      heads: tl.constexpr, seq: tl.constexpr,
                      n_state: tl.constexpr, PER_TILE: tl.constexpr,
                      TILE: tl.constexpr, DIM: tl.constexpr, VDIM: tl.constexpr):
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    rows = i * TILE + tl.arange(0, TILE)
    offs_d = tl.arange(0, DIM)
    offs_e = tl.arange(0, VDIM)
    k_off = b * seq * heads * DIM + h * DIM + rows[:, None] * heads * DIM + offs_d[None, :]
    v_off = b * seq * heads * VDIM + h * VDIM + rows[:, None] * heads * VDIM + offs_e[None, :]
    k = tl.load(k_ptr + k_off).to(tl.float32)
    v = tl.load(v_ptr + v_off).to(tl.float32)
    sidx = bh * n_state + (i if PER_TILE else 0)
    g = tl.load(g_ptr + sidx * DIM * VDIM + offs_d[:, None] * VDIM + offs_e[None, :])
    gs = tl.load(gs_ptr + sidx * DIM + offs_d)
    dfk = tl.dot(v, tl.trans(g)) + gs[None, :]
    tl.store(dk_ptr + k_off, tl.where(k > 0, dfk, 0.0).to(dk_ptr.dtype.element_ty))
    tl.store(dv_ptr + v_off, tl.dot(tl.maximum(k, 0.0), g).to(dv_ptr.dtype.element_ty))
