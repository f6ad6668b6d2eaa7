"""Every sampler, fed the *exact* denoiser of a known 2-D Gaussian mixture, must return
samples of that mixture: mean, covariance and mixture weights within sampling error.

For x ~ sum_k w_k N(mu_k, S_k) and z = a x + s eps (VP: a = sqrt(abar_t), s = sqrt(1 - abar_t);
flow: a = 1 - sigma, s = sigma), z | k ~ N(a mu_k, C_k), C_k = a^2 S_k + s^2 I, and
    E[eps | z, k] = s C_k^-1 (z - a mu_k),   E[x | z, k] = mu_k + a S_k C_k^-1 (z - a mu_k),
averaged with the posterior responsibilities. These are the optimal eps and velocity
(E[eps] - E[x]) predictors, so sampler error = discretisation + Monte Carlo only.

Tolerances: 4.5 standard errors (estimated from the samples) plus, for first-order
solvers, a bias allowance measured once with 50,000 samples against the converged
DPM-Solver++ result (documented per case); no other slack.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unigen.diffusion import GaussianDiffusion, RectifiedFlow, label_guidance, samplers

W = np.array([0.5, 0.3, 0.2])
MU = np.array([[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]])
COV = np.array([[[0.3, 0.1], [0.1, 0.2]], [[0.15, -0.05], [-0.05, 0.4]], [[0.25, 0.0], [0.0, 0.1]]])
ABAR = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))  # DiT's linear schedule, written out here
N = 8192


def _posterior(z, a, s, logw):
    """(E[eps|z], E[x|z]) for per-example a, s (B,) and per-example log weights (B, K)."""
    C = a[:, None, None, None] ** 2 * COV[None] + s[:, None, None, None] ** 2 * jnp.eye(2)
    r = z[:, None, :] - a[:, None, None] * MU[None]
    c00, c01, c10, c11 = C[..., 0, 0], C[..., 0, 1], C[..., 1, 0], C[..., 1, 1]
    det = c00 * c11 - c01 * c10
    sol = jnp.stack([c11 * r[..., 0] - c01 * r[..., 1], c00 * r[..., 1] - c10 * r[..., 0]], -1) / det[..., None]
    resp = jax.nn.softmax(-0.5 * jnp.sum(r * sol, -1) - 0.5 * jnp.log(det) + logw, axis=-1)[..., None]
    eps = s[:, None, None] * sol
    x0 = MU[None] + a[:, None, None] * jnp.einsum("kij,bkj->bki", COV, sol)
    return (resp * eps).sum(1), (resp * x0).sum(1)


def _logw(y):
    """Class y in 0..2 selects a component; y == 3 (the null label) is the whole mixture."""
    onehot = jnp.where(jnp.arange(3) == y[:, None], 0.0, -1e30)
    return jnp.where((y == 3)[:, None], jnp.log(W)[None], onehot)


def eps_model(x, t, y=None):
    ab = jnp.asarray(ABAR, jnp.float32)[t]  # t is the ORIGINAL timestep (respacing maps it)
    logw = jnp.broadcast_to(jnp.log(W), (x.shape[0], 3)) if y is None else _logw(y)
    return _posterior(x, jnp.sqrt(ab), jnp.sqrt(1.0 - ab), logw)[0]


def eps_model_learned(x, t):  # learned-range output [eps, v] with v = 0 (geometric mean variance)
    return jnp.concatenate([eps_model(x, t), jnp.zeros_like(x)], -1)


def velocity_model(z, t, y=None):  # SD3 convention: t = 1000 sigma
    s = t / 1000.0
    logw = jnp.broadcast_to(jnp.log(W), (z.shape[0], 3)) if y is None else _logw(y)
    e, x0 = _posterior(z, 1.0 - s, s, logw)
    return e - x0


def _assign(x, w=W, mu=MU, cov=COV):
    d = x[:, None, :] - mu[None]
    inv = np.linalg.inv(cov)
    ll = -0.5 * np.einsum("bki,kij,bkj->bk", d, inv, d) - 0.5 * np.log(np.linalg.det(cov)) + np.log(w)
    return np.bincount(ll.argmax(1), minlength=len(w)) / len(x)


_rng = np.random.default_rng(0)
_REF_N = 400_000
_comp = _rng.choice(3, _REF_N, p=W)
_REF = MU[_comp] + np.einsum("bij,bj->bi", np.linalg.cholesky(COV)[_comp], _rng.standard_normal((_REF_N, 2)))
REF_FRACTIONS = _assign(_REF)  # expected nearest-likelihood fractions (components overlap a little)


def _mixture_moments(w=W, mu=MU, cov=COV):
    m = w @ mu
    c = sum(wk * (ck + np.outer(mk - m, mk - m)) for wk, mk, ck in zip(w, mu, cov))
    return m, c


def check_samples(x, bias=0.0, w=W, mu=MU, cov=COV, fractions=None):
    x = np.asarray(x, np.float64)
    n = len(x)
    assert np.all(np.isfinite(x))
    m_true, c_true = _mixture_moments(w, mu, cov)
    m = x.mean(0)
    np.testing.assert_array_less(np.abs(m - m_true), 4.5 * x.std(0) / math.sqrt(n) + bias)
    xc = x - m
    for i, j in ((0, 0), (0, 1), (1, 1)):
        prod = xc[:, i] * xc[:, j]
        assert abs(prod.mean() - c_true[i, j]) < 4.5 * prod.std() / math.sqrt(n) + bias, (i, j, prod.mean(), c_true[i, j])
    if fractions is not None:
        got = _assign(x)
        se = np.sqrt(fractions * (1 - fractions) / n + fractions * (1 - fractions) / _REF_N)
        np.testing.assert_array_less(np.abs(got - fractions), 4.5 * se + bias)


KEY = jax.random.PRNGKey(7)
VP = GaussianDiffusion.create(learn_sigma=False)


# Bias allowances below: |converged - this config| in the covariance entries, measured once
# with 50k-200k samples against DPM-Solver++ at 50 steps, rounded up. The 250-step stochastic
# samplers under-disperse by ~0.02-0.03 (O(1/steps), as IDDPM notes for fixed small variance).
@pytest.mark.parametrize("name, run, bias", [
    ("ddpm_1000_fixed_small", lambda: samplers.ddpm(
        GaussianDiffusion.create(learn_sigma=False, sigma_small=True), eps_model, (N, 2), KEY), 0.0),
    ("ddpm_250_learned_range", lambda: samplers.ddpm(
        GaussianDiffusion.create(timestep_respacing="250"), eps_model_learned, (N, 2), KEY), 0.025),
    ("ddim_eta0_250", lambda: samplers.ddim(  # first order: var bias ~ 4.5 / steps = 0.02
        GaussianDiffusion.create(learn_sigma=False, timestep_respacing="250"), eps_model, (N, 2), KEY), 0.025),
    ("ddim_eta1_250", lambda: samplers.ddim(
        GaussianDiffusion.create(learn_sigma=False, timestep_respacing="250"), eps_model, (N, 2), KEY, eta=1.0),
     0.035),
    ("dpm_solver_2m_vp_20", lambda: samplers.dpm_solver_2m(VP, eps_model, (N, 2), KEY, steps=20), 0.0),
    ("euler_200", lambda: samplers.euler(RectifiedFlow.create(), velocity_model, (N, 2), KEY, steps=200),
     0.02),  # first order: var bias ~ 3.5 / steps
    ("heun_30", lambda: samplers.heun(RectifiedFlow.create(), velocity_model, (N, 2), KEY, steps=30), 0.0),
    ("heun_30_shift3", lambda: samplers.heun(RectifiedFlow.create(shift=3.0), velocity_model, (N, 2), KEY,
                                             steps=30), 0.012),
    ("dpm_solver_2m_flow_30", lambda: samplers.dpm_solver_2m(RectifiedFlow.create(), velocity_model, (N, 2),
                                                             KEY, steps=30), 0.0),
])
def test_sampler_reproduces_mixture(name, run, bias):
    check_samples(run(), bias=bias, fractions=REF_FRACTIONS)


def test_learned_range_at_minus_one_equals_fixed_small():
    d_learn = GaussianDiffusion.create(timestep_respacing="50")
    d_small = GaussianDiffusion.create(learn_sigma=False, sigma_small=True, timestep_respacing="50")
    learned = lambda x, t: jnp.concatenate([eps_model(x, t), -jnp.ones_like(x)], -1)
    a = samplers.ddpm(d_learn, learned, (256, 2), KEY)
    b = samplers.ddpm(d_small, eps_model, (256, 2), KEY)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_compiled_once_per_model_fn():
    calls = []

    def model_fn(x, t, y):
        calls.append(1)  # Python side effect: runs only while tracing
        return eps_model(x, t, y)

    d = GaussianDiffusion.create(learn_sigma=False, timestep_respacing="ddim10")
    for seed, label in ((0, 0), (1, 2)):
        samplers.ddim(d, model_fn, (8, 2), jax.random.PRNGKey(seed), cond=dict(y=jnp.full((8,), label)))
    assert len(calls) == 1


def test_cfg_scale_one_samples_each_class():
    # The guided model must use [cond; uncond] halves in the right order: with scale 1 the
    # result is the conditional model, i.e. the component named by the label.
    guided = label_guidance(velocity_model, 1.0, num_classes=3)
    n = 3 * 2048
    y = jnp.repeat(jnp.arange(3), n // 3)
    x = np.asarray(samplers.dpm_solver_2m(RectifiedFlow.create(), guided, (n, 2), KEY, steps=30, cond=dict(y=y)))
    for k in range(3):
        check_samples(x[np.asarray(y) == k], w=np.ones(1), mu=MU[k:k + 1], cov=COV[k:k + 1])


def test_sampler_errors():
    with pytest.raises(ValueError, match="euler needs a process with FlowODE, got GaussianDiffusion"):
        samplers.euler(VP, eps_model, (4, 2), KEY)
    # The generator names what the sampler needs and which registered samplers fit instead.
    from unigen.diffusion.registry import check_sampler
    with pytest.raises(ValueError, match=r"needs \['FlowODE'\]\); use one of \['ddim', 'ddpm', 'dpm_solver_2m'\]"):
        check_sampler("heun", VP)
    with pytest.raises(ValueError, match="unknown sampler 'no_such_sampler'; registered: \\['ddim', 'ddpm'"):
        check_sampler("no_such_sampler", VP)
    with pytest.raises(ValueError, match="steps=1000 must be in 1..999"):
        samplers.dpm_solver_2m(VP, eps_model, (4, 2), KEY, steps=1000)
    with pytest.raises(ValueError, match="noise shape"):
        samplers.ddpm(VP, eps_model, (4, 2), KEY, noise=jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="strictly decreasing"):
        samplers.heun(RectifiedFlow.create(), velocity_model, (4, 2), KEY, sigmas=[0.0, 1.0])


# ---- guidance wrapper algebra -------------------------------------------------------------------
def _toy_net(x, t, y):
    """A deterministic network whose output depends on x, t and the label: 8 channels (4 eps + 4 v)."""
    feat = jnp.concatenate([x, x ** 2], -1) * (1.0 + y[:, None, None, None]) + 0.001 * t[:, None, None, None]
    return jnp.tanh(feat)


def _dit_forward_with_cfg_np(x, t, y, scale, n_guided, null=10):
    """Official DiT sampling, transcribed: z and y doubled as [x; x], [y; null], one call,
    guide model_out[:, :3] (here the last axis), concatenate with the rest, keep the first half."""
    xx, tt, yy = np.concatenate([x, x]), np.concatenate([t, t]), np.concatenate([y, np.full_like(y, null)])
    out = np.asarray(_toy_net(jnp.asarray(xx), jnp.asarray(tt), jnp.asarray(yy)))
    eps, rest = out[..., :n_guided], out[..., n_guided:]
    cond_eps, uncond_eps = np.split(eps, 2)
    half = uncond_eps + scale * (cond_eps - uncond_eps)
    return np.concatenate([np.concatenate([half, half]), rest], -1)[: len(x)]


@pytest.mark.parametrize("channels, n", [("dit", 3), (4, 4), (None, 8)])
def test_cfg_matches_dit_forward_with_cfg(channels, n):
    r = np.random.default_rng(0)
    x = r.standard_normal((3, 2, 2, 4)).astype(np.float32)
    t, y = np.array([5, 500, 999]), np.array([0, 3, 7])
    guided = label_guidance(_toy_net, 4.0, num_classes=10, channels=channels)
    got = guided(jnp.asarray(x), jnp.asarray(t), y=jnp.asarray(y))
    np.testing.assert_allclose(np.asarray(got), _dit_forward_with_cfg_np(x, t, y, 4.0, n), rtol=1e-5, atol=1e-6)


def test_cfg_interval_and_errors():
    x = jnp.ones((3, 2, 2, 4))
    t, y = jnp.array([100, 300, 700]), jnp.array([1, 2, 3])
    guided = label_guidance(_toy_net, 4.0, num_classes=10, interval=(200, 700))
    plain = label_guidance(_toy_net, 4.0, num_classes=10)
    out, full, cond = guided(x, t, y=y), plain(x, t, y=y), _toy_net(x, t, y)
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(cond[0]), rtol=1e-6)  # t=100: outside
    np.testing.assert_allclose(np.asarray(out[1:]), np.asarray(full[1:]), rtol=1e-6)  # inclusive bounds
    with pytest.raises(ValueError, match="channels"):
        label_guidance(_toy_net, 2.0, 10, channels=0)
    with pytest.raises(ValueError, match="interval"):
        label_guidance(_toy_net, 2.0, 10, interval=(0.9, 0.1))
    with pytest.raises(ValueError, match="without cond"):
        plain(x, t)


def test_traceable_inside_callers_jit_and_progress():
    d = GaussianDiffusion.create(learn_sigma=False, timestep_respacing="ddim10")

    @jax.jit
    def sample(scale, rng):  # model_fn closes over a traced value of the caller
        return samplers.ddim(d, lambda x, t: scale * eps_model(x, t), (64, 2), rng)

    direct = samplers.ddim(d, lambda x, t: 1.0 * eps_model(x, t), (64, 2), KEY)
    np.testing.assert_allclose(np.asarray(sample(1.0, KEY)), np.asarray(direct), rtol=1e-5, atol=1e-5)
    with_bar = samplers.ddim(d, eps_model, (64, 2), KEY, progress=True)
    np.testing.assert_allclose(np.asarray(with_bar), np.asarray(direct), rtol=1e-5, atol=1e-5)
