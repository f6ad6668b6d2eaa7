"""A small digits classifier (Flax NNX) whose penultimate layer is the FD feature space.

Works at the data's native 8x8, one channel, values in [-1, 1] (uint8 / 127.5 - 1).
Architecture: conv3x3(32) -> ReLU -> conv3x3(64) -> ReLU -> 2x2 mean-pool -> dense(64) -> ReLU
[= features] -> dense(10). ~85k parameters (340 kB float32); the trained weights ship as
`digits_classifier.npz` beside this file and are rebuilt by
`python -m unigen.eval.train_classifier`.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

WEIGHTS = os.path.join(os.path.dirname(__file__), "digits_classifier.npz")
FEATURE_DIM = 64


class DigitsClassifier(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs, features: int = FEATURE_DIM):
        self.conv1 = nnx.Conv(1, 32, (3, 3), padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), padding="SAME", rngs=rngs)
        self.fc = nnx.Linear(4 * 4 * 64, features, rngs=rngs)
        self.head = nnx.Linear(features, 10, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """(B,8,8,1) in [-1,1] -> (B, features) post-ReLU penultimate activations."""
        h = jax.nn.relu(self.conv1(x))
        h = jax.nn.relu(self.conv2(h))
        b = h.shape[0]
        h = h.reshape(b, 4, 2, 4, 2, h.shape[-1]).mean(axis=(2, 4))  # 2x2 mean-pool
        return jax.nn.relu(self.fc(h.reshape(b, -1)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.features(x))


def flat_params(model: nnx.Module) -> dict[str, np.ndarray]:
    """Parameters as {"conv1/kernel": array, ...} (the npz layout)."""
    return {"/".join(map(str, path)): np.asarray(v.get_value())
            for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def load_params(model: nnx.Module, arrays: dict[str, np.ndarray]) -> nnx.Module:
    """Copy `arrays` (flat_params layout) into `model` (may be abstract, from eval_shape)."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    names = {"/".join(map(str, path)): var for path, var in flat}
    if set(arrays) != set(names):
        raise ValueError(f"classifier weights: expected keys {sorted(names)}, got "
                         f"{sorted(arrays)}; rebuild with python -m unigen.eval.train_classifier")
    for k, var in names.items():
        if tuple(arrays[k].shape) != tuple(var.get_value().shape):
            raise ValueError(f"classifier weight {k}: shape {arrays[k].shape} != "
                             f"{var.get_value().shape}")
        var.set_value(jnp.asarray(arrays[k], jnp.float32))
    nnx.update(model, nnx.from_flat_state(flat))
    return model


@functools.lru_cache(maxsize=1)
def pretrained(path: str = WEIGHTS):
    """(graphdef, state) of the shipped classifier, for the functional apply below."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing; create it with "
                                f"python -m unigen.eval.train_classifier")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    # Abstract init (no random-number kernels to compile), then fill in the weights.
    model = load_params(nnx.eval_shape(lambda: DigitsClassifier(rngs=nnx.Rngs(0))), arrays)
    return nnx.split(model)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x):
    model = nnx.merge(graphdef, state)
    feats = model.features(x)
    return model.head(feats), feats


def classify(images8: np.ndarray, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(N,8,8,1) float in [-1,1] -> (logits (N,10), features (N,64)) as float64 numpy."""
    graphdef, state = pretrained()
    logits, feats = [], []
    for i in range(0, len(images8), batch):
        chunk = np.asarray(images8[i:i + batch], np.float32)
        pad = batch - len(chunk)  # fixed shape: compile once
        out = _apply(graphdef, state, np.pad(chunk, ((0, pad), (0, 0), (0, 0), (0, 0))))
        logits.append(np.asarray(out[0])[:len(chunk)])
        feats.append(np.asarray(out[1])[:len(chunk)])
    return (np.concatenate(logits).astype(np.float64),
            np.concatenate(feats).astype(np.float64))
