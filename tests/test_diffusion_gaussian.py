"""GaussianDiffusion (DiT/IDDPM) formulas against an independent float64 numpy evaluation."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unigen.diffusion import GaussianDiffusion, beta_schedule


def test_schedules():
    b = beta_schedule("linear", 1000)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02) and b.dtype == np.float64
    b500 = beta_schedule("linear", 500)  # IDDPM scales endpoints by 1000 / T
    assert b500[0] == pytest.approx(2e-4) and b500[-1] == pytest.approx(0.04)
    c = beta_schedule("cosine", 100)
    f = np.cos((np.arange(101) / 100 + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(c, np.minimum(1 - f[1:] / f[:-1], 0.999), rtol=1e-12)
    with pytest.raises(ValueError, match="beta_schedule='quadratic' is unknown"):
        GaussianDiffusion.create(beta_schedule="quadratic")


def test_config_errors():
    with pytest.raises(ValueError, match="learn_sigma=False use loss='mse'"):
        GaussianDiffusion.create(learn_sigma=False, loss="hybrid")
    with pytest.raises(ValueError, match="loss='kl'"):
        GaussianDiffusion.create(loss="kl")
    assert GaussianDiffusion.create(learn_sigma=False).loss == "mse"
    assert GaussianDiffusion.create().loss == "hybrid"


def test_hashable_and_leafless_pytree():
    a, b = GaussianDiffusion.create(timestep_respacing="250"), GaussianDiffusion.create(timestep_respacing="250")
    assert a == b and hash(a) == hash(b) and a != GaussianDiffusion.create()
    leaves, tree = jax.tree_util.tree_flatten(a)
    assert leaves == [] and jax.tree_util.tree_unflatten(tree, leaves) == a
    f = jax.jit(lambda d, x, t: d.q_sample(x, t, x))  # passes through jit as a normal argument
    assert f(a, jnp.ones((2, 3)), jnp.array([0, 249])).shape == (2, 3)


def test_q_sample_marginals():
    d = GaussianDiffusion.create(learn_sigma=False)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    n, x0 = 20000, jnp.array([0.7, -0.3])
    for t in (0, 300, 999):
        noise = jax.random.normal(jax.random.PRNGKey(t), (n, 2))
        xt = np.asarray(d.q_sample(jnp.broadcast_to(x0, (n, 2)), jnp.full((n,), t), noise), np.float64)
        sd = math.sqrt(1 - abar[t])
        # mean within 5 standard errors; variance within 5 SE of a normal's sample variance
        np.testing.assert_array_less(np.abs(xt.mean(0) - math.sqrt(abar[t]) * np.asarray(x0)), 5 * sd / math.sqrt(n))
        np.testing.assert_array_less(np.abs(xt.var(0) - sd ** 2), 5 * sd ** 2 * math.sqrt(2 / n))


# ---- independent float64 numpy evaluation of the IDDPM hybrid loss ------------------------
def _np_hybrid(x0, t, noise, out, T=1000):
    beta = np.linspace(1e-4, 0.02, T)
    abar = np.cumprod(1 - beta)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    tilde = beta * (1 - abar_prev) / (1 - abar)
    log_tilde = np.log(np.concatenate([[tilde[1]], tilde[1:]]))
    col = lambda a: a[t][:, None, None, None]
    xt = np.sqrt(col(abar)) * x0 + np.sqrt(1 - col(abar)) * noise
    C = x0.shape[-1]
    eps, v = out[..., :C], out[..., C:]
    frac = (v + 1) / 2
    logvar = frac * np.log(col(beta)) + (1 - frac) * col(log_tilde)
    x0_hat = (xt - np.sqrt(1 - col(abar)) * eps) / np.sqrt(col(abar))
    post = lambda x_start: (np.sqrt(col(abar_prev)) * col(beta) * x_start
                            + np.sqrt(1 - col(beta)) * (1 - col(abar_prev)) * xt) / (1 - col(abar))
    mu_true, mu_model = post(x0), post(x0_hat)
    lv_true = col(log_tilde)
    kl = 0.5 * (-1 + logvar - lv_true + np.exp(lv_true - logvar) + (mu_true - mu_model) ** 2 * np.exp(-logvar))
    cdf = lambda z: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))
    inv = np.exp(-0.5 * logvar)
    plus, minus = cdf(inv * (x0 - mu_model + 1 / 255)), cdf(inv * (x0 - mu_model - 1 / 255))
    logp = np.where(x0 < -0.999, np.log(np.maximum(plus, 1e-12)),
                    np.where(x0 > 0.999, np.log(np.maximum(1 - minus, 1e-12)),
                             np.log(np.maximum(plus - minus, 1e-12))))
    flat = lambda a: a.reshape(a.shape[0], -1).mean(1)
    vb = np.where(t == 0, flat(-logp) / np.log(2), flat(kl) / np.log(2))
    mse = flat((noise - eps) ** 2)
    return dict(loss=mse + vb, mse=mse, vb=vb)


def _random_inputs(seed, B=6, H=4, C=3):
    r = np.random.default_rng(seed)
    x0 = r.uniform(-1, 1, (B, H, H, C))
    x0[:, 0, 0, 0], x0[:, 0, 1, 0] = -1.0, 1.0  # exercise both edge bins of the decoder NLL
    noise = r.standard_normal(x0.shape)
    eps = noise + 0.5 * r.standard_normal(x0.shape)
    out = np.concatenate([eps, r.uniform(-1, 1, x0.shape)], -1)
    t = np.array([0, 0, 1, 37, 500, 999])[:B]
    return x0, t, noise, out


@pytest.mark.parametrize("seed", [0, 1])
def test_hybrid_loss_matches_numpy(seed):
    x0, t, noise, out = _random_inputs(seed)
    d = GaussianDiffusion.create()
    got = d.training_losses(lambda x, tt: jnp.asarray(out, jnp.float32), jnp.asarray(x0, jnp.float32),
                            jnp.asarray(t), jnp.asarray(noise, jnp.float32))
    want = _np_hybrid(x0, t, noise, out)
    for k in ("loss", "mse", "vb"):
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=2e-4, atol=1e-5, err_msg=k)
    assert np.all(want["vb"] > 0)


def test_vb_only_trains_variance():
    x0, t, noise, out = _random_inputs(3)
    d = GaussianDiffusion.create()
    f = lambda o, key: jnp.sum(d.training_losses(lambda x, tt: o, jnp.asarray(x0, jnp.float32), jnp.asarray(t),
                                                 jnp.asarray(noise, jnp.float32))[key])
    g_vb = jax.grad(f)(jnp.asarray(out, jnp.float32), "vb")
    g_mse = jax.grad(f)(jnp.asarray(out, jnp.float32), "mse")
    assert np.all(np.asarray(g_vb[..., :3]) == 0) and np.any(np.asarray(g_vb[..., 3:]) != 0)
    assert np.all(np.asarray(g_mse[..., 3:]) == 0)


def test_mse_loss_without_learned_sigma():
    x0, t, noise, out = _random_inputs(4)
    d = GaussianDiffusion.create(learn_sigma=False)
    got = d.training_losses(lambda x, tt: jnp.asarray(out[..., :3], jnp.float32), jnp.asarray(x0, jnp.float32),
                            jnp.asarray(t), jnp.asarray(noise, jnp.float32))
    np.testing.assert_allclose(np.asarray(got["loss"]), ((noise - out[..., :3]) ** 2).mean((1, 2, 3)), rtol=1e-5)
    assert np.all(np.asarray(got["vb"]) == 0)


def test_p_mean_variance_learned_range_endpoints():
    d = GaussianDiffusion.create()
    x = jnp.ones((2, 5, 2))
    t = jnp.array([0, 400])
    for v, want in ((1.0, np.log(d.betas[[0, 400]])), (-1.0, d.posterior_log_variance_clipped[[0, 400]])):
        out = d.p_mean_variance(jnp.concatenate([jnp.zeros_like(x), jnp.full_like(x, v)], -1), x, t)
        np.testing.assert_allclose(np.asarray(out["log_variance"][:, 0, 0]), want, rtol=1e-5)
    small = GaussianDiffusion.create(learn_sigma=False, sigma_small=True)
    large = GaussianDiffusion.create(learn_sigma=False)
    assert float(small.p_mean_variance(x, x, t)["variance"][0, 0, 0]) == 0.0  # beta~_0 = 0
    np.testing.assert_allclose(np.asarray(large.p_mean_variance(x, x, t)["variance"][:, 0, 0]),
                               [d.posterior_variance[1], d.betas[400]], rtol=1e-5)


def test_channel_mismatch_errors():
    x = jnp.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"expected \(2, 4, 4, 6\).*learn_sigma"):
        GaussianDiffusion.create().training_losses(lambda x, t: x, x, jnp.zeros(2, int), x)
    with pytest.raises(ValueError, match=r"expected \(2, 4, 4, 3\)"):
        GaussianDiffusion.create(learn_sigma=False).p_mean_variance(jnp.zeros((2, 4, 4, 6)), x, jnp.zeros(2, int))


def test_sample_timesteps():
    d = GaussianDiffusion.create(timestep_respacing="10")
    t = d.sample_timesteps(jax.random.PRNGKey(0), 4000)
    assert t.shape == (4000,) and int(t.min()) == 0 and int(t.max()) == 9
    assert np.bincount(np.asarray(t)).min() > 300  # each of 10 values has mean 400, sd 19
