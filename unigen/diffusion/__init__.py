"""Model-agnostic diffusion objectives, samplers and guidance (any model_fn(x, t, **cond))."""
from unigen.diffusion import samplers
from unigen.diffusion.flow import RectifiedFlow, shift_sigma
from unigen.diffusion.gaussian import GaussianDiffusion, beta_schedule
from unigen.diffusion.objective import Objective, check_objective
from unigen.diffusion.guidance import classifier_free_guidance, label_guidance
from unigen.diffusion.respacing import space_timesteps

__all__ = [
    "Objective", "check_objective", "GaussianDiffusion", "RectifiedFlow", "beta_schedule", "shift_sigma", "space_timesteps",
    "classifier_free_guidance", "label_guidance", "samplers",
]
