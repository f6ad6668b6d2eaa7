"""Released pipelines read from their diffusers folders (`model_index.json`) and called like
diffusers' own: `pipe = unigen.pipelines.from_pretrained(folder_or_hub_id)` (the class the folder
names), `pipe("a prompt", ...)` or `pipe(class_labels, ...)` -> images.

  from_pretrained  the pipeline model_index.json's _class_name names; register_pipeline adds one (load.py)
  DiTPipeline   class-conditional DiT + AutoencoderKL + a DDIM / DPM-Solver++ scheduler (dit.py)
  StableDiffusion3Pipeline  SD3 / SD3.5: MMDiT + two CLIPs (+ optional T5) + 16-ch VAE + flow-match Euler (sd3.py)
  FluxPipeline  Flux.1 dev / schnell: Flux transformer + 16-ch VAE + CLIP-L (pooled) + T5 + flow-match Euler (flux.py)
  components    what the pipeline readers share: model_index.json, components, tokenizers, outputs (components.py)
  read_scheduler  a diffusers scheduler_config.json as one of unigen's samplers (schedulers.py)
  FlowMatchEuler  a FlowMatchEulerDiscreteScheduler config (SD3 / Flux), its grid and Euler loop (flow_match.py)
"""

from unigen.pipelines.dit import MODEL_INDEX, DiTPipeline, is_pipeline_folder
from unigen.pipelines.flow_match import FlowMatchEuler, linear_sigmas, register_scheduler, scheduler_from_config
from unigen.pipelines.flux import FluxPipeline
from unigen.pipelines.load import from_pretrained, pipeline_names, register_pipeline
from unigen.pipelines.schedulers import Scheduler, read_scheduler
from unigen.pipelines.sd3 import StableDiffusion3Pipeline

__all__ = ["DiTPipeline", "MODEL_INDEX", "Scheduler", "is_pipeline_folder", "read_scheduler", "FlowMatchEuler",
           "linear_sigmas", "register_scheduler", "scheduler_from_config", "FluxPipeline", "StableDiffusion3Pipeline",
           "from_pretrained", "pipeline_names", "register_pipeline"]
