"""Block-sparse attention: every implementation against a numpy ground truth (values) and
against autodiff of the dense masked reference (gradients), plus layouts, mask builders,
errors, the attention-backend seam and the GPU lowering of the Pallas kernels."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unigen.kernels import (
    BlockLayout,
    block_layout,
    block_sparse_attention,
    dense_warmup,
    explicit_block_mask,
    local_window_block_mask,
    tile_order,
    topk_block_mask,
)
from unigen.nn.attention import attention

ON_GPU = jax.default_backend() == "gpu"


def numpy_block_sparse(q, k, v, block_map, bq, bk, scale):
    """Loop-free numpy ground truth: token mask from the block map, rows with nothing -> 0."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, tq, h, _ = q.shape
    tk = k.shape[1]
    bm = np.broadcast_to(np.asarray(block_map), (b, h) + np.asarray(block_map).shape[2:])
    qi = np.arange(tq) // bq
    ki = np.arange(tk) // bk
    mask = bm[:, :, qi][:, :, :, ki]  # (b, h, tq, tk)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    logits = np.where(mask, logits, -np.inf)
    m = logits.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(logits - m)
    s = p.sum(-1, keepdims=True)
    p = p / np.where(s == 0, 1.0, s)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def random_case(seed, b, tq, tk, h, d, bq, bk, density, mask_b=None, mask_h=None):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, tq, h, d)).astype(np.float32)
    k = rng.normal(size=(b, tk, h, d)).astype(np.float32)
    v = rng.normal(size=(b, tk, h, d)).astype(np.float32)
    nq, nk = math.ceil(tq / bq), math.ceil(tk / bk)
    shape = (mask_b or b, mask_h or h, nq, nk)
    bmap = rng.random(shape) < density
    bmap[0, 0, 0, :] = False  # an all-empty row
    return q, k, v, bmap


CASES = {
    # name: (b, tq, tk, h, d, bq, bk, density, mask_b, mask_h)
    "random_nonmultiple": (2, 70, 70, 3, 16, 16, 16, 0.5, None, None),
    "full_mask_multiple": (1, 64, 64, 2, 16, 32, 32, 1.1, 1, None),
    "cross_rect_blocks": (2, 48, 80, 2, 16, 16, 32, 0.6, 1, 1),
    "sparse_many_heads": (1, 96, 96, 4, 32, 32, 32, 0.3, 1, None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_impls_match_reference_values_and_grads(name):
    b, tq, tk, h, d, bq, bk, density, mb, mh = CASES[name]
    q, k, v, bmap = random_case(0, b, tq, tk, h, d, bq, bk, density, mb, mh)
    if density > 1:
        bmap[:] = True
    scale = 0.7 / math.sqrt(d)
    want = numpy_block_sparse(q, k, v, bmap, bq, bk, scale)
    layout = block_layout(bmap, tq, tk, (bq, bk))
    cot = np.random.default_rng(1).normal(size=want.shape).astype(np.float32)

    def out_and_grads(impl):
        def f(q, k, v):
            o = block_sparse_attention(q, k, v, layout, scale=scale, impl=impl)
            return jnp.sum(o * cot), o
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)

    (_, ref_out), ref_grads = out_and_grads("reference")
    for impl in ("reference", "xla", "pallas"):
        (_, out), grads = out_and_grads(impl)
        np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5, err_msg=impl)
        for label, g, r in zip("qkv", grads, ref_grads):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{impl} d{label}")
    # The boolean-map entry point (conversion inside the call) gives the same result.
    direct = block_sparse_attention(q, k, v, bmap, block_size=(bq, bk), scale=scale, impl="xla")
    np.testing.assert_allclose(np.asarray(direct), want, rtol=1e-5, atol=1e-5)
    # The empty row really outputs zeros and gets zero dq.
    if not bmap.all():
        assert np.all(want[0, :bq, 0] == 0)
        assert np.all(np.asarray(ref_grads[0])[0, :bq, 0] == 0)


