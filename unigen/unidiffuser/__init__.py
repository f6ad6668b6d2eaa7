"""UniDiffuser (Bao et al. 2023): one network for the joint, conditional and marginal distributions
of two modalities: the multi-timestep objective, the five sampling modes as model wrappers, their
sampler, and the text modality of a small caption set (a fixed PCA of text-encoder states)."""

from unigen.unidiffuser.modes import GIVEN, GUIDED, IMAGE, MODES, MOVES, TEXT, Layout, check_mode, mode_eps
from unigen.unidiffuser.objective import WEIGHTINGS, multi_timestep_losses
from unigen.unidiffuser.sampler import ModeSampler
from unigen.unidiffuser.text_latents import TextPCA, nearest

__all__ = ["GIVEN", "GUIDED", "IMAGE", "MODES", "MOVES", "TEXT", "Layout", "check_mode", "mode_eps",
           "WEIGHTINGS", "multi_timestep_losses", "ModeSampler", "TextPCA", "nearest"]
