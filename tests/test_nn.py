"""unigen.nn building blocks against their references (diffusers' helpers where they exist)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from unigen import nn as unn



@pytest.fixture
def torch():
    """The reference oracle; only the parity tests need it (the rest run without torch)."""
    return pytest.importorskip("torch")


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_timestep_embedding_matches_diffusers(shift, torch):
    from diffusers.models.embeddings import get_timestep_embedding
    t = np.array([0, 1, 17, 500, 999], np.float32)
    ref = get_timestep_embedding(torch.from_numpy(t), 256, flip_sin_to_cos=True, downscale_freq_shift=shift).numpy()
    got = np.asarray(unn.timestep_embedding(jnp.asarray(t), 256, freq_shift=shift))
    np.testing.assert_allclose(got, ref, atol=1e-4)  # t * freq up to 999 in float32: ulp ~6e-5


def test_sincos_2d_matches_diffusers(torch):
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


def test_attention_backends_agree_and_validate(torch):
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


def test_mlps_norms_and_labels(torch):
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
    with unn.cpu_custom_vjps():  # the hand-written VJP (on a CPU; JAX's own rule elsewhere)
        y, vjp = jax.vjp(lambda x, w: unn.dense_general(x, w, n_in), x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6)
    for got, want in zip(vjp(dy), vjp_ref(dy)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"do not match kernel input axes"):
        unn.dense_general(x, w.reshape((-1,) + w.shape[n_in:])[:3], 1)


def _perturbed_dit():
    from unigen.models.dit import DiT, dit_config
    cfg = dit_config("DiT-S/2", input_size=8, depth=2, hidden_size=32, num_heads=4, num_classes=10)
    graph, params = nnx.split(DiT(cfg, rngs=nnx.Rngs(0)))
    # adaLN-Zero starts every block as the identity: perturb the zero-initialised params.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return nnx.merge(graph, jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape)
                                                      for a, k in zip(leaves, keys)]))


def test_jvp_through_a_default_dit_matches_finite_differences_and_vjp():
    # Forward mode works through a model built with default settings, no context manager, on
    # whatever platform runs the test (CPU here; the same test on a GPU when one is there).
    model = _perturbed_dit()
    x, v, u = (jax.random.normal(jax.random.PRNGKey(i), s) for i, s in
               ((2, (2, 8, 8, 4)), (3, (2, 8, 8, 4)), (4, (2, 8, 8, 8))))
    t, y = jnp.array([3, 700]), jnp.array([1, 9])
    f = lambda x: model(x, t, y)
    _, jv = jax.jvp(f, (x,), (v,))
    eps = 1e-2  # central differences in float32: truncation ~eps^2, rounding ~1e-7/eps
    fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
    assert float(jnp.linalg.norm(jv - fd) / jnp.linalg.norm(jv)) < 2e-3
    # The adjoint identity <u, J v> = <J^T u, v>, with JAX's VJP and with the CPU custom VJPs.
    (jtu,) = jax.vjp(f, x)[1](u)
    with unn.cpu_custom_vjps():
        (jtu_custom,) = jax.vjp(f, x)[1](u)
    assert float(jnp.sum(u * jv)) == pytest.approx(float(jnp.sum(jtu * v)), rel=1e-4)
    np.testing.assert_allclose(jtu_custom, jtu, rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(jv).max()) > 0
    if jax.default_backend() == "cpu":  # the opt-in CPU VJPs have no forward rule, as documented
        with unn.cpu_custom_vjps(), pytest.raises(TypeError, match="custom_vjp"):
            jax.jvp(f, (x,), (v,))


def test_platform_defaults(monkeypatch):
    # "auto" attention: XLA for float32 and cuDNN for half precision on a GPU, einsum on a CPU;
    # the CPU custom VJPs never switch on off a CPU.
    import importlib
    ad_mode, attn = (importlib.import_module(f"unigen.nn.{m}") for m in ("ad_mode", "attention"))
    if jax.default_backend() == "cpu":
        assert attn.resolve_backend("auto", jnp.float32) == "einsum"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert attn.resolve_backend("auto", jnp.float32) == "xla"
    assert attn.resolve_backend("auto", jnp.bfloat16) == "cudnn"
    assert attn.resolve_backend("linear", jnp.float32) == "linear"
    with unn.cpu_custom_vjps():
        assert not ad_mode.use_custom_vjps()
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    with unn.cpu_custom_vjps():
        assert ad_mode.use_custom_vjps()
        with unn.jvp_compatible():
            assert not ad_mode.use_custom_vjps()
    assert not ad_mode.use_custom_vjps()


def test_next_key_draws_what_flax_draws():
    # unigen.nn.layers.next_key steps a stream without flax's in-place update (quadratic abstract
    # builds, see its docstring); it must give the keys and counter flax's own `stream()` gives.
    from unigen.nn.layers import next_key
    ours, theirs = nnx.Rngs(params=3), nnx.Rngs(params=3)
    for _ in range(4):
        np.testing.assert_array_equal(jax.random.key_data(next_key(ours.params)),
                                      jax.random.key_data(theirs.params()))
    assert int(ours.params.count[...]) == int(theirs.params.count[...]) == 4
