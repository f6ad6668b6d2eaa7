"""Rectified flow as trained by SD3 (Esser et al. 2024), SiT / RAE and LightningDiT.

Time convention (the one place it is written): sigma in [0, 1], sigma = 0 is data,
sigma = 1 is noise;  z_sigma = (1 - sigma) x + sigma eps. Everything here and in the
samplers runs in sigma with the velocity dz/dsigma = eps - x. What the network sees is
converted at the boundary, by `time_convention`:

  "sigma"        (SD3, SiT, RAE) the network receives `model_time(sigma) = time_scale * sigma`
                 (SD3: 1000 sigma; SiT/RAE: sigma, time_scale=1) and predicts eps - x.
  "data_at_one"  (LightningDiT, hustvl/LightningDiT transport/: t = 1 data, t = 0 noise,
                 x_t = t x + (1 - t) eps) the network receives time_scale * t with t = 1 - sigma
                 (LightningDiT: time_scale=1) and predicts the velocity in its own direction,
                 dx_t/dt = x - eps = -(eps - x); `velocity(output)` turns it back.
Both conventions give the same losses and samples for the same function of (z, sigma).

Timestep sampling: "uniform" sigma ~ U(0, 1) or "logit_normal" sigma = sigmoid(N(loc, scale))
(SD3 sec. 3.1), then the resolution shift sigma' = s sigma / (1 + (s - 1) sigma)
(SD3 eq. 23; s = 3 for SD3 at 1024^2, s = sqrt(dim / 4096) in RAE). `loc` is always the
location of logit(sigma): LightningDiT's `use_lognorm` draws t = sigmoid(N(0, 1)), the same
distribution (symmetric); a t-location mu would be loc = -mu.

RAE's dimension-dependent shift (bytetriper/RAE src/train.py and stage2/transport/): s =
sqrt(dim / base) with dim = H*W*C of the diffusion's input (16*16*768 DINOv2-B latents, base 4096:
s = 6.93), applied to the training t and to the sampling grid as t' = s t / (1 + (s - 1) t). Its t
is unigen's sigma (t = 0 data, t = 1 noise, x_t = (1 - t) x + t eps, the model fed t), so that is
`shift` here, exactly; `dimension_shift(shape, base)` computes it (config.diffusion.shift_base_dim,
unigen/tasks/diffusion.py). RAE asserts s >= 1; unigen takes any s > 0: an input smaller than the
base dimension gives s < 1, which moves the noise levels towards the data instead.

`shift` applies to training and to the sampling grid; `sample_shift` (None = `shift`) overrides
it for sampling only. LightningDiT shifts only its sampling grid, by `timestep_shift` s_L on its
t grid: t' = s_L t / (1 + (s_L - 1) t). In sigma = 1 - t that is SD3's shift with s = 1 / s_L
(`sample_shift_from_timestep_shift`; its s_L = 0.3 is sample_shift = 3.33). Its Euler sampler
integrates over `num_sampling_steps` grid *points* (linspace(0, 1, N)), i.e. N - 1 steps here.

`direction_weight` w adds LightningDiT's velocity-direction loss (`use_cosine_loss`, weight 1
in its train.py): loss = MSE + w * mean over positions of (1 - cos(v_pred, v_target)), the
cosine taken over the channel axis (torch `cosine_similarity(dim=1)` on NCHW: the last axis
here, NHWC) at every position, each norm clamped at 1e-8 as torch does.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from unigen.diffusion.objective import per_example, split_keys

TIME_SAMPLING = ("uniform", "logit_normal")
TIME_CONVENTIONS = ("sigma", "data_at_one")
COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity's default


def shift_sigma(sigma, shift: float):
    """SD3's resolution-dependent shift; shift = 1 is the identity."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def dimension_shift(shape, base_dim: float) -> float:
    """RAE's dimension-dependent shift sqrt(prod(shape) / base_dim) for a diffusion input of `shape`
    (e.g. (H, W, C) of the latents): SD3's `shift` of the sigma convention. Any result > 0 (module doc)."""
    if isinstance(base_dim, bool) or not isinstance(base_dim, (int, float)) or not (np.isfinite(base_dim)
                                                                                  and base_dim > 0):
        raise ValueError(f"shift_base_dim={base_dim!r} must be a number > 0 (RAE: 4096)")
    dims = tuple(int(d) for d in shape)
    if not dims or min(dims) < 1:
        raise ValueError(f"the input shape {tuple(shape)} must be non-empty with positive sizes")
    return float(np.sqrt(np.prod(dims, dtype=np.float64) / float(base_dim)))


