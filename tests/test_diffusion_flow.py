"""RectifiedFlow (SD3 / SiT): interpolation, velocity target, time conversion, time sampling."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unigen.diffusion import RectifiedFlow, shift_sigma


def test_loss_target_and_model_time():
    r = np.random.default_rng(0)
    x0, noise = r.standard_normal((4, 3, 3, 2)), r.standard_normal((4, 3, 3, 2))
    sigma = np.array([0.0, 0.25, 0.5, 1.0])
    seen = {}

    def model_fn(z, t, scale):
        seen["z"], seen["t"] = z, t
        return scale * z

    for time_scale in (1000.0, 1.0):
        flow = RectifiedFlow.create(time_scale=time_scale)
        out = flow.training_losses(model_fn, jnp.asarray(x0, jnp.float32),
                                   (jnp.asarray(sigma, jnp.float32), jnp.asarray(noise, jnp.float32)), scale=0.5)
        z = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * noise
        np.testing.assert_allclose(np.asarray(seen["z"]), z, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(seen["t"]), time_scale * sigma, rtol=1e-6)  # SD3: 1000 sigma; SiT: sigma
        want = ((0.5 * z - (noise - x0)) ** 2).mean((1, 2, 3))  # velocity target eps - x0
        np.testing.assert_allclose(np.asarray(out["loss"]), want, rtol=1e-5)


def test_loss_from_rng_and_gradient():
    flow = RectifiedFlow.create()
    x0 = jnp.ones((8, 4, 4, 3))
    out = flow.training_losses(lambda z, t: z, x0, jax.random.PRNGKey(0))
    assert out["loss"].shape == (8,) and out["sigma"].shape == (8,)
    assert bool(jnp.all((out["sigma"] > 0) & (out["sigma"] < 1)))
    g = jax.grad(lambda w: flow.training_losses(lambda z, t: w * z, x0, jax.random.PRNGKey(0))["loss"].mean())(1.0)
    assert np.isfinite(float(g)) and float(g) != 0.0


def _ks(samples, cdf):
    s = np.sort(np.asarray(samples, np.float64))
    n = len(s)
    F = cdf(s)
    return max(np.max(np.arange(1, n + 1) / n - F), np.max(F - np.arange(n) / n))


def _phi(x):
    return 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


@pytest.mark.parametrize("sampling, loc, scale, shift", [
    ("logit_normal", 0.0, 1.0, 1.0), ("logit_normal", 0.5, 0.8, 3.0), ("uniform", 0.0, 1.0, 1.0),
    ("uniform", 0.0, 1.0, 2.5)])
def test_time_sampling_distribution(sampling, loc, scale, shift):
    flow = RectifiedFlow.create(time_sampling=sampling, loc=loc, scale=scale, shift=shift)
    n = 20000
    s = np.asarray(flow.sample_sigma(jax.random.PRNGKey(1), n), np.float64)
    unshift = lambda x: x / (shift - (shift - 1) * x)  # inverse of s x / (1 + (s - 1) x)
    if sampling == "uniform":
        cdf = lambda x: unshift(x)
    else:
        cdf = lambda x: _phi((np.log(unshift(x)) - np.log1p(-unshift(x)) - loc) / scale)
    # Kolmogorov-Smirnov at the 0.1% level: critical value 1.95 / sqrt(n)
    assert _ks(s, cdf) < 1.95 / math.sqrt(n)


def test_shift_formula():
    s = np.array([0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(shift_sigma(s, 3.0), 3 * s / (1 + 2 * s))
    np.testing.assert_allclose(shift_sigma(s, 1.0), s)


def test_bad_config_and_shapes():
    with pytest.raises(ValueError, match="time_sampling='lognormal'"):
        RectifiedFlow.create(time_sampling="lognormal")
    with pytest.raises(ValueError, match="scale=0.0"):
        RectifiedFlow.create(scale=0.0)
    with pytest.raises(ValueError, match="shift=-1.0"):
        RectifiedFlow.create(shift=-1.0)
    flow = RectifiedFlow.create()
    x0 = jnp.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match="model output .* must match x0"):
        flow.training_losses(lambda z, t: jnp.concatenate([z, z], -1), x0, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="sigma"):
        flow.training_losses(lambda z, t: z, x0, (jnp.zeros(3), x0))


def test_hashable_leafless_pytree():
    a, b = RectifiedFlow.create(shift=3.0), RectifiedFlow.create(shift=3.0)
    assert a == b and hash(a) == hash(b)
    assert jax.tree_util.tree_leaves(a) == []