def test_default_scale_and_jit_with_traced_mask():
    q, k, v, bmap = random_case(3, 1, 64, 64, 2, 16, 16, 16, 0.5)
    want = numpy_block_sparse(q, k, v, bmap, 16, 16, 1 / 4)
    for impl in ("xla", "pallas"):
        f = jax.jit(lambda q, k, v, m: block_sparse_attention(
            q, k, v, m, block_size=16, impl=impl, max_kv_blocks=4))
        np.testing.assert_allclose(np.asarray(f(q, k, v, bmap)), want, rtol=1e-5, atol=1e-5)


def test_layout_lists_and_roundtrip():
    rng = np.random.default_rng(0)
    bmap = rng.random((2, 3, 5, 7)) < 0.4
    bmap[1, 2, 3] = False
    lay = block_layout(bmap, 75, 100, 16)  # 100 = 6·16 + 4: last key block is partial
    assert isinstance(lay, BlockLayout)
    counts = bmap.sum(-1)
    assert lay.max_kv_blocks == counts.max()
    np.testing.assert_array_equal(np.asarray(lay.kv_counts), counts)
    np.testing.assert_array_equal(np.asarray(lay.q_counts), bmap.sum(-2))
    np.testing.assert_array_equal(np.asarray(lay.to_block_map()), bmap)
    idx = np.asarray(lay.kv_indices)
    for b, h, i in np.ndindex(2, 3, 5):
        n = counts[b, h, i]
        np.testing.assert_array_equal(idx[b, h, i, :n], np.flatnonzero(bmap[b, h, i]))
    np.testing.assert_array_equal(np.asarray(lay.kv_partial), idx == 6)
    assert not np.asarray(block_layout(bmap[..., :6], 75, 96, 16).kv_partial).any()


def test_layout_truncates_to_max_kv_blocks():
    bmap = np.ones((1, 1, 2, 4), bool)
    lay = block_layout(bmap, 32, 64, 16, max_kv_blocks=2)
    np.testing.assert_array_equal(np.asarray(lay.kv_indices), [[[[0, 1], [0, 1]]]])
    np.testing.assert_array_equal(np.asarray(lay.kv_counts), [[[2, 2]]])


def brute_force_window(grid, radius, order):
    coords = np.stack(np.unravel_index(order, grid), -1)
    diff = np.abs(coords[:, None] - coords[None, :])
    return np.all(diff <= radius, -1)


@pytest.mark.parametrize("grid,window,block,tile", [
    ((8, 8), 1, 16, None),
    ((12, 12), 2, 16, (4, 4)),
    ((4, 4, 4), (0, 1, 1), 16, (1, 4, 4)),
    ((6, 10), 1, 16, None),  # 60 tokens: padded tail block
])
def test_local_window_mask_covers_token_window(grid, window, block, tile):
    n = math.prod(grid)
    order = tile_order(grid, tile)[0] if tile else np.arange(n)
    bmap = local_window_block_mask(grid, window, block, token_order=order)
    nb = math.ceil(n / block)
    assert bmap.shape == (1, 1, nb, nb)
    token = brute_force_window(grid, np.asarray(window), order)
    pad = nb * block - n
    token = np.pad(token, ((0, pad), (0, pad)))
    implied = token.reshape(nb, block, nb, block).any(axis=(1, 3))
    # Never drops a needed pair; with tiles it is exactly the token window's blocks.
    assert np.all(bmap[0, 0] >= implied)
    if tile:
        np.testing.assert_array_equal(bmap[0, 0], implied)
    assert bmap[0, 0].diagonal().all() and bmap.mean() < 1.0


def test_tile_order_is_a_permutation_of_tiles():
    perm, inv = tile_order((4, 6), (2, 3))
    np.testing.assert_array_equal(perm[inv], np.arange(24))
    np.testing.assert_array_equal(perm[:6], [0, 1, 2, 6, 7, 8])
    with pytest.raises(ValueError, match="divisible"):
        tile_order((4, 6), (3, 3))


