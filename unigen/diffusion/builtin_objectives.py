"""The built-in objectives, registered by `config.diffusion.kind` with the schema of their fields.

kind="gaussian": DDPM / IDDPM (`num_timesteps`, `beta_schedule`, `loss`; the model's learn_sigma
picks a learned variance). kind="flow": rectified flow (`time_sampling`, `loc`, `scale`, `shift`,
`time_scale`, LightningDiT's `direction_weight`, `time_convention` and `sample_shift` or its
`timestep_shift` = 1 / sample_shift; RAE's `shift_base_dim`: shift = sqrt(H*W*C / shift_base_dim) of
the model input, None = off). The process classes check their own values (ValueError naming the
field); the builders check what only a pair of fields or the model can tell.
"""

from __future__ import annotations

import dataclasses

from unigen.config_sections import section_field
from unigen.diffusion.flow import RectifiedFlow, dimension_shift, sample_shift_from_timestep_shift
from unigen.diffusion.gaussian import GaussianDiffusion
from unigen.diffusion.registry import register_objective


@dataclasses.dataclass(frozen=True)
class GaussianOptions:
    num_timesteps: int = 1000
    beta_schedule: str = "linear"
    loss: str | None = None  # None: "hybrid" with a learned variance, else "mse" (DiT's create_diffusion)
    # Declared so that a flow config switched to kind="gaussian" cannot keep a shift it would not apply.
    shift_base_dim: int | None = None

    def validate(self):
        if self.shift_base_dim is not None:
            raise ValueError(f"shift_base_dim={self.shift_base_dim!r}: a rectified-flow option (kind='flow'); "
                             f"set None for kind='gaussian'")


@dataclasses.dataclass(frozen=True)
class FlowOptions:
    time_sampling: str = "logit_normal"
    loc: float = 0.0
    scale: float = 1.0
    shift: float = 1.0
    time_scale: float = 1000.0
    # LightningDiT's options, added after the first flow work dirs: those trained without them.
    direction_weight: float = section_field(0.0, before=0.0)
    time_convention: str = section_field("sigma", before="sigma")
    sample_shift: float | None = None
    timestep_shift: float | None = None
    shift_base_dim: int | None = None

    def validate(self):
        if self.sample_shift is not None and self.timestep_shift is not None:
            raise ValueError(f"timestep_shift={self.timestep_shift!r} and sample_shift={self.sample_shift!r}: give "
                             "one (timestep_shift is LightningDiT's form of sample_shift = 1 / timestep_shift)")
        if self.shift_base_dim is not None and self.shift != 1.0:
            raise ValueError(f"shift={self.shift!r} and shift_base_dim={self.shift_base_dim!r}: give one "
                             "(shift_base_dim sets shift = sqrt(H*W*C / shift_base_dim) from the model input); "
                             "set shift=1.0 or shift_base_dim=None")


def gaussian_from_options(opts: GaussianOptions, *, learn_sigma: bool, input_shape=None) -> GaussianDiffusion:
    return GaussianDiffusion.create(opts.num_timesteps, opts.beta_schedule, learn_sigma=learn_sigma, loss=opts.loss)


def flow_from_options(opts: FlowOptions, *, learn_sigma: bool, input_shape=None) -> RectifiedFlow:
    if learn_sigma:
        raise ValueError("config.model.learn_sigma=True: a rectified flow predicts a velocity: set False")
    sample_shift = opts.sample_shift
    if opts.timestep_shift is not None:
        try:
            sample_shift = sample_shift_from_timestep_shift(opts.timestep_shift)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config.diffusion.{e}") from None
    shift = opts.shift
    if opts.shift_base_dim is not None:
        if input_shape is None:
            raise ValueError(f"config.diffusion.shift_base_dim={opts.shift_base_dim!r}: needs the model input's "
                             "shape (diffusion_process(..., input_shape=(H, W, C)))")
        try:
            shift = dimension_shift(input_shape, opts.shift_base_dim)
        except ValueError as e:
            raise ValueError(f"config.diffusion.{e}" if str(e).startswith("shift_base_dim")
                             else f"config.diffusion: {e}") from None
    return RectifiedFlow.create(opts.time_sampling, opts.loc, opts.scale, shift, opts.time_scale,
                                direction_weight=opts.direction_weight, time_convention=opts.time_convention,
                                sample_shift=sample_shift)


register_objective("gaussian", gaussian_from_options, options=GaussianOptions,
                   help="DDPM / IDDPM Gaussian diffusion (integer t, t=0 data)")
register_objective("flow", flow_from_options, options=FlowOptions,
                   help="rectified flow (sigma in [0, 1], sigma=1 noise)")
