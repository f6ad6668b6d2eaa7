"""The flow-match Euler scheduler of the SD3 and Flux pipelines, read from a diffusers
`scheduler/scheduler_config.json` (`FlowMatchEulerDiscreteScheduler`), sampled in one compiled loop.

    sched = scheduler_from_config("FLUX.1-dev")                     # or FlowMatchEuler.from_config(...)
    sigmas, timesteps = sched.schedule(28, image_seq_len=4096, sigmas=linear_sigmas(28))   # Flux
    sigmas, timesteps = sched.schedule(28)                                                 # SD3
    latents = jax.jit(lambda x, s, t: sched.sample(velocity_fn, x, s, timesteps=t))(noise, sigmas, timesteps)

Time convention (unigen/diffusion/flow.py): sigma in [0, 1], 1 noise, 0 data; the network
predicts the velocity dx/dsigma. diffusers' grid, as `set_timesteps` builds it after each
pipeline's call (diffusers/schedulers/scheduling_flow_match_euler_discrete.py):

  StableDiffusion3Pipeline  no `sigmas`: N timesteps evenly spaced from sigma_max * T to
                            sigma_min * T, the ends of the training grid 1..T / T as the
                            constructor left them (static shift applied once there), then
                            shifted again: sigma' = s sigma / (1 + (s - 1) sigma).
  FluxPipeline              `sigmas = linspace(1, 1/N, N)` (`linear_sigmas`) and mu =
                            `mu_for(image_seq_len)`, a line through (base_image_seq_len,
                            base_shift) and (max_image_seq_len, max_shift); with
                            use_dynamic_shifting sigma' = e^mu / (e^mu + (1/sigma - 1)) (or
                            mu / (mu + (1/sigma - 1)) for time_shift_type "linear"); without it
                            mu is unused and the static shift applies (schnell: shift 1, none).
Then `shift_terminal` stretches the grid to end there, Karras / exponential spacing re-spaces it,
timesteps = sigma * T (what SD3's transformer takes; Flux's takes timesteps / 1000), and a final
sigma 0 is appended (1 with invert_sigmas). The arithmetic follows diffusers' dtypes (float32
ends, float64 or float32 grid, float32 result), so the grids agree to the last bit.

The step: x <- x + (sigma_{i+1} - sigma_i) v, with the sample upcast to float32 and the result cast
to the velocity's dtype (the pipelines then cast it to the latents' dtype), as diffusers' `step`.

Refused by name (they would change the result and unigen does not do them): `use_beta_sigmas`
(needs scipy's beta quantiles), `stochastic_sampling` (re-noises every step with torch's RNG).
Fields the diffusers class does not have are ignored, as its `from_config` ignores them.

`scheduler_from_config` is the one place a pipeline turns a scheduler config into a scheduler:
a registry by diffusers class name (`register_scheduler` adds one). Every entry returns an object
with `schedule(num_inference_steps, image_seq_len=None, sigmas=None)` and
`sample(velocity_fn, x, sigmas, timesteps=None, steps=None)`.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from unigen.errors import ConfigError
from unigen.files import read_json

CLASS_NAME = "FlowMatchEulerDiscreteScheduler"
CONFIG_NAME = "scheduler_config.json"

# The __init__ defaults of diffusers' FlowMatchEulerDiscreteScheduler: a field a released config
# leaves out (SD3-medium's config has only num_train_timesteps and shift) takes these.
DEFAULTS = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15,
                base_image_seq_len=256, max_image_seq_len=4096, invert_sigmas=False, shift_terminal=None,
                use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
                time_shift_type="exponential", stochastic_sampling=False)
_NUMBER, _INT, _BOOL = (int, float), (int,), (bool,)


def linear_sigmas(num_inference_steps: int) -> np.ndarray:
    """The sigmas FluxPipeline hands the scheduler: N values evenly spaced from 1 to 1/N (float64)."""
    n = int(num_inference_steps)
    return np.linspace(1.0, 1.0 / n, n)


@dataclasses.dataclass(frozen=True)
class FlowMatchEuler:
    """A validated FlowMatchEulerDiscreteScheduler config; static (no array leaves), hashable, so
    it can be closed over or passed through `jax.jit` freely."""
    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    base_shift: float | None = 0.5
    max_shift: float | None = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    time_shift_type: str = "exponential"
    shift_terminal: float | None = None
    invert_sigmas: bool = False
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False  # refused: scipy's beta quantiles
    stochastic_sampling: bool = False  # refused: re-noises every step with torch's generator
    where: str = dataclasses.field(default=CONFIG_NAME, compare=False)

    def __post_init__(self):
        self.validate()

    def validate(self):
        def refuse(key, why):
            raise ConfigError(f"{self.where}: {CLASS_NAME} field {key!r} = {getattr(self, key)!r}: {why}")

        if self.num_train_timesteps < 1:
            refuse("num_train_timesteps", "need at least 1 training timestep")
        if not self.shift > 0:
            refuse("shift", "the static shift must be > 0 (1 means no shift)")
        if self.time_shift_type not in ("exponential", "linear"):
            refuse("time_shift_type", "use 'exponential' (Flux) or 'linear'")
        if self.use_dynamic_shifting:
            for key in ("base_shift", "max_shift"):
                if getattr(self, key) is None:
                    refuse(key, "use_dynamic_shifting needs a number here (the mu line's end)")
            if self.base_image_seq_len == self.max_image_seq_len:
                refuse("max_image_seq_len", "must differ from base_image_seq_len (the mu line is undefined)")
        if self.shift_terminal is not None and not self.shift_terminal < 1:
            refuse("shift_terminal", "the grid's last sigma must be below 1 (null or 0 for none)")
        if self.use_beta_sigmas:
            refuse("use_beta_sigmas", "beta sigmas (scipy's beta quantiles) are not supported; use "
                                      "use_karras_sigmas or use_exponential_sigmas, or set it to false")
        if self.stochastic_sampling:
            refuse("stochastic_sampling", "unigen runs the deterministic Euler step (diffusers re-noises every step "
                                          "from torch's generator); set it to false")
        if self.use_karras_sigmas and self.use_exponential_sigmas:
            refuse("use_exponential_sigmas", "only one of use_karras_sigmas / use_exponential_sigmas can be true")

    # ---- reading a config ------------------------------------------------------------------
    @classmethod
    def from_config(cls, config, *, where: str | None = None, class_name: str | None = None) -> "FlowMatchEuler":
        """A config dict, a `scheduler_config.json`, its `scheduler/` folder or the pipeline folder
        holding `scheduler/`. `class_name`: read another class's config as this one (diffusers'
        `FlowMatchEulerDiscreteScheduler.from_config(other.config)`)."""
        config, where = _read(config, where)
        name = class_name or config.get("_class_name", CLASS_NAME)
        if name != CLASS_NAME:
            raise ConfigError(f"{where}: scheduler {name!r} is not {CLASS_NAME}; "
                              f"scheduler_from_config reads {sorted(READERS)}")
        c = {k: config.get(k, default) for k, default in DEFAULTS.items()}

        def get(key, kinds, nullable=False):
            value = c[key]
            if value is None and nullable:
                return None
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ConfigError(f"{where}: {CLASS_NAME} field {key!r} = {value!r} has the wrong type")
            return value

        shift_terminal = get("shift_terminal", _NUMBER, nullable=True)
        return cls(num_train_timesteps=get("num_train_timesteps", _INT), shift=float(get("shift", _NUMBER)),
                   use_dynamic_shifting=get("use_dynamic_shifting", _BOOL),
                   base_shift=_float(get("base_shift", _NUMBER, nullable=True)),
                   max_shift=_float(get("max_shift", _NUMBER, nullable=True)),
                   base_image_seq_len=get("base_image_seq_len", _NUMBER),
                   max_image_seq_len=get("max_image_seq_len", _NUMBER),
                   time_shift_type=get("time_shift_type", (str,)),
                   # diffusers tests `if shift_terminal:`, so 0 means none
                   shift_terminal=float(shift_terminal) if shift_terminal else None,
                   invert_sigmas=get("invert_sigmas", _BOOL), use_karras_sigmas=get("use_karras_sigmas", _BOOL),
                   use_exponential_sigmas=get("use_exponential_sigmas", _BOOL),
                   use_beta_sigmas=get("use_beta_sigmas", _BOOL),
                   stochastic_sampling=get("stochastic_sampling", _BOOL), where=where)

    # ---- the grid ----------------------------------------------------------------------------
    def mu_for(self, image_seq_len) -> float:
        """The dynamic shift mu of an image of `image_seq_len` tokens (Flux: packed latent tokens,
        (H/16)(W/16); SD3: (h/patch)(w/patch) latent patches), the pipelines' `calculate_shift`."""
        if self.base_shift is None or self.max_shift is None:
            raise ConfigError(f"{self.where}: base_shift / max_shift are null; mu cannot be computed")
        slope = (self.max_shift - self.base_shift) / (self.max_image_seq_len - self.base_image_seq_len)
        return image_seq_len * slope + (self.base_shift - slope * self.base_image_seq_len)

    def _static_shift(self, sigma):
        return self.shift * sigma / (1 + (self.shift - 1) * sigma)

    def _training_end(self, t: float) -> float:
        """A training-grid sigma t / T as the constructor leaves it (float32 torch arithmetic,
        statically shifted unless use_dynamic_shifting): the ends sigma_max and sigma_min."""
        s = np.float32(t) / np.float32(self.num_train_timesteps)
        if not self.use_dynamic_shifting:
            s = np.float32(self.shift) * s / (np.float32(1) + np.float32(self.shift - 1) * s)
        return float(s)

    def schedule(self, num_inference_steps: int, image_seq_len=None, sigmas=None, *, mu=None):
        """(sigmas (N+1,), timesteps (N,)), numpy float32, exactly as diffusers' `set_timesteps`
        gives them after the pipeline's call: SD3 passes no `sigmas`; Flux passes
        `sigmas=linear_sigmas(N)` and its `image_seq_len`. `mu` overrides `image_seq_len`'s.
        Timesteps are what SD3's transformer takes (Flux's takes timesteps / 1000)."""
        n = int(num_inference_steps)
        if n < 1:
            raise ConfigError(f"num_inference_steps={num_inference_steps}: use at least 1")
        if self.use_dynamic_shifting and mu is None:
            if image_seq_len is None:
                raise ConfigError(f"{self.where}: use_dynamic_shifting is true, so the schedule depends on the image "
                                  f"size: pass image_seq_len (the transformer's image tokens) or mu")
            mu = self.mu_for(image_seq_len)
        T = self.num_train_timesteps
        if sigmas is None:
            # diffusers spaces *timesteps* between the constructor's (already shifted) ends in float64,
            # then divides by T and shifts again.
            grid = np.linspace(self._training_end(T) * T, self._training_end(1) * T, n) / T
        else:
            grid = np.asarray(sigmas).astype(np.float32)  # diffusers casts given sigmas to float32
            if grid.shape != (n,):
                raise ConfigError(f"sigmas of shape {grid.shape}: give num_inference_steps={n} values")
        if self.use_dynamic_shifting:
            # (1/sigma - 1) ** 1.0 in diffusers; Python float scalars keep the grid's dtype (NEP 50)
            with np.errstate(divide="ignore"):
                odds = 1 / grid - 1
            if self.time_shift_type == "exponential":
                grid = math.exp(mu) / (math.exp(mu) + odds)
            else:
                grid = mu / (mu + odds)
        else:
            grid = self._static_shift(grid)
        if self.shift_terminal:
            # stretch 1 - sigma so that the last sigma lands on shift_terminal (LTX-Video)
            gap = 1 - grid
            if gap[-1] == 0:  # diffusers divides 0 by 0 here: a grid of NaNs
                raise ConfigError(f"{self.where}: shift_terminal={self.shift_terminal} cannot stretch a grid that ends "
                                  f"at sigma 1 ({n} step(s)); use more steps")
            grid = 1 - gap / (gap[-1] / (1 - self.shift_terminal))
        if self.use_karras_sigmas or self.use_exponential_sigmas:
            hi, lo = float(grid[0]), float(grid[-1])
            if self.use_karras_sigmas:  # Karras et al. 2022, rho = 7, between the grid's ends
                rho = 7.0
                ramp = np.linspace(0, 1, n)
                grid = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
            else:  # evenly spaced in log sigma
                grid = np.exp(np.linspace(math.log(hi), math.log(lo), n))
        grid = np.asarray(grid).astype(np.float32)
        if self.invert_sigmas:  # Mochi: the network sees 1 - sigma, the grid ends at 1
            grid = np.float32(1) - grid
            end = np.float32(1)
        else:
            end = np.float32(0)
        timesteps = grid * np.float32(T)
        return np.append(grid, end).astype(np.float32), timesteps.astype(np.float32)

    # ---- sampling ----------------------------------------------------------------------------
    def step(self, x, velocity, i, sigmas):
        """One Euler step from sigmas[i] to sigmas[i + 1] (`i` may be traced), as diffusers: the
        sample is upcast to float32, but dt * v is taken in the velocity's dtype (torch's float32
        0-d dt does not promote a bf16 tensor: dt is rounded to bf16 and so is the product); the
        result has the velocity's dtype. Plain float32 arithmetic for a float32 network."""
        sigmas = jnp.asarray(sigmas, jnp.float32)
        dt = sigmas[i + 1] - sigmas[i]
        v = jnp.asarray(velocity)
        narrow = jnp.finfo(v.dtype).bits < 32
        if narrow:
            dt = _round_to(dt, v.dtype)
        update = dt * v.astype(jnp.float32)
        if narrow:
            update = _round_to(update, v.dtype)
        out = jnp.asarray(x).astype(jnp.float32) + update
        return (_round_to(out, v.dtype) if narrow else out).astype(v.dtype)

    def sample(self, velocity_fn, x, sigmas, timesteps=None, steps=None):
        """Run the Euler loop from `x` (at sigmas[0]) in one `lax.fori_loop`; jit-compatible with
        `sigmas` / `timesteps` traced. `velocity_fn(x, t)` gets t = timesteps[i] if given (SD3:
        `timesteps`; Flux: `timesteps / 1000`), else sigmas[i]. x keeps its dtype between steps
        (the pipelines cast the step's result back to the latents' dtype).

        Compiles once per (x shape/dtype, len(sigmas)): a new step count is a new length. To
        compile once for every step count, pad `sigmas` (and `timesteps`) to a fixed length and
        pass the traced `steps` to run (the loop is then a while loop: not reverse-differentiable)."""
        sigmas = jnp.asarray(sigmas, jnp.float32)
        if sigmas.ndim != 1 or sigmas.shape[0] < 2:
            raise ConfigError(f"sigmas of shape {sigmas.shape}: give the (N+1,) grid from schedule()")
        model_t = sigmas if timesteps is None else jnp.asarray(timesteps)
        dtype = jnp.asarray(x).dtype

        def body(i, x):
            v = velocity_fn(x, model_t[i])
            return self.step(x, v, i, sigmas).astype(dtype)

        return jax.lax.fori_loop(0, sigmas.shape[0] - 1 if steps is None else steps, body, jnp.asarray(x))


