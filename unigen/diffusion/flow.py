"""Rectified flow as trained by SD3 (Esser et al. 2024) and SiT / RAE.

Time convention (the one place it is written): sigma in [0, 1], sigma = 0 is data,
sigma = 1 is noise;  z_sigma = (1 - sigma) x + sigma eps, and the network predicts
the velocity dz/dsigma = eps - x. The network receives `model_time(sigma) =
time_scale * sigma` (SD3: 1000 sigma; SiT/RAE: sigma, time_scale=1). LightningDiT's
t = 1 - sigma (t = 1 data) is a different convention: convert at its boundary.

Timestep sampling: "uniform" sigma ~ U(0, 1) or "logit_normal" sigma = sigmoid(N(loc, scale))
(SD3 sec. 3.1), then the resolution shift sigma' = s sigma / (1 + (s - 1) sigma)
(SD3 eq. 23; s = 3 for SD3 at 1024^2, s = sqrt(dim / 4096) in RAE).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from unigen.diffusion.objective import per_example, split_keys

TIME_SAMPLING = ("uniform", "logit_normal")


def shift_sigma(sigma, shift: float):
    """SD3's resolution-dependent shift; shift = 1 is the identity."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def _bcast(a, x):
    return jnp.reshape(a, (-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class RectifiedFlow:
    """Hashable config (a static jit argument and a leafless pytree)."""
    time_sampling: str = "logit_normal"
    loc: float = 0.0
    scale: float = 1.0
    shift: float = 1.0
    time_scale: float = 1000.0

    @classmethod
    def create(cls, time_sampling: str = "logit_normal", loc: float = 0.0, scale: float = 1.0,
               shift: float = 1.0, time_scale: float = 1000.0):
        return cls(time_sampling, float(loc), float(scale), float(shift), float(time_scale))

    def __post_init__(self):
        if self.time_sampling not in TIME_SAMPLING:
            raise ValueError(f"time_sampling={self.time_sampling!r}; use one of {TIME_SAMPLING}")
        if not self.scale > 0:
            raise ValueError(f"scale={self.scale} must be > 0 (std of the logit-normal)")
        if not self.shift > 0:
            raise ValueError(f"shift={self.shift} must be > 0 (1.0 = no shift)")
        if not self.time_scale > 0:
            raise ValueError(f"time_scale={self.time_scale} must be > 0 (1000 for SD3, 1 for SiT)")

    def model_time(self, sigma):
        """What the network receives for noise level sigma (B,)."""
        return sigma * self.time_scale

    def sample_sigma(self, rng, batch: int):
        """Training noise levels, shape (batch,), float32, shifted by `shift`."""
        if self.time_sampling == "uniform":
            sigma = jax.random.uniform(rng, (batch,))
        else:
            sigma = jax.nn.sigmoid(self.loc + self.scale * jax.random.normal(rng, (batch,)))
        return shift_sigma(sigma, self.shift)

    def interpolate(self, x0, sigma, noise):
        s = _bcast(sigma, x0)
        return (1.0 - s) * x0 + s * noise

    @staticmethod
    def velocity_target(x0, noise):
        return noise - x0

    @staticmethod
    def predict_x0(z, sigma, v):
        """Data prediction x0 = z - sigma v (used by DPM-Solver++ on flows)."""
        return z - _bcast(sigma, z) * v

    # ---- the objective protocol (unigen.diffusion.objective) -----------------------------
    samplers = ("euler", "heun", "dpm_solver_2m")

    def losses(self, model_fn, x0, rng, **cond):
        return self.training_losses(model_fn, x0, rng, **cond)

    def for_sampler(self, sampler: str, steps: int) -> "RectifiedFlow":
        return self  # every sampler takes its sigma grid from `steps`

    def prediction_channels(self, channels: int) -> int:
        return channels

    def sigma_grid(self, steps: int, sigmas=None) -> np.ndarray:
        """Sampling grid from sigma = 1 to 0: linspace(1, 0, steps + 1) with SD3's shift, or
        an explicit strictly decreasing `sigmas`. float64 numpy, shape (steps + 1,)."""
        if sigmas is None:
            if int(steps) < 1:
                raise ValueError(f"steps={steps} must be >= 1")
            return shift_sigma(np.linspace(1.0, 0.0, int(steps) + 1), self.shift)
        s = np.asarray(sigmas, np.float64)
        if s.ndim != 1 or s.size < 2 or np.any(np.diff(s) >= 0) or s[-1] < 0:
            raise ValueError("sigmas must be a strictly decreasing 1-D grid ending at >= 0, e.g. flow_sigmas(...)")
        return s

    def dpm_grid(self, steps: int, sigmas=None):
        s = self.sigma_grid(steps, sigmas)
        return s[:-1], 1.0 - s, s

    def denoise(self, model_fn, x, g, **cond):
        sig = jnp.full((x.shape[0],), g, jnp.float32)
        return self.predict_x0(x, sig, model_fn(x, self.model_time(sig), **cond))

    def training_losses(self, model_fn, x0, rng_or_sigma_noise, **cond):
        """Flow-matching loss ||v_theta(z_sigma) - (eps - x0)||^2 averaged per example.

        rng_or_sigma_noise: a PRNG key or one key per example (sigma and eps are drawn here, per
        example), or a tuple (sigma (B,), noise like x0). Returns dict(loss=(B,), sigma=(B,)), float32.
        """
        if isinstance(rng_or_sigma_noise, (tuple, list)):
            sigma, noise = rng_or_sigma_noise
        else:
            k_sigma, k_noise = split_keys(rng_or_sigma_noise)
            n = x0.shape[0]
            sigma = per_example(k_sigma, n, lambda k: self.sample_sigma(k, 1)[0])
            noise = per_example(k_noise, n, lambda k: jax.random.normal(k, x0.shape[1:], x0.dtype))
        if noise.shape != x0.shape or sigma.shape != x0.shape[:1]:
            raise ValueError(f"sigma {sigma.shape} / noise {noise.shape} must be ({x0.shape[0]},) / {x0.shape}")
        z = self.interpolate(x0, sigma, noise)
        v = model_fn(z, self.model_time(sigma), **cond)
        if v.shape != x0.shape:
            raise ValueError(f"model output {v.shape} must match x0 {x0.shape} (a velocity); "
                             "fix the network's out_channels (no learned variance in flows)")
        err = (v.astype(jnp.float32) - self.velocity_target(x0, noise).astype(jnp.float32)) ** 2
        return dict(loss=jnp.mean(err, axis=tuple(range(1, err.ndim))), sigma=sigma.astype(jnp.float32))


jax.tree_util.register_pytree_node(
    RectifiedFlow,
    lambda f: ((), dataclasses.astuple(f)),
    lambda config, _: RectifiedFlow(*config),
)
