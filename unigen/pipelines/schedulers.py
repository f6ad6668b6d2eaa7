"""A diffusers scheduler config (`scheduler/scheduler_config.json`) read as one of unigen's samplers.

    sched = read_scheduler(json.load(open("scheduler/scheduler_config.json")), where="scheduler/")
    latents = sched.sample(model_fn, shape, rng, steps=50, cond=..., noise=...)

Every setting is read from the config (missing fields take the diffusers class's own default)
and mapped onto unigen's Gaussian diffusion (unigen/diffusion/gaussian.py) and samplers
(unigen/diffusion/samplers.py); nothing is re-implemented here:

  DDIMScheduler                 -> `samplers.ddim` (eta 0, as DiTPipeline steps it) over the Gaussian
                                   diffusion respaced to exactly the scheduler's timesteps
                                   ("leading" / "trailing" / "linspace" spacing, `steps_offset`).
  DPMSolverMultistepScheduler   -> `samplers.dpm_solver_2m` (DPM-Solver++(2M), midpoint, data
                                   prediction, first order on the first and the final step to
                                   sigma 0) at exactly the scheduler's timesteps.

The schedule: `num_train_timesteps` with `beta_schedule` "linear" (beta_start/beta_end must be
the DDPM values 1e-4, 0.02 rescaled by 1000 / T: unigen's linear schedule), "scaled_linear"
(0.00085, 0.012) or "squaredcos_cap_v2". A field that would change the result and that unigen
cannot honour (another prediction_type, thresholding, trained_betas, Karras sigmas, DDIM's
clip_sample, ...) is refused by name. Fields the diffusers class does not have are ignored, as
diffusers' `from_config` ignores them (a DDIM config read as DPM-Solver keeps its schedule).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from unigen.diffusion import samplers
from unigen.diffusion.gaussian import GaussianDiffusion, beta_schedule
from unigen.errors import ConfigError

# The __init__ defaults of the diffusers classes (diffusers/schedulers/scheduling_*.py): a field
# a released config leaves out takes these.
_COMMON = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
               trained_betas=None, prediction_type="epsilon", thresholding=False, steps_offset=0,
               rescale_betas_zero_snr=False)
DEFAULTS = {
    "DDIMScheduler": dict(_COMMON, clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True,
                          timestep_spacing="leading"),
    "DPMSolverMultistepScheduler": dict(
        _COMMON, solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
        euler_at_final=False, use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
        use_lu_lambdas=False, use_flow_sigmas=False, final_sigmas_type="zero", lambda_min_clipped=-math.inf,
        variance_type=None, timestep_spacing="linspace"),
}
SCHEDULERS = {"DDIMScheduler": "ddim", "DPMSolverMultistepScheduler": "dpm_solver_2m"}
SCHEDULER_OF = {v: k for k, v in SCHEDULERS.items()}
# diffusers names the beta schedules its own way; unigen's beta_schedule() takes these names.
_BETAS = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}


@dataclasses.dataclass(frozen=True)
class Scheduler:
    """A validated scheduler config. `sampler` is "ddim" or "dpm_solver_2m"."""
    class_name: str
    sampler: str
    num_train_timesteps: int
    beta_schedule: str  # unigen's name
    timestep_spacing: str
    steps_offset: int
    lambda_min_clipped: float = -math.inf
    where: str = "scheduler"

    def diffusion(self, learn_sigma: bool, timesteps=None) -> GaussianDiffusion:
        """The Gaussian diffusion (respaced to `timesteps` if given); `learn_sigma` says whether the
        network outputs [eps, v] (the v channels do not enter a DDIM or DPM-Solver step)."""
        spec = None if timesteps is None else "at:" + ",".join(str(int(t)) for t in sorted(timesteps))
        return GaussianDiffusion.create(self.num_train_timesteps, self.beta_schedule, learn_sigma=learn_sigma,
                                        timestep_respacing=spec)

    def timesteps(self, steps: int) -> np.ndarray:
        """The timesteps the network is called at, first (noisiest) to last, exactly as the diffusers
        class's `set_timesteps(steps)` makes them; refused where unigen's sampler would step otherwise."""
        T, n = self.num_train_timesteps, int(steps)
        if n < 1 or n > T:
            raise ConfigError(f"num_inference_steps={steps}: use 1..{T} (the scheduler's num_train_timesteps)")
        spacing, fix = self.timestep_spacing, f"{self.where}: timestep_spacing={self.timestep_spacing!r}"
        if self.sampler == "ddim":
            if spacing == "linspace":
                t = np.linspace(0, T - 1, n).round()[::-1]
            elif spacing == "leading":
                t = (np.arange(0, n) * (T // n)).round()[::-1] + self.steps_offset
            else:
                t = np.round(np.arange(T, 0, -T / n)) - 1
            t = t.astype(np.int64)
            # diffusers' DDIM steps from t to t - T // n whatever the next timestep is; unigen's DDIM
            # steps to the next timestep of its respaced process. They agree where the two coincide
            # (always for "leading"; "trailing" when n divides T) and the last step lands on data.
            prev = t - T // n
            if n < 2 or np.any(prev[:-1] != t[1:]) or prev[-1] >= 0:
                raise ConfigError(
                    f"{fix} with num_inference_steps={n}: diffusers' DDIM steps from each timestep to "
                    f"t - {T // n}, which here is not the next timestep {t.tolist()[:6]}..., so it is not a DDIM "
                    f"over a respaced process and unigen's DDIM cannot reproduce it; use timestep_spacing "
                    f"'leading', a step count (>= 2) that divides {T}, or DPMSolverMultistepScheduler")
        else:
            last = T - self._clipped_steps()
            if spacing == "linspace":
                t = np.linspace(0, last - 1, n + 1).round()[::-1][:-1]
            elif spacing == "leading":
                t = (np.arange(0, n + 1) * (last // (n + 1))).round()[::-1][:-1] + self.steps_offset
            else:
                t = np.arange(last, 0, -T / n).round() - 1
            t = t.astype(np.int64)
            if np.unique(t).size != t.size or t.size != n:
                raise ConfigError(f"{fix}: num_inference_steps={n} gives repeated timesteps {t.tolist()}; "
                                  f"use fewer steps")
        if t.min() < 0 or t.max() >= T:
            raise ConfigError(f"{fix}, steps_offset={self.steps_offset}: timesteps {t.tolist()} leave "
                              f"0..{T - 1}; lower steps_offset")
        return t

    def _clipped_steps(self) -> int:
        """DPM-Solver's `lambda_min_clipped`: how many of the noisiest timesteps it leaves out
        (lambda = log(alpha / sigma) below the bound)."""
        if self.lambda_min_clipped == -math.inf:
            return 0
        abar = np.cumprod(1.0 - beta_schedule(self.beta_schedule, self.num_train_timesteps))
        lam = 0.5 * (np.log(abar) - np.log1p(-abar))
        return int(np.searchsorted(lam[::-1], self.lambda_min_clipped))

    def sample(self, model_fn, shape, rng, *, steps: int, learn_sigma: bool, cond=None, noise=None):
        """Run the sampler from `noise` (x_T, shape `shape`, NHWC) to the data end; traceable inside
        a caller's jit. `model_fn(x, t, **cond)` receives the original integer timesteps."""
        t = self.timesteps(steps)
        if self.sampler == "ddim":
            return samplers.ddim(self.diffusion(learn_sigma, t), model_fn, shape, rng, eta=0.0, cond=cond,
                                 noise=noise)
        return samplers.dpm_solver_2m(_FixedGrid(self.diffusion(learn_sigma), tuple(int(s) for s in t)), model_fn,
                                      shape, rng, steps=len(t), cond=cond, noise=noise)


