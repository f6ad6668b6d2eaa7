"""Weight conversion from PyTorch / diffusers layouts into unigen modules."""

from unigen.convert.unigen_format import save_pretrained
from unigen.convert.weights import WeightError, fill_module, read_weights

__all__ = ["WeightError", "fill_module", "read_weights", "save_pretrained"]
