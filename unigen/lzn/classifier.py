"""An LZN classifier as one callable: image -> anchor -> latent -> label zone.

Classification in a Latent Zoning Network (Lin et al. 2025, the reference's
`ClassAccuracy` metric): the image encoder gives the anchor a; the latent flow of an anchor
set carries a to its latent z (`unigen.lzn.flow.encode`); z is reversed through the label
anchors (Euler, 100 steps) and the class is the label anchor nearest the end point
(`LabelAnchors.classify`).

A latent depends on the anchor set it is encoded with: in training that is the minibatch.
`LZNClassifier` makes the prediction for an image independent of the rest of its batch by
encoding each image with a fixed *reference set* of training images' anchors plus its own
anchor (M + 1 anchors, M = the training batch size by default, so the flow sees what it saw
in training). `reference=None` instead uses the batch itself as the anchor set, exactly as
the reference's evaluation encodes a test batch (then predictions depend on the batch).

The start noise of encoding is zero by default (the zone's centre: the reference's
"latent_center" probe mode), so a prediction is deterministic; pass `noise_key` to draw
N(0, I) start noise as training does.

    clf = LZNClassifier(model.encoder, model.labels, reference_images)
    scores = clf(x)          # (B, num_classes) log-posteriors of the label anchors
    labels = clf.predict(x)  # (B,) the reference's rule: nearest label anchor to the end point
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from unigen.lzn import flow
from unigen.lzn.encoder import ImageEncoder, LabelAnchors


class LZNClassifier(nnx.Module):
    def __init__(self, encoder: ImageEncoder, labels: LabelAnchors, reference=None, *, encode_steps: int = 20,
                 encode_solver: str = "dpm++2m", label_steps: int = 100, label_solver: str = "euler"):
        if not isinstance(encoder, ImageEncoder) or not isinstance(labels, LabelAnchors):
            raise TypeError("LZNClassifier takes an ImageEncoder and its LabelAnchors")
        self.encoder, self.labels = encoder, labels
        self.reference = None if reference is None else nnx.Variable(jnp.asarray(reference, jnp.float32))
        if reference is not None and self.reference.shape[1:] != (encoder.cfg.image_size, encoder.cfg.image_size,
                                                                    encoder.cfg.channels):
            raise ValueError(f"reference images have shape {self.reference.shape}; the encoder reads "
                             f"(M, {encoder.cfg.image_size}, {encoder.cfg.image_size}, {encoder.cfg.channels})")
        self.encode_steps, self.encode_solver = int(encode_steps), encode_solver
        self.label_steps, self.label_solver = int(label_steps), label_solver

    @property
    def num_classes(self) -> int:
        return self.labels.anchors.shape[0]

    def latents(self, x, noise_key=None) -> jax.Array:
        """(B, latent_dim) latents of images x (B, H, W, C) in [-1, 1]."""
        a = self.encoder(x)
        noise = None if noise_key is None else jax.random.normal(noise_key, a.shape, a.dtype)
        options = dict(steps=self.encode_steps, solver=self.encode_solver)
        if self.reference is None:
            return flow.encode(a, a, noise=noise, **options)
        ref = self.encoder(self.reference[...])

        def one(point, n):  # the reference anchors plus this image's own
            anchors = jnp.concatenate([ref, point[None]], axis=0)
            return flow.encode(point[None], anchors, noise=None if n is None else n[None], **options)[0]

        return jax.vmap(one)(a, noise) if noise is not None else jax.vmap(lambda p: one(p, None))(a)

    def _reverse(self, z):
        return flow.reverse(z, self.labels(), steps=self.label_steps, solver=self.label_solver, log=True)

    def __call__(self, x, noise_key=None) -> jax.Array:
        """(B, num_classes) scores: the label anchors' log-posteriors at the last reverse step."""
        _, logp = self._reverse(self.latents(x, noise_key))
        return logp[-1]

    def predict(self, x, noise_key=None) -> jax.Array:
        """(B,) int32 labels: the label anchor nearest the reverse flow's end point."""
        end, _ = self._reverse(self.latents(x, noise_key))
        return self.labels.nearest(end)