@dataclasses.dataclass(frozen=True)
class _FixedGrid:
    """The Gaussian diffusion with DPM-Solver's grid set to given timesteps (the scheduler's), so
    `samplers.dpm_solver_2m` runs on it unchanged; everything else is the diffusion's own."""
    base: GaussianDiffusion
    grid: tuple[int, ...]
    samplers = ("dpm_solver_2m",)

    def dpm_grid(self, steps, sigmas=None):
        idx = np.asarray(self.grid, np.int64)
        abar = self.base.alphas_cumprod[idx]
        return idx, np.append(np.sqrt(abar), 1.0), np.append(np.sqrt(1.0 - abar), 0.0)

    def denoise(self, model_fn, x, g, **cond):
        return self.base.denoise(model_fn, x, g, **cond)

    def losses(self, *args, **kwargs):
        raise TypeError("a scheduler's fixed sampling grid is not a training objective")

    def for_sampler(self, sampler, steps):
        return self

    def prediction_channels(self, channels):
        return self.base.prediction_channels(channels)


def _get(config: dict, key: str, kinds, where: str):
    value = config[key]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ConfigError(f"{where}: field {key!r} = {value!r} has the wrong type")
    return value


def read_scheduler(config: dict, *, where: str = "scheduler_config.json", class_name: str | None = None,
                   in_channels: int | None = None) -> Scheduler:
    """Validate a diffusers scheduler config and return the `Scheduler` that samples like it.
    `class_name` reads the config as another scheduler class (diffusers' `Cls.from_config`);
    `in_channels`: the latent channels (DPM-Solver's variance_type needs them)."""
    name = class_name or config.get("_class_name")
    if name not in DEFAULTS:
        raise ConfigError(f"{where}: scheduler {name!r} is not supported; unigen samples a DiTPipeline with "
                          f"{sorted(DEFAULTS)} (pass scheduler='DPMSolverMultistepScheduler' / --sampler "
                          f"dpm_solver_2m to read this config as one of them)")
    c = {k: config.get(k, default) for k, default in DEFAULTS[name].items()}

    def refuse(key, why):
        raise ConfigError(f"{where}: {name} field {key!r} = {c[key]!r}: {why}")

    T = _get(c, "num_train_timesteps", (int,), where)
    if T < 2:
        refuse("num_train_timesteps", "need at least 2 training timesteps")
    if c["trained_betas"] is not None:
        refuse("trained_betas", "explicit betas are not supported; use a named beta_schedule")
    schedule = _get(c, "beta_schedule", (str,), where)
    if schedule not in _BETAS:
        refuse("beta_schedule", f"use one of {sorted(_BETAS)}")
    start, end = (float(_get(c, k, (int, float), where)) for k in ("beta_start", "beta_end"))
    expected = {"linear": (1e-4 * 1000 / T, 0.02 * 1000 / T), "scaled_linear": (0.00085, 0.012)}.get(schedule)
    if expected is not None:  # unigen's named schedules have fixed ends (cosine ignores them, as diffusers)
        for key, value, want in (("beta_start", start, expected[0]), ("beta_end", end, expected[1])):
            if not math.isclose(value, want, rel_tol=1e-6):
                refuse(key, f"unigen's {schedule!r} schedule over {T} steps has {key} {want:g}")
    for key in ("thresholding", "rescale_betas_zero_snr"):
        if _get(c, key, (bool,), where):
            refuse(key, "not supported; set it to false")
    if _get(c, "prediction_type", (str,), where) != "epsilon":
        refuse("prediction_type", "DiT predicts noise; only 'epsilon' is supported")
    spacing = _get(c, "timestep_spacing", (str,), where)
    if spacing not in ("leading", "trailing", "linspace"):
        refuse("timestep_spacing", "use 'leading', 'trailing' or 'linspace'")
    offset = _get(c, "steps_offset", (int,), where)
    lambda_min = -math.inf
    if name == "DDIMScheduler":
        if _get(c, "clip_sample", (bool,), where):
            # diffusers clips x0 and keeps the unclipped eps; unigen's DDIM re-derives eps from the clipped x0.
            refuse("clip_sample", "clipping x0 in DDIM is not supported (it also distorts latents); set it to false")
        if not _get(c, "set_alpha_to_one", (bool,), where):
            refuse("set_alpha_to_one", "unigen's DDIM ends on clean data (alpha 1); set it to true")
    else:
        if _get(c, "solver_order", (int,), where) != 2:
            refuse("solver_order", "unigen's DPM-Solver++ is second order (2M); set it to 2")
        if c["algorithm_type"] not in ("dpmsolver++", "deis"):  # diffusers reads "deis" as dpmsolver++
            refuse("algorithm_type", "only 'dpmsolver++' (data prediction, deterministic) is supported")
        if c["solver_type"] not in ("midpoint", "logrho", "bh1", "bh2"):  # the latter three read as midpoint
            refuse("solver_type", "only the 'midpoint' second-order update is supported")
        for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas",
                    "use_flow_sigmas"):
            if _get(c, key, (bool,), where):
                refuse(key, "only the scheduler's own timesteps are supported; set it to false")
        if c["final_sigmas_type"] != "zero":
            refuse("final_sigmas_type", "unigen's DPM-Solver ends at sigma 0; set it to 'zero'")
        if c["variance_type"] not in (None, "learned", "learned_range"):
            refuse("variance_type", "use null")
        if c["variance_type"] is not None and in_channels not in (None, 3):
            # DPM-Solver keeps only model_output[:, :3] then; DiTPipeline has already dropped the
            # variance channels, so with other than 3 latent channels diffusers cannot step at all.
            refuse("variance_type", f"DiTPipeline already splits off the learned variance; with {in_channels} "
                                    f"latent channels this setting breaks the step; set it to null")
        lambda_min = float(_get(c, "lambda_min_clipped", (int, float), where))
    return Scheduler(name, SCHEDULERS[name], T, _BETAS[schedule], spacing, offset, lambda_min, where)
