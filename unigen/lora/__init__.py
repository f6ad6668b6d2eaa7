"""LoRA adapters for unigen's SD3 (MMDiT) and Flux transformers, in diffusers / PEFT files.

    lora = init_lora(model, rank=8, alpha=8)        # default targets: attention q/k/v/out
    graphdef, state = nnx.split(model)
    loss = lambda lora: f(nnx.merge(graphdef, merge(state, lora)))   # grads w.r.t. lora only
    save_lora("my_lora.safetensors", lora)          # diffusers' pipe.load_lora_weights reads it
    apply_lora(model, load_lora("their_lora.safetensors", model))    # merged in place
"""

from unigen.lora.adapters import (DEFAULT_TARGETS, Lora, Target, all_targets, apply_lora, init_lora, merge,
                                  model_kind, remove_lora, select_targets, unmerge)
from unigen.lora.diffusers_format import load_lora, save_lora, to_diffusers

__all__ = ["DEFAULT_TARGETS", "Lora", "Target", "all_targets", "apply_lora", "init_lora", "load_lora", "merge",
           "model_kind", "remove_lora", "save_lora", "select_targets", "to_diffusers", "unmerge"]
