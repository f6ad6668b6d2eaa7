"""unigen.tasks: training tasks by name (batch, loss, null condition, grids, evaluation)."""

from unigen.tasks.base import Task, get_task, register_task, task_names
from unigen.tasks.diffusion import DiffusionTask, diffusion_process, released_task  # registers "diffusion"
from unigen.tasks.text_to_image import TextToImageTask  # registers "text_to_image"
from unigen.tasks.lzn import LZNClassificationTask, LZNGenerationTask, LZNRepresentationTask  # registers "lzn_*"
from unigen.tasks.autoencoder import AutoencoderTask  # registers "autoencoder"
from unigen.tasks.rae import RAETask  # registers "rae"
from unigen.tasks.unidiffuser import UniDiffuserTask  # registers "unidiffuser"

__all__ = ["Task", "get_task", "register_task", "task_names", "DiffusionTask", "diffusion_process", "released_task",
           "TextToImageTask",
           "LZNGenerationTask", "LZNClassificationTask", "LZNRepresentationTask", "AutoencoderTask", "RAETask",
           "UniDiffuserTask"]
