"""Model-agnostic diffusion objectives, samplers and guidance (any model_fn(x, t, **cond))."""
from unigen.diffusion import builtin_objectives, samplers  # register the built-in objectives and samplers
from unigen.diffusion.flow import RectifiedFlow, shift_sigma
from unigen.diffusion.gaussian import GaussianDiffusion, beta_schedule
from unigen.diffusion.objective import DataPrediction, FlowODE, Objective, check_objective
from unigen.diffusion.registry import (get_sampler, objective_names, register_objective, register_sampler,
                                       sampler_names, samplers_for)
from unigen.diffusion.guidance import classifier_free_guidance, label_guidance
from unigen.diffusion.respacing import space_timesteps

__all__ = [
    "Objective", "DataPrediction", "FlowODE", "check_objective", "register_objective", "register_sampler",
    "get_sampler", "objective_names", "sampler_names", "samplers_for", "GaussianDiffusion", "RectifiedFlow",
    "beta_schedule", "shift_sigma", "space_timesteps", "classifier_free_guidance", "label_guidance", "samplers",
]
