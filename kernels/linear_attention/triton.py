"""ReLU linear attention through jax-triton (GPU only; imported lazily).

Same chunk-parallel scheme and custom VJP as the Pallas path (`chunked.py`), with the
tile kernels of `triton_kernels.py`.
"""

from __future__ import annotations

import functools
import types

import jax
import jax.numpy as jnp

from .._triton import require_triton
from .chunked import make_linear_attention
from .pallas import choose_tile, pad_to
from .state import LinearState

_F32 = jnp.float32


def _import_triton():
    return require_triton(__package__ + ".triton_kernels")


def _launchers():
    jt, tk = _import_triton()

    def meta(x, tile, vdim):
        b, t, h, d = x.shape
        return dict(heads=h, seq=t, TILE=tile, DIM=d, VDIM=vdim, num_warps=4, num_stages=2)

    def state(k, v, tile):
        b, t, h, d = k.shape
        e, n = v.shape[-1], t // tile
        return jt.triton_call(
            k, v, kernel=tk.la_state_kernel,
            out_shape=[jax.ShapeDtypeStruct((b, h, n, d, e), _F32),
                       jax.ShapeDtypeStruct((b, h, n, d), _F32)],
            grid=(n, b * h), n=n, **meta(k, tile, e))

    def output(q, s_vis, z_vis, tile, eps):
        b, t, h, d = q.shape
        e, ns = s_vis.shape[-1], s_vis.shape[2]
        return jt.triton_call(
            q, s_vis, z_vis, kernel=tk.la_output_kernel,
            out_shape=[jax.ShapeDtypeStruct((b, t, h, e), q.dtype),
                       jax.ShapeDtypeStruct((b, h, t), _F32)],
            grid=(t // tile, b * h), eps=eps, n_state=ns, PER_TILE=ns > 1, **meta(q, tile, e))

    def q_grad(q, o, den, do, s_vis, z_vis, tile):
        b, t, h, d = q.shape
        e, ns, n = o.shape[-1], s_vis.shape[2], t // tile
        return jt.triton_call(
            q, o, den, do, s_vis, z_vis, kernel=tk.la_q_grad_kernel,
            out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                       jax.ShapeDtypeStruct((b, h, n, d, e), _F32),
                       jax.ShapeDtypeStruct((b, h, n, d), _F32)],
            grid=(n, b * h), n=n, n_state=ns, PER_TILE=ns > 1, **meta(q, tile, e))

    def kv_grad(k, v, g_vis, gs_vis, tile):
        b, t, h, d = k.shape
        e, ns = v.shape[-1], g_vis.shape[2]
        return jt.triton_call(
            k, v, g_vis, gs_vis, kernel=tk.la_kv_grad_kernel,
            out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
            grid=(t // tile, b * h), n_state=ns, PER_TILE=ns > 1, **meta(k, tile, e))

    return types.SimpleNamespace(state=state, output=output, q_grad=q_grad, kv_grad=kv_grad)


@functools.cache
def _function():
    return make_linear_attention(_launchers())


def linear_attention_triton(q, k, v, state: LinearState, *, chunk_size, eps, tile=128):
    _import_triton()
    dim, vdim = q.shape[-1], v.shape[-1]
    tile = choose_tile(chunk_size, q.shape[1], k.shape[1], tile)
    for name, n in (("head dim", dim), ("value dim", vdim), ("chunk/tile", tile)):
        if n < 16 or n & (n - 1):
            raise ValueError(f"impl='triton' needs a power-of-two {name} >= 16; got {n}")
    o, kv, ks = _function()(pad_to(q, tile), pad_to(k, tile), pad_to(v, tile), state.kv,
                            state.k_sum, chunk_size is not None, tile, float(eps))
    return o[:, : q.shape[1]], LinearState(kv, ks)
