"""Released pipelines read from their diffusers folders (`model_index.json`) and called like
diffusers' own: `pipe = DiTPipeline.from_pretrained(folder)`, `pipe(class_labels, ...)` -> images.

  DiTPipeline   class-conditional DiT + AutoencoderKL + a DDIM / DPM-Solver++ scheduler (dit.py)
  read_scheduler  a diffusers scheduler_config.json as one of unigen's samplers (schedulers.py)
"""

from unigen.pipelines.dit import MODEL_INDEX, DiTPipeline, is_pipeline_folder
from unigen.pipelines.schedulers import Scheduler, read_scheduler

__all__ = ["DiTPipeline", "MODEL_INDEX", "Scheduler", "is_pipeline_folder", "read_scheduler"]
