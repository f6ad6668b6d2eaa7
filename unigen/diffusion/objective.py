"""The objective protocol: what the train step, the samplers and the generator ask of a
diffusion process, so that none of them dispatches on its type (docs/design.md §2).

`Objective` is what every objective has; the capability protocols below (`DataPrediction`,
`FlowODE`) are what samplers need and an objective may offer (unigen.diffusion.registry derives
which samplers fit a process from them). `GaussianDiffusion` (DDPM/IDDPM) and `RectifiedFlow`
implement them; objectives registered from outside unigen do too. A process is a frozen, hashable
dataclass (a static jit argument, a leafless pytree).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

ModelFn = Callable[..., jax.Array]  # model_fn(x, t, **cond) -> output, t in the model's time


@runtime_checkable
class Objective(Protocol):
    """What every objective has: the training loss, and what guidance and the generator ask."""

    def losses(self, model_fn: ModelFn, x0: jax.Array, rng: jax.Array, **cond: Any) -> dict[str, jax.Array]:
        """Per-example training losses, dict of (B,) float32 arrays with at least "loss";
        draws its own times and noise from `rng`: one key, or one key per example (then each
        example's draws depend on its own key only, so a batch split into micro-batches draws
        exactly what the whole batch would; see `per_example`)."""

    def for_sampler(self, sampler: str, steps: int) -> "Objective":
        """The process a sampler runs with `steps` steps (e.g. a respaced Gaussian diffusion;
        most objectives return themselves)."""

    def prediction_channels(self, channels: int) -> int:
        """How many leading output channels are the prediction that guidance mixes (the rest,
        e.g. a learned variance, comes from the conditional branch)."""


# ---- capabilities: what samplers need and objectives may offer (unigen.diffusion.registry) ----
@runtime_checkable
class DataPrediction(Protocol):
    """A noise grid and the data prediction on it: DPM-Solver++ samples any process with these."""

    def dpm_grid(self, steps: int, sigmas: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(grid, alpha, sigma) for DPM-Solver++: the `steps` points the network is called
        at (in the process's own grid units) and alpha, sigma at those points plus the end,
        with x = alpha x0 + sigma eps."""

    def denoise(self, model_fn: ModelFn, x: jax.Array, g: jax.Array, **cond: Any) -> jax.Array:
        """The data prediction x0 at grid point g (a scalar of `dpm_grid`'s grid)."""


@runtime_checkable
class FlowODE(Protocol):
    """A probability-flow ODE dz/dsigma from sigma = 1 (noise) to 0 (data): Euler and Heun."""

    def sigma_grid(self, steps: int, sigmas: Any = None) -> np.ndarray:
        """The `steps + 1` noise levels from 1 to 0 (or the given `sigmas`, checked)."""

    def model_time(self, sigma: jax.Array) -> jax.Array:
        """What the network receives for noise level sigma (B,)."""

    def ode_velocity(self, output: jax.Array, z: jax.Array, sigma: jax.Array) -> jax.Array:
        """dz/dsigma at (z, sigma) from the network's `output` there."""


def is_key_batch(rng) -> bool:
    """True for one key per example ((B,) typed keys or (B, 2) raw keys), False for one key."""
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng.ndim == 1
    return rng.ndim == 2  # raw uint32 keys (B, 2)


def split_keys(rng, num: int = 2) -> tuple:
    """`num` independent keys of the same form as `rng` (one key, or one key per example)."""
    if is_key_batch(rng):
        return tuple(jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, num))(rng), 1, 0))
    return tuple(jax.random.split(rng, num))


def per_example(rng, n: int, draw: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """Stack `draw(key)` over n examples: from the per-example keys `rng` (B = n), or from n keys
    split off one key."""
    keys = rng if is_key_batch(rng) else jax.random.split(rng, n)
    if keys.shape[0] != n:
        raise ValueError(f"{keys.shape[0]} per-example keys for a batch of {n}")
    return jax.vmap(draw)(keys)


def check_objective(process) -> None:
    missing = [name for name in ("losses", "for_sampler", "prediction_channels") if not hasattr(process, name)]
    if missing:
        raise TypeError(f"{type(process).__name__} is not a diffusion objective: it lacks {missing} "
                        f"(see unigen.diffusion.objective.Objective)")
