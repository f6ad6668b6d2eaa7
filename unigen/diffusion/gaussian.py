"""Discrete Gaussian diffusion as in DDPM / improved-diffusion (IDDPM) / DiT.

Time convention (the one place it is written): integer t in 0..T-1, t = 0 is the
first noising step (closest to data). x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.
The network predicts eps; with learned variance (IDDPM "LEARNED_RANGE") it outputs
2C channels on the *last* axis (NHWC, or (B, ..., C) in general): [eps, v], and
    log sigma^2 = frac * log beta_t + (1 - frac) * log beta~_t (clipped),  frac = (v + 1) / 2.
For a respaced process the network receives the *original* timestep indices
(`model_timesteps`), like the reference's `_WrappedModel`.

Works with any `model_fn(x, t, **cond) -> output`; nothing here knows the network.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from unigen.diffusion.objective import per_example, split_keys
from unigen.diffusion.respacing import respace_betas, space_timesteps

VARIANCES = ("learned_range", "fixed_small", "fixed_large")
LOSSES = ("hybrid", "mse")


BETA_SCHEDULES = ("linear", "cosine", "scaled_linear")


def beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """IDDPM `get_named_beta_schedule` (float64), and Stable Diffusion's "scaled_linear"."""
    if name == "linear":
        # Ho et al.'s 1e-4..0.02 over 1000 steps, rescaled so other T give the same process.
        scale = 1000.0 / num_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    if name in ("cosine", "squaredcos_cap_v2"):
        # Nichol & Dhariwal eq. 17 with s = 0.008, betas capped at 0.999.
        abar = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - abar((i + 1) / num_timesteps) / abar(i / num_timesteps), 0.999)
                         for i in range(num_timesteps)], dtype=np.float64)
    if name == "scaled_linear":
        # Stable Diffusion / UniDiffuser: betas linear in sqrt from 0.00085 to 0.012 (diffusers'
        # "scaled_linear"; UniDiffuser's stable_diffusion_beta_schedule), not rescaled with T.
        return np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, num_timesteps, dtype=np.float64) ** 2
    raise ValueError(f"beta_schedule={name!r} is unknown; use one of {BETA_SCHEDULES}")


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def _approx_std_normal_cdf(x):
    # The tanh approximation the reference uses (kept for bit-level parity of the NLL).
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log P(bin of x) for data in [-1, 1] quantised to 256 levels (nats, elementwise)."""
    centered, inv_std = x - means, jnp.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    # The edge bins extend to -inf / +inf.
    return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def mean_flat(x):
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


@dataclasses.dataclass(frozen=True)
class GaussianDiffusion:
    """Schedule + formulas. Hashable by its config, so it can be a static jit argument.

    Build with `GaussianDiffusion.create(...)`. Schedule arrays (float64 numpy) are
    set in __post_init__ from the config fields; `num_timesteps` is the (respaced)
    number of steps, `original_num_steps` the base process length.
    """
    original_num_steps: int = 1000
    beta_schedule: str = "linear"
    variance: str = "learned_range"
    loss: str = "hybrid"
    timestep_respacing: str | None = None

    @classmethod
    def create(cls, num_timesteps: int = 1000, beta_schedule: str = "linear", learn_sigma: bool = True,
               loss: str | None = None, timestep_respacing=None, sigma_small: bool = False):
        """DiT's `create_diffusion`. loss=None means 'hybrid' if learn_sigma else 'mse'.

        learn_sigma=False uses the fixed variance beta_t ("fixed_large", DDPM's default)
        or, with sigma_small=True, the posterior variance beta~_t ("fixed_small").
        learn_sigma=True with loss='mse' trains eps only; the v channels are then untrained
        but still set the sampling variance, so prefer 'hybrid' (DiT) for learned sigma.
        timestep_respacing: None, an int, 'N', 'N1,N2,..', [N1, N2, ..] or 'ddimN'
        (see unigen.diffusion.respacing).
        """
        variance = "learned_range" if learn_sigma else ("fixed_small" if sigma_small else "fixed_large")
        loss = loss if loss is not None else ("hybrid" if learn_sigma else "mse")
        if isinstance(timestep_respacing, int):
            timestep_respacing = str(timestep_respacing)
        elif not isinstance(timestep_respacing, (str, type(None))):  # a list of section counts
            timestep_respacing = ",".join(str(int(c)) for c in timestep_respacing)
        return cls(int(num_timesteps), beta_schedule, variance, loss, timestep_respacing or None)

    def __post_init__(self):
        if self.variance not in VARIANCES:
            raise ValueError(f"variance={self.variance!r}; use one of {VARIANCES}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}; use one of {LOSSES}")
        if self.loss == "hybrid" and self.variance != "learned_range":
            raise ValueError("loss='hybrid' trains a learned variance; with learn_sigma=False use loss='mse'")
        base = beta_schedule(self.beta_schedule, self.original_num_steps)
        kept = space_timesteps(self.original_num_steps, self.timestep_respacing)
        if len(kept) < 2:
            raise ValueError(f"timestep_respacing={self.timestep_respacing!r} keeps {len(kept)} step; need >= 2")
        betas, tmap = respace_betas(np.cumprod(1.0 - base), kept)
        abar = np.cumprod(1.0 - betas)
        abar_prev = np.append(1.0, abar[:-1])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        fields = dict(
            betas=betas, timestep_map=tmap, num_timesteps=len(betas),
            alphas_cumprod=abar, alphas_cumprod_prev=abar_prev,
            posterior_variance=post_var,
            # beta~_0 = 0, so its log is clipped to beta~_1 (reference behaviour).
            posterior_log_variance_clipped=np.log(np.append(post_var[1], post_var[1:])),
            posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
            posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar),
            # fixed_large uses beta_t, but beta~_1 at t=0 for a better decoder likelihood.
            fixed_large_variance=np.append(post_var[1], betas[1:]),
        )
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    # ---- small helpers --------------------------------------------------------------
    @staticmethod
    def _at(arr, t, x):
        """arr[t] shaped (B, 1, ..., 1) to broadcast against x, in x's float dtype."""
        dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
        return jnp.asarray(arr, dtype)[t].reshape((-1,) + (1,) * (x.ndim - 1))

    def model_timesteps(self, t):
        """The timestep the network receives: original index (int32) of respaced step t."""
        return jnp.asarray(self.timestep_map)[t]

    def sample_timesteps(self, rng, batch: int):
        """Uniform integer timesteps in 0..num_timesteps-1, shape (batch,)."""
        return jax.random.randint(rng, (batch,), 0, self.num_timesteps)

    def learned_variance(self) -> bool:
        return self.variance == "learned_range"

    # ---- the objective protocol and its DataPrediction capability (unigen.diffusion.objective) --
    def losses(self, model_fn, x0, rng, **cond):
        """`training_losses` at uniform timesteps and Gaussian noise drawn per example from `rng`
        (one key, or one key per example)."""
        k_t, k_noise = split_keys(rng)
        n = x0.shape[0]
        t = per_example(k_t, n, lambda k: jax.random.randint(k, (), 0, self.num_timesteps))
        noise = per_example(k_noise, n, lambda k: jax.random.normal(k, x0.shape[1:], jnp.float32))
        return self.training_losses(model_fn, x0, t, noise.astype(x0.dtype), **cond)

    def for_sampler(self, sampler: str, steps: int) -> "GaussianDiffusion":
        """DDPM and DDIM run every step of a respaced process (IDDPM sec. 4: `steps` evenly
        strided steps; DDIM's own integer stride for "ddimN"); DPM-Solver picks its grid."""
        if sampler == "ddpm":
            return dataclasses.replace(self, timestep_respacing=str(int(steps)))
        if sampler == "ddim":
            return dataclasses.replace(self, timestep_respacing=f"ddim{int(steps)}")
        return self

    def prediction_channels(self, channels: int) -> int:
        return channels  # eps; a learned variance's v channels follow and stay conditional

    def dpm_grid(self, steps: int, sigmas=None):
        """Discrete-time VP at timesteps round(linspace(0, T-1, steps+1))[::-1][:-1], as
        diffusers' DPMSolverMultistepScheduler ("linspace" spacing, final sigma zero)."""
        if sigmas is not None:
            raise ValueError("sigmas= is for flows; a Gaussian diffusion's grid is its timesteps")
        T = self.num_timesteps
        idx = np.linspace(0, T - 1, int(steps) + 1).round()[::-1][:-1].astype(np.int64)
        if int(steps) < 1 or np.unique(idx).size != idx.size:
            raise ValueError(f"steps={steps} must be in 1..{T - 1} for a {T}-step diffusion")
        abar = self.alphas_cumprod[idx]
        return idx, np.append(np.sqrt(abar), 1.0), np.append(np.sqrt(1.0 - abar), 0.0)

    def denoise(self, model_fn, x, g, **cond):
        t = jnp.full((x.shape[0],), g, jnp.int32)
        eps, _ = self.split_model_output(model_fn(x, self.model_timesteps(t), **cond), x)
        return self.predict_xstart_from_eps(x, t, eps)

    def split_model_output(self, model_out, x_t):
        """(eps, v) where v is None unless the variance is learned; checks channel counts."""
        c = x_t.shape[-1]
        want = 2 * c if self.learned_variance() else c
        if model_out.shape != x_t.shape[:-1] + (want,):
            raise ValueError(
                f"model output shape {model_out.shape} does not fit x_t {x_t.shape} with "
                f"variance={self.variance!r}: expected {x_t.shape[:-1] + (want,)} (channels last"
                + (", [eps, v])" if self.learned_variance() else ")")
                + "; fix the network's out_channels or the diffusion's learn_sigma")
        return (model_out[..., :c], model_out[..., c:]) if self.learned_variance() else (model_out, None)

    # ---- forward process --------------------------------------------------------------
    def q_sample(self, x0, t, noise):
        return self._at(np.sqrt(self.alphas_cumprod), t, x0) * x0 + self._at(
            np.sqrt(1.0 - self.alphas_cumprod), t, x0) * noise

    def q_posterior_mean_variance(self, x0, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = self._at(self.posterior_mean_coef1, t, x_t) * x0 + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self._at(self.posterior_variance, t, x_t), self._at(self.posterior_log_variance_clipped, t, x_t)

    def predict_xstart_from_eps(self, x_t, t, eps):
        return (self._at(np.sqrt(1.0 / self.alphas_cumprod), t, x_t) * x_t
                - self._at(np.sqrt(1.0 / self.alphas_cumprod - 1.0), t, x_t) * eps)

    def predict_eps_from_xstart(self, x_t, t, x0):
        return ((self._at(np.sqrt(1.0 / self.alphas_cumprod), t, x_t) * x_t - x0)
                / self._at(np.sqrt(1.0 / self.alphas_cumprod - 1.0), t, x_t))

    # ---- reverse process ----------------------------------------------------------------
    def p_mean_variance(self, model_out, x_t, t, clip_denoised: bool = False):
        """p(x_{t-1} | x_t) from a network output. Returns mean, variance, log_variance,
        pred_xstart, eps (all shaped like x_t)."""
        eps, v = self.split_model_output(model_out, x_t)
        if v is not None:
            min_log = self._at(self.posterior_log_variance_clipped, t, x_t)
            max_log = self._at(np.log(self.betas), t, x_t)
            frac = (v + 1.0) / 2.0  # v in [-1, 1] spans [beta~_t, beta_t] in log space
            log_var = frac * max_log + (1.0 - frac) * min_log
            var = jnp.exp(log_var)
        elif self.variance == "fixed_small":
            var = self._at(self.posterior_variance, t, x_t)
            log_var = self._at(self.posterior_log_variance_clipped, t, x_t)
        else:
            var = self._at(self.fixed_large_variance, t, x_t)
            log_var = self._at(np.log(self.fixed_large_variance), t, x_t)
        x0 = self.predict_xstart_from_eps(x_t, t, eps)
        if clip_denoised:
            x0 = jnp.clip(x0, -1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(x0, x_t, t)
        shape = x_t.shape
        return dict(mean=mean, variance=jnp.broadcast_to(var, shape),
                    log_variance=jnp.broadcast_to(log_var, shape), pred_xstart=x0, eps=eps)

    # ---- losses ---------------------------------------------------------------------
    def vb_terms_bpd(self, model_out, x0, x_t, t):
        """IDDPM L_t in bits per dimension: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0,
        the discretized-Gaussian decoder NLL -log p(x0|x1) at t = 0. Shape (B,)."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        out = self.p_mean_variance(model_out, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(
            x0, out["mean"], 0.5 * out["log_variance"])) / math.log(2.0)
        return jnp.where(t == 0, nll, kl)

    def training_losses(self, model_fn, x0, t, noise, **cond):
        """DiT/IDDPM training loss for timesteps t (B,) and noise like x0.

        Returns dict(loss, mse, vb), each (B,) float32. 'hybrid' = mse + vb where vb
        sees the eps prediction through stop_gradient, so it only trains the variance
        (IDDPM sec. 3.1, L_hybrid with lambda = 1 as in DiT); vb is 0 for 'mse'.
        """
        x_t = self.q_sample(x0, t, noise)
        out = model_fn(x_t, self.model_timesteps(t), **cond)
        eps, v = self.split_model_output(out, x_t)
        eps32 = eps.astype(jnp.float32)
        mse = mean_flat((noise.astype(jnp.float32) - eps32) ** 2)
        if self.loss == "hybrid":
            frozen = jnp.concatenate([jax.lax.stop_gradient(eps32), v.astype(jnp.float32)], axis=-1)
            vb = self.vb_terms_bpd(frozen, x0.astype(jnp.float32), x_t.astype(jnp.float32), t)
        else:
            vb = jnp.zeros_like(mse)
        return dict(loss=mse + vb, mse=mse, vb=vb)


# A leafless pytree: the object travels through jit/tree_map as static config.
@functools.lru_cache(maxsize=64)
def _rebuild(config):
    return GaussianDiffusion(*config)


jax.tree_util.register_pytree_node(
    GaussianDiffusion,
    lambda d: ((), dataclasses.astuple(d)),
    lambda config, _: _rebuild(config),
)
