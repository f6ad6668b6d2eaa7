"""One attention entry point with switchable backends (docs/design.md §3).

Layout everywhere: q, k, v are (B, T, H, Dh); the output is (B, Tq, H, Dh).

Backends:
  "xla"          `jax.nn.dot_product_attention(implementation="xla")`: the reference.
  "einsum"       explicit QK^T -> softmax -> PV in a (B, H, T, D) layout, normalised after
                 PV. Same numbers as "xla" (float32: ~1e-6); faster on XLA:CPU
                 (bench/RESULTS.md). Inside `unigen.nn.cpu_custom_vjps()` on a CPU its
                 gradient is a FlashAttention-style custom VJP (saves the log-sum-exp, not
                 the (B, H, T, T) weights); elsewhere JAX's own rules, so `jax.jvp` works.
  "cudnn"        `jax.nn.dot_product_attention(implementation="cudnn")` (GPU, bf16/fp16).
  "auto"         on a GPU: "cudnn" for half precision, "xla" (XLA's fused GPU attention)
                 for float32; on a CPU: "einsum"; elsewhere "xla".
  "block_sparse" and "linear" come from the kernels package (`unigen_kernels`), imported
                 on first use; their options (block mask, chunk size, ...) pass through
                 `**options`.

A backend is any callable `fn(q, k, v, *, scale, **options) -> o`; `register_backend`
adds one, so models never need to know which kernel runs.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from unigen.nn.ad_mode import use_custom_vjps

AttentionFn = Callable[..., jax.Array]
_BACKENDS: dict[str, AttentionFn] = {}


def register_backend(name: str, fn: AttentionFn) -> None:
    """Make `fn(q, k, v, *, scale, **options)` available as `attention(..., backend=name)`."""
    _BACKENDS[name] = fn


def available_backends() -> list[str]:
    return sorted(set(_BACKENDS) | {"auto"})



def _xla(q, k, v, *, scale, mask=None):
    return jax.nn.dot_product_attention(q, k, v, scale=scale, mask=mask, implementation="xla")


def _cudnn(q, k, v, *, scale, mask=None):
    return jax.nn.dot_product_attention(q, k, v, scale=scale, mask=mask, implementation="cudnn")


def _bhtd(a):
    return a.transpose(0, 2, 1, 3)


def _dot(a, b, contract_a, contract_b):
    """Batched matmul over the leading (B, H) axes, float32 accumulation."""
    return jax.lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((0, 1), (0, 1))),
                               preferred_element_type=jnp.float32)


def _logits(q, k, scale, mask):
    """(B, H, Tq, Tk) float32 logits from (B, H, T, Dh) q, k. A float32 q is scaled before the
    product (Tq*Dh multiplies, not Tq*Tk; exact for power-of-two scales such as Dh = 64); a
    half-precision scale would round (0.2% in bf16), so there the logits are scaled."""
    if q.dtype == jnp.float32:
        s = _dot(q * jnp.float32(scale), k, 3, 3)
    else:
        s = _dot(q, k, 3, 3) * jnp.float32(scale)
    return s if mask is None else jnp.where(mask, s, jnp.finfo(jnp.float32).min)


def _einsum_forward(q, k, v, scale, mask):
    q, k, v = _bhtd(q), _bhtd(k), _bhtd(v)
    s = _logits(q, k, scale, mask)
    m = s.max(axis=-1, keepdims=True)
    e = jnp.exp(s - m)
    denom = e.sum(axis=-1, keepdims=True)
    # Normalise after P.V, as FlashAttention does: Tq*Dh divisions instead of Tq*Tk.
    o = _dot(e.astype(v.dtype), v, 3, 2) / denom
    return o.astype(v.dtype), m + jnp.log(denom)  # (B, H, Tq, Dh), log-sum-exp (B, H, Tq, 1)


def _einsum_plain(q, k, v, scale, mask):
    return _bhtd(_einsum_forward(q, k, v, scale, mask)[0])


_einsum_attention = jax.custom_vjp(_einsum_plain, nondiff_argnums=(3,))


def _einsum_fwd(q, k, v, scale, mask):
    o, lse = _einsum_forward(q, k, v, scale, mask)
    return _bhtd(o), (q, k, v, o, lse, mask)


def _einsum_bwd(scale, res, do):
    # FlashAttention's backward (Dao et al. 2022, alg. 4 without tiling): recompute
    # P = exp(S - lse) from q, k instead of saving the (B, H, Tq, Tk) weights for every
    # layer. Same step time for DiT-S/2 at T = 256 on XLA:CPU, 8% less temporary memory;
    # the saved term grows as T^2, so it matters more for longer sequences.
    q, k, v, o, lse, mask = res
    qh, kh, vh, do = _bhtd(q), _bhtd(k), _bhtd(v), _bhtd(do)
    p = jnp.exp(_logits(qh, kh, scale, mask) - lse)                    # (B, H, Tq, Tk)
    dv = _dot(p.astype(do.dtype), do, 2, 2)                            # P^T dO
    dp = _dot(do, vh, 3, 3)                                            # dO V^T
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)
    ds = p * (dp - delta)                                              # softmax backward
    if mask is not None:
        ds = jnp.where(mask, ds, 0.0)
    ds = ds.astype(q.dtype)
    scale = jnp.float32(scale)
    dq = _dot(ds, kh, 3, 2) * scale
    dk = _dot(ds, qh, 2, 2) * scale
    return (_bhtd(dq).astype(q.dtype), _bhtd(dk).astype(k.dtype), _bhtd(dv).astype(v.dtype), None)


_einsum_attention.defvjp(_einsum_fwd, _einsum_bwd)


def _einsum(q, k, v, *, scale, mask=None):
    # Written for XLA:CPU speed (bench/RESULTS.md); same numbers as "xla". Heads
    # are moved next to batch explicitly, so both products are plain (B*H) x [T, Dh]
    # matmuls: letting einsum pick the layout from (B, T, H, Dh) made XLA emit P.V
    # transposed, ~3x slower.
    return (_einsum_attention if use_custom_vjps() else _einsum_plain)(q, k, v, float(scale), mask)


register_backend("xla", _xla)
register_backend("cudnn", _cudnn)
register_backend("einsum", _einsum)


def _block_sparse(q, k, v, *, scale, block_mask=None, block_size=None, impl="xla",
                  max_kv_blocks=None, mask=None):
    """Options: `block_mask` (boolean map [B|1, H|1, ceil(Tq/bq), ceil(Tk/bk)] or a prebuilt
    `BlockLayout`), `block_size`, `impl` ("xla"; "pallas" / "triton" on GPU), `max_kv_blocks`."""
    from unigen_kernels import block_sparse_attention
    if mask is not None:
        raise ValueError("backend 'block_sparse' takes a block map via block_mask=, not a token mask=; "
                         "use backend='xla' or 'einsum' for token masks")
    if block_mask is None:
        raise ValueError("backend 'block_sparse' needs block_mask= (and block_size=)")
    return block_sparse_attention(q, k, v, block_mask, block_size=block_size, scale=scale,
                                  impl=impl, max_kv_blocks=max_kv_blocks)


def _linear(q, k, v, *, scale, chunk_size=None, impl="xla", eps=1e-15, mask=None):
    """Options: `chunk_size` (None = bidirectional SANA; int = block-causal SANA-Video), `impl`,
    `eps`. `scale` is ignored: ReLU features are positively homogeneous, so a scale s > 0 on q
    multiplies numerator and denominator alike and cancels (up to eps). Streaming with a
    carried state uses `unigen.kernels.linear_attention` directly."""
    from unigen_kernels import linear_attention
    del scale
    if mask is not None:
        raise ValueError("backend 'linear' does not take a token mask; use chunk_size= for "
                         "block-causal attention")
    return linear_attention(q, k, v, chunk_size=chunk_size, impl=impl, eps=eps)


register_backend("block_sparse", _block_sparse)
register_backend("linear", _linear)


def resolve_backend(backend: str, dtype) -> str:
    """The concrete backend "auto" stands for on this platform and dtype (see module doc)."""
    if backend != "auto":
        return backend
    platform = jax.default_backend()
    if platform == "gpu":
        return "cudnn" if jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "xla"
    return "einsum" if platform == "cpu" else "xla"


def _resolve(backend: str, dtype) -> AttentionFn:
    backend = resolve_backend(backend, dtype)
    if backend not in _BACKENDS:
        raise ValueError(
            f"unknown attention backend {backend!r}; choose one of {available_backends()}"
        )
    return _BACKENDS[backend]


def attention(q, k, v, *, backend: str = "auto", scale: float | None = None, **options):
    """Multi-head attention. q: (B, Tq, H, Dh), k/v: (B, Tk, H, Dh) -> (B, Tq, H, Dh).

    `scale` defaults to 1/sqrt(Dh). `options` go to the backend (e.g. `mask` for the
    dense backends, `block_mask`/`block_size` for "block_sparse", `chunk_size` for "linear").
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"attention expects (B, T, H, Dh) inputs; got q{q.shape} k{k.shape} v{v.shape}"
        )
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:] or k.shape != v.shape:
        raise ValueError(
            f"attention shapes do not agree: q{q.shape} k{k.shape} v{v.shape} "
            "(need same B, H, Dh; k and v identical)"
        )
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return _resolve(backend, q.dtype)(q, k, v, scale=scale, **options)
