"""Pallas kernels for ReLU linear attention (SANA / SANA-Video), chunk-parallel.

Four tile kernels over a (batch, head, tile) grid; the cross-tile cumulative sums and
the custom VJP live in `chunked.py`. All products accumulate in float32 (SANA casts
q, k, v to float32 before its two matmuls for the same reason: the denominator sums T
non-negative terms). `interpret=True` on CPU; on GPU they lower through Pallas' Triton
backend.
"""

from __future__ import annotations

import functools
import math
import types

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .chunked import make_linear_attention
from .state import LinearState

_F32 = jnp.float32


def _state_kernel(k_ref, v_ref, s_ref, z_ref):
    fk = jax.nn.relu(k_ref[...].astype(_F32))
    s_ref[...] = plgpu.dot(fk, v_ref[...].astype(_F32), trans_a=True)
    z_ref[...] = jnp.sum(fk, axis=0)


def _output_kernel(q_ref, s_ref, z_ref, o_ref, den_ref, *, eps):
    fq = jax.nn.relu(q_ref[...].astype(_F32))
    num = plgpu.dot(fq, s_ref[...])
    den = jnp.sum(fq * z_ref[...][None, :], axis=1) + eps
    o_ref[...] = (num / den[:, None]).astype(o_ref.dtype)
    den_ref[...] = den


def _q_grad_kernel(q_ref, o_ref, den_ref, do_ref, s_ref, z_ref, dq_ref, g_ref, gs_ref):
    q = q_ref[...].astype(_F32)
    fq = jax.nn.relu(q)
    den = den_ref[...]
    do = do_ref[...].astype(_F32)
    dn = do / den[:, None]  # ∂L/∂numerator
    dd = -jnp.sum(do * o_ref[...].astype(_F32), axis=1) / den  # ∂L/∂denominator
    dfq = plgpu.dot(dn, s_ref[...], trans_b=True) + dd[:, None] * z_ref[...][None, :]
    dq_ref[...] = jnp.where(q > 0, dfq, 0.0).astype(dq_ref.dtype)
    g_ref[...] = plgpu.dot(fq, dn, trans_a=True)
    gs_ref[...] = jnp.sum(fq * dd[:, None], axis=0)


def _kv_grad_kernel(k_ref, v_ref, g_ref, gs_ref, dk_ref, dv_ref):
    k = k_ref[...].astype(_F32)
    g = g_ref[...]
    dfk = plgpu.dot(v_ref[...].astype(_F32), g, trans_b=True) + gs_ref[...][None, :]
    dk_ref[...] = jnp.where(k > 0, dfk, 0.0).astype(dk_ref.dtype)
    dv_ref[...] = plgpu.dot(jax.nn.relu(k), g).astype(dv_ref.dtype)


def _specs(tile, dim, vdim, per_tile: bool):
    """BlockSpecs over a (B, H, n) grid. States are per tile, or one shared by all tiles
    (bidirectional: every query tile reads the same total state)."""
    pick = (lambda i: i) if per_tile else (lambda i: 0)
    tok = lambda d: pl.BlockSpec((None, tile, None, d), lambda b, h, i: (b, i, h, 0))
    mat = pl.BlockSpec((None, None, None, dim, vdim), lambda b, h, i: (b, h, pick(i), 0, 0))
    vec = pl.BlockSpec((None, None, None, dim), lambda b, h, i: (b, h, pick(i), 0))
    row = pl.BlockSpec((None, None, tile), lambda b, h, i: (b, h, i))
    return tok, mat, vec, row


def _launchers(interpret: bool):
    def call(kernel, grid, in_specs, out_specs, out_shape, name):
        return pl.pallas_call(
            kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
            compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
            interpret=interpret, name=name,
        )

    def state(k, v, tile):
        b, t, h, d = k.shape
        e = v.shape[-1]
        n = t // tile
        tok, mat, vec, _ = _specs(tile, d, e, True)
        return call(_state_kernel, (b, h, n), [tok(d), tok(e)], [mat, vec],
                    [jax.ShapeDtypeStruct((b, h, n, d, e), _F32),
                     jax.ShapeDtypeStruct((b, h, n, d), _F32)], "linear_attention_state")(k, v)

    def output(q, s_vis, z_vis, tile, eps):
        b, t, h, d = q.shape
        e = s_vis.shape[-1]
        tok, mat, vec, row = _specs(tile, d, e, s_vis.shape[2] > 1)
        return call(functools.partial(_output_kernel, eps=eps), (b, h, t // tile),
                    [tok(d), mat, vec], [tok(e), row],
                    [jax.ShapeDtypeStruct((b, t, h, e), q.dtype),
                     jax.ShapeDtypeStruct((b, h, t), _F32)], "linear_attention_out")(q, s_vis, z_vis)

    def q_grad(q, o, den, do, s_vis, z_vis, tile):
        b, t, h, d = q.shape
        e = o.shape[-1]
        n = t // tile
        tok, mat, vec, row = _specs(tile, d, e, s_vis.shape[2] > 1)
        tok_n, mat_n, vec_n, _ = _specs(tile, d, e, True)
        return call(_q_grad_kernel, (b, h, n), [tok(d), tok(e), row, tok(e), mat, vec],
                    [tok(d), mat_n, vec_n],
                    [jax.ShapeDtypeStruct(q.shape, q.dtype),
                     jax.ShapeDtypeStruct((b, h, n, d, e), _F32),
                     jax.ShapeDtypeStruct((b, h, n, d), _F32)],
                    "linear_attention_dq")(q, o, den, do, s_vis, z_vis)

    def kv_grad(k, v, g_vis, gs_vis, tile):
        b, t, h, d = k.shape
        e = v.shape[-1]
        tok, mat, vec, _ = _specs(tile, d, e, g_vis.shape[2] > 1)
        return call(_kv_grad_kernel, (b, h, t // tile), [tok(d), tok(e), mat, vec],
                    [tok(d), tok(e)],
                    [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
                    "linear_attention_dkv")(k, v, g_vis, gs_vis)

    return types.SimpleNamespace(state=state, output=output, q_grad=q_grad, kv_grad=kv_grad)


_FUNCTIONS = {flag: make_linear_attention(_launchers(flag)) for flag in (False, True)}


def pad_to(x, tile):
    t = x.shape[1]
    return jnp.pad(x, ((0, 0), (0, math.ceil(t / tile) * tile - t), (0, 0), (0, 0)))


def choose_tile(chunk_size, seq_q, seq_k, tile):
    """Block-causal: the tile is the chunk. Bidirectional: `tile` (default 128), capped
    by the padded length so short inputs are not padded to 128."""
    if chunk_size is not None:
        return int(chunk_size)
    longest = max(seq_q, seq_k)
    return int(min(tile, max(16, 1 << (longest - 1).bit_length())))


def linear_attention_pallas(q, k, v, state: LinearState, *, chunk_size, eps, tile=128,
                            interpret=None):
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    tile = choose_tile(chunk_size, q.shape[1], k.shape[1], tile)
    f = _FUNCTIONS[bool(interpret)]
    o, kv, ks = f(pad_to(q, tile), pad_to(k, tile), pad_to(v, tile), state.kv, state.k_sum,
                  chunk_size is not None, tile, float(eps))
    return o[:, : q.shape[1]], LinearState(kv, ks)