jax.tree_util.register_pytree_node(
    FlowMatchEuler,
    lambda s: ((), tuple(getattr(s, f.name) for f in dataclasses.fields(s))),
    lambda config, _: FlowMatchEuler(*config),
)


def _round_to(a, dtype):
    """float32 `a` rounded to `dtype`'s precision, still float32. Written as reduce_precision, not
    a cast there and back: XLA may drop such a cast pair (excess precision), and then a bf16 loop
    drifts from diffusers' by a rounding per step."""
    info = jnp.finfo(dtype)
    return jax.lax.reduce_precision(a, exponent_bits=info.nexp, mantissa_bits=info.nmant)


def _float(value):
    return None if value is None else float(value)


def _read(config, where):
    """(config dict, where) from a dict, a json file, a scheduler folder or a pipeline folder."""
    if isinstance(config, dict):
        return config, where or CONFIG_NAME
    if not isinstance(config, (str, os.PathLike)):
        raise ConfigError(f"scheduler config {type(config).__name__}: give a dict, a {CONFIG_NAME} path or a folder")
    path = os.path.expanduser(os.fspath(config))
    if os.path.isdir(path):
        for candidate in (os.path.join(path, CONFIG_NAME), os.path.join(path, "scheduler", CONFIG_NAME)):
            if os.path.isfile(candidate):
                path = candidate
                break
        else:
            raise ConfigError(f"{path}: no {CONFIG_NAME} nor scheduler/{CONFIG_NAME}; give a diffusers scheduler "
                              f"folder or the pipeline folder holding scheduler/")
    return read_json(path, error=ConfigError), where or path


# ---- the registry: diffusers class name -> reader ------------------------------------------------
READERS = {CLASS_NAME: FlowMatchEuler.from_config}


def register_scheduler(class_name: str, reader) -> None:
    """Make `scheduler_from_config` read `class_name` configs with `reader(config, where=..., class_name=...)`."""
    READERS[class_name] = reader


def scheduler_from_config(config, *, where: str | None = None, class_name: str | None = None):
    """The scheduler a flow-matching pipeline samples with, chosen by the config's `_class_name`
    (or `class_name`: read the config as that class, like diffusers' `Cls.from_config`)."""
    config, where = _read(config, where)
    name = class_name or config.get("_class_name")
    if name not in READERS:
        raise ConfigError(f"{where}: scheduler {name!r} is not supported for flow-matching pipelines; unigen reads "
                          f"{sorted(READERS)} (pass class_name= to read this config as one of them; DDIM / "
                          f"DPM-Solver configs of DiT pipelines: unigen.pipelines.schedulers.read_scheduler)")
    return READERS[name](config, where=where, class_name=name)
