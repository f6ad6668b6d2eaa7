"""Weight conversion from PyTorch / diffusers / transformers layouts into unigen modules, unigen's
own format, and the registry of sources `unigen.from_pretrained` reads."""

from unigen.convert import dit  # noqa: F401  (registers the official and diffusers DiT loaders)
from unigen.convert import mmdit  # noqa: F401  (registers the diffusers SD3Transformer2DModel loader)
from unigen.convert import uvit  # noqa: F401  (registers the diffusers UniDiffuserModel loader)
from unigen.convert import bert  # noqa: F401  (registers transformers BERT and sentence-transformers folders)
from unigen.convert import autoencoder_kl  # noqa: F401  (registers the diffusers AutoencoderKL loader)
from unigen.convert import dinov2  # noqa: F401  (registers transformers Dinov2Model / Dinov2WithRegistersModel)
from unigen.convert import rae  # noqa: F401  (registers the diffusers AutoencoderRAE loader)
from unigen.convert import flux  # noqa: F401  (registers the diffusers FluxTransformer2DModel loader)
from unigen.convert import clip  # noqa: F401  (registers transformers CLIPTextModel / WithProjection / CLIPModel folders)
from unigen.convert import t5  # noqa: F401  (registers transformers T5 folders: T5EncoderModel, and T5's encoder)
from unigen.convert.registry import register_diffusers, register_file, register_folder, register_transformers
from unigen.convert.unigen_format import load_pretrained, save_pretrained
from unigen.convert.weights import WeightError, fill_module, read_weights

__all__ = ["WeightError", "fill_module", "read_weights", "load_pretrained", "save_pretrained",
           "register_diffusers", "register_file", "register_folder", "register_transformers"]
