"""Samplers for GaussianDiffusion (DDPM, DDIM, DPM-Solver++ 2M) and RectifiedFlow
(Euler, Heun, DPM-Solver++ 2M). Every loop is one `lax.scan` inside one `jax.jit`.

Common call shape:

    x = sampler(process, model_fn, shape, rng, *, cond=None, noise=None, <options>, progress=False)

  process   a GaussianDiffusion for DDPM/DDIM; a process with the FlowODE capability (e.g. a
            RectifiedFlow) for Euler/Heun; one with DataPrediction for DPM-Solver++
            (unigen.diffusion.objective; the registrations at the end of this file).
            Hashed by its config (static).
  model_fn  model_fn(x, t, **cond) -> output, in the process's own time convention
            (Gaussian: original integer timestep; flow: flow.model_time(sigma), the output read
            through flow.ode_velocity, so a LightningDiT-convention flow samples the same way).
            Static: compiled code is cached per (process, model_fn identity, shape,
            static options), so build model_fn ONCE and reuse it. To change weights
            without recompiling, pass them through cond, e.g.
            model_fn = lambda x, t, params, y: apply(params, x, t, y)
            and cond=dict(params=params, y=labels).
  shape     output shape (B, ...), channels last; x starts as N(0, I) from rng,
            or `noise` (the x_T / z_1 to start from).
  rng       one PRNG key, or one key per example ((B, 2) raw keys): then example i's noise
            (start and steps) depends on its key alone, not on the batch it is sampled in.
  cond      dict of arrays/pytrees forwarded as **cond (traced: new values do not recompile).
Returns the final sample, shape `shape`. All functions are also traceable inside a caller's jit.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from unigen.diffusion.flow import RectifiedFlow, shift_sigma
from unigen.diffusion.gaussian import GaussianDiffusion
from unigen.diffusion.objective import DataPrediction, FlowODE, is_key_batch, per_example, split_keys
from unigen.diffusion.registry import register_sampler

_BAR = [None]  # the tqdm bar of the call in progress (progress=True only)


def _tick():
    if _BAR[0] is not None:
        _BAR[0].update(1)


def _run(fn, total, progress, *args):
    if not progress:
        return fn(*args)
    from tqdm.auto import tqdm  # lazy: only for progress bars
    with tqdm(total=total) as bar:
        _BAR[0] = bar
        try:
            return jax.block_until_ready(fn(*args))
        finally:
            _BAR[0] = None


def _start(shape, rng, noise):
    """x_T (from `noise`, else drawn) and the key(s) for the later steps. `rng` is one key, or
    one key per example: then sample i depends on its own key only, whatever the batch."""
    k_init, k_steps = split_keys(rng)
    return (_normal(k_init, shape, jnp.float32) if noise is None else noise), k_steps


def _step_keys(k_steps, n):
    """(n, ...) keys, one per step: (n, 2) from one key, (n, B, 2) from per-example keys."""
    if is_key_batch(k_steps):
        return jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, n))(k_steps), 0, 1)
    return jax.random.split(k_steps, n)


def _normal(key, shape, dtype):
    """N(0, I) of `shape`: from one key, or row i from the i-th of per-example keys."""
    if is_key_batch(key):
        return per_example(key, shape[0], lambda k: jax.random.normal(k, shape[1:], dtype))
    return jax.random.normal(key, shape, dtype)


def _check(process, kind, name, shape, noise):
    if not isinstance(process, kind):
        raise ValueError(f"{name} needs a process with {kind.__name__}, got {type(process).__name__}")
    if noise is not None and tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise shape {noise.shape} must equal shape {tuple(shape)}")


# ---- DDPM / DDIM (Gaussian) ----------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=(0, 1, 2, 6, 7, 8))
def _ddpm_ddim(diff, model_fn, shape, rng, cond, noise, clip_denoised, ddim, progress, eta):
    x, k_steps = _start(shape, rng, noise)
    T = diff.num_timesteps

    def body(x, inp):
        i, key = inp
        t = jnp.full((shape[0],), i, jnp.int32)
        out = diff.p_mean_variance(model_fn(x, diff.model_timesteps(t), **cond), x, t, clip_denoised)
        z = _normal(key, x.shape, x.dtype)
        if ddim:  # DDIM eq. 12 with sigma_t(eta) (eq. 16); eps re-derived from (clipped) x0
            eps = diff.predict_eps_from_xstart(x, t, out["pred_xstart"])
            ab, ab_prev = diff._at(diff.alphas_cumprod, t, x), diff._at(diff.alphas_cumprod_prev, t, x)
            sig = eta * jnp.sqrt((1 - ab_prev) / (1 - ab)) * jnp.sqrt(1 - ab / ab_prev)
            mean, std = out["pred_xstart"] * jnp.sqrt(ab_prev) + jnp.sqrt(1 - ab_prev - sig ** 2) * eps, sig
        else:  # ancestral step x_{t-1} ~ N(mean, exp(log_var))
            mean, std = out["mean"], jnp.exp(0.5 * out["log_variance"])
        x = (mean + jnp.where(i > 0, std, 0.0) * z).astype(x.dtype)  # no noise at the last step
        if progress:
            jax.debug.callback(_tick)
        return x, None

    x, _ = jax.lax.scan(body, x, (jnp.arange(T - 1, -1, -1), _step_keys(k_steps, T)))
    return x


def ddpm(diffusion, model_fn, shape, rng, *, cond=None, noise=None, clip_denoised=False, progress=False):
    """Ancestral sampling over all (possibly respaced) steps, as IDDPM `p_sample_loop`.
    Handles fixed and learned variance; clip_denoised clips x0 predictions to [-1, 1]."""
    _check(diffusion, GaussianDiffusion, "ddpm", shape, noise)
    return _run(_ddpm_ddim, diffusion.num_timesteps, progress, diffusion, model_fn, tuple(shape), rng,
                cond or {}, noise, bool(clip_denoised), False, bool(progress), 0.0)


def ddim(diffusion, model_fn, shape, rng, *, eta=0.0, cond=None, noise=None, clip_denoised=False,
         progress=False):
    """DDIM (Song et al. 2021) over all steps of the (respaced, e.g. "ddim50") diffusion.
    eta=0 is deterministic; eta=1 matches DDPM's posterior variance. eta is traced."""
    _check(diffusion, GaussianDiffusion, "ddim", shape, noise)
    return _run(_ddpm_ddim, diffusion.num_timesteps, progress, diffusion, model_fn, tuple(shape), rng,
                cond or {}, noise, bool(clip_denoised), True, bool(progress), jnp.float32(eta))


