"""The built-in objectives, built from a run's `config.diffusion` and registered by `kind`.

kind="gaussian": DDPM / IDDPM (`num_timesteps`, `beta_schedule`, `loss`; the model's learn_sigma
picks a learned variance). kind="flow": rectified flow (`time_sampling`, `loc`, `scale`, `shift`,
`time_scale`, LightningDiT's `direction_weight`, `time_convention` and `sample_shift` or its
`timestep_shift` = 1 / sample_shift; RAE's `shift_base_dim`: shift = sqrt(H*W*C / shift_base_dim) of
the model input, None = off). Each builder raises ValueError naming the field it cannot take.
"""

from __future__ import annotations

from unigen.diffusion.flow import RectifiedFlow, dimension_shift, sample_shift_from_timestep_shift
from unigen.diffusion.gaussian import GaussianDiffusion
from unigen.diffusion.registry import register_objective


def gaussian_from_config(dcfg, *, learn_sigma: bool, input_shape=None) -> GaussianDiffusion:
    base_dim = dcfg.get("shift_base_dim")
    if base_dim is not None:
        raise ValueError(f"config.diffusion.shift_base_dim={base_dim!r}: a rectified-flow option "
                         f"(kind='flow'); set None for kind={dcfg.kind!r}")
    return GaussianDiffusion.create(dcfg.num_timesteps, dcfg.beta_schedule, learn_sigma=learn_sigma,
                                    loss=dcfg.get("loss"))


def flow_from_config(dcfg, *, learn_sigma: bool, input_shape=None) -> RectifiedFlow:
    if learn_sigma:
        raise ValueError("config.model.learn_sigma=True: a rectified flow predicts a velocity: set False")
    sample_shift, timestep_shift = dcfg.get("sample_shift"), dcfg.get("timestep_shift")
    if sample_shift is not None and timestep_shift is not None:
        raise ValueError(f"config.diffusion.timestep_shift={timestep_shift!r} and sample_shift={sample_shift!r}: "
                         "give one (timestep_shift is LightningDiT's form of sample_shift = 1 / timestep_shift)")
    if timestep_shift is not None:
        try:
            sample_shift = sample_shift_from_timestep_shift(timestep_shift)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config.diffusion.{e}") from None
    shift, base_dim = dcfg.get("shift", 1.0), dcfg.get("shift_base_dim")
    if base_dim is not None:
        if shift != 1.0:
            raise ValueError(f"config.diffusion.shift={shift!r} and shift_base_dim={base_dim!r}: give one "
                             "(shift_base_dim sets shift = sqrt(H*W*C / shift_base_dim) from the model input); "
                             "set shift=1.0 or shift_base_dim=None")
        if input_shape is None:
            raise ValueError(f"config.diffusion.shift_base_dim={base_dim!r}: needs the model input's shape "
                             "(diffusion_process(..., input_shape=(H, W, C)))")
        try:
            shift = dimension_shift(input_shape, base_dim)
        except ValueError as e:
            raise ValueError(f"config.diffusion.{e}" if str(e).startswith("shift_base_dim")
                             else f"config.diffusion: {e}") from None
    return RectifiedFlow.create(dcfg.get("time_sampling", "logit_normal"), dcfg.get("loc", 0.0),
                                dcfg.get("scale", 1.0), shift, dcfg.get("time_scale", 1000.0),
                                direction_weight=dcfg.get("direction_weight", 0.0),
                                time_convention=dcfg.get("time_convention", "sigma"), sample_shift=sample_shift)


register_objective("gaussian", gaussian_from_config, help="DDPM / IDDPM Gaussian diffusion (integer t, t=0 data)")
register_objective("flow", flow_from_config, help="rectified flow (sigma in [0, 1], sigma=1 noise)")
