"""An objective and a sampler defined outside `unigen/` (test_plugins.py), registered by name and
imported through `config.imports`; nothing in unigen names them.

"x0_flow": the rectified-flow path z = (1 - sigma) x0 + sigma eps, but the network predicts the
data x0 (not the velocity); its loss is ||f(z, t) - x0||^2. It offers the FlowODE capability
(dz/dsigma = (z - x0_hat) / sigma), so unigen's own Euler and Heun sample it as well as the
midpoint sampler below. "midpoint": the explicit midpoint rule on any FlowODE process.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from unigen.diffusion import register_objective, register_sampler
from unigen.diffusion.objective import FlowODE, per_example, split_keys


@dataclasses.dataclass(frozen=True)
class X0Flow:
    time_scale: float = 1000.0

    # ---- the objective protocol ----------------------------------------------------------
    def losses(self, model_fn, x0, rng, **cond):
        k_sigma, k_noise = split_keys(rng)
        n = x0.shape[0]
        sigma = per_example(k_sigma, n, lambda k: jax.random.uniform(k, ()))
        noise = per_example(k_noise, n, lambda k: jax.random.normal(k, x0.shape[1:], x0.dtype))
        s = sigma.reshape((-1,) + (1,) * (x0.ndim - 1))
        pred = model_fn((1.0 - s) * x0 + s * noise, self.model_time(sigma), **cond)
        return {"loss": jnp.mean((pred.astype(jnp.float32) - x0) ** 2, axis=tuple(range(1, x0.ndim)))}

    def for_sampler(self, sampler, steps):
        return self

    def prediction_channels(self, channels):
        return channels

    # ---- FlowODE --------------------------------------------------------------------------
    def sigma_grid(self, steps, sigmas=None):
        if sigmas is not None:
            return np.asarray(sigmas, np.float64)
        if int(steps) < 1:
            raise ValueError(f"steps={steps} must be >= 1")
        return np.linspace(1.0, 0.0, int(steps) + 1)

    def model_time(self, sigma):
        return sigma * self.time_scale

    def ode_velocity(self, output, z, sigma):
        s = sigma.reshape((-1,) + (1,) * (z.ndim - 1))
        return (z - output) / s  # eps - x0 with eps = (z - (1 - s) x0) / s; never called at sigma = 0


@dataclasses.dataclass(frozen=True)
class X0FlowOptions:
    """The objective's own fields of config.diffusion (time_scale is also the built-in flow's)."""
    time_scale: float = 1000.0

    def validate(self):
        if not self.time_scale > 0:
            raise ValueError(f"time_scale={self.time_scale!r}: must be > 0")


def x0_flow_from_options(opts: X0FlowOptions, *, learn_sigma, input_shape=None):
    if learn_sigma:
        raise ValueError("config.model.learn_sigma=True: an x0-prediction flow predicts the data: set False")
    return X0Flow(float(opts.time_scale))


@dataclasses.dataclass(frozen=True)
class MidpointOptions:
    """The sampler's own field of config.sample (and its infer/sample.py flag --final-euler)."""
    final_euler: bool = False  # the last step (to sigma = 0) as one Euler step: one model call fewer


def midpoint(process, model_fn, shape, rng, *, steps=10, final_euler=False, cond=None, noise=None, progress=False):
    """z(sigma_next) = z + h v(z + h/2 v(z, sigma), sigma + h/2) over the process's grid; one
    noise draw per sample from its own key (rng holds one key per sample under the Generator)."""
    cond = cond or {}
    grid = jnp.asarray(process.sigma_grid(steps), jnp.float32)
    z = per_example(rng, shape[0], lambda k: jax.random.normal(k, shape[1:], jnp.float32)) if noise is None else noise

    def velocity(z, s):
        sigma = jnp.full((shape[0],), s, jnp.float32)
        return process.ode_velocity(model_fn(z, process.model_time(sigma), **cond), z, sigma)

    def step(z, pair):
        s, s_next = pair[0], pair[1]
        h = s_next - s
        half = z + 0.5 * h * velocity(z, s)
        return z + h * velocity(half, s + 0.5 * h), None

    last = grid.shape[0] - 2 if final_euler else grid.shape[0] - 1  # the midpoint steps
    z, _ = jax.lax.scan(step, z, jnp.stack([grid[:last], grid[1:last + 1]], axis=1))
    if final_euler:
        z = z + (grid[-1] - grid[-2]) * velocity(z, grid[-2])
    return z


register_objective("x0_flow", x0_flow_from_options, options=X0FlowOptions,
                   help="rectified-flow path, the network predicts x0")
register_sampler("midpoint", midpoint, needs=(FlowODE,), options=MidpointOptions,
                 help="explicit midpoint on the flow ODE")
