"""The fixed evaluation protocol for the digits job.

- N_SAMPLES = 5000 generated images per seed, SEEDS = (0, 1, 2); report mean ± std.
- Labels follow the *test* split's label mix: `eval_labels(n, seed)` gives each class
  round(n * share_c) labels (largest-remainder rounding, so the counts sum to n exactly)
  in a seeded random order. The sampling script generates exactly these labels.
- Samples of any size are brought to the classifier's 8x8 by `to_eval_space`.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from unigen.data.digits import NUM_CLASSES, digits_arrays

N_SAMPLES = 5000
SEEDS = (0, 1, 2)
EVAL_SIZE = 8
RANGE_TOL = 1e-3  # values may overshoot [-1, 1] by this much (then are clipped)


@functools.lru_cache(maxsize=None)
def test_label_shares() -> tuple[float, ...]:
    counts = np.bincount(digits_arrays("test")["label"], minlength=NUM_CLASSES)
    return tuple(float(c) for c in counts / counts.sum())


def eval_labels(n: int = N_SAMPLES, seed: int = 0) -> np.ndarray:
    """(n,) int32 labels with the test split's class shares, shuffled with `seed`."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"eval_labels: n must be a positive int, got {n!r}")
    ideal = n * np.asarray(test_label_shares())
    counts = np.floor(ideal).astype(np.int64)
    # Largest remainder: hand the missing labels to the classes with the largest fractions.
    for c in np.argsort(-(ideal - counts), kind="stable")[: n - counts.sum()]:
        counts[c] += 1
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int32), counts)
    return np.random.default_rng(seed).permutation(labels)


def to_eval_space(images: np.ndarray) -> np.ndarray:
    """(N,H,W,1) in [-1,1] -> (N,8,8,1) float32 in [-1,1].

    H = W = 8k: area resize (mean over k x k blocks, the exact antialiased downsample).
    Other sizes: jax.image.resize 'linear' with antialias=True (triangle filter widened by
    the scale factor). Values are clipped to [-1, 1] afterwards.
    """
    x = np.asarray(images, np.float32)
    n, h, w, c = x.shape
    if h == w and h % EVAL_SIZE == 0:
        k = h // EVAL_SIZE
        x = x.reshape(n, EVAL_SIZE, k, EVAL_SIZE, k, c).mean(axis=(2, 4))
    else:
        x = np.asarray(jax.image.resize(x, (n, EVAL_SIZE, EVAL_SIZE, c), "linear",
                                        antialias=True))
    return np.clip(x, -1.0, 1.0)


def validate_samples(images, labels, seeds=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check shapes/ranges; return (images float32 clipped, labels int32 or None, seeds int64)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 1 or images.shape[1] < 2 or images.shape[2] < 2:
        raise ValueError(f"images must be (N, H, W, 1) grey digits, got shape {images.shape}")
    n = images.shape[0]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},) to match images, got {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        if n and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise ValueError(f"labels must be in 0..{NUM_CLASSES - 1}, got range "
                             f"[{labels.min()}, {labels.max()}]")
    if not np.isfinite(images).all():
        raise ValueError("images contain NaN or inf")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1 - RANGE_TOL or hi > 1 + RANGE_TOL:
        raise ValueError(f"images must be in [-1, 1] (tolerance {RANGE_TOL}), got "
                         f"[{lo:.4g}, {hi:.4g}]; map uint8 data with x / 127.5 - 1")
    if seeds is None:
        seeds = np.zeros(n, np.int64)
    seeds = np.asarray(seeds)
    if seeds.shape != (n,) or not np.issubdtype(seeds.dtype, np.integer):
        raise ValueError(f"seed must be ({n},) integers (one per sample), got "
                         f"{seeds.shape} {seeds.dtype}")
    return (np.clip(images.astype(np.float32), -1, 1), None if labels is None else labels.astype(np.int32),
            seeds)
