"""Latent Zoning Networks (Lin et al. 2025): the latent flow between anchors and N(0, I),
the latent alignment loss, the image encoder and label anchors. See `unigen.lzn.flow` for the
time convention."""
from unigen.lzn.alignment import alignment_loss, contrastive_alignment_loss
from unigen.lzn.classifier import LZNClassifier
from unigen.lzn.encoder import ImageEncoder, ImageEncoderConfig, LabelAnchors
from unigen.lzn.flow import (
    denoise, encode, integrate, log_posterior, posterior, reverse, t_range, time_grid, velocity,
)

__all__ = [
    "alignment_loss", "contrastive_alignment_loss", "LZNClassifier", "ImageEncoder", "ImageEncoderConfig", "LabelAnchors", "denoise", "encode", "integrate", "log_posterior",
    "posterior", "reverse", "t_range", "time_grid", "velocity",
]