# ---- Euler / Heun (flow ODE) ---------------------------------------------------------------
def flow_sigmas(flow: RectifiedFlow, steps: int, shift: float | None = None) -> np.ndarray:
    """Sampling grid from sigma = 1 to 0: linspace(1, 0, steps + 1) with SD3's shift applied
    (flow.shift unless `shift` is given). float64 numpy, shape (steps + 1,)."""
    if shift is not None:
        if int(steps) < 1:
            raise ValueError(f"steps={steps} must be >= 1")
        return shift_sigma(np.linspace(1.0, 0.0, int(steps) + 1), shift)
    return flow.sigma_grid(steps)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 6, 7, 8))
def _flow_ode(flow, model_fn, shape, rng, cond, noise, heun, final_euler, progress, sigmas):
    z, _ = _start(shape, rng, noise)

    def vel(z, s):
        sigma = jnp.full((shape[0],), s, jnp.float32)
        out = model_fn(z, flow.model_time(sigma), **cond)
        return flow.ode_velocity(out, z, sigma).astype(z.dtype)  # dz/dsigma, whatever the model predicts

    def step(z, pair, second_order):
        s, s_next = pair[0], pair[1]
        d = vel(z, s)
        z_next = z + (s_next - s) * d
        if second_order:  # Heun: trapezoid of the slopes at both ends (EDM alg. 1)
            z_next = z + (s_next - s) * 0.5 * (d + vel(z_next, s_next))
        if progress:
            jax.debug.callback(_tick)
        return z_next, None

    pairs = jnp.stack([sigmas[:-1], sigmas[1:]], axis=1).astype(jnp.float32)
    n_scan = pairs.shape[0] - (1 if final_euler else 0)
    z, _ = jax.lax.scan(lambda z, p: step(z, p, heun), z, pairs[:n_scan])
    if final_euler:  # EDM: no correction on the step that lands on sigma = 0
        z, _ = step(z, pairs[-1], False)
    return z


def euler(flow, model_fn, shape, rng, *, steps=50, sigmas=None, cond=None, noise=None, progress=False):
    """Euler on dz/dsigma = v over `flow_sigmas(flow, steps)` (or an explicit `sigmas` grid)."""
    _check(flow, FlowODE, "euler", shape, noise)
    s = flow.sigma_grid(steps, sigmas)
    return _run(_flow_ode, s.size - 1, progress, flow, model_fn, tuple(shape), rng, cond or {}, noise,
                False, False, bool(progress), jnp.asarray(s, jnp.float32))


def heun(flow, model_fn, shape, rng, *, steps=50, sigmas=None, cond=None, noise=None, progress=False):
    """Heun (2nd order; 2 evaluations per step, one on the final step to sigma = 0)."""
    _check(flow, FlowODE, "heun", shape, noise)
    s = flow.sigma_grid(steps, sigmas)
    return _run(_flow_ode, s.size - 1, progress, flow, model_fn, tuple(shape), rng, cond or {}, noise,
                True, bool(s[-1] == 0), bool(progress), jnp.asarray(s, jnp.float32))


