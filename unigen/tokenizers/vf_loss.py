"""VA-VAE's vision-foundation alignment (VF) loss (Yao et al. 2025, "Reconstruction vs.
Generation", §3.2; hustvl/LightningDiT `tokenizer` losses, `vf_loss_type="combined_v3"`).

The latent z (B, h, w, C) is projected to the foundation model's width, z' = W z (a 1x1 conv),
and compared token by token with the frozen foundation features f (B, h*w, D):

  marginal cosine similarity    L_mcos = mean_{b,i} ReLU(1 - m1 - cos(z'_bi, f_bi))
  marginal distance matrix      L_mdms = mean_{b,i,j} ReLU(|cos(z'_bi, z'_bj) - cos(f_bi, f_bj)| - m2)

with margins m1 = 0.5, m2 = 0.25: a token only pays while it is further than the margin from
its target, so the latent keeps room for reconstruction detail. The distance matrix is over the
tokens of one image (the reference's `z_prime @ z_prime^T` per batch element).

`adaptive_weight` is the reference's balance against the reconstruction loss: the ratio of the
two losses' gradient norms on the encoder's last layer, ||grad L_rec|| / (||grad L_vf|| + 1e-4),
clamped to [0, 1e8] and not differentiated (the taming-transformers GAN weight, reused for VF).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

COS_MARGIN = 0.5
DISTMAT_MARGIN = 0.25


def _unit(x, eps: float = 1e-8):
    # x / max(|x|, eps) as torch's normalize / cosine_similarity, written sqrt(max(|x|^2, eps^2))
    # so the gradient stays finite at x = 0
    return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def vf_losses(z_proj: jax.Array, features: jax.Array, *, cos_margin: float = COS_MARGIN,
              distmat_margin: float = DISTMAT_MARGIN) -> tuple[jax.Array, jax.Array]:
    """(L_mcos, L_mdms), scalars, for projected latents and features, both (B, T, D)."""
    if z_proj.shape != features.shape:
        raise ValueError(f"projected latents {z_proj.shape} and foundation features {features.shape} must match "
                         f"(same tokens and width)")
    z, f = _unit(z_proj.astype(jnp.float32)), _unit(features.astype(jnp.float32))
    mcos = jnp.mean(jax.nn.relu(1.0 - cos_margin - jnp.sum(z * f, axis=-1)))
    gram_z = jnp.einsum("btd,bsd->bts", z, z)
    gram_f = jnp.einsum("btd,bsd->bts", f, f)
    mdms = jnp.mean(jax.nn.relu(jnp.abs(gram_z - gram_f) - distmat_margin))
    return mcos, mdms


def adaptive_weight(grad_rec: jax.Array, grad_vf: jax.Array, *, eps: float = 1e-4, max_weight: float = 1e8):
    """||grad_rec|| / (||grad_vf|| + eps), clamped to [0, max_weight], without gradient."""
    w = jnp.linalg.norm(grad_rec.astype(jnp.float32)) / (jnp.linalg.norm(grad_vf.astype(jnp.float32)) + eps)
    return jax.lax.stop_gradient(jnp.clip(w, 0.0, max_weight))
