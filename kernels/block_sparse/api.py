"""`block_sparse_attention`: one function in front of the four implementations."""

from __future__ import annotations

import math

import jax

from .layout import BlockLayout, block_layout

IMPLS = ("reference", "xla", "pallas", "triton")


def check_qkv(q, k, v, name: str) -> None:
    for label, x in (("q", q), ("k", k), ("v", v)):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(
                f"{name}: {label} must be (B, T, H, Dh); got shape {getattr(x, 'shape', None)}"
            )
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:] or k.shape != v.shape:
        raise ValueError(
            f"{name}: shapes do not agree: q{q.shape} k{k.shape} v{v.shape} "
            "(need the same B, H, Dh; k and v identical)"
        )


def check_impl(impl: str, name: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"{name}: impl must be one of {IMPLS}; got {impl!r}")
    if impl == "triton" and jax.default_backend() != "gpu":
        raise ValueError(
            f"{name}: impl='triton' needs a CUDA GPU (jax backend is "
            f"{jax.default_backend()!r}); use impl='pallas' (interpret mode) or 'xla' on CPU"
        )


# The largest (block x head dim) tile, in bytes, the compiled GPU kernels are known to fit in
# shared memory. Measured on an H100 (227 KiB per block): bfloat16 128 x 128 and float32
# 64 x 128 ran; float32 128 x 128 (64 KiB tiles) asked for 320 KiB in both the Pallas and
# the Triton kernels and failed at run time with an opaque resource error.
MAX_GPU_TILE_BYTES = 32 * 1024


def check_gpu_tile(impl: str, interpret, layout: BlockLayout, q, name: str) -> None:
    compiled = impl == "triton" or (
        impl == "pallas" and not (jax.default_backend() != "gpu" if interpret is None else interpret))
    if not compiled:
        return
    block = max(layout.block_q, layout.block_k)
    tile = block * q.shape[-1] * q.dtype.itemsize
    if tile > MAX_GPU_TILE_BYTES:
        raise ValueError(
            f"{name}: impl={impl!r} on GPU with {q.dtype} inputs, head dim {q.shape[-1]} and "
            f"block {block} makes {tile // 1024} KiB tiles, more than the kernels fit in shared "
            f"memory ({MAX_GPU_TILE_BYTES // 1024} KiB); use bfloat16 inputs or a block of "
            f"{MAX_GPU_TILE_BYTES // (q.shape[-1] * q.dtype.itemsize)} or less"
        )


def block_sparse_attention(
    q,
    k,
    v,
    block_mask,
    *,
    block_size=None,
    scale: float | None = None,
    impl: str = "xla",
    max_kv_blocks: int | None = None,
    interpret: bool | None = None,
):
    """Attention restricted to the selected (query block, key block) pairs.

    q: (B, Tq, H, Dh); k, v: (B, Tk, H, Dh). `block_mask` is a boolean block map
    `[B or 1, H or 1, ceil(Tq/bq), ceil(Tk/bk)]` or a `BlockLayout` already converted by
    `block_layout` (convert once, reuse across layers/steps). `block_size` is an int or
    `(bq, bk)`; required with a boolean map. Lengths need not be multiples of the block:
    the tail is padded and the padded keys masked. Rows that select no block output 0.

    impl: "reference" (dense + mask), "xla" (block gather; CPU fast path), "pallas"
    (FA2-style kernel, `interpret` defaults to True off-GPU), "triton" (jax-triton, GPU).
    `max_kv_blocks` bounds the per-row list when the map is traced (e.g. top-k under jit).
    """
    name = "block_sparse_attention"
    check_qkv(q, k, v, name)
    check_impl(impl, name)
    batch, seq_q, heads, dim = q.shape
    seq_k = k.shape[1]
    if isinstance(block_mask, BlockLayout):
        layout = block_mask
        if block_size is not None and (layout.block_q, layout.block_k) != _pair(block_size):
            raise ValueError(
                f"{name}: block_size {block_size} differs from the layout's "
                f"({layout.block_q}, {layout.block_k})"
            )
    else:
        if block_size is None:
            raise ValueError(f"{name}: block_size is required with a boolean block_mask")
        layout = block_layout(block_mask, seq_q, seq_k, block_size, max_kv_blocks=max_kv_blocks)
    layout.check_fits(batch, heads, seq_q, seq_k)
    check_gpu_tile(impl, interpret, layout, q, name)
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)

    if impl == "reference":
        from .reference import block_sparse_attention_reference

        return block_sparse_attention_reference(q, k, v, layout, scale=scale)
    if impl == "xla":
        from .xla import block_sparse_attention_xla

        return block_sparse_attention_xla(q, k, v, layout, scale=scale)
    if impl == "pallas":
        from .pallas import block_sparse_attention_pallas

        return block_sparse_attention_pallas(q, k, v, layout, scale=scale, interpret=interpret)
    from .triton import block_sparse_attention_triton

    return block_sparse_attention_triton(q, k, v, layout, scale=scale)


def _pair(block_size):
    from .layout import normalize_block_size

    return normalize_block_size(block_size)