# ---- DPM-Solver++(2M) ------------------------------------------------------------------------
def dpm2m_coefficients(alpha, sigma):
    """Per-step (a, b, c) with x_next = a x + b D + c (D - D_prev), D the data prediction
    (Lu et al. 2022, DPM-Solver++ alg. 2, midpoint form as diffusers). Grid points have
    x = alpha x0 + sigma eps; lambda = log(alpha / sigma). The first step and a final step
    to sigma = 0 are first order (`lower_order_final`)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.log(alpha) - np.log(sigma)
        a = sigma[1:] / sigma[:-1]
        b = alpha[1:] - sigma[1:] * alpha[:-1] / sigma[:-1]  # = alpha_t (1 - e^{-h}), finite at alpha_s = 0
        h = lam[1:] - lam[:-1]
        ratio = np.concatenate([[0.0], h[1:] / h[:-1]])  # h / h_prev = 1 / r0
    ratio[~np.isfinite(ratio)] = 0.0  # previous step started at sigma = 1 (lambda = -inf): no history
    if sigma[-1] == 0:
        ratio[-1] = 0.0
    return a, b, 0.5 * b * ratio


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 6, 7))
def _dpm2m(process, model_fn, shape, rng, cond, noise, clip_denoised, progress, grid, a, b, c):
    x, _ = _start(shape, rng, noise)

    def body(carry, inp):
        x, d_prev = carry
        g, ai, bi, ci = inp
        d = process.denoise(model_fn, x, g, **cond)
        d = (jnp.clip(d, -1.0, 1.0) if clip_denoised else d).astype(x.dtype)
        if progress:
            jax.debug.callback(_tick)
        return ((ai * x + bi * d + ci * (d - d_prev)).astype(x.dtype), d), None

    (x, _), _ = jax.lax.scan(body, (x, jnp.zeros_like(x)), (grid, a, b, c))
    return x


def dpm_solver_2m(process, model_fn, shape, rng, *, steps=20, sigmas=None, cond=None, noise=None,
                  clip_denoised=False, progress=False):
    """DPM-Solver++(2M), data prediction, `steps` model evaluations, ending at sigma = 0, for
    any process of the objective protocol (its `dpm_grid` and `denoise`):

    GaussianDiffusion: discrete-time VP with alpha = sqrt(abar_t), sigma = sqrt(1 - abar_t)
    at timesteps round(linspace(0, T-1, steps+1))[::-1][:-1] of the (respaced) process,
    as diffusers' DPMSolverMultistepScheduler ("linspace" spacing, final sigma zero).
    RectifiedFlow: alpha = 1 - sigma on `flow_sigmas(flow, steps)` (or `sigmas`), x0 = z - sigma v.
    """
    _check(process, DataPrediction, "dpm_solver_2m", shape, noise)
    grid, alpha, sigma = process.dpm_grid(steps, sigmas)
    grid = jnp.asarray(grid, jnp.int32 if np.issubdtype(np.asarray(grid).dtype, np.integer) else jnp.float32)
    a, b, c = (jnp.asarray(v, jnp.float32) for v in dpm2m_coefficients(alpha, sigma))
    return _run(_dpm2m, grid.shape[0], progress, process, model_fn, tuple(shape), rng, cond or {}, noise,
                bool(clip_denoised), bool(progress), grid, a, b, c)


@dataclasses.dataclass(frozen=True)
class ClipOptions:
    """`config.sample.clip_denoised`: clip each x0 prediction to the data range [-1, 1] (IDDPM's
    clip_denoised, DPM-Solver++'s thresholding): for pixel data it removes off-range drift."""
    clip_denoised: bool = False

    def validate(self):
        if not isinstance(self.clip_denoised, bool):
            raise ValueError(f"clip_denoised={self.clip_denoised!r}: use True or False")


@dataclasses.dataclass(frozen=True)
class DDIMOptions(ClipOptions):
    """DDIM's `config.sample.eta`: 0 is deterministic, 1 the DDPM posterior's variance."""
    eta: float = 0.0

    def validate(self):
        super().validate()
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not self.eta >= 0.0:
            raise ValueError(f"eta={self.eta!r}: use a number >= 0 (0 = deterministic DDIM, 1 = DDPM's variance)")


# The built-in samplers, by what they need of a process (unigen.diffusion.registry).
register_sampler("ddpm", ddpm, needs=(GaussianDiffusion,), options=ClipOptions,
                 help="ancestral sampling over a respaced Gaussian chain (IDDPM)")
register_sampler("ddim", ddim, needs=(GaussianDiffusion,), options=DDIMOptions,
                 help="DDIM over a respaced Gaussian chain; eta=0 deterministic")
register_sampler("euler", euler, needs=(FlowODE,), help="Euler on the flow ODE")
register_sampler("heun", heun, needs=(FlowODE,), help="Heun (2nd order) on the flow ODE")
register_sampler("dpm_solver_2m", dpm_solver_2m, needs=(DataPrediction,), options=ClipOptions,
                 help="DPM-Solver++(2M), data prediction")
