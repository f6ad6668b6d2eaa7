"""Two yardsticks, sampled with the protocol's labels and evaluated like any model.

- GMM: per class, a 10-component full-covariance Gaussian mixture
  (sklearn GaussianMixture, reg_covar=1e-3, random_state=0) fitted on that class's *train*
  images flattened to 64 values in [-1, 1]; samples are drawn by hand (component by its
  weight, then mean + Cholesky(cov) @ z) with a numpy Generator seeded per protocol seed,
  and clipped to [-1, 1]. A classical density model: what a DiT should beat on FD.
- memoriser: for each requested label, a uniformly random *train* image of that class.
  It scores near-perfect accuracy and low FD while copying: the floor for the copy metrics.
"""

from __future__ import annotations

import functools

import numpy as np

from unigen.data.digits import NUM_CLASSES, digits_arrays
from unigen.eval.metrics import evaluate_samples
from unigen.eval.protocol import N_SAMPLES, SEEDS, eval_labels

GMM_COMPONENTS = 10
GMM_REG_COVAR = 1e-3


def _train_by_class() -> list[np.ndarray]:
    train = digits_arrays("train")
    flat = train["image"].reshape(len(train["image"]), -1).astype(np.float64) / 127.5 - 1.0
    return [flat[train["label"] == c] for c in range(NUM_CLASSES)]


@functools.lru_cache(maxsize=1)
def fit_gmms():
    """Per-class (weights (K,), means (K,64), Cholesky factors (K,64,64)), fitted once."""
    from sklearn.mixture import GaussianMixture

    fits = []
    for x in _train_by_class():
        g = GaussianMixture(GMM_COMPONENTS, covariance_type="full", reg_covar=GMM_REG_COVAR,
                            random_state=0, max_iter=200).fit(x)
        fits.append((g.weights_, g.means_, np.linalg.cholesky(g.covariances_)))
    return fits


def gmm_samples(n: int = N_SAMPLES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    labels = eval_labels(n, seed)
    rng = np.random.default_rng([seed, 1])
    out = np.empty((n, 64))
    for c, (w, mu, chol) in enumerate(fit_gmms()):
        idx = np.flatnonzero(labels == c)
        comp = rng.choice(len(w), size=len(idx), p=w / w.sum())
        z = rng.standard_normal((len(idx), mu.shape[1]))
        out[idx] = mu[comp] + np.einsum("nij,nj->ni", chol[comp], z)
    return np.clip(out, -1, 1).reshape(n, 8, 8, 1).astype(np.float32), labels


def memoriser_samples(n: int = N_SAMPLES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    labels = eval_labels(n, seed)
    rng = np.random.default_rng([seed, 2])
    by_class = _train_by_class()
    out = np.empty((n, 64))
    for c, x in enumerate(by_class):
        idx = np.flatnonzero(labels == c)
        out[idx] = x[rng.integers(0, len(x), size=len(idx))]
    return out.reshape(n, 8, 8, 1).astype(np.float32), labels


def _evaluate(make, n, seeds) -> dict:
    parts = [make(n, s) for s in seeds]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    seed_ids = np.repeat(np.asarray(seeds, np.int64), n)
    return evaluate_samples(images, labels, seeds=seed_ids)


def baselines(n: int = N_SAMPLES, seeds=SEEDS) -> dict[str, dict]:
    """{"GMM ...": metrics, "memoriser ...": metrics}, each over `seeds` with n per seed."""
    return {
        f"GMM ({GMM_COMPONENTS}/class)": _evaluate(gmm_samples, n, seeds),
        "memoriser (train copies)": _evaluate(memoriser_samples, n, seeds),
    }