def test_topk_and_topp_masks():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, 64, 2, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, 70, 2, 8)), jnp.float32)
    m = topk_block_mask(q, k, 16, topk=2)
    assert m.shape == (2, 2, 4, 5) and np.all(np.asarray(m).sum(-1) == 2)
    from unigen.kernels import block_scores

    probs = np.asarray(block_scores(q, k, 16))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    # top-k picks the highest-scoring blocks.
    best = np.argsort(-probs, -1)[..., :2]
    np.testing.assert_array_equal(np.sort(best, -1), np.sort(np.argwhere(np.asarray(m))[:, -1].reshape(2, 2, 4, 2), -1))
    mp = np.asarray(topk_block_mask(q, k, 16, topp=0.6))
    mass = (probs * mp).sum(-1)
    assert np.all(mass >= 0.6 - 1e-6)
    # Minimal: dropping the weakest kept block falls below p.
    weakest = np.where(mp, probs, np.inf).min(-1)
    assert np.all(mass - weakest < 0.6 + 1e-6)
    capped = np.asarray(topk_block_mask(q, k, 16, topp=0.99, topk=3))
    assert np.all(capped.sum(-1) <= 3) and np.all(capped <= np.asarray(topk_block_mask(q, k, 16, topp=0.99)))


def test_dynamic_topk_attention_under_jit_and_dense_warmup():
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 64, 2, 16)), jnp.float32) for _ in range(3))

    @jax.jit
    def step_attention(q, k, v, step):
        m = dense_warmup(topk_block_mask(q, k, 16, topk=2), step, warmup_steps=3)
        return block_sparse_attention(q, k, v, m, block_size=16, impl="xla")

    dense = numpy_block_sparse(q, k, v, np.ones((1, 1, 4, 4), bool), 16, 16, 0.25)
    np.testing.assert_allclose(np.asarray(step_attention(q, k, v, 0)), dense, rtol=1e-5, atol=1e-5)
    sparse_map = np.asarray(topk_block_mask(q, k, 16, topk=2))
    want = numpy_block_sparse(q, k, v, sparse_map, 16, 16, 0.25)
    np.testing.assert_allclose(np.asarray(step_attention(q, k, v, 5)), want, rtol=1e-5, atol=1e-5)


def test_errors_are_clear():
    q = jnp.zeros((1, 40, 2, 16))
    good = np.ones((1, 2, 3, 3), bool)
    with pytest.raises(ValueError, match="does not fit the sequence"):
        block_sparse_attention(q, q, q, np.ones((1, 2, 2, 3), bool), block_size=16)
    with pytest.raises(ValueError, match="block_size is required"):
        block_sparse_attention(q, q, q, good)
    with pytest.raises(ValueError, match=r"\(B, T, H, Dh\)"):
        block_sparse_attention(q[0], q, q, good, block_size=16)
    with pytest.raises(ValueError, match="shapes do not agree"):
        block_sparse_attention(q, q[:, :, :1], q, good, block_size=16)
    with pytest.raises(ValueError, match="leading dims"):
        block_sparse_attention(q, q, q, np.ones((1, 3, 3, 3), bool), block_size=16)
    with pytest.raises(ValueError, match="boolean"):
        block_sparse_attention(q, q, q, good.astype(int), block_size=16)
    with pytest.raises(ValueError, match="impl must be one of"):
        block_sparse_attention(q, q, q, good, block_size=16, impl="cuda")
    with pytest.raises(ValueError, match="last two dims"):
        explicit_block_mask(np.ones((3, 2)), seq_q=40, seq_k=40, block_size=16)
    lay = block_layout(good, 40, 40, 16)
    with pytest.raises(ValueError, match="rebuild"):
        block_sparse_attention(q[:, :32], q[:, :32], q[:, :32], lay)


