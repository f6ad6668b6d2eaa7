"""unigen.tasks: training tasks by name (batch, loss, null condition, grids, evaluation)."""

from unigen.tasks.base import Task, get_task, register_task, task_names
from unigen.tasks.diffusion import DiffusionTask, diffusion_process  # registers "diffusion"
from unigen.tasks.text_to_image import TextToImageTask  # registers "text_to_image"

__all__ = ["Task", "get_task", "register_task", "task_names", "DiffusionTask", "diffusion_process", "TextToImageTask"]
