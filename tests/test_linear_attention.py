"""ReLU linear attention (SANA, SANA-Video): implementations against the quadratic
reference for values and gradients (q, k, v and the carried state), chunked streaming
against the full block-causal call, errors, the backend seam and the GPU lowering."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unigen.kernels import LinearState, init_linear_state, linear_attention
from unigen.nn.attention import attention

ON_GPU = jax.default_backend() == "gpu"


def numpy_sana(q, k, v, chunk_size=None, eps=1e-15):
    """SANA's formulation, as diffusers computes it: ReLU features, V padded with a row of
    ones so one product gives numerator and denominator; block-causal by explicit loop."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    fq, fk = np.maximum(q, 0), np.maximum(k, 0)
    v1 = np.concatenate([v, np.ones(v.shape[:-1] + (1,))], -1)
    out = np.zeros(q.shape[:-1] + (v.shape[-1],))
    t = q.shape[1]
    for i in range(t):
        end = k.shape[1] if chunk_size is None else min(t, (i // chunk_size + 1) * chunk_size)
        s = np.einsum("bkhd,bkhe->bhde", fk[:, :end], v1[:, :end])
        r = np.einsum("bhd,bhde->bhe", fq[:, i], s)
        out[:, i] = r[..., :-1] / (r[..., -1:] + eps)
    return out


def rand(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


CASES = {
    # name: (b, tq, tk, h, dk, dv, chunk)
    "bidirectional": (2, 40, 40, 2, 16, 16, None),
    "cross_attention": (1, 24, 56, 3, 16, 32, None),
    "block_causal_nonmultiple": (2, 50, 50, 2, 16, 32, 16),
    "block_causal_one_chunk": (1, 32, 32, 1, 16, 16, 32),
}


@pytest.mark.parametrize("name", list(CASES))
def test_impls_match_reference(name):
    b, tq, tk, h, d, e, chunk = CASES[name]
    q, k, v = rand(0, b, tq, h, d), rand(1, b, tk, h, d), rand(2, b, tk, h, e)
    want = numpy_sana(q, k, v, chunk)
    state = LinearState(jnp.abs(jnp.asarray(rand(3, b, h, d, e))), jnp.abs(jnp.asarray(rand(4, b, h, d))))
    cot = rand(5, b, tq, h, e)

    def run(impl):
        def f(q, k, v, state):
            o, new = linear_attention(q, k, v, chunk_size=chunk, state=state, impl=impl)
            # A loss touching the output and both parts of the new state.
            return jnp.sum(o * cot) + jnp.sum(jnp.sin(new.kv)) + jnp.sum(new.k_sum ** 2) * 1e-3, o
        (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, state)
        plain = jax.jit(lambda q, k, v: linear_attention(q, k, v, chunk_size=chunk, impl=impl))(q, k, v)
        return plain, out, grads

    _, ref_out, ref_grads = run("reference")
    for impl in ("reference", "xla", "pallas"):
        plain, out, grads = run(impl)
        np.testing.assert_allclose(np.asarray(plain), want, rtol=1e-4, atol=1e-5, err_msg=impl)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), rtol=1e-4, atol=1e-5)
        for label, g, r in zip(["q", "k", "v", "kv", "k_sum"], jax.tree.leaves(grads),
                               jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{impl} d{label}")


@pytest.mark.parametrize("impl", ["reference", "xla", "pallas"])
def test_streaming_chunk_by_chunk_equals_full_call(impl):
    b, t, h, d, chunk = 1, 64, 2, 16, 16
    q, k, v = rand(0, b, t, h, d), rand(1, b, t, h, d), rand(2, b, t, h, d)
    full, full_state = linear_attention(q, k, v, chunk_size=chunk, return_state=True, impl=impl)
    np.testing.assert_allclose(np.asarray(full), numpy_sana(q, k, v, chunk), rtol=1e-4, atol=1e-5)

    # A Python loop over chunks, one call per chunk, carrying the constant-size state.
    state = init_linear_state(b, h, d)
    pieces = []
    for start in range(0, t, chunk):
        sl = slice(start, start + chunk)
        o, state = linear_attention(q[:, sl], k[:, sl], v[:, sl], chunk_size=chunk, state=state, impl=impl)
        pieces.append(o)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(pieces, 1)), np.asarray(full), rtol=1e-5, atol=1e-6)
    for a, c in zip(state, full_state):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-5)

    # The same inside lax.scan (streaming generation in one jit), two chunks per step.
    def step(state, xs):
        o, state = linear_attention(*xs, chunk_size=chunk, state=state, impl=impl)
        return state, o

    split = lambda x: x.reshape(b, t // (2 * chunk), 2 * chunk, h, d).swapaxes(0, 1)
    _, outs = jax.jit(lambda: jax.lax.scan(step, init_linear_state(b, h, d), (split(q), split(k), split(v))))()
    np.testing.assert_allclose(np.asarray(outs.swapaxes(0, 1).reshape(b, t, h, d)), np.asarray(full),
                               rtol=1e-5, atol=1e-6)


def test_float32_accumulation_for_bf16_inputs():
    q, k, v = (jnp.asarray(rand(i, 1, 512, 1, 16), jnp.bfloat16) for i in range(3))
    out = linear_attention(q, k, v, impl="xla")
    assert out.dtype == jnp.bfloat16
    want = numpy_sana(np.asarray(q, np.float32), np.asarray(k, np.float32), np.asarray(v, np.float32))
    np.testing.assert_allclose(np.asarray(out, np.float32), want, rtol=2e-2, atol=2e-2)


def test_errors_are_clear():
    q = jnp.zeros((1, 32, 2, 16))
    with pytest.raises(ValueError, match=r"\(B, T, H, D\)"):
        linear_attention(q[0], q, q)
    with pytest.raises(ValueError, match="shapes do not agree"):
        linear_attention(q, q[:, :, :1], q)
    with pytest.raises(ValueError, match="self-attention"):
        linear_attention(q, q[:, :16], q[:, :16], chunk_size=8)
    with pytest.raises(ValueError, match="chunk_size must be"):
        linear_attention(q, q, q, chunk_size=0)
    with pytest.raises(ValueError, match="state shapes"):
        linear_attention(q, q, q, state=init_linear_state(1, 3, 16))
    with pytest.raises(ValueError, match="impl must be one of"):
        linear_attention(q, q, q, impl="fast")
    if not ON_GPU:
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            linear_attention(q, q, q, impl="triton")


@pytest.mark.skipif(not ON_GPU, reason="Triton kernels need a CUDA GPU and jax-triton")
def test_triton_matches_reference_on_gpu():
    pytest.importorskip("jax_triton")
    q, k, v = rand(0, 1, 256, 2, 64), rand(1, 1, 256, 2, 64), rand(2, 1, 256, 2, 64)
    for chunk in (None, 64):
        out = linear_attention(q, k, v, chunk_size=chunk, impl="triton")
        np.testing.assert_allclose(np.asarray(out), numpy_sana(q, k, v, chunk), rtol=2e-2, atol=2e-2)


def test_pallas_kernels_lower_for_cuda():
    x = jax.ShapeDtypeStruct((1, 300, 2, 64), jnp.bfloat16)
    for chunk in (None, 64):
        def loss(q, k, v):
            return jnp.sum(linear_attention(q, k, v, chunk_size=chunk, impl="pallas",
                                            interpret=False).astype(jnp.float32))
        text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(x, x, x).lower(
            lowering_platforms=("cuda",)).as_text()
        assert text.count("xla.gpu.triton") == 4  # state, output, dQ, dK/dV kernels


def test_attention_backend_seam_ignores_scale():
    q, k, v = rand(0, 1, 40, 2, 16), rand(1, 1, 40, 2, 16), rand(2, 1, 40, 2, 16)
    out = attention(q, k, v, backend="linear", scale=0.3)
    np.testing.assert_allclose(np.asarray(out), numpy_sana(q, k, v), rtol=1e-4, atol=1e-5)
    causal = attention(q, k, v, backend="linear", chunk_size=16, impl="pallas")
    np.testing.assert_allclose(np.asarray(causal), numpy_sana(q, k, v, 16), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="token mask"):
        attention(q, k, v, backend="linear", mask=np.ones((40, 40), bool))
