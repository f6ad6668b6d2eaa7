"""Sample metrics for the digits job: class accuracy, FD, memorisation (see protocol.py).

Per seed, on samples brought to 8x8 [-1,1]:
  accuracy        share of samples the classifier labels with the requested label.
  fd              Fréchet distance of the classifier's 64-d penultimate features of the
                  samples vs those of the *test* split (364 images).
  nn_dist         mean L2 distance (64 pixels, [-1,1] scale) to the nearest *train* image.
  copy_share      share of samples closer to the train set than the 5th percentile of the
                  test images' own nearest-train distances: ~0.05 for fresh digits like
                  the test set, ~1 for copies of training images.
Across seeds: mean and std (ddof=1 when there are several seeds, else 0).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from unigen.data.digits import digits_arrays
from unigen.eval.classifier import classify
from unigen.eval.frechet import frechet_distance, gaussian_stats
from unigen.eval.protocol import to_eval_space, validate_samples

METRICS = ("accuracy", "fd", "nn_dist", "copy_share")
COPY_PERCENTILE = 5.0


@dataclasses.dataclass(frozen=True)
class Reference:
    test_mu: np.ndarray
    test_sigma: np.ndarray
    train_flat: np.ndarray  # (N_train, 64) in [-1, 1]
    copy_threshold: float  # 5th percentile of test-to-train nearest distances
    test_nn_mean: float  # mean test-to-train nearest distance: what fresh digits score


def flatten_unit(images_uint8: np.ndarray) -> np.ndarray:
    return images_uint8.reshape(len(images_uint8), -1).astype(np.float64) / 127.5 - 1.0


def nearest_distances(x: np.ndarray, ref: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """For each row of x (N, D), the L2 distance to its nearest row of ref (M, D)."""
    ref_sq = (ref ** 2).sum(1)
    out = []
    for i in range(0, len(x), chunk):
        a = x[i:i + chunk]
        d2 = (a ** 2).sum(1)[:, None] + ref_sq[None, :] - 2 * a @ ref.T
        out.append(np.sqrt(np.clip(d2.min(axis=1), 0, None)))
    return np.concatenate(out) if out else np.zeros(0)


@functools.lru_cache(maxsize=1)
def reference() -> Reference:
    test, train = digits_arrays("test"), digits_arrays("train")
    _, test_feats = classify(test["image"].astype(np.float32) / 127.5 - 1.0)
    train_flat = flatten_unit(train["image"])
    test_nn = nearest_distances(flatten_unit(test["image"]), train_flat)
    return Reference(*gaussian_stats(test_feats), train_flat,
                     float(np.percentile(test_nn, COPY_PERCENTILE)), float(test_nn.mean()))


def evaluate_one(images8: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    """Metrics of one seed's samples, already (N,8,8,1) in [-1,1]; no accuracy without labels."""
    if len(images8) < 2:
        raise ValueError(f"need at least 2 samples per seed for FD, got {len(images8)}")
    ref = reference()
    logits, feats = classify(images8)
    nn = nearest_distances(images8.reshape(len(images8), -1).astype(np.float64),
                           ref.train_flat)
    out = {} if labels is None else {"accuracy": float((logits.argmax(-1) == labels).mean())}
    return out | {
        "fd": frechet_distance(*gaussian_stats(feats), ref.test_mu, ref.test_sigma),
        "nn_dist": float(nn.mean()),
        "copy_share": float((nn < ref.copy_threshold).mean()),
    }


def summarise(per_seed: list[dict[str, float]], n_per_seed: list[int]) -> dict:
    k = len(per_seed)
    out = {"num_seeds": k, "n_per_seed": n_per_seed, "per_seed": per_seed}
    for m in METRICS:
        if m not in per_seed[0]:
            continue
        v = np.array([r[m] for r in per_seed])
        out[m] = {"mean": float(v.mean()), "std": float(v.std(ddof=1 if k > 1 else 0))}
    return out


def evaluate_samples(images, labels=None, *, seeds=None) -> dict:
    """Evaluate samples: class-conditional ones (with labels), or unlabelled ones (labels=None:
    FD and memorisation, no accuracy).

    images: (N,H,W,1) in [-1,1] (any H=W; resized to 8x8 as in protocol.to_eval_space);
    labels: (N,) requested labels 0..9, or None; seeds: optional (N,) seed id per sample — metrics
    are computed per seed and reported as mean ± std across seeds.
    Returns {"accuracy": {"mean", "std"}, "fd": ..., "nn_dist": ..., "copy_share": ...,
    "num_seeds", "n_per_seed", "per_seed", "copy_threshold"}.
    """
    images, labels, seeds = validate_samples(images, labels, seeds)
    images8 = to_eval_space(images)
    per_seed, counts = [], []
    for s in np.unique(seeds):
        sel = seeds == s
        per_seed.append({"seed": int(s), **evaluate_one(images8[sel], None if labels is None else labels[sel])})
        counts.append(int(sel.sum()))
    out = summarise(per_seed, counts)
    out["copy_threshold"] = reference().copy_threshold
    return out
