"""unigen.nn building blocks against their references (diffusers' helpers where they exist)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from unigen import nn as unn

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_timestep_embedding_matches_diffusers(shift):
    from diffusers.models.embeddings import get_timestep_embedding
    t = np.array([0, 1, 17, 500, 999], np.float32)
    ref = get_timestep_embedding(torch.from_numpy(t), 256, flip_sin_to_cos=True, downscale_freq_shift=shift).numpy()
    got = np.asarray(unn.timestep_embedding(jnp.asarray(t), 256, freq_shift=shift))
    np.testing.assert_allclose(got, ref, atol=1e-4)  # t * freq up to 999 in float32: ulp ~6e-5


def test_sincos_2d_matches_diffusers():
    from diffusers.models.embeddings import get_2d_sincos_pos_embed
    ref = get_2d_sincos_pos_embed(64, (4, 4), base_size=4, interpolation_scale=1.0, output_type="np")
    np.testing.assert_allclose(unn.sincos_2d(64, 4, 4), ref, atol=1e-6)


def test_patchify_roundtrip_and_order():
    x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    tokens = unn.patchify(x, 2)
    assert tokens.shape == (2, 6, 12)
    # token 1 is the patch at row 0, columns 2..3; inside it the order is (p, q, c)
    np.testing.assert_array_equal(tokens[0, 1], np.asarray(x[0, 0:2, 2:4, :]).reshape(-1))
    np.testing.assert_array_equal(unn.unpatchify(tokens, 2, 4, 6), x)
    with pytest.raises(ValueError, match="not divisible by patch size 4"):
        unn.patchify(x, 4)


def test_rope_2d_is_relative_and_norm_preserving():
    head_dim, grid = 8, 4
    angles = jnp.asarray(unn.rope_2d_freqs(head_dim, grid, grid))
    rng = np.random.RandomState(0)
    q = jnp.asarray(rng.randn(1, 1, 1, head_dim), jnp.float32)
    k = jnp.asarray(rng.randn(1, 1, 1, head_dim), jnp.float32)
    tile = lambda a: jnp.broadcast_to(a, (1, grid * grid, 1, head_dim))
    rq, rk = unn.apply_rope(tile(q), angles), unn.apply_rope(tile(k), angles)
    np.testing.assert_allclose(jnp.linalg.norm(rq, axis=-1), jnp.linalg.norm(tile(q), axis=-1), rtol=1e-5)
    dot = lambda i, j: float(jnp.sum(rq[0, i, 0] * rk[0, j, 0]))
    pos = lambda r, c: r * grid + c
    # the score depends only on the offset between tokens, in both grid directions
    assert dot(pos(0, 0), pos(1, 2)) == pytest.approx(dot(pos(2, 1), pos(3, 3)), rel=1e-4)
    assert dot(pos(0, 0), pos(1, 2)) != pytest.approx(dot(pos(0, 0), pos(2, 1)), rel=1e-3)


def test_attention_backends_agree_and_validate():
    rng = np.random.RandomState(1)
    q, k, v = (jnp.asarray(rng.randn(2, 10, 3, 8), jnp.float32) for _ in range(3))
    ref = unn.attention(q, k, v, backend="xla")
    np.testing.assert_allclose(unn.attention(q, k, v, backend="einsum"), ref, atol=1e-5)
    with torch.no_grad():
        t = lambda a: torch.from_numpy(np.asarray(a)).transpose(1, 2)
        expected = torch.nn.functional.scaled_dot_product_attention(t(q), t(k), t(v)).transpose(1, 2).numpy()
    np.testing.assert_allclose(ref, expected, atol=1e-5)
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        unn.attention(q, k, v, backend="flash")
    with pytest.raises(ValueError, match=r"\(B, T, H, Dh\)"):
        unn.attention(q[0], k[0], v[0])


def test_mlps_norms_and_labels():
    rngs = nnx.Rngs(0)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
    assert unn.Mlp(16, 64, rngs=rngs)(x).shape == (2, 5, 16)
    assert unn.SwiGLU(16, 40, rngs=rngs)(x).shape == (2, 5, 16)
    ln = unn.layer_norm(x, 1e-6)
    np.testing.assert_allclose(ln.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(ln.std(-1), 1, atol=1e-3)
    ref = torch.nn.functional.layer_norm(torch.from_numpy(np.asarray(x)), (16,), eps=1e-6).numpy()
    np.testing.assert_allclose(ln, ref, atol=1e-5)
    emb = unn.LabelEmbedder(10, 8, dropout=0.5, rngs=rngs)
    y = jnp.arange(10).repeat(100)
    dropped = emb.drop(y, jax.random.PRNGKey(3))
    assert 0.4 < float(jnp.mean(dropped == 10)) < 0.6  # null class = num_classes
    assert emb(y).shape == (1000, 8) and emb.table.shape == (11, 8)
    np.testing.assert_allclose(unn.modulate(jnp.ones((2, 3, 4)), jnp.ones((2, 4)), jnp.ones((2, 4))), 3.0)


@pytest.mark.parametrize("in_dims,out_dims", [(8, (3, 2, 4)), ((2, 4), 8), (16, 4), (6, 6)])
def test_dense_general_gradients_match_dot_general(in_dims, out_dims):
    # Both branches of the hand-written VJP (narrow input: dW = X^T dY; wide input: the
    # transposed product, transposed back) against JAX's own rule, with two batch axes.
    in_dims = (in_dims,) if isinstance(in_dims, int) else in_dims
    out_dims = (out_dims,) if isinstance(out_dims, int) else out_dims
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (2, 5) + in_dims)
    w = jax.random.normal(kw, in_dims + out_dims)
    dy = jax.random.normal(kg, (2, 5) + out_dims)
    n_in = len(in_dims)
    dims = ((tuple(range(2, 2 + n_in)), tuple(range(n_in))), ((), ()))
    y_ref, vjp_ref = jax.vjp(lambda x, w: jax.lax.dot_general(x, w, dims), x, w)
    y, vjp = jax.vjp(lambda x, w: unn.dense_general(x, w, n_in), x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6)
    for got, want in zip(vjp(dy), vjp_ref(dy)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"do not match kernel input axes"):
        unn.dense_general(x, w.reshape((-1,) + w.shape[n_in:])[:3], 1)


def test_jvp_through_dit_needs_jvp_compatible_and_agrees_with_vjp():
    # The custom VJPs (Dense, einsum attention) have no forward-mode rule; inside
    # jvp_compatible() a jvp works and agrees with the default-mode VJP: <u, J v> = <J^T u, v>.
    from unigen.models.dit import DiT, dit_config
    cfg = dit_config("DiT-S/2", input_size=8, depth=2, hidden_size=32, num_heads=4, num_classes=10)
    model = DiT(cfg, rngs=nnx.Rngs(0))
    # adaLN-Zero starts every block as the identity: perturb the zero-initialised params.
    graph, params = nnx.split(model)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
    model = nnx.merge(graph, params)
    x, v, u = (jax.random.normal(jax.random.PRNGKey(i), s) for i, s in
               ((2, (2, 8, 8, 4)), (3, (2, 8, 8, 4)), (4, (2, 8, 8, 8))))
    t, y = jnp.array([3, 700]), jnp.array([1, 9])
    f = lambda x: model(x, t, y)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(f, (x,), (v,))
    with unn.jvp_compatible():
        _, jv = jax.jvp(f, (x,), (v,))
    (jtu,) = jax.vjp(f, x)[1](u)
    assert float(jnp.sum(u * jv)) == pytest.approx(float(jnp.sum(jtu * v)), rel=1e-4)
    assert float(jnp.abs(jv).max()) > 0