def test_gpu_tile_too_big_for_shared_memory_is_a_clear_error():
    """float32 128 x 128 tiles do not fit an H100's shared memory (measured): a ValueError
    before compiling, naming the fix; interpret mode and bfloat16 are not affected."""
    bmap = np.ones((1, 1, 1, 1), bool)
    q = jnp.zeros((1, 128, 1, 128), jnp.float32)
    with pytest.raises(ValueError, match="shared memory.*bfloat16 inputs or a block of 64"):
        block_sparse_attention(q, q, q, bmap, block_size=128, impl="pallas", interpret=False)
    x = jax.ShapeDtypeStruct((1, 128, 1, 128), jnp.bfloat16)
    jax.jit(lambda q: block_sparse_attention(q, q, q, bmap, block_size=128, impl="pallas",
                                             interpret=False)).trace(x).lower(lowering_platforms=("cuda",))
    out = block_sparse_attention(q[:, :32], q[:, :32], q[:, :32], bmap, block_size=128,
                                 impl="pallas", interpret=True)
    assert out.shape == (1, 32, 1, 128)


@pytest.mark.skipif(ON_GPU, reason="checks the CPU error path")
def test_triton_without_gpu_is_a_clear_error():
    q = jnp.zeros((1, 32, 1, 16))
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        block_sparse_attention(q, q, q, np.ones((1, 1, 2, 2), bool), block_size=16, impl="triton")


@pytest.mark.skipif(not ON_GPU, reason="Triton kernels need a CUDA GPU and jax-triton")
def test_triton_matches_reference_on_gpu():
    pytest.importorskip("jax_triton")
    q, k, v, bmap = random_case(0, 2, 200, 200, 2, 64, 64, 64, 0.5)
    want = numpy_block_sparse(q, k, v, bmap, 64, 64, 0.125)
    out = block_sparse_attention(q, k, v, bmap, block_size=64, impl="triton")
    np.testing.assert_allclose(np.asarray(out), want, rtol=2e-2, atol=2e-2)  # tf32 dots
    g = jax.grad(lambda q: jnp.sum(block_sparse_attention(q, k, v, bmap, block_size=64, impl="triton")))(q)
    r = jax.grad(lambda q: jnp.sum(block_sparse_attention(q, k, v, bmap, block_size=64, impl="reference")))(q)
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=2e-2, atol=2e-2)


def test_pallas_kernels_lower_for_cuda():
    """The same kernels compile for GPU through Pallas' Triton backend: lower fwd+bwd for
    the CUDA platform from this CPU-only jax (no GPU needed to lower)."""
    bmap = np.random.default_rng(0).random((1, 2, 4, 4)) < 0.5

    def loss(q, k, v):
        o = block_sparse_attention(q, k, v, bmap, block_size=64, impl="pallas", interpret=False)
        return jnp.sum(o.astype(jnp.float32))

    x = jax.ShapeDtypeStruct((1, 200, 2, 64), jnp.bfloat16)
    text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(x, x, x).lower(
        lowering_platforms=("cuda",)).as_text()
    assert text.count("xla.gpu.triton") == 3  # forward, dQ, dK/dV kernels


def test_attention_backend_seam():
    q, k, v, bmap = random_case(5, 1, 48, 48, 2, 16, 16, 16, 0.6)
    want = numpy_block_sparse(q, k, v, bmap, 16, 16, 0.5)
    out = attention(q, k, v, backend="block_sparse", scale=0.5, block_mask=bmap, block_size=16)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)
    full = attention(q, k, v, backend="block_sparse", block_mask=np.ones((1, 1, 3, 3), bool),
                     block_size=16, impl="pallas")
    np.testing.assert_allclose(np.asarray(full), np.asarray(attention(q, k, v, backend="einsum")),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="block_mask"):
        attention(q, k, v, backend="block_sparse", block_size=16)