def sample_shift_from_timestep_shift(timestep_shift: float) -> float:
    """LightningDiT's sampler `timestep_shift` s_L (applied to its t grid, t = 1 data) as the
    SD3-form shift of the sigma grid: 1 / s_L. s_L = 0 means no shift there (returns 1.0)."""
    s = float(timestep_shift)
    if s < 0 or not np.isfinite(s):
        raise ValueError(f"timestep_shift={timestep_shift!r} must be >= 0 (LightningDiT: 0 = no shift, 0.3 in "
                         "its configs)")
    return 1.0 if s == 0 else 1.0 / s


def cosine_direction_loss(pred, target):
    """Per example: mean over positions of 1 - cos(pred, target), the cosine over the last
    (channel) axis with each norm clamped at 1e-8 (torch's cosine_similarity). float32 (B,)."""
    p, t = pred.astype(jnp.float32), target.astype(jnp.float32)
    # sqrt(max(|a|^2, eps^2)) is max(|a|, eps) with a finite gradient at a = 0 (a zero-initialised
    # final layer predicts exactly 0 at the first step; the sqrt's gradient there is inf).
    norm = lambda a: jnp.sqrt(jnp.maximum(jnp.sum(a * a, axis=-1), COSINE_EPS ** 2))
    cos = jnp.sum(p * t, axis=-1) / (norm(p) * norm(t))
    return jnp.mean(1.0 - cos, axis=tuple(range(1, cos.ndim)))


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
    direction_weight: float = 0.0     # LightningDiT's cosine (velocity-direction) loss weight; 0 = off
    time_convention: str = "sigma"    # "sigma" or "data_at_one" (LightningDiT), see the module doc
    sample_shift: float | None = None  # the sampling grid's shift; None = `shift`

    @classmethod
    def create(cls, time_sampling: str = "logit_normal", loc: float = 0.0, scale: float = 1.0,
               shift: float = 1.0, time_scale: float = 1000.0, *, direction_weight: float = 0.0,
               time_convention: str = "sigma", sample_shift: float | None = None):
        return cls(time_sampling, float(loc), float(scale), float(shift), float(time_scale), float(direction_weight),
                   str(time_convention), None if sample_shift is None else float(sample_shift))

    def __post_init__(self):
        if self.time_sampling not in TIME_SAMPLING:
            raise ValueError(f"time_sampling={self.time_sampling!r}; use one of {TIME_SAMPLING}")
        if not self.scale > 0:
            raise ValueError(f"scale={self.scale} must be > 0 (std of the logit-normal)")
        if not self.shift > 0:
            raise ValueError(f"shift={self.shift} must be > 0 (1.0 = no shift)")
        if not self.time_scale > 0:
            raise ValueError(f"time_scale={self.time_scale} must be > 0 (1000 for SD3, 1 for SiT and LightningDiT)")
        if not (np.isfinite(self.direction_weight) and self.direction_weight >= 0):
            raise ValueError(f"direction_weight={self.direction_weight} must be >= 0 (0 = off; LightningDiT: 1)")
        if self.time_convention not in TIME_CONVENTIONS:
            raise ValueError(f"time_convention={self.time_convention!r}; use 'sigma' (SD3/SiT: model time = "
                             f"time_scale * sigma) or 'data_at_one' (LightningDiT: t = 1 - sigma)")
        if self.sample_shift is not None and not self.sample_shift > 0:
            raise ValueError(f"sample_shift={self.sample_shift} must be > 0 (1.0 = no shift) or None (= shift)")

    def model_time(self, sigma):
        """What the network receives for noise level sigma (B,)."""
        t = sigma if self.time_convention == "sigma" else 1.0 - sigma
        return t * self.time_scale

    def model_time_interval(self, sigma_lo: float, sigma_hi: float) -> tuple[float, float]:
        """The noise levels [sigma_lo, sigma_hi] as a (lo, hi) interval of model time, e.g. for
        guidance_interval. LightningDiT guides where its t >= cfg_interval_start, i.e.
        sigma in [0, 1 - cfg_interval_start]: `model_time_interval(0, 1 - cfg_interval_start)`."""
        if not 0.0 <= sigma_lo <= sigma_hi <= 1.0:
            raise ValueError(f"sigma interval ({sigma_lo}, {sigma_hi}) must satisfy 0 <= lo <= hi <= 1")
        a, b = (float(self.model_time(np.float64(s))) for s in (sigma_lo, sigma_hi))
        return (min(a, b), max(a, b))

    def velocity(self, output):
        """The network's output as the velocity dz/dsigma the samplers integrate."""
        return output if self.time_convention == "sigma" else -output

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

    # ---- the objective protocol and its capabilities (unigen.diffusion.objective) ------------
    def losses(self, model_fn, x0, rng, **cond):
        return self.training_losses(model_fn, x0, rng, **cond)

    def for_sampler(self, sampler: str, steps: int) -> "RectifiedFlow":
        return self  # every sampler takes its sigma grid from `steps`

    def prediction_channels(self, channels: int) -> int:
        return channels

    def sigma_grid(self, steps: int, sigmas=None) -> np.ndarray:
        """Sampling grid from sigma = 1 to 0: linspace(1, 0, steps + 1) with SD3's shift
        (`sample_shift`, else `shift`), or
        an explicit strictly decreasing `sigmas`. float64 numpy, shape (steps + 1,)."""
        if sigmas is None:
            if int(steps) < 1:
                raise ValueError(f"steps={steps} must be >= 1")
            shift = self.shift if self.sample_shift is None else self.sample_shift
            return shift_sigma(np.linspace(1.0, 0.0, int(steps) + 1), shift)
        s = np.asarray(sigmas, np.float64)
        if s.ndim != 1 or s.size < 2 or np.any(np.diff(s) >= 0) or s[-1] < 0:
            raise ValueError("sigmas must be a strictly decreasing 1-D grid ending at >= 0, e.g. flow_sigmas(...)")
        return s

    def ode_velocity(self, output, z, sigma):
        return self.velocity(output)  # the network predicts the velocity (up to the convention's sign)

    def dpm_grid(self, steps: int, sigmas=None):
        s = self.sigma_grid(steps, sigmas)
        return s[:-1], 1.0 - s, s

    def denoise(self, model_fn, x, g, **cond):
        sig = jnp.full((x.shape[0],), g, jnp.float32)
        return self.predict_x0(x, sig, self.velocity(model_fn(x, self.model_time(sig), **cond)))

    def training_losses(self, model_fn, x0, rng_or_sigma_noise, **cond):
        """Flow-matching loss ||v_theta(z_sigma) - (eps - x0)||^2 averaged per example, plus
        direction_weight * the velocity-direction loss (`cosine_direction_loss`) when > 0.

        rng_or_sigma_noise: a PRNG key or one key per example (sigma and eps are drawn here, per
        example), or a tuple (sigma (B,), noise like x0). Returns dict(loss=(B,), sigma=(B,)), float32;
        with direction_weight > 0 also its parts mse=(B,) and direction=(B,). In the
        "data_at_one" convention the output and target are both negated: the same numbers.
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
        v = self.velocity(v).astype(jnp.float32)
        target = self.velocity_target(x0, noise).astype(jnp.float32)
        mse = jnp.mean((v - target) ** 2, axis=tuple(range(1, v.ndim)))
        if not self.direction_weight:
            return dict(loss=mse, sigma=sigma.astype(jnp.float32))
        direction = cosine_direction_loss(v, target)
        return dict(loss=mse + self.direction_weight * direction, sigma=sigma.astype(jnp.float32),
                    mse=mse, direction=direction)


jax.tree_util.register_pytree_node(
    RectifiedFlow,
    lambda f: ((), dataclasses.astuple(f)),
    lambda config, _: RectifiedFlow(*config),
)
