"""The text modality of UniDiffuser on a small caption set: a frozen text encoder's token states
reduced by a fixed PCA, and decoding by the nearest caption.

UniDiffuser reduces CLIP's 77 x 768 text states to 77 x 64 with a linear map trained jointly with
the diffusion loss (Bao et al. 2023, §4.1). On a caption set of a few hundred strings a jointly
learned map collapses (shrinking the text to a point makes its noise easy to predict), so here
the map is fixed before training: the top `dim` principal components of the valid (non-padding)
token states of the training captions, each scaled to unit variance over those tokens, so the
text latent has the scale the diffusion assumes. Padding positions are set to 0.

Generated text latents are read back as the caption of the set whose latent is nearest (L2 over
all positions): an image-to-text sample "names" the digit of that caption.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class TextPCA:
    mean: np.ndarray        # (D,) mean token state
    components: np.ndarray  # (dim, D) principal directions, rows orthonormal
    scale: np.ndarray       # (dim,) std of each component over the fitted tokens

    @classmethod
    def fit(cls, tokens: np.ndarray, mask: np.ndarray, dim: int) -> "TextPCA":
        """PCA of the valid token states: tokens (N, T, D), mask (N, T) bool."""
        valid = np.asarray(tokens, np.float64)[np.asarray(mask, bool)]
        if not 1 <= dim <= min(valid.shape):
            raise ValueError(f"text latent dim={dim}: must be in 1..{min(valid.shape)} (the fitted captions have "
                             f"{valid.shape[0]} valid tokens of width {valid.shape[1]})")
        mean = valid.mean(0)
        _, _, vt = np.linalg.svd(valid - mean, full_matrices=False)
        # Fix each direction's sign (largest entry positive) so a refit gives the same latents.
        comps = vt[:dim] * np.sign(vt[:dim][np.arange(dim), np.abs(vt[:dim]).argmax(1)])[:, None]
        scale = ((valid - mean) @ comps.T).std(0)
        return cls(mean.astype(np.float32), comps.astype(np.float32), np.maximum(scale, 1e-6).astype(np.float32))

    @property
    def dim(self) -> int:
        return self.components.shape[0]

    def __call__(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Text latents (N, T, dim) float32 of token states (N, T, D); padding positions are 0."""
        z = (np.asarray(tokens, np.float64) - self.mean) @ self.components.T.astype(np.float64) / self.scale
        return (z * np.asarray(mask, bool)[..., None]).astype(np.float32)


def nearest(latents: np.ndarray, table: np.ndarray, candidates: np.ndarray | None = None,
            chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(index into `table`, L2 distance) of the nearest row of `table` (N, T, dim) to each latent
    (M, T, dim); `candidates` restricts the search to those row indices."""
    latents = np.asarray(latents, np.float32)
    if latents.shape[1:] != table.shape[1:]:
        raise ValueError(f"text latents of shape {latents.shape[1:]} against captions of shape {table.shape[1:]}")
    ids = np.arange(len(table)) if candidates is None else np.asarray(candidates)
    ref = table[ids].reshape(len(ids), -1).astype(np.float32)
    ref_sq = (ref ** 2).sum(1)
    best, dist = [], []
    for start in range(0, len(latents), chunk):
        q = latents[start:start + chunk].reshape(-1, ref.shape[1])
        d2 = (q ** 2).sum(1)[:, None] - 2.0 * q @ ref.T + ref_sq[None]
        j = d2.argmin(1)
        best.append(ids[j])
        dist.append(np.sqrt(np.maximum(d2[np.arange(len(q)), j], 0.0)))
    return np.concatenate(best), np.concatenate(dist)
